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
    """skel's sink writes it: the line logging's handler would, logging still not imported."""
    err = run(tmp_path, warn=True)
    lines = err.splitlines()
    assert lines[0].endswith(" pycni.t WARNING w-line 7") and lines[1] == "logging imported: False"
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


SAME = textwrap.dedent(f"""\
    import sys
    sys.path.insert(0, {ROOT!r})
    if sys.argv[1] == "real":
        import logging                    # skel then sets up the real logging's handlers, as before its sink
    from libcni_py.errors import CNIError
    from libcni_py.skel import Plugin, plugin_main
    from libcni_py.types import Result
    from plugins.pkg.log import get_logger

    log = get_logger("pycni.t")

    def add(args):
        log.debug("d-line %s", args.container_id)
        log.info("i-line %(a)s and %(b)d", {{"a": "x", "b": 3}})
        log.info("no args %s")
        log.warning("w-line %d", 7)
        log.log(25, "odd level")
        log.warning("bad format %d", "x")         # logging reports it its way ('--- Logging error ---')
        get_logger("other").warning("outside pycni")
        log.info("after %s", "fallback")
        if args.conf.get("fail"):
            raise CNIError(7, "bad thing", "details")
        return Result(cni_version=args.cni_version)

    plugin_main(Plugin(add=add, check=add, delete=add))
    """)
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "


def same_run(tmp_path, mode: str, **conf):
    import re
    exe = tmp_path / "same-plugin"
    exe.write_text(SAME)
    log_file = tmp_path / mode / "plugin.log"
    log_file.parent.mkdir(exist_ok=True)
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/nonexistent"}
    p = subprocess.run([sys.executable, str(exe), mode], env=env, capture_output=True, text=True, timeout=60,
                       input=json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "t", **conf,
                                         **({"logFile": str(log_file)} if "logLevel" in conf else {})}))
    written = log_file.read_text() if log_file.exists() else ""

    def norm(text: str) -> str:
        text = re.sub(STAMP, "STAMP ", text).replace(f"/{mode}/plugin.log", "/MODE/plugin.log")
        text = re.sub(r"\(\d+\.\d ms\)", "(N ms)", text)
        text = re.sub(r"Call stack:\n.*?Message:", "Call stack: ...\nMessage:", text, flags=re.S)   # frames differ
        return re.sub(r'File "[^"]*", line \d+, in \S+\n.*\n', "", text)
    return p.returncode, p.stdout, norm(p.stderr), norm(written)


@pytest.mark.parametrize("conf", [{}, {"logLevel": "debug"}, {"logLevel": "info"}, {"logLevel": "error"},
                                  {"fail": True}, {"fail": True, "logLevel": "info"}])
def test_the_sink_writes_what_logging_would(tmp_path, conf):
    """The same plugin run with logging imported first (skel sets up the real handlers) and without
    (skel's sink, then the real logging from the first record the sink does not format itself): the
    same stdout, exit status, stderr and logFile lines, timestamps and durations aside."""
    real = same_run(tmp_path, "real", **conf)
    sink = same_run(tmp_path, "sink", **conf)
    assert sink == real
    assert "outside pycni" in real[2]
    assert ("w-line 7" in real[2] and "--- Logging error ---" in real[2]) == (conf.get("logLevel") != "error")
    if conf.get("logLevel") in ("debug", "info"):
        assert "INFO i-line x and 3" in real[3] and "pycni.t Level 25 odd level" in real[3]
        assert "after fallback" in real[3]
