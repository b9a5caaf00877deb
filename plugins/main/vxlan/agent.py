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
it restarts. `--leave` gives the lease back (etcd: deletes the keys and revokes the
etcd lease) and deletes the device instead.

With an etcd registry it is the only process of the node that talks to etcd: it
renews the lease every ttl/3 (keepalive; acquires it again, same subnet, when it is
gone), follows the watch from the revision it read (a compacted one: lists again),
and while etcd is unreachable leaves the datapath as it is, retrying with capped
backoff and logging once when etcd is lost and once when it is back. It writes
<stateDir>/agent.json (lease, network record, device, pid, a heartbeat every
lease.HEARTBEAT s) and agent-peers.json (the leases programmed), which the per-pod
plugin reads instead of etcd (overlay.ensure_node, lease.agent_state).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

from libcni_py.errors import CNIError, INVALID_CONFIG
from .errors import REGISTRY_UNREADABLE

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
    BACKOFF_MIN, BACKOFF_MAX = 0.5, 5.0        # seconds between retries while the registry is unreachable

    def __init__(self, cfg, resync: float):
        import threading
        from .overlay import _registry
        self.cfg = cfg
        self.resync = min(resync, cfg.registry_ttl / 3) if cfg.registry_ttl else resync
        self.registry = _registry(cfg)
        self.keepalive = getattr(self.registry, "keepalive", None) if cfg.registry_ttl else None
        # retries while the registry is unreachable stay well inside the TTL (keepalive every ttl/3)
        self.backoff_max = min(self.BACKOFF_MAX, max(self.BACKOFF_MIN, cfg.registry_ttl / 3)) \
            if cfg.registry_ttl else self.BACKOFF_MAX
        self.stopping = False
        self.applied: Applied | None = None     # of the last reconcile
        self.registry_up = True
        self._state_lock = threading.Lock()
        self._wake = threading.Event()
        self._written_peers = -1                  # revision of the last agent-peers.json

    def stop(self, *_):
        self.stopping = True
        self._wake.set()

    def reconcile(self, snap=None) -> bool:
        """A full ensure_node, or with `snap` only the change since the last one; False after an
        error. An unreachable registry (100) is raised: the caller keeps the datapath as it is."""
        from .overlay import ensure_applied, follow_change
        try:
            if snap is None or self.applied is None:
                self.applied = ensure_applied(self.cfg, reg=self.registry)
            else:
                self.applied = follow_change(self.cfg, self.applied, snap, reg=self.registry)
        except CNIError as e:
            if e.code == REGISTRY_UNREADABLE:
                raise
            log.error("reconcile failed: %s (code %d)", e, e.code)
            self.applied = None
            return False
        if self.applied is not None and self.applied.info.changes:
            log.info("reconciled to revision %d: %d entries changed",
                     self.applied.info.revision, self.applied.info.changes)
        self.publish()
        return True

    # -- the state file the per-pod plugin reads (lease.agent_state) --
    def publish(self) -> None:
        """Write agent.json (lease, network record, device, liveness) and, when the applied revision
        moved, agent-peers.json. Atomic (records.write); one writer at a time (this and the heartbeat
        thread), each writing the newest `applied`."""
        with self._state_lock:
            # read under the lock: the heartbeat thread holding an older `applied` would otherwise
            # write it over the main thread's newer one (agent-peers.json going back a revision)
            applied = self.applied
            if applied is None:
                return
            self._write_state(applied)

    def _write_state(self, applied: Applied) -> None:
        from . import lease
        info = applied.info
        doc = {"pid": os.getpid(), "heartbeat": round(time.time(), 3), "interval": lease.HEARTBEAT,
               "node": self.cfg.node_name, "lease": applied.lease.with_expiry(None).to_json(),
               "network": applied.network.to_json() if applied.network is not None else None,
               "revision": info.revision, "registry": "up" if self.registry_up else "down",
               "device": {"name": info.device, "index": applied.dev_index, "mtu": info.mtu}}
        if info.device6:
            doc["device6"] = {"name": info.device6, "index": applied.dev6_index, "mtu": info.mtu6}
        if self._written_peers != info.revision:
            lease.write_agent_peers(self.cfg.state_dir, info.revision, applied.leases)
            self._written_peers = info.revision
        lease.write_agent_state(self.cfg.state_dir, doc)

    def _heartbeat(self) -> None:
        from . import lease
        while not self._wake.wait(lease.HEARTBEAT):
            try:
                self.publish()
            except OSError as e:
                log.error("cannot write the agent state in %s: %s", self.cfg.state_dir, e)

    def _registry_state(self, up: bool, why: str = "") -> None:
        """One log line per change of state, never one per attempt."""
        if up == self.registry_up:
            return
        self.registry_up = up
        if up:
            log.info("registry reachable again; following it")
        else:
            log.warning("registry unreachable (%s); datapath left as it is, retrying", why)

    def _pause(self, seconds: float) -> None:
        self._wake.wait(seconds)

    def run(self) -> int:
        import threading
        snap, next_full, next_keep, ready = None, 0.0, 0.0, False
        backoff = self.BACKOFF_MIN
        beat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        beat.start()
        while not self.stopping:
            try:
                now = time.monotonic()
                # while the registry is unreachable only the watch probes it (no full reconcile
                # holding the node lock for dialTimeout): the datapath stays as it is
                full = self.applied is None or (now >= next_full and self.registry_up)
                if full or snap is not None:
                    if not self.reconcile(None if full else snap):
                        self._pause(1.0)          # retry after a pause, never in a tight loop
                        continue
                    snap = None
                    if full:
                        # only the full reconcile's clock: a reconcile does not renew an etcd lease
                        # (acquire writes nothing while the lease is there), so the keepalive keeps
                        # its own ttl/3 clock. Pushing it back here, as each full reconcile (every
                        # ttl/3 too) once did, meant no keepalive ever ran: every lease expired after
                        # its TTL and was taken again, and the peers dropped and re-added its entries
                        next_full = time.monotonic() + self.resync
                    if not ready:
                        log.info("node %s ready", self.cfg.node_name)
                        ready = True
                if self.applied is None:
                    continue
                if self.keepalive is not None and time.monotonic() >= next_keep:
                    left = self.keepalive(self.cfg.node_name)
                    next_keep = time.monotonic() + self.cfg.registry_ttl / 3
                    if left <= 0:
                        log.warning("node %s: lease gone from the registry; acquiring it again", self.cfg.node_name)
                        next_full = 0.0
                        self._registry_state(True)
                        continue
                relists = getattr(self.registry, "relists", 0)
                snap = self.registry.watch(self.applied.info.revision, timeout=0.5)
                if getattr(self.registry, "relists", 0) != relists and snap is not None:
                    log.info("registry history compacted past revision %d: listed again at %d, reconciling",
                             self.applied.info.revision, snap.revision)
                self._registry_state(True)
                backoff = self.BACKOFF_MIN
            except CNIError as e:
                if e.code != REGISTRY_UNREADABLE:
                    log.error("registry: %s", e)
                    snap, self.applied = None, None
                    self._pause(1.0)
                    continue
                self._registry_state(False, f"{e.msg}: {(e.details or '')[:600]}")
                snap = None                      # the datapath stays as the last reconcile left it
                self._pause(backoff)
                backoff = min(backoff * 2, self.backoff_max)
        self._wake.set()
        beat.join(5)
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
