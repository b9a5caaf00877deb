"""pycnitool: cnitool's verbs and environment, on libcni_py.

    pycnitool add|check|del <net> <netns>
    pycnitool gc <net> [<netns>]       valid attachments: CNI_VALID_ATTACHMENTS (JSON list)
    pycnitool status <net>

Environment: NETCONFPATH (default /etc/cni/net.d), CNI_PATH, CNI_IFNAME (default eth0),
CNI_ARGS ("K=V;K2=V2"), CAP_ARGS (JSON object of capability args), and, beyond cnitool,
CNI_CACHE_DIR (default /var/lib/cni) and CNI_CONTAINERID (default derived from netns).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

USAGE = __doc__


def parse_args(raw: str) -> list[tuple[str, str]]:
    out = []
    for pair in raw.split(";"):
        kv = pair.split("=")
        if len(kv) != 2 or not kv[0] or not kv[1]:
            raise ValueError(f"invalid CNI_ARGS pair {pair!r}")
        out.append((kv[0], kv[1]))
    return out


def container_id_for(netns: str) -> str:
    """cnitool's container ID: 'cnitool-' + the first 20 hex of sha512(netns)."""
    return "cnitool-" + hashlib.sha512(netns.encode()).hexdigest()[:20]


def main(argv: list[str] | None = None) -> int:
    from .api import CNIConfig, RuntimeConf
    from .conf import load_conflist
    from .errors import CNIError

    argv = sys.argv[1:] if argv is None else argv
    verbs = ("add", "check", "del", "gc", "status")
    if not argv or argv[0] not in verbs or len(argv) < 2 or (argv[0] in verbs[:3] and len(argv) < 3):
        sys.stderr.write(USAGE)
        return 1
    verb, net = argv[0], argv[1]
    netns = os.path.abspath(argv[2]) if len(argv) > 2 else ""
    env = os.environ
    try:
        lst = load_conflist(env.get("NETCONFPATH", "/etc/cni/net.d"), net)
        cni_args = parse_args(env["CNI_ARGS"]) if env.get("CNI_ARGS") else []
        caps = json.loads(env["CAP_ARGS"]) if env.get("CAP_ARGS") else {}
        cni = CNIConfig([p for p in env.get("CNI_PATH", "").split(os.pathsep) if p],
                        cache_dir=env.get("CNI_CACHE_DIR", ""))
        rt = RuntimeConf(container_id=env.get("CNI_CONTAINERID") or container_id_for(netns),
                         netns=netns, ifname=env.get("CNI_IFNAME") or "eth0",
                         args=cni_args, capability_args=caps)
        if verb == "add":
            result = cni.add_network_list(lst, rt)
            sys.stdout.write(json.dumps(result.encode(), indent=4) + "\n")
        elif verb == "check":
            cni.check_network_list(lst, rt)
        elif verb == "del":
            cni.del_network_list(lst, rt)
        elif verb == "gc":
            valid = json.loads(env.get("CNI_VALID_ATTACHMENTS") or "[]")
            cni.gc_network_list(lst, valid)
        else:
            cni.get_status_network_list(lst)
    except CNIError as e:
        sys.stderr.write(f"{e}\n")
        if verb == "status":                   # STATUS answers with the error object on stdout too
            sys.stdout.write(json.dumps(e.to_dict(), indent=4) + "\n")
        return 1
    except (ValueError, OSError) as e:
        sys.stderr.write(f"{e}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
