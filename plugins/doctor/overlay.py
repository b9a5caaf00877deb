"""Overlay drift (the vxlan plugin's state against the kernel, as flannel's vxlan backend keeps it):
for every lease in a vxlan network's registry, the three entries per peer (permanent ARP `N ->
VTEP MAC`, permanent FDB `VTEP MAC -> public IP`, route `S via N onlink`; with directRouting on a
shared subnet only `S via public IP`), present and correct on the network's device (IPv6: NDP,
FDB and route on vxlan-v6.<vni> over the IPv6 underlay, MTU - 70); entries left
for peers that have no lease any more; the device's attributes (VNI, port, learning off, MTU =
underlay - 50, VTEP MAC, up, underlay); this node's lease, and vxlan-agent alive with its state
fresh (lease.agent_state: the rule ADD's code 11 uses).

What should be is computed by the vxlan plugin's own code (config.load, device.find_underlay and
device.want, peers.desired, lease.agent_state and is_fresh); what is, is asked of the kernel through
ctx.kernel() (netlink.py: pyroute2 in the doctor, plugins.pkg.rtnl inside vxlan's CHECK). Leases:
the file registry is read; with an etcd registry the agent's state files
under stateDir (agent.json, agent-peers.json): the doctor never talks to etcd.

Where: the vxlan device lives in the network namespace the plugin ran in (the host's). A network
is checked in the namespace that holds this node's lease's public IP, or its device (marked
`pycni-vxlan network=<name>`) with the lease's VTEP MAC; without a lease, its marked device or
`publicIP`. Elsewhere it is not that namespace's business (test hosts are namespaces of one
machine, each with a device of the same network). Only the --conf (or --conf-dir) networks are checked: without a vxlan
config the check is skipped (CONF_TYPE), since the registry and stateDir are in the config.
"""
from __future__ import annotations

import shlex
import socket

from libcni_py.errors import CNIError

from .finding import Finding, Fix

TYPE_CHECKING = False          # typing stays off the plugins' CHECK path
if TYPE_CHECKING:
    from typing import Any

    from .checkctx import PluginContext as Context

NAME = "overlay-drift"
PER_NAMESPACE = True
CONF_TYPE = "vxlan"
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 4
MAIN = 254
AGENT_FIX = "systemctl restart vxlan-agent"
WHY_PEER = ("pods on this node reach a peer's pods only through its three entries (ARP for the peer's "
            "subnet address, FDB for its VTEP MAC, the route): with one missing or wrong their packets "
            "are dropped or sent to the wrong node, silently")
WHY_STALE = ("an entry of a peer that has no lease any more: its subnet is handed to the next node that "
             "joins, and until then (or after, if the new node gets another VTEP MAC) traffic to it goes "
             "to a node that is gone")


def check(ctx: Context) -> list[Finding]:
    return [f for _, f in diagnose(ctx)]


def diagnose(ctx: Context) -> list[tuple[str, Finding]]:
    """(kind, finding): kind device, peer, lease, agent or registry (vxlan CHECK maps it to a code)."""
    out: list[tuple[str, Finding]] = []
    confs = [c for c in ctx.confs if c.get("type") == CONF_TYPE]
    if not confs:
        return out
    kernel = _Kernel(ctx)
    for conf in confs:
        try:
            out += _network(ctx, kernel, conf)
        except CNIError as e:
            ctx.error(f"vxlan network {conf.get('name')!r}: {e.msg}" + (f" ({e.details})" if e.details else ""))
    return out


