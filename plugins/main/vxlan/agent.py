"""vxlan-agent: hold this node's lease and keep its peer entries in step with the registry.

    vxlan-agent --conf /etc/cni/net.d/10-pycni.conflist      (also: python -m plugins.main.vxlan)

Runs in the network namespace it is started in (the host's). It ensures the node
once at start (a correct datapath is adopted as it is: the reconcile is a diff, so
existing entries are not touched), then waits on the registry (inotify for the
file backend) and reconciles as soon as the revision moves; every `--resync`
seconds (and every ttl/3 when leases have a TTL) it reconciles anyway and renews.
SIGTERM/SIGINT end it with the datapath left in place, so pods keep talking while
it restarts. `--leave` gives the lease back and deletes the device instead.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

from libcni_py.errors import CNIError

log = logging.getLogger("pycni.vxlan.agent")


def load_conf(path: str) -> dict:
    """The vxlan plugin's config from a .conf or .conflist (name/cniVersion from the list)."""
    import json
    from libcni_py import conf as cniconf
    with open(path, "rb") as f:
        data = f.read()
    if "plugins" not in json.loads(data):
        return cniconf.conf_from_bytes(data).network
    conflist = cniconf.conflist_from_bytes(data)
    for plugin in conflist.plugins:
        if plugin.type == "vxlan":
            return {**plugin.network, "name": conflist.name, "cniVersion": conflist.cni_version}
    raise CNIError(7, f"{path}: no plugin of type 'vxlan' in the list")


class Agent:
    def __init__(self, cfg, resync: float):
        from .registry import open_registry
        self.cfg = cfg
        self.resync = min(resync, cfg.registry_ttl / 3) if cfg.registry_ttl else resync
        self.registry = open_registry(cfg.registry_type, cfg.registry_path, cfg.registry_ttl)
        self.stopping = False

    def stop(self, *_):
        self.stopping = True

    def reconcile(self) -> int | None:
        """ensure_node; the registry revision it reconciled to, or None after an error."""
        from .overlay import ensure_node
        try:
            info = ensure_node(self.cfg)
        except CNIError as e:
            log.error("reconcile failed: %s (code %d)", e, e.code)
            return None
        if info.changes:
            log.info("reconciled to revision %d: %d entries changed", info.revision, info.changes)
        return info.revision

    def run(self) -> int:
        revision, changed, next_full, ready = None, True, 0.0, False
        while not self.stopping:
            if changed or revision is None or time.monotonic() >= next_full:
                revision = self.reconcile()
                next_full = time.monotonic() + self.resync
                if revision is None:          # retry after a pause, never in a tight loop
                    time.sleep(1.0)
                    continue
                if not ready:
                    log.info("node %s ready", self.cfg.node_name)
                    ready = True
            try:
                changed = self.registry.watch(revision, timeout=0.5) is not None
            except CNIError as e:
                log.error("registry: %s", e)
                revision = None
        log.info("stopping; datapath left in place")
        self.registry.close()
        return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vxlan-agent", description=__doc__.splitlines()[0])
    ap.add_argument("--conf", required=True, help="a .conf or .conflist holding the vxlan plugin config")
    ap.add_argument("--resync", type=float, default=10.0, help="seconds between full reconciles (10)")
    ap.add_argument("--leave", action="store_true", help="give the lease back, delete the device, exit")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = ap.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format="%(asctime)s vxlan-agent %(levelname)s %(message)s")
    try:
        from plugins.pkg.schema import validate
        from .overlay import leave_node, node_config
        conf = load_conf(args.conf)
        validate(conf, "vxlan")
        cfg = node_config(conf)
        if args.leave:
            leave_node(cfg, remove_device=True)
            return 0
        agent = Agent(cfg, args.resync)
    except (CNIError, OSError, ValueError) as e:
        log.error("%s", e)
        return 1
    signal.signal(signal.SIGTERM, agent.stop)
    signal.signal(signal.SIGINT, agent.stop)
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
