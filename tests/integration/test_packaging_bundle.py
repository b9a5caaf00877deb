"""The PyInstaller bundle: `./build.sh bin`, `./build.sh install DIR`, the installed plugins
running on a host where no Python can be found (every CNI plugin ADD/CHECK/DEL, driven by the
frozen pycnitool: tests/kit/bundle.py CASES), and every name's exit status.

The per-pod plugins (plugins/node/protocol.py SERVED) are launchers: scripts on the bundle's own
interpreter, pycni/bin/python3 (a python with libpython linked in, its ._pth naming the bundle's
module dirs), not the bootloader; the other names link to the bootloader (build.sh). They run
in-process without a daemon and hand over to a frozen pycni-node of the same install.

Built once per session into a tmp dir (about 10-30 s), never into the checkout's dist/: the
`bundle` fixture of tests/kit/bundle.py, shared with the bench smoke test.
"""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from libcni_py.api import CNIConfig, RuntimeConf
from libcni_py.conf import conflist_from_dict
from plugins.entrypoints import ENTRYPOINTS
from plugins.node.protocol import SERVED
from plugins.pkg import ns as pkg_ns
from tests.conftest import GO_CNI_DIR, ROOT, VENV_BIN

pytestmark = [pytest.mark.root, pytest.mark.slow]
pytest_plugins = ["tests.kit.bundle"]        # the `bundle` fixture, one build per session

CNI_PLUGINS = {"vxlan", "dp-steering", "edgemesh", "pycni-passthrough"}   # the rest are daemons/CLI
BUNDLE_EXE = os.path.join("..", "pycni", "pycni")
assert CNI_PLUGINS == set(SERVED)          # the per-pod plugins are the launchers


def static_python() -> str | None:
    """The python build.sh gives the bundle on this machine: the build's base interpreter or
    /usr/bin/python<minor>, whichever has libpython linked in (None: the bundle keeps the bootloader)."""
    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for cand in (os.path.realpath(sys._base_executable), f"/usr/bin/python{minor}"):
        if os.access(cand, os.X_OK) and "libpython" not in run(["ldd", cand]).stdout:
            return cand
    return None


def launcher_for(path) -> str | None:
    """The interpreter a launcher's shebang names (None: not a launcher)."""
    if os.path.islink(path):
        return None
    with open(path, "rb") as f:
        head = f.readline().decode()
    assert head.startswith("#!") and head.rstrip().endswith(" -IS"), head
    return head[2:].rsplit(" ", 1)[0]


def assert_names(bindir, bundle_dir):
    """Each per-pod plugin a launcher on `bundle_dir`/bin/python3 (when this machine has a python
    for it), every other name a link to the bootloader."""
    expect_launchers = static_python() is not None
    assert os.path.isfile(os.path.join(bundle_dir, "bin", "python3")) == expect_launchers
    for name in names_in(bindir):
        if name in CNI_PLUGINS and expect_launchers:
            assert launcher_for(os.path.join(bindir, name)) == os.path.join(bundle_dir, "bin", "python3"), name
            text = open(os.path.join(bindir, name)).read()
            assert f"delegate({name!r})" in text and f"dispatch({name!r})" in text, text
            assert f"sys.executable = {os.path.join(bundle_dir, 'pycni')!r}" in text, text
        else:
            assert os.readlink(os.path.join(bindir, name)) == BUNDLE_EXE, name


def run(argv, env=None, timeout=600, **kw):
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="session")
def installed(bundle, tmp_path_factory):
    """`./build.sh install DIR` of that build; returns DIR."""
    bindir = tmp_path_factory.mktemp("host") / "opt" / "cni" / "bin"
    p = run([os.path.join(ROOT, "build.sh"), "install", str(bindir)], cwd=ROOT,
            env=dict(os.environ, PYCNI_DIST=str(bundle)))
    assert p.returncode == 0, p.stdout + p.stderr
    return bindir


def names_in(d):
    return sorted(os.listdir(d))


