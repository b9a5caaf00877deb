"""plugins/pkg/log.py with skel's deferred set-up, in a real plugin exec: no logging import for
a run that logs nothing, the "pycni" format on stderr for the first warning, and logLevel and
logFile honoured (the file flushed although plugin_main leaves with os._exit)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLUGIN = textwrap.dedent(f"""\
    import sys
    sys.path.insert(0, {ROOT!r})
    from libcni_py.skel import Plugin, plugin_main
    from libcni_py.types import Result
    from plugins.pkg.log import get_logger

    log = get_logger("pycni.t")

    def add(args):
        log.debug("d-line")
        log.info("i-line %s", args.container_id)
        if args.conf.get("warn"):
            log.warning("w-line %d", 7)
        sys.stderr.write(f"logging imported: {{'logging' in sys.modules}}\\n")
        return Result(cni_version=args.cni_version)

    plugin_main(Plugin(add=add, check=add, delete=add))
    """)


def run(tmp_path, **conf):
    exe = tmp_path / "log-plugin"
    exe.write_text(PLUGIN)
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/nonexistent"}
    p = subprocess.run([sys.executable, str(exe)], env=env, capture_output=True, text=True,
                       input=json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "t", **conf}))
    assert p.returncode == 0 and json.loads(p.stdout)["cniVersion"] == "1.0.0", p.stderr
    return p.stderr


def test_a_run_that_logs_nothing_never_imports_logging(tmp_path):
    err = run(tmp_path)
    assert err == "logging imported: False\n"


def test_the_first_warning_sets_up_the_pycni_handler(tmp_path):
    err = run(tmp_path, warn=True)
    lines = err.splitlines()
    assert lines[0].endswith(" pycni.t WARNING w-line 7") and lines[1] == "logging imported: True"
    assert "i-line" not in err and "d-line" not in err


@pytest.mark.parametrize("level,want,absent", [("debug", ["DEBUG d-line", "INFO i-line c1"], []),
                                               ("info", ["INFO i-line c1"], ["d-line"])])
def test_log_level_and_log_file(tmp_path, level, want, absent):
    path = tmp_path / "plugin.log"
    err = run(tmp_path, logLevel=level, logFile=str(path))
    written = path.read_text()
    for text in want:
        assert f" pycni.t {text}\n" in written and f" pycni.t {text}\n" in err
    for text in absent:
        assert text not in written and text not in err