class _Kernel:
    """The namespace's links (by name), addresses and main routes (IPv4 and IPv6), and a device's
    permanent ARP/NDP and FDB entries, from ctx.kernel()."""

    def __init__(self, ctx: Context):
        self.kernel = kernel = ctx.kernel()
        self.links: dict[str, dict[str, Any]] = {}
        self.names: dict[int, str] = {}
        for lk in kernel.links():
            self.links[lk.name] = {"index": lk.index, "kind": lk.kind, "alias": lk.alias, "mtu": lk.mtu,
                                   "mac": lk.mac, "up": lk.up, "vxlan": lk.vxlan}
            self.names[lk.index] = lk.name
        self.addrs: dict[int, set[Any]] = {}         # index -> IPv4Interface / IPv6Interface
        for family in (socket.AF_INET, socket.AF_INET6):
            for a in kernel.addrs(family):
                self.addrs.setdefault(a.index, set()).add(a.interface)
        self.local = {i.ip for s in self.addrs.values() for i in s}
        self._routes: dict[Any, list[dict[str, Any]]] | None = None

    @property
    def routes(self) -> dict[Any, list[dict[str, Any]]]:
        """Main-table routes, IPv4Network / IPv6Network -> routes (dumped when first asked)."""
        if self._routes is None:
            self._routes = {}
            for family in (socket.AF_INET, socket.AF_INET6):
                for r in self.kernel.routes(family):
                    if r.table != MAIN or not r.dst.prefixlen:
                        continue
                    self._routes.setdefault(r.dst, []).append({
                        "gateway": r.gateway, "oif": r.oif, "onlink": r.onlink, "proto": r.protocol,
                        "metric": r.metric})
        return self._routes

    def dev(self, index: int | None) -> str:
        return self.names.get(index or 0, str(index))

    def arp(self, index: int, version: int) -> dict[Any, str]:
        """Permanent ARP (4) or NDP (6) neighbours of a device (on our own device every permanent
        entry inside `network` is taken as ours, whatever its protocol)."""
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        return {n.dst: n.lladdr or "" for n in self.kernel.neighbours(family, index)
                if n.state & NUD_PERMANENT and n.dst is not None}

    def fdb(self, index: int) -> dict[str, set[Any]]:
        """Permanent FDB entries with a remote (NDA_DST) of a vxlan device: MAC -> remotes."""
        out: dict[str, set[Any]] = {}
        for n in self.kernel.neighbours(socket.AF_BRIDGE, index):
            if n.state & NUD_PERMANENT and n.dst is not None:
                out.setdefault(n.lladdr or "", set()).add(n.dst)
        return out


