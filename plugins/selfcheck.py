"""Does this build work on this host? `pycni --self-check` (bundle) or `python -m plugins.selfcheck`.

Checks what a frozen bundle can silently lack: every plugin module it names imports, every
JSON Schema under plugins/schema compiles with jsonschema, and pyroute2 creates and decodes
bridge, veth and vxlan links (the link kinds pyroute2 imports lazily). The netlink part
runs in a private network namespace made with unshare(2) that vanishes with the process,
so the host's interfaces are never touched; it needs CAP_SYS_ADMIN and CAP_NET_ADMIN.
Prints one line per check; exit status 0 when all pass.
"""
from __future__ import annotations

import os
import sys

from plugins.pkg.ns import CLONE_NEWNET


def check_imports() -> str:
    from importlib import import_module
    from plugins.entrypoints import ENTRYPOINTS, available
    names = available()
    for name in names:
        import_module(ENTRYPOINTS[name])
    return "imports " + " ".join(names)


def check_schemas() -> str:
    import json
    import jsonschema
    from plugins.pkg.schema import schema_dir
    names = sorted(f for f in os.listdir(schema_dir()) if f.endswith(".json"))
    for name in names:
        with open(os.path.join(schema_dir(), name)) as f:
            schema = json.load(f)
        jsonschema.validators.validator_for(schema).check_schema(schema)
    if not names:
        raise RuntimeError(f"no schema in {schema_dir()}")
    return "schemas " + " ".join(names)


def check_netlink() -> str:
    _unshare_netns()
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        ipr.link("add", ifname="sc-br", kind="bridge")
        ipr.link("add", ifname="sc-veth0", kind="veth", peer="sc-veth1")
        ipr.link("add", ifname="sc-vx", kind="vxlan", vxlan_id=42, vxlan_port=4789)
        kinds = {}
        for link in ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            if info is not None:
                kinds[link.get_attr("IFLA_IFNAME")] = info.get_attr("IFLA_INFO_KIND")
        vx = ipr.get_links(ifname="sc-vx")[0]
        vni = vx.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA").get_attr("IFLA_VXLAN_ID")
    want = {"sc-br": "bridge", "sc-veth0": "veth", "sc-veth1": "veth", "sc-vx": "vxlan"}
    if kinds != want or vni != 42:
        raise RuntimeError(f"links decoded as {kinds}, vxlan id {vni}")
    return "netlink bridge veth vxlan(id 42)"


def _unshare_netns() -> None:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")


def main() -> int:
    failed = 0
    for check in (check_imports, check_schemas, check_netlink):
        try:
            print("ok   " + check())
        except Exception as e:  # noqa: BLE001 - report every check, then fail
            failed += 1
            print(f"FAIL {check.__name__}: {type(e).__name__}: {e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
