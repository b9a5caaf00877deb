"""Executable name -> module whose main() runs it: one table for the whole suite.

The PyInstaller bundle has a single executable; every plugin name installed in the CNI
bin dir points at it, and `dispatch` picks the plugin by the name it was exec'd as
(like busybox). `./build.sh bin` links only the names whose module exists.
Kept free of imports beyond os/sys so dispatching costs nothing.
"""
import os
import sys

ENTRYPOINTS = {
    "vxlan": "plugins.main.vxlan.cmd",
    "vxlan-agent": "plugins.main.vxlan.agent",
    "dp-steering": "plugins.meta.dp_steering.cmd",
    "pycni-dp": "plugins.dp.main",
    "edgemesh": "plugins.meta.edgemesh.cmd",
    "pycni-passthrough": "plugins.meta.passthrough.cmd",
    "pycnitool": "libcni_py.__main__",
    "pycni-doctor": "plugins.doctor.main",
    "pycni-node": "plugins.node.daemon",
}


def available() -> list[str]:
    """The names whose module can be found now (build time: what the bundle carries)."""
    from importlib.util import find_spec
    names = []
    for name, module in ENTRYPOINTS.items():
        try:
            if find_spec(module) is not None:
                names.append(name)
        except ImportError:      # a parent package is missing
            pass
    return names


def main() -> None:
    """The bundle's entry: dispatch on the name exec'd as. Under any other name:
    `--list` prints the names this build carries, `--self-check` tests the build."""
    if getattr(sys, "frozen", False):
        _host_env_for_children()
    name = os.path.basename(sys.argv[0])
    if name in ENTRYPOINTS:
        run(name)
    elif sys.argv[1:] == ["--list"]:
        print("\n".join(available()))
    elif sys.argv[1:] == ["--self-check"]:
        from plugins.selfcheck import main as self_check
        sys.exit(self_check())
    else:
        sys.stderr.write(f"pycni: run me as one of: {' '.join(ENTRYPOINTS)}; or with --list, --self-check\n")
        sys.exit(2)


def _host_env_for_children() -> None:
    """PyInstaller's bootloader put the bundle's lib dir first on LD_LIBRARY_PATH (the old value
    saved as LD_LIBRARY_PATH_ORIG) and left _PYI_* markers for itself. This process has loaded
    its libraries already (the loader reads LD_LIBRARY_PATH once, at start); what a plugin runs
    (iptables, nft, ip, IPAM plugins, our own binaries) must start with the host's environment."""
    env = os.environ
    orig = env.pop("LD_LIBRARY_PATH_ORIG", None)
    if orig is None:
        env.pop("LD_LIBRARY_PATH", None)
    else:
        env["LD_LIBRARY_PATH"] = orig
    for key in [k for k in env if k.startswith("_PYI_")]:
        del env[key]


def run(name: str) -> None:
    """Plugin `name`'s exec: first the thin client (plugins/node/client.py), which hands a plain
    CNI call of a plugin pycni-node serves to the daemon and exits with its answer; else
    (no daemon, another version, a refusal, any other executable) the module in-process.
    build.sh's launchers (.venv/bin and the bundle's bin/ for the SERVED names) do the same two
    steps themselves, so an exec through the daemon never imports this module (~0.3 ms)."""
    from plugins.node.client import delegate
    delegate(name)
    dispatch(name)


# The console scripts of the plugins pycni-node serves (pyproject.toml): the hook runs before the
# plugin's module is imported. A wheel's venv runs these; ./build.sh replaces them in .venv/bin
# with launchers (no site, no `re`: README "Start-up").
def vxlan() -> None:
    run("vxlan")


def dp_steering() -> None:
    run("dp-steering")


def edgemesh() -> None:
    run("edgemesh")


def passthrough() -> None:
    run("pycni-passthrough")


def dispatch(name: str) -> None:
    """Run the main() of plugin `name` and exit with what it returns, as the console script
    pip writes does (`sys.exit(main())`): None is 0, an int is the status. A module this build
    lacks, or one that fails to load, still answers in CNI terms: error JSON on stdout,
    traceback on stderr, exit 1."""
    module = ENTRYPOINTS[name]
    from importlib import import_module
    try:
        entry = import_module(module).main
    except Exception as e:  # noqa: BLE001
        _load_failed(name, module, e)
    sys.exit(entry())


def _load_failed(name: str, module: str, e: Exception) -> None:
    import json
    from libcni_py import errors as E
    from libcni_py.version import CURRENT
    missing = isinstance(e, ModuleNotFoundError) and (module + ".").startswith(f"{e.name}.")
    if missing:
        err = E.CNIError(E.PLUGIN_NOT_AVAILABLE, f"{name} is not part of this build", f"module {module}")
    else:
        import traceback
        traceback.print_exc()
        err = E.CNIError(E.INTERNAL, f"{name} failed to load: {type(e).__name__}: {e}", f"module {module}")
    sys.stdout.write(json.dumps(err.to_dict(CURRENT), indent=4) + "\n")
    sys.exit(1)


if __name__ == "__main__":
    main()