def _agent_doc(state_dir: str) -> dict | None:
    """agent.json as the agent last wrote it, fresh or not (None: none, or unreadable)."""
    from libcni_py import records
    from plugins.main.vxlan import lease
    try:
        doc = records.read(lease.agent_path(state_dir), max_bytes=64 << 10)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _network(ctx: Context, k: _Kernel, conf: dict) -> list[tuple[str, Finding]]:
    from plugins.main.vxlan import config, device, lease
    from plugins.main.vxlan.registry import open_registry
    n = config.load(conf, "CHECK")          # a config the plugin refuses: an error entry, not a finding
    nets = [net for net in (n.network, getattr(n, "network6", None)) if net is not None]
    names = [n.device_name] + ([n.device6_name] if getattr(n, "network6", None) is not None else [])
    devices = [k.links[d] for d in names if d in k.links and k.links[d]["kind"] == "vxlan"]
    if not devices and not any(not (ip.is_loopback or ip.is_link_local) and not any(ip in net for net in nets)
                               for ip in k.local):
        return []       # no device and no address a node's public IP can be (a pod's): the registry is not read
    p = ctx.ns.prefix()
    where = f"vxlan network {n.name}, node {n.node_name}"
    live, why_dead = lease.agent_state(n.state_dir)
    if live is not None and live.get("node") != n.node_name:
        why_dead = f"the agent state names node {live.get('node')!r}, not {n.node_name!r}"
        live = None
    last = _agent_doc(n.state_dir)
    snap, reg_error = None, None
    try:
        if n.registry_type == "etcd":
            source = f"the agent's state in {n.state_dir}"
            if last is not None and isinstance(last.get("lease"), dict):
                snap = lease.agent_snapshot(n.state_dir, last)
        else:
            source = f"registry {n.registry_path}"
            reg = open_registry(n.registry_type, n.registry_path, n.registry_ttl)
            try:
                snap = reg.snapshot()
            finally:
                reg.close()
    except CNIError as e:
        reg_error = e
    held = snap.leases.get(n.node_name) if snap is not None else None
    mine = held                 # to tell where the node is, the agent's last word will do
    if mine is None and last is not None and last.get("node") == n.node_name:
        try:
            mine = lease.agent_lease(last)
        except (CNIError, KeyError, TypeError, ValueError):
            mine = None
    mark = device.mark(n.name)

    def ours(link: dict | None) -> bool:
        return link is not None and link["kind"] == "vxlan" and (
            link["alias"] == mark or (not link["alias"] and mine is not None and link["mac"] == mine.vtep_mac))
    # this node's namespace: the one holding its lease's public IP, or its device with the lease's
    # MAC (test hosts are namespaces of one machine, each with a device of the same network)
    if mine is not None:
        publics = {mine.public_ip, getattr(mine, "public_ip6", None)} - {None}
        here = bool(publics & k.local) or any(ours(d) and d["mac"] == mine.vtep_mac for d in devices)
    else:
        publics = {n.public_ip, getattr(n, "public_ip6", None)} - {None}
        here = any(ours(d) for d in devices) or bool(publics & k.local)
    if not here:
        return []
    out: list[tuple[str, Finding]] = []

    def add(kind: str, severity: str, what: str, why: str, fixes: list[Fix]) -> None:
        out.append((kind, Finding(NAME, severity, ctx.ns.label, ctx.ns.path, f"{where}: {what}", why, fixes)))

    restart = [Fix("restart vxlan-agent on this node: it re-programs the device and every peer entry",
                   AGENT_FIX),
               Fix("or, without systemd, run it in this namespace with the network's conflist",
                   f"{p}vxlan-agent --conf CONFLIST")]
    # the agent: with etcd it is the only one keeping the node; with the file registry, when it ran
    if n.registry_type == "etcd" and live is None:
        add("agent", "error", f"vxlan-agent is not running or not writing its state: {why_dead}",
            "with an etcd registry only vxlan-agent holds the lease and programs the peers: nodes that join, "
            "move or leave are not followed, the lease expires, and ADD fails with code 11", restart)
    elif n.registry_type != "etcd" and last is not None and live is None:
        add("agent", "warning", f"vxlan-agent stopped: {why_dead}",
            "peers that join, move or leave are not programmed on this node until its next ADD",
            restart + [Fix("or, if the agent is retired on purpose, remove its state file",
                           f"rm {shlex.quote(lease.agent_path(n.state_dir))}")])
    if live is not None and live.get("registry") == "down":
        add("agent", "warning", "vxlan-agent cannot reach the registry (its state says registry down)",
            "the datapath is left as it was when the registry was lost: changes of other nodes are not "
            "followed, and the lease is not renewed", [Fix(
                "check the registry's endpoints and credentials in the config; vxlan-agent's log names the error",
                "journalctl -u vxlan-agent -n 50")])
    if reg_error is not None:
        add("registry", "error", f"{source} cannot be read: {reg_error.msg}" +
            (f" ({reg_error.details})" if reg_error.details else ""),
            "without the registry no peer is known: pods of other nodes are unreachable from here, and ADD "
            "fails", [Fix(_code_fix(reg_error.code))])
        return out
    if snap is None or held is None:
        add("lease", "error", f"this node holds no lease in {source}",
            "without a lease the node has no subnet and other nodes program no entries towards it: its pods "
            "are reachable from nowhere", restart)
        return out
    mine = held
    fresh, why = lease.is_fresh(mine, n.registry_ttl)
    if not fresh:
        add("lease", "error", f"the lease of subnet {mine.subnet or getattr(mine, 'subnet6', None)}: {why}",
            "when it expires the subnet is free for another node and every peer drops this node's entries",
            restart)
    # each family's device and peers (IPv6: vxlan-v6.<vni> over the IPv6 underlay)
    from plugins.main.vxlan import peers
    from plugins.pkg.rtnl import Rtnl      # the plugin's own underlay rule, on its raw netlink (no pyroute2)
    halves: list[tuple[int, Any, Any]] = []          # (version, device.Want, network)
    try:
        with Rtnl() as rt:
            underlay = device.find_underlay(rt, n) if n.network is not None else None
            if underlay is not None:
                halves.append((4, device.want(n, mine, underlay), n.network))
            if getattr(n, "network6", None) is not None:
                if getattr(mine, "subnet6", None) is None:
                    add("lease", "error", f"the lease has no IPv6 subnet though the config has ipv6Network "
                        f"{n.network6}", "no IPv6 peer programs entries towards this node", restart)
                else:
                    underlay6 = device.find_underlay6(rt, n, underlay)
                    halves.append((6, device.want6(n, mine, underlay6), n.network6))
    except CNIError as e:
        add("device", "error", f"no underlay: {e.msg}", "VXLAN packets have no way out of this node",
            [Fix(_code_fix(e.code))])
    for version, want, network in halves:
        link = k.links.get(want.name)
        if link is None or not ours(link):
            add("device", "error", f"device {want.name} " + (
                "missing" if link is None else f"is not this network's (a {link['kind'] or 'device'} link"
                f"{', marked ' + repr(link['alias']) if link['alias'] else ''})"),
                "without the vxlan device nothing reaches the other nodes' pods", restart)
            continue
        out += [(kind, f) for kind, f in _device(ctx, k, link, want, where, restart)]
        kw = {"family": 6} if version == 6 else {}
        wanted = peers.desired(snap.leases.values(), n.node_name, link["index"], want.underlay, n.direct_routing,
                               **kw)
        out += [("peer", f) for f in _peers(ctx, k, link["index"], want.name, network, wanted, where, version)]
    return out


