"""A plugin config with logLevel and logFile, exec'd in-process and through pycni-node: the same
stdout, stderr and logFile lines (timestamps and durations aside). skel writes the "pycni" lines
without importing logging (before, each such request imported a fresh logging module in the
worker, ~9 ms; the daemon's "imported" count leaves logging out, so that is checked in an exec by
tests/unit/test_pkg_log.py::test_the_first_warning_sets_up_the_pycni_handler)."""
from __future__ import annotations

import re

from tests.integration.test_node_daemon import both, execp, node, root  # noqa: F401 - node: the fixture

STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
MS = re.compile(r"\(\d+\.\d ms\)")


def _norm(text: str) -> str:
    return MS.sub("(N ms)", STAMP.sub("STAMP ", text))


@root
def test_a_logfile_config_is_the_same_through_the_daemon(node, netns, tmp_path):  # noqa: F811
    n, host = node(), netns("sklg")
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/x"}],
            "ips": [{"address": "10.22.0.5/24", "interface": 0}], "dns": {}}

    def steps(sock: str) -> list:
        log = tmp_path / ("inproc.log" if "no-such-dir" in sock else "daemon.log")
        conf = {"cniVersion": "1.0.0", "name": "pt", "type": "pycni-passthrough", "prevResult": prev,
                "logLevel": "debug", "logFile": str(log)}
        out = []
        for command, c in (("ADD", conf), ("DEL", conf), ("ADD", {**conf, "name": "bad name"}),
                           ("DEL", {**conf, "logLevel": "info"})):
            rc, stdout, stderr = execp("pycni-passthrough", command, c, sock=sock, inside=host.path,
                                       netns=host.path)
            out.append((rc, stdout, _norm(stderr).replace(log.name, "LOG")))
        out[-1] += (_norm(log.read_text()).replace(log.name, "LOG"),)     # the logFile after them all
        return out
    inproc, daemon = both(n, steps)
    assert daemon == inproc
    written = inproc[-1][-1]
    assert "pycni.skel DEBUG ADD network=pt containerID=c1 ifname=eth0: config" in written
    assert "pycni.skel INFO DEL network=pt containerID=c1 ifname=eth0: ok (N ms)" in written
    assert "pycni.skel ERROR ADD network=bad name containerID=c1 ifname=eth0: failed, code 7" in written
    assert [r[0] for r in inproc] == [0, 0, 1, 0]