def exec_without_python(exe, cni_env, stdin=""):
    """Run `exe` with only `cni_env` in its environment, cwd /, and no Python on the host."""
    from tests.kit.bundle import without_python     # imported here: the module is our pytest plugin
    return run(without_python([exe], cni_env), input=stdin, timeout=60)


def cni_env(cmd, netns="", **extra):
    env = {"CNI_COMMAND": cmd, "CNI_CONTAINERID": "pkg-c1", "CNI_NETNS": netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"}
    env.update(extra)
    return {k: v for k, v in env.items() if v}


def pod_conf(netns_path, ver="1.0.0", **extra):
    prev = {"cniVersion": ver,
            "interfaces": [{"name": "eth0", "mac": "0a:58:0a:01:02:03", "sandbox": netns_path}],
            "ips": [{"address": "10.1.2.3/24", "gateway": "10.1.2.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.2.1"}],
            "dns": {"nameservers": ["10.96.0.10"]}}
    conf = {"cniVersion": ver, "name": "pkgnet", "type": "pycni-passthrough", "prevResult": prev}
    conf.update(extra)
    return conf


def assert_cni_error(p, code):
    assert p.returncode == 1, p.stdout + p.stderr
    assert "Traceback" not in p.stdout
    err = json.loads(p.stdout)
    assert err["code"] == code and err["msg"], err
    return err


def test_bin_holds_one_name_per_plugin_into_one_bundle(bundle):
    names = names_in(bundle / "bin")
    assert "pycni-passthrough" in names and set(names) <= set(ENTRYPOINTS), names
    assert_names(bundle / "bin", str(bundle / "pycni"))
    listed = run([str(bundle / "pycni" / "pycni"), "--list"]).stdout.split()
    assert sorted(listed) == names
    assert names_in(bundle) == ["bin", "pycni"]
    schemas = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "plugins", "schema", "*.json")))
    assert len(schemas) >= 4 and sorted(
        n for n in names_in(bundle / "pycni" / "_internal" / "plugins" / "schema") if n.endswith(".json")) == schemas


def test_install_dir_holds_only_our_names(bundle, installed):
    assert names_in(installed) == names_in(bundle / "bin")
    assert_names(installed, str(installed.parent / "pycni"))      # the launchers name the installed bundle
    assert os.path.isfile(installed.parent / "pycni" / "pycni")
    # Installing again over a live install replaces the bundle and keeps the names.
    p = run([os.path.join(ROOT, "build.sh"), "install", str(installed)], cwd=ROOT,
            env=dict(os.environ, PYCNI_DIST=str(bundle)))
    assert p.returncode == 0, p.stderr
    assert names_in(installed) == names_in(bundle / "bin")
    assert names_in(installed.parent) == ["bin", "pycni"]
    assert_names(installed, str(installed.parent / "pycni"))


def test_passthrough_binary_without_python(installed, netns):
    ns = netns("pkg")
    exe = installed / "pycni-passthrough"

    p = exec_without_python(exe, {"CNI_COMMAND": "VERSION"}, '{"cniVersion": "1.0.0"}')
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout) == {"cniVersion": "1.0.0",
                                    "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}

    conf = pod_conf(ns.path)
    p = exec_without_python(exe, cni_env("ADD", ns.path), json.dumps(conf))
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout) == conf["prevResult"]
    # Same bytes as the venv script prints for the same input.
    venv = run([os.path.join(VENV_BIN, "pycni-passthrough")], env=cni_env("ADD", ns.path),
               input=json.dumps(conf))
    assert venv.returncode == 0 and venv.stdout == p.stdout

    for cmd in ("CHECK", "DEL"):
        p = exec_without_python(exe, cni_env(cmd, ns.path), json.dumps(conf))
        assert p.returncode == 0 and p.stdout == "", (cmd, p.stdout, p.stderr)


