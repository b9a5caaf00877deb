"""vxlan-agent: hold this node's lease and keep its peer entries in step with the registry.

    vxlan-agent --conf /etc/cni/net.d/10-pycni.conflist      (also: python -m plugins.main.vxlan)

Runs in the network namespace it is started in (the host's). It ensures the node
once at start (a correct datapath is adopted as it is: the reconcile is a diff, so
existing entries are not touched), then waits on the registry (inotify for the
file backend) and, as soon as the revision moves, applies only the leases that
changed (overlay.follow_change: no kernel dumps, a full reconcile when anything is
not as assumed). Every `--resync` seconds (and every ttl/3 when leases have a TTL)
it does a full diff against the kernel anyway and renews the lease.
SIGTERM/SIGINT end it with the datapath left in place, so pods keep talking while
it restarts. `--leave` gives the lease back and deletes the device instead.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

from libcni_py.errors import CNIError, INVALID_CONFIG

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .overlay import Applied

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
    raise CNIError(INVALID_CONFIG, f"{path}: no plugin of type 'vxlan' in the list")


class Agent:
    def __init__(self, cfg, resync: float):
        from .registry import open_registry
        self.cfg = cfg
        self.resync = min(resync, cfg.registry_ttl / 3) if cfg.registry_ttl else resync
        self.registry = open_registry(cfg.registry_type, cfg.registry_path, cfg.registry_ttl)
        self.stopping = False
        self.applied: Applied | None = None     # of the last reconcile

    def stop(self, *_):
        self.stopping = True

    def reconcile(self, snap=None) -> bool:
        """A full ensure_node, or with `snap` only the change since the last one; False after an error."""
        from .overlay import ensure_applied, follow_change
        try:
            if snap is None or self.applied is None:
                self.applied = ensure_applied(self.cfg)
            else:
                self.applied = follow_change(self.cfg, self.applied, snap)
        except CNIError as e:
            log.error("reconcile failed: %s (code %d)", e, e.code)
            self.applied = None
            return False
        if self.applied is not None and self.applied.info.changes:
            log.info("reconciled to revision %d: %d entries changed",
                     self.applied.info.revision, self.applied.info.changes)
        return True

    def run(self) -> int:
        snap, next_full, ready = None, 0.0, False
        while not self.stopping:
            full = self.applied is None or time.monotonic() >= next_full
            if full or snap is not None:
                if not self.reconcile(None if full else snap):
                    time.sleep(1.0)           # retry after a pause, never in a tight loop
                    continue
                if full:
                    next_full = time.monotonic() + self.resync
                if not ready:
                    log.info("node %s ready", self.cfg.node_name)
                    ready = True
            if self.applied is None:
                continue
            try:
                snap = self.registry.watch(self.applied.info.revision, timeout=0.5)
            except CNIError as e:
                log.error("registry: %s", e)
                snap, self.applied = None, None
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