def _code_fix(code: int) -> str:
    from plugins.main.vxlan import errors
    c = errors.CODES.table.get(code)
    return f"{c.fix} (vxlan code {code})" if c is not None else f"vxlan code {code}"


def _device(ctx: Context, k: _Kernel, link: dict, want, where: str, restart: list[Fix]
            ) -> list[tuple[str, Finding]]:
    p, dev = ctx.ns.prefix(), want.name
    out: list[tuple[str, Finding]] = []

    def add(what: str, why: str, fixes: list[Fix]) -> None:
        out.append(("device", Finding(NAME, "error", ctx.ns.label, ctx.ns.path, f"{where}: device {dev} {what}",
                                      why, fixes)))
    vx = link["vxlan"]
    recreate = [Fix("it cannot be changed in place: vxlan-agent (or the next ADD) deletes the device and "
                    "creates it again as the config says", AGENT_FIX)] + restart[1:]
    if vx.get("id") != want.vni:
        add(f"has VNI {vx.get('id')}, the config says {want.vni}",
            f"the other nodes send VNI {want.vni}: the kernel hands their packets to no device, both ways "
            "are dropped", recreate)
    if vx.get("port") != want.port:
        add(f"uses UDP port {vx.get('port')}, the config says {want.port}",
            f"the other nodes send to port {want.port}: nothing listens there, every packet is dropped", recreate)
    local = vx.get("local6") if want.underlay.local.version == 6 else vx.get("local")
    if vx.get("link") != want.underlay.index or str(local) != str(want.underlay.local):
        add(f"is bound to {k.dev(vx.get('link'))} {local}, the underlay is {want.underlay.name} "
            f"{want.underlay.local}", "VXLAN packets leave by the wrong device or source address: peers "
            "drop them or answer elsewhere", recreate)
    if vx.get("learning"):
        add("learns MAC addresses (learning on)",
            "with learning on, source MACs seen in packets overwrite the FDB the registry dictates: a "
            "spoofed or misrouted packet steers this node's traffic for that MAC to another host",
            [Fix("turn learning off", f"{p}ip link set dev {dev} type vxlan nolearning")])
    if link["mtu"] != want.mtu:
        over = want.underlay.mtu - want.mtu
        add(f"has MTU {link['mtu']}, want {want.mtu} (underlay {want.underlay.name} {want.underlay.mtu} - {over})",
            f"VXLAN adds {over} bytes: larger packets are dropped by the underlay (or fragmented), smaller ones "
            "waste the path; pods' large TCP segments and UDP datagrams go missing",
            [Fix("set the MTU", f"{p}ip link set dev {dev} mtu {want.mtu}")])
    if link["mac"] != want.mac:
        add(f"has MAC {link['mac']}, the lease says {want.mac}",
            "the other nodes' ARP entries for this node's subnet name the lease's MAC: frames sent to it are "
            "not for this device and dropped",
            [Fix("set the lease's MAC", f"{p}ip link set dev {dev} address {want.mac}")])
    if not link["up"]:
        add("is down", "a down device carries nothing: pods of the other nodes are unreachable",
            [Fix("bring it up", f"{p}ip link set dev {dev} up")])
    if want.address not in k.addrs.get(link["index"], set()):
        add(f"lacks its address {want.address}",
            "this node's own traffic to other nodes' pods leaves without a source address in the overlay: "
            "their replies do not come back", [Fix("add it", f"{p}ip addr add {want.address} dev {dev}")])
    return out