def test_runtime_chains_go_bridge_and_the_installed_binary(installed, netns, tmp_path):
    """libcni_py with CNI_PATH = the install dir + Go plugins: bridge/host-local, then our binary."""
    host, pod = netns("pkghost"), netns("pkgpod")
    nets = conflist_from_dict({"cniVersion": "1.0.0", "name": "pkgchain", "plugins": [
        {"type": "bridge", "bridge": "cni-pkg0", "isGateway": True,
         "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"),
                  "ranges": [[{"subnet": "10.66.0.0/24"}]]}},
        {"type": "pycni-passthrough"}]})
    cni = CNIConfig(path=[str(installed), GO_CNI_DIR], cache_dir=str(tmp_path / "cache"))
    rt = RuntimeConf(container_id="pkg-chain1", netns=pod.path, ifname="eth0")
    with pkg_ns.enter(host.path):
        assert cni.plugin_versions("pycni-passthrough")[-1] == "1.1.0"
        result = cni.add_network_list(nets, rt)
        assert [ip.address for ip in result.ips] == ["10.66.0.2/24"]
        assert result.interfaces[-1].sandbox == pod.path
        cni.check_network_list(nets, rt)
        cni.del_network_list(nets, rt)
    assert "eth0" not in pod.run("ip", "-br", "link").stdout


ENV_RECORDER = """#!/bin/sh
env > "$(dirname "$0")/../env-$CNI_COMMAND"
if [ "$CNI_COMMAND" = VERSION ]; then echo '{"cniVersion":"1.0.0","supportedVersions":["1.0.0"]}'; exit 0; fi
[ "$CNI_COMMAND" = ADD ] && echo '{"cniVersion":"1.0.0"}'
exit 0
"""


