"""Delegation is bounded: a plugin whose config delegates to itself (or a ring of plugins) stops at
invoke.MAX_DEPTH with code 7, instead of a fork chain that outlives the runtime's kill."""
import json
import os
import subprocess
import sys
import textwrap

from libcni_py import invoke

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def loop_plugin(tmp_path) -> str:
    """A plugin on the skel whose ADD delegates ADD to the type its config names: itself."""
    path = tmp_path / "loop"
    path.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        sys.path.insert(0, {ROOT!r})
        from libcni_py.invoke import delegate_add
        from libcni_py.skel import Plugin, plugin_main
        def add(args):
            return delegate_add(args.conf["ipam"]["type"], args.stdin)
        plugin_main(Plugin(add=add, check=lambda a: None, delete=lambda a: None))
        """))
    path.chmod(0o755)
    return str(path)


def test_a_plugin_delegating_to_itself_stops_with_code_7(tmp_path):
    plugin = loop_plugin(tmp_path)
    conf = {"cniVersion": "1.0.0", "name": "loop", "type": "loop", "ipam": {"type": "loop"}}
    env = {k: v for k, v in os.environ.items() if k != invoke.DEPTH_VAR}
    env.update(CNI_COMMAND="ADD", CNI_CONTAINERID="c1", CNI_NETNS="/proc/self/ns/net", CNI_IFNAME="eth0",
               CNI_PATH=str(tmp_path))
    p = subprocess.run([plugin], input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=60)
    err = json.loads(p.stdout)
    assert p.returncode == 1 and err["code"] == 7, err
    assert "delegated" in err["msg"] and str(invoke.MAX_DEPTH) in err["msg"]
    assert b"Traceback" not in p.stderr


def test_depth_marker_is_passed_on_and_checked_before_exec(tmp_path, monkeypatch):
    monkeypatch.setenv(invoke.DEPTH_VAR, str(invoke.MAX_DEPTH))
    marker = tmp_path / "ran"
    script = tmp_path / "p"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    try:
        invoke.exec_plugin(str(script), b"{}", dict(os.environ))
        raise AssertionError("exec'd past the bound")
    except invoke.CNIError as e:
        assert e.code == 7
    assert not marker.exists()
    monkeypatch.setenv(invoke.DEPTH_VAR, "2")
    script.write_text(f"#!/bin/sh\necho ${invoke.DEPTH_VAR} > {marker}\n")
    invoke.exec_plugin(str(script), b"{}", dict(os.environ))
    assert marker.read_text().strip() == "3"