def _peers(ctx: Context, k: _Kernel, index: int, dev: str, network, wanted: list, where: str,
           version: int = 4) -> list[Finding]:
    from plugins.main.vxlan.peers import RTPROT
    p = ctx.ns.prefix()
    arp, fdb = k.arp(index, version), k.fdb(index)
    nd = "ARP" if version == 4 else "NDP"
    out: list[Finding] = []

    def add(severity: str, what: str, why: str, fixes: list[Fix]) -> None:
        out.append(Finding(NAME, severity, ctx.ns.label, ctx.ns.path, f"{where}: {what}", why, fixes))
    for peer in wanted:
        tag = f"peer {peer.node} ({peer.subnet})"
        if peer.mac:
            have = arp.get(peer.anchor)
            if have != peer.mac:
                add("error", f"{tag}: {nd} {peer.anchor} -> {peer.mac} on {dev} "
                    + ("missing" if have is None else f"is {have}"), WHY_PEER,
                    [Fix("put the entry back (permanent, with the plugin's protocol)",
                         f"{p}ip neigh replace {peer.anchor} lladdr {peer.mac} dev {dev} nud permanent "
                         f"proto {RTPROT}")])
            dsts = fdb.get(peer.mac, set())
            if peer.public_ip not in dsts:
                verb = "replace" if dsts else "append"
                add("error", f"{tag}: FDB {peer.mac} dst {peer.public_ip} on {dev} "
                    + ("missing" if not dsts else f"is dst {', '.join(sorted(map(str, dsts)))}"), WHY_PEER,
                    [Fix("put the entry back" if not dsts else "point it at the peer's public IP",
                         f"{p}bridge fdb {verb} {peer.mac} dev {dev} dst {peer.public_ip} self permanent")])
            extras = dsts - {peer.public_ip} if peer.public_ip in dsts else set()
            for extra in sorted(extras, key=lambda a: (a.version, a)):
                add("error", f"{tag}: FDB {peer.mac} on {dev} also sends to {extra}", WHY_PEER,
                    [Fix("remove the extra remote", f"{p}bridge fdb del {peer.mac} dev {dev} dst {extra} self")])
        r = peer.route
        routes = k.routes.get(peer.subnet, [])
        ok = any(x["gateway"] == r.gateway and x["oif"] == r.oif and x["onlink"] == r.onlink for x in routes)
        via = f"via {r.gateway} dev {k.dev(r.oif)}" + (" onlink" if r.onlink else "")
        if ok and not any(x["proto"] == RTPROT for x in routes):
            add("warning", f"{tag}: route {peer.subnet} {via} is not marked as the overlay's (protocol "
                f"{routes[0]['proto']}, not {RTPROT})",
                "traffic flows, but the plugin takes it for a route of someone else's in a lease's place: its "
                "next reconcile refuses to program this peer (code 108)",
                [Fix("replace it with the plugin's protocol", f"{p}ip route replace {peer.subnet} {via} "
                     f"proto {RTPROT}")])
        if not ok:
            now = "; ".join(f"via {x['gateway']} dev {k.dev(x['oif'])}" if x["gateway"] else f"dev {k.dev(x['oif'])}"
                            for x in routes)
            add("error", f"{tag}: route {peer.subnet} {via} " + (f"is {now}" if routes else "missing"), WHY_PEER,
                [Fix("put the route back (the plugin's protocol marks it as the overlay's)",
                     f"{p}ip route replace {peer.subnet} {via} proto {RTPROT}")])
    # entries for peers that have no lease (vanished nodes)
    subnets = {peer.subnet for peer in wanted}
    for dst, routes in sorted(k.routes.items(), key=lambda item: (item[0].version, item[0])):
        for x in routes:
            if x["proto"] == RTPROT and dst.version == version and dst.subnet_of(network) and dst not in subnets:
                add("warning", f"stale route {dst} via {x['gateway']} dev {k.dev(x['oif'])}: no node holds a lease "
                    "of it", WHY_STALE,
                    [Fix("remove it", f"{p}ip route del {dst} dev {k.dev(x['oif'])} proto {RTPROT}")])
    anchors = {peer.anchor for peer in wanted if peer.mac}
    for ip, mac in sorted(arp.items()):
        if ip in network and ip not in anchors:
            add("warning", f"stale {nd} {ip} -> {mac} on {dev}: no node holds a lease of it", WHY_STALE,
                [Fix("remove it", f"{p}ip neigh del {ip} dev {dev}")])
    macs = {peer.mac for peer in wanted if peer.mac}
    for mac, dsts in sorted(fdb.items()):
        if mac in macs:
            continue
        for d in sorted(dsts, key=lambda a: (a.version, a)):
            add("warning", f"stale FDB {mac} dst {d} on {dev}: no lease has VTEP MAC {mac}", WHY_STALE,
                [Fix("remove it", f"{p}bridge fdb del {mac} dev {dev} dst {d} self")])
    return out