@pytest.mark.parametrize("ld_path", [None, "/opt/site-libs"], ids=["unset", "set"])
def test_what_a_binary_runs_gets_the_host_environment(installed, netns, tmp_path, ld_path):
    """The bootloader's LD_LIBRARY_PATH (the bundle's libs) and _PYI_* markers stay inside the
    binary: frozen pycnitool runs the frozen pass-through, then a plugin that records its env."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "conf").mkdir()
    recorder = tmp_path / "bin" / "env-recorder"
    recorder.write_text(ENV_RECORDER)
    recorder.chmod(0o755)
    os.symlink(installed / "pycni-passthrough", tmp_path / "bin" / "pycni-passthrough")
    (tmp_path / "conf" / "envnet.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "envnet",
        "plugins": [{"type": "pycni-passthrough"}, {"type": "env-recorder"}]}))
    env = {"PATH": "/usr/bin:/bin", "NETCONFPATH": str(tmp_path / "conf"), "CNI_PATH": str(tmp_path / "bin"),
           "CNI_IFNAME": "eth0", "CNI_CACHE_DIR": str(tmp_path / "cache")}
    if ld_path:
        env["LD_LIBRARY_PATH"] = ld_path
    p = run([str(installed / "pycnitool"), "add", "envnet", netns("pkgenv").path], env=env, cwd="/")
    assert p.returncode == 0, p.stdout + p.stderr
    child = dict(line.split("=", 1) for line in (tmp_path / "env-ADD").read_text().splitlines() if "=" in line)
    assert child.get("LD_LIBRARY_PATH") == ld_path
    assert not [k for k in child if k.startswith("_PYI_") or k == "LD_LIBRARY_PATH_ORIG"], child


@pytest.mark.parametrize("cmd,env_over,stdin,code", [
    ("ADD", {}, '{"cniVersion": "1.0.0", "name": ', 6),
    ("ADD", {}, {"mtu": 1400}, 7),
    ("ADD", {"CNI_CONTAINERID": ""}, {}, 4),
    ("ADD", {"CNI_NETNS": "/run/netns/pycni-no-such-ns"}, {}, 4),
    ("CHECK", {}, {"cniVersion": "0.3.1"}, 1),
], ids=["bad JSON", "unknown field (schema in the bundle)", "missing env", "netns missing",
        "CHECK at 0.3.1"])
def test_binary_answers_bad_input_with_cni_errors(installed, netns, cmd, env_over, stdin, code):
    ns = netns("pkgerr")
    if isinstance(stdin, dict):
        conf = pod_conf(ns.path)
        conf.update(stdin)
        stdin = json.dumps(conf)
    env = cni_env(cmd, ns.path)
    env.update(env_over)
    p = exec_without_python(installed / "pycni-passthrough", {k: v for k, v in env.items() if v}, stdin)
    assert_cni_error(p, code)


def test_every_plugin_in_the_build_answers_version(installed):
    plugins = sorted(CNI_PLUGINS & set(names_in(installed)))
    assert "pycni-passthrough" in plugins
    for name in plugins:
        p = run([str(installed / name)], env={"CNI_COMMAND": "VERSION"}, input='{"cniVersion": "0.4.0"}',
                cwd="/")
        assert p.returncode == 0, (name, p.stdout, p.stderr)
        answer = json.loads(p.stdout)
        assert answer["cniVersion"] == "0.4.0" and "1.0.0" in answer["supportedVersions"], (name, answer)


def test_bundle_self_check_imports_schemas_and_netlink(installed):
    """Every module the build names imports, jsonschema compiles every schema, and pyroute2
    makes and decodes bridge/veth/vxlan links (in a private netns the check unshares)."""
    p = run([str(installed.parent / "pycni" / "pycni"), "--self-check"], env={}, cwd="/", timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "ok   netlink bridge veth vxlan(id 42)" in p.stdout.splitlines()
    assert glob.glob(str(installed.parent / "pycni" / "_internal" / "pyroute2" / "**" / "vxlan.pyc"),
                     recursive=True)


def test_unknown_program_name(installed, tmp_path):
    os.symlink(installed.parent / "pycni" / "pycni", tmp_path / "not-a-plugin")
    p = run([str(tmp_path / "not-a-plugin")], env={}, input="")
    assert p.returncode == 2 and p.stdout == "" and "pycni-passthrough" in p.stderr


@pytest.mark.parametrize("module,code", [("plugins.ghost.cmd", 50), ("plugins.pkg.names", 999)],
                         ids=["module not in the build", "module without main"])
def test_entry_that_cannot_load_is_a_cni_error(module, code):
    """Dispatch by name as the bundle does, for a table entry that is missing or broken."""
    prog = ("import sys; from plugins import entrypoints as e; "
            f"e.ENTRYPOINTS['pycni-x'] = {module!r}; sys.argv[0] = '/opt/cni/bin/pycni-x'; e.main()")
    p = run([os.path.join(VENV_BIN, "python"), "-c", prog], env={"CNI_COMMAND": "VERSION"}, input="",
            cwd=ROOT)
    assert_cni_error(p, code)


@pytest.mark.parametrize("plugin", sorted(CNI_PLUGINS))
def test_frozen_plugin_add_check_del_without_python(installed, netns, tmp_path, plugin):
    """The installed bundle alone, no Python on the host: the frozen pycnitool runs a conflist
    holding the frozen plugin (and Go's host-local/bridge where the world needs them) in a test
    host, ADD, CHECK, DEL; dp-steering's dp is the frozen pycni-dp, also without Python."""
    from tests.kit.bundle import CASES, Tool
    assert set(CASES) == CNI_PLUGINS
    CASES[plugin](Tool(installed, tmp_path, hide=True), netns, str(tmp_path))


# Each name in the bundle, a run that must fail and one that must succeed: the bundle exits
# with the same status as the venv's console script (pip's `sys.exit(main())`). {bin} is the
# install dir under test, {conf} a dir holding a pycni-passthrough conflist at 1.1.0.
PLUGIN_ENV = {"CNI_CONTAINERID": "pkg-exit1", "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "eth0",
              "CNI_PATH": "{bin}"}
PLUGIN_CONF = '{"cniVersion": "1.0.0", "name": "exitnet", "type": "%s"}'
EXIT_CASES: dict[str, list[tuple[str, list[str], dict[str, str], str, bool]]] = {
    "pycnitool": [("bad verb", ["bogus", "net"], {}, "", False),
                  ("status of a list", ["status", "exitnet"],
                   {"NETCONFPATH": "{conf}", "CNI_PATH": "{bin}", "CNI_CACHE_DIR": "{conf}/cache"}, "", True)],
    "vxlan-agent": [("--help", ["--help"], {}, "", True), ("bad flag", ["--bogus"], {}, "", False),
                    ("missing conf", ["--conf", "/nonexistent/vx.conflist"], {}, "", False)],
    "pycni-dp": [("--help", ["--help"], {}, "", True), ("bad flag", ["--bogus"], {}, "", False)],
    # never a bare run: that would serve on /run/pycni/node.sock
    "pycni-node": [("--help", ["--help"], {}, "", True), ("bad flag", ["--bogus"], {}, "", False),
                   ("missing conf", ["--conf", "/nonexistent/x.conflist"], {}, "", False)],
    "dp-steering": [("mode without args", ["mode"], {}, "", False)],
    "edgemesh": [("sync without args", ["sync"], {}, "", False)],
    "pycni-doctor": [("--list-checks", ["--list-checks"], {}, "", True),
                     ("unknown check", ["--json", "--check", "bogus"], {}, "", False),
                     ("good kernel", ["--check", "kernel-hazards", "--kernel-release", "6.1.0"], {}, "", True),
                     ("bad kernel", ["--check", "kernel-hazards", "--kernel-release", "4.15.6"], {}, "", False),
                     # forks into a namespace, runs iptables-save/nft there, asks netlink (pyroute2) frozen
                     ("rules in its own netns", ["--check", "nfqueue-no-reader", "--netns", "/proc/self/ns/net"],
                      {}, "", True),
                     ("routing in its own netns",
                      ["--check", "policy-route-steals-replies", "--netns", "/proc/self/ns/net"], {}, "", True),
                     ("not a netns", ["--netns", "/"], {}, "", False)],
}
for _name in sorted(CNI_PLUGINS):
    EXIT_CASES.setdefault(_name, []).extend([
        ("VERSION", [], {"CNI_COMMAND": "VERSION"}, '{"cniVersion": "1.0.0"}', True),
        ("bad CNI_COMMAND", [], {**PLUGIN_ENV, "CNI_COMMAND": "BOGUS"}, PLUGIN_CONF % _name, False)])
EXITS = [(name, *case) for name in sorted(EXIT_CASES) for case in EXIT_CASES[name]]


def test_every_name_in_the_bundle_has_exit_cases(installed):
    assert set(names_in(installed)) == set(EXIT_CASES)


@pytest.mark.parametrize("name,what,argv,env,stdin,ok", EXITS, ids=[f"{e[0]}: {e[1]}" for e in EXITS])
def test_exit_status_is_the_venv_scripts(installed, tmp_path, name, what, argv, env, stdin, ok):
    (tmp_path / "exitnet.conflist").write_text(json.dumps(
        {"cniVersion": "1.1.0", "name": "exitnet", "plugins": [{"type": "pycni-passthrough"}]}))
    got = {}
    for where, bindir in (("bundle", str(installed)), ("venv", VENV_BIN)):
        e = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
             **{k: v.format(bin=bindir, conf=tmp_path) for k, v in env.items()}}
        got[where] = run([os.path.join(bindir, name), *argv], env=e, input=stdin, cwd="/", timeout=60)
    frozen, venv = got["bundle"], got["venv"]
    assert "Traceback" not in frozen.stdout + frozen.stderr, frozen.stdout + frozen.stderr
    assert (frozen.returncode == 0) == ok, (frozen.returncode, frozen.stdout, frozen.stderr)
    assert frozen.returncode == venv.returncode, (frozen.returncode, venv.returncode, venv.stderr)
    if "CNI_COMMAND" in env and not ok:
        assert frozen.returncode == 1
        assert json.loads(frozen.stdout)["code"] == 4 == json.loads(venv.stdout)["code"], frozen.stdout


# What the runtime hooks pycni.spec drops would be needed for (see the spec).
NEEDS_DROPPED_HOOK = re.compile(r"\bpkgutil\b|\bgetsource(file|lines)?\b|set_start_method|get_context\(|"
                                r"freeze_support|[\"']forkserver[\"']|[\"']spawn[\"']|\bpkg_resources\b|"
                                r"\bsetuptools\b|\bdistutils\b")


def test_bundled_code_needs_no_dropped_runtime_hook():
    """pycni.spec drops pyi_rth_pkgutil, pyi_rth_inspect, pyi_rth_multiprocessing, pyi_rth_pkgres
    and pyi_rth_setuptools for start-up time; code in the bundle must not list modules, read its
    own source, start multiprocessing children by spawn/forkserver, or use pkg_resources/setuptools."""
    offenders = []
    for top in ("plugins", "libcni_py"):
        for path in glob.glob(os.path.join(ROOT, top, "**", "*.py"), recursive=True):
            with open(path) as f:
                for n, line in enumerate(f, 1):
                    if NEEDS_DROPPED_HOOK.search(line.split("#")[0]):
                        offenders.append(f"{os.path.relpath(path, ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_frozen_doctor_without_python(installed, netns):
    """The install's pycni-doctor, no Python on the host: --json --list-checks, then every check in
    a test netns holding an NFQUEUE rule with no reader (found, the only finding: pyroute2, the
    forked child, iptables-save and nft all work frozen), and the table of a healthy namespace."""
    from plugins.doctor.runner import NAMES
    from tests.kit.bundle import HOST_PATH, without_python
    exe = str(installed / "pycni-doctor")
    env = {"PATH": HOST_PATH}

    def doctor(*args: str) -> subprocess.CompletedProcess:
        p = run(without_python([exe, *args], env), timeout=120)
        assert "Traceback" not in p.stdout + p.stderr, p.stdout + p.stderr
        return p

    p = doctor("--json", "--list-checks")
    assert p.returncode == 0, p.stdout + p.stderr
    assert [c["name"] for c in json.loads(p.stdout)["checks"]] == NAMES
    healthy, broken = netns("pkdoch"), netns("pkdocb")
    broken.run("iptables", "-A", "INPUT", "-p", "tcp", "--dport", "80", "-j", "NFQUEUE", "--queue-num", "5")
    p = doctor("--json", "--netns", broken.path, "--conf-dir", "/nonexistent-net.d")
    assert p.returncode == 2 and json.loads(p.stdout)["code"] == 165, p.stdout       # a given dir must exist
    p = doctor("--json", "--netns", broken.path)
    assert p.returncode == 1, p.stdout + p.stderr
    out = json.loads(p.stdout)
    assert out["errors"] == [] and out["namespaces"] == [{"where": f"netns {broken.name}", "netns": broken.path}]
    [f] = out["findings"]
    assert f["check"] == "nfqueue-no-reader" and "queue 5" in f["what"], f
    p = doctor("--netns", healthy.path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.splitlines()[-1].endswith("in 1 namespace(s): no problems found"), p.stdout


def launchers_or_skip(installed):
    if launcher_for(installed / "pycni-passthrough") is None:
        assert static_python() is None       # a machine with such a python gets the launchers
        pytest.skip("no python with libpython linked in here: the bundle keeps the bootloader for every name")


def test_bundle_python_is_static_and_isolated(installed):
    """pycni/bin/python3 needs no libpython.so, and its ._pth makes it isolated, without site,
    its sys.path exactly the bundle's dirs (no Python on the host)."""
    from tests.kit.bundle import without_python
    launchers_or_skip(installed)
    py = installed.parent / "pycni" / "bin" / "python3"
    assert "libpython" not in run(["ldd", str(py)]).stdout
    p = run(without_python([py, "-c", "import sys, json; print(json.dumps([sys.path, sys.flags.isolated, "
                                      "sys.flags.no_site, 'site' in sys.modules]))"], {"PYTHONPATH": "/nonexistent"}))
    assert p.returncode == 0, p.stdout + p.stderr
    path, isolated, no_site, site = json.loads(p.stdout)
    bundle = str(installed.parent / "pycni")
    assert path and all(d.startswith(bundle + os.sep) for d in path), path
    assert (isolated, no_site, site) == (1, 1, False)


def test_launchers_run_in_process_and_through_the_frozen_daemon(installed, netns, tmp_path):
    """No Python on the host: the launcher's in-process ADD (no socket, or a path with no daemon
    behind it), then the same ADD and every per-pod plugin's VERSION handed to the install's own
    frozen pycni-node (its identity is the bundle's executable: the launcher's hello must match
    it), with the same bytes out; the daemon's log shows each request served."""
    from tests.kit.bundle import HOST_PATH, without_python
    launchers_or_skip(installed)
    ns = netns("pkglaunch")
    conf = json.dumps(pod_conf(ns.path))
    exe = installed / "pycni-passthrough"
    d = tmp_path / "node"
    d.mkdir(mode=0o700)
    sock, log_path = str(d / "node.sock"), d / "node.log"

    inproc = exec_without_python(exe, cni_env("ADD", ns.path, PYCNI_NODE_SOCKET="off"), conf)
    assert inproc.returncode == 0, inproc.stdout + inproc.stderr
    no_daemon = exec_without_python(exe, cni_env("ADD", ns.path, PYCNI_NODE_SOCKET=sock), conf)
    assert (no_daemon.returncode, no_daemon.stdout) == (0, inproc.stdout), no_daemon.stderr

    with open(log_path, "ab") as log:
        daemon = subprocess.Popen(without_python([installed / "pycni-node", "--socket", sock, "--log-level", "debug"],
                                                 {"PATH": HOST_PATH}),
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(sock):
            assert daemon.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        served = exec_without_python(exe, cni_env("ADD", ns.path, PYCNI_NODE_SOCKET=sock), conf)
        assert (served.returncode, served.stdout) == (0, inproc.stdout), served.stderr
        for name in sorted(CNI_PLUGINS):
            p = exec_without_python(installed / name, {"CNI_COMMAND": "VERSION", "PYCNI_NODE_SOCKET": sock},
                                    '{"cniVersion": "1.0.0"}')
            assert p.returncode == 0 and json.loads(p.stdout)["cniVersion"] == "1.0.0", (name, p.stdout, p.stderr)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(10)
    text = log_path.read_text()
    assert "served pycni-passthrough ADD" in text, text
    for name in CNI_PLUGINS:
        assert f"served {name} VERSION" in text, text
    assert "refused" not in text and "is not this daemon's" not in text, text


def test_install_keeps_the_bootloader_when_the_bundle_python_cannot_load_the_plugins(bundle, tmp_path):
    """`./build.sh install` probes the bundle's python in its installed place (the host's libffi,
    libssl...): when it fails there, every name is a bootloader link, as before the launchers."""
    launchers_or_skip(bundle / "bin")
    dist = tmp_path / "dist"
    assert run(["cp", "-a", str(bundle), str(dist)]).returncode == 0
    broken = dist / "pycni" / "bin" / "python3"
    broken.unlink()
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    bindir = tmp_path / "host" / "bin"
    p = run([os.path.join(ROOT, "build.sh"), "install", str(bindir)], cwd=ROOT,
            env=dict(os.environ, PYCNI_DIST=str(dist)))
    assert p.returncode == 0, p.stdout + p.stderr
    assert names_in(bindir) == names_in(bundle / "bin")
    for name in names_in(bindir):
        assert os.readlink(bindir / name) == BUNDLE_EXE, name
    v = run([str(bindir / "pycni-passthrough")], env={"CNI_COMMAND": "VERSION"}, input='{"cniVersion": "1.0.0"}')
    assert v.returncode == 0 and json.loads(v.stdout)["cniVersion"] == "1.0.0", v.stdout + v.stderr
