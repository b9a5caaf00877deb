"""vxlan: a pod on a bridge behind a flannel-style VXLAN overlay.

ADD    ensure the node (lease, device, peers: one reconcile) -> IPAM -> bridge + veth -> masq
CHECK  pycni-doctor's policy-route-steals-replies, overlay-drift, rp-filter-forwarding (imported in
       CHECK only), the node's device and peer entries, IPAM, the pod's interface, addresses, routes, masq
DEL    masq rules (none looked for when the attachment record says ADD wrote none), veth, IPAM
       allocation; idempotent, fine when the netns is gone
GC     the same for every attachment of this network the runtime no longer lists
STATUS the registry can be read (code 50 otherwise)
A failed ADD undoes what it did, in reverse.
"""
from __future__ import annotations

import contextlib
import errno
import os

from libcni_py.errors import CNIError, INVALID_CONFIG, INVALID_ENV, IO_FAILURE
from libcni_py.skel import CmdArgs, Plugin, plugin_main
from libcni_py.types import DNS, Interface, Result
from plugins.pkg.log import get_logger
from plugins.pkg.names import check_ifname, host_veth
from plugins.pkg import schema

from . import config, errors, ipam, masq, overlay, pod
from .errors import POD_DRIFT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .config import NetConf
    from .overlay import NodeInfo

log = get_logger("pycni.vxlan")

# The keys each verb's work reads (pkg/schema: outside ADD, any other key with a value the schema
# refuses is dropped instead of failing the command). DEL and GC need only where the state is.
_NODE_KEYS = ("network", "subnetLen", "vni", "port", "registry", "publicIP", "iface", "directRouting",
              "stateDir", "nodeName", "deviceName", "ipv6Network", "ipv6SubnetLen", "publicIPv6", "ipv6Iface",
              "ipv6DeviceName")
CLEANUP = {
    "DEL": ("stateDir",),
    "GC": ("stateDir",),
    "CHECK": (*_NODE_KEYS, "bridge", "isDefaultGateway", "hairpinMode", "ipMasq", "ipam"),
    "STATUS": (*_NODE_KEYS, "bridge"),
}


def validate_conf(conf: dict, command: str) -> None:
    """The skel's validate hook: schema vxlan, with the cleanup keys of `command`."""
    schema.validate(conf, "vxlan", command, CLEANUP.get(command, ()))


def run_as_own_ipam(command: str) -> bool:
    """A vxlan run as the IPAM plugin of a vxlan (ipam.type a wrapper, copy or link of it that the
    config check cannot see): ADD and CHECK are refused with 7 (each level would delegate once more);
    DEL, GC and STATUS succeed doing nothing (that ADD allocated nothing). True when so."""
    parent = os.environ.get(ipam.DELEGATED_MARK)
    if not parent:
        return False
    if command in ("ADD", "CHECK"):
        raise CNIError(INVALID_CONFIG, "invalid config field 'ipam.type': vxlan was run as the IPAM plugin of "
                       f"a vxlan ({parent}): ipam.type runs vxlan again",
                       "use an IPAM plugin (host-local, static, dhcp), or omit ipam for host-local")
    log.info("%s: run as the IPAM plugin of a vxlan (%s): nothing to do", command, parent)
    return True


def cmd_add(args: CmdArgs) -> Result:
    cid, ifname = args.container_id, check_ifname(args.ifname, "CNI_IFNAME")
    run_as_own_ipam("ADD")
    n = config.load(args.conf, "ADD", args.args)
    ipam.find_plugin(n.ipam_type, args.path)           # fail before creating anything
    _refuse_host_netns(args.netns)
    veth = host_veth(cid, ifname)
    claimed: dict = {}
    # Undo (in reverse) only what this ADD made: each step registers its undo once it has made
    # something; an attachment that already exists is refused before anything is touched.
    with pod_links() as ipr, contextlib.ExitStack() as undo:      # undo runs while ipr is open

        def claim(rt, node: NodeInfo) -> None:
            """Under the node lock: refuse an attachment that exists, record ours (leave sees it)."""
            _refuse_existing(rt, n, cid, ifname, veth)
            claimed["ipam"] = _ipam_conf(n, node)
            ipam.write_record(n.state_dir, veth, {"containerID": cid, "ifname": ifname, "netns": args.netns,
                                                  "ipam": claimed["ipam"], "ipMasq": n.ip_masq})
            undo.callback(_quietly, ipam.remove_record, n.state_dir, veth)
        node = overlay.ensure_node(n, hold=claim)
        net = _pod_net(n, node)
        ipam_conf = claimed["ipam"]
        allocated = ipam.add(n.raw, ipam_conf)
        undo.callback(_quietly, ipam.delete, n.raw, ipam_conf)
        ips = pod.pod_ips(net, allocated.ips)
        routes = pod.pod_routes(net, allocated.routes)
        br = pod.ensure_bridge(ipr, net, node.bridge)
        att = pod.Attachment(args.netns, ifname, veth, ips, routes)
        try:
            host_if, pod_if = pod.attach(ipr, net, br, att, pod_mac=n.mac,
                                         undo=lambda: undo.callback(_quietly, pod.detach, ipr, veth))
        except OSError as e:
            now = ipr.link(br.name) if e.errno in (errno.EINVAL, errno.ENODEV) else br
            if (now is not None and now.index == br.index) or ipr.link(veth) is not None:
                raise                    # not the veth's creation that failed: nothing to make again
            # the bridge went between ensure_bridge and the veth's creation, which the kernel then
            # refused whole (EINVAL: a master ifindex that is gone): made and addressed again, once
            br = pod.ensure_bridge(ipr, net)
            host_if, pod_if = pod.attach(ipr, net, br, att, pod_mac=n.mac,
                                         undo=lambda: undo.callback(_quietly, pod.detach, ipr, veth))
        if n.ip_masq:
            for family, cluster in _families(node):
                undo.callback(_quietly, masq.teardown, n.name, cid, ifname, family)
                masq.setup(n.name, cid, ifname, _addresses(ips, family), cluster, family)
        undo.pop_all()
    dns = DNS.decode(n.dns) if n.dns else allocated.dns      # Go's bridge: config DNS, when set, wins
    return Result(cni_version=args.cni_version, interfaces=[Interface(br.name, br.mac), host_if, pod_if],
                  ips=ips, routes=routes, dns=dns)


def _refuse_host_netns(netns: str) -> None:
    """CNI_NETNS naming the namespace the plugin runs in (the host's: /proc/self/ns/net, the netns of
    a host process, a bind mount of it) would put the pod's address and default route on the host."""
    from plugins.pkg import ns
    if ns.is_current(netns):
        raise CNIError(INVALID_ENV, f"CNI_NETNS {netns!r} is the host's network namespace (the one the "
                       "plugin runs in), not a pod's", "pass the pod sandbox's network namespace")


def _refuse_existing(rt, n: NetConf, cid: str, ifname: str, veth: str) -> None:
    """An ADD of an attachment that exists (its record, or its host veth) is refused with 114 before
    anything is made: its rollback would otherwise undo the live attachment's record, allocation,
    veth and masquerade rules."""
    if os.path.lexists(ipam.record_path(n.state_dir, veth)):
        what = f"record {ipam.record_path(n.state_dir, veth)}"
    elif rt.link(veth) is not None:
        what = f"host veth {veth}"
    else:
        return
    raise CNIError(errors.VETH_EXISTS, f"attachment {cid}/{ifname} already exists ({what}): refused, the "
                   "existing one is left as it is", errors.VETH_EXISTS.fix)


def cmd_check(args: CmdArgs) -> None:
    cid, ifname = args.container_id, check_ifname(args.ifname, "CNI_IFNAME")
    prev = args.prev_result
    if prev is None:
        raise CNIError(INVALID_CONFIG, "CHECK: required prevResult missing")
    run_as_own_ipam("CHECK")
    n = config.load(args.conf, "CHECK")
    _diagnose(n)
    node = overlay.check_node(n)
    net = _pod_net(n, node)
    veth = host_veth(cid, ifname)
    rec = ipam.read_record(n.state_dir, veth)
    ipam.check(n.raw, rec["ipam"] if rec else _ipam_conf(n, node))
    ips = [ip for ip in prev.ips if ip.interface is not None and ip.interface < len(prev.interfaces)
           and prev.interfaces[ip.interface].name == ifname]
    with pod_links() as ipr:
        pod.check(ipr, net, pod.Attachment(args.netns, ifname, veth, ips, prev.routes))
    if n.ip_masq:
        for family, _ in _families(node):
            installed = masq.present(n.name, cid, ifname, family)
            for src in _addresses(ips, family, host=True):
                if src not in installed:
                    raise CNIError(POD_DRIFT, f"CHECK: ipMasq rule for {src} missing in "
                                   f"{'ip6tables ' if family == 6 else ''}nat POSTROUTING")


def _diagnose(n: NetConf) -> None:
    """pycni-doctor's policy-route-steals-replies, overlay-drift and rp-filter-forwarding for this
    network, in this (the host's) namespace; imported here only, so no other verb loads the doctor
    (which reads the kernel through plugins.pkg.rtnl here: no pyroute2). The first finding of
    severity error is CHECK's error, with its why and fix: the overlay's device 109, peer entries
    110, lease 111, registry 100, a dead agent (etcd) 11; a policy route or sysctl dropping traffic
    of this network's bridge or device 116. Warnings are logged."""
    from libcni_py.errors import TRY_AGAIN_LATER
    from plugins.doctor import checkctx, overlay as drift, policy_routing, sysctl
    found, failed = checkctx.diagnoses_in(None, [policy_routing, drift, sysctl], confs=[n.raw])
    for text in failed:
        log.warning("CHECK: pycni-doctor could not finish %s", text)
    codes = {"device": errors.DEVICE_DRIFT, "peer": errors.PEER_DRIFT, "lease": errors.LEASE_LOST,
             "registry": errors.REGISTRY_UNREADABLE, "agent": TRY_AGAIN_LATER}
    ours = checkctx.naming(n.bridge, n.device_name)
    for kind, f in found:
        if f.check != drift.NAME and not ours(f):
            continue                    # another network's bridge or device
        if f.severity != "error":
            log.warning("CHECK: %s (pycni-doctor %s): %s", f.what, f.check, f.why)
            continue
        raise CNIError(codes.get(kind, POD_DRIFT), *checkctx.cni_error(f))


def cmd_del(args: CmdArgs) -> None:
    """Remove whatever this attachment left (masq rules, veth, allocation, record), found by network,
    container ID and ifname; fail only when something found could not be removed."""
    cid, ifname = args.container_id, args.ifname
    if run_as_own_ipam("DEL"):
        return
    n = config.load(args.conf, "DEL")
    try:
        check_ifname(ifname, "CNI_IFNAME")
    except CNIError:
        log.info("DEL %s/%r: an ADD refuses this ifname, so nothing of it exists", cid, ifname)
        return
    veth = host_veth(cid, ifname)
    rec = ipam.read_record(n.state_dir, veth)
    if rec is None or rec.get("ipMasq") is not False:
        _masq_teardown(n, cid, ifname)  # ADD may have written masq rules (no record, or one from before the key)
    with pod_links() as ipr:
        pod.detach(ipr, veth)
    _release(n, veth, rec=rec)
    ipam.clean_stale(n.state_dir)      # an ADD killed while writing a record left its temp file


def cmd_gc(args: CmdArgs) -> None:
    if run_as_own_ipam("GC"):
        return
    n = config.load(args.conf, "GC")
    valid = {(a["containerID"], a["ifname"]) for a in args.valid_attachments}
    failed = []
    with pod_links() as ipr:
        for rec in ipam.records(n.state_dir):
            cid, ifname = rec["containerID"], rec["ifname"]
            if (cid, ifname) in valid:
                continue
            log.info("GC: releasing stale attachment %s/%s", cid, ifname)
            try:
                veth = host_veth(cid, ifname)
                pod.detach(ipr, veth)
                _release(n, veth, cid, ifname)
            except (CNIError, OSError) as e:
                failed.append(f"{cid}/{ifname}: {e}")
    for family in _masq_families(n):
        masq.gc(n.name, valid, family)
    ipam.clean_stale(n.state_dir)
    if not n.ipam_self:
        ipam.gc(n.raw, _fallback_ipam(n), args.valid_attachments)
    if failed:
        raise CNIError(IO_FAILURE, "GC: some stale attachments could not be released", "; ".join(failed))


def cmd_status(args: CmdArgs) -> None:
    """Can this node serve a new pod? Registry readable, lease held and fresh, device present,
    bridge not stuck on an old subnet; code 50 naming the first reason otherwise."""
    overlay.node_status(config.load(args.conf, "STATUS"))


# ---- helpers ----

def pod_links():
    """The netlink socket of the host namespace for the whole command."""
    from plugins.pkg.link import open_rtnl
    return open_rtnl()


def _pod_net(n: NetConf, node: NodeInfo) -> pod.PodNet:
    def text(x) -> str:
        return "" if x is None else str(x)
    return pod.PodNet(bridge=n.bridge, subnet=text(node.subnet), gateway=text(node.gateway),
                      network=text(node.network), mtu=int(node.mtu), hairpin=n.hairpin,
                      default_route=n.is_default_gateway, subnet6=text(node.subnet6),
                      gateway6=text(node.gateway6), network6=text(node.network6))


def _ipam_conf(n: NetConf, node: NodeInfo) -> dict:
    return ipam.ipam_config(n.ipam, n.state_dir, node.subnet, node.gateway, node.network,
                            node.subnet6, node.gateway6, node.network6)


def _families(node: NodeInfo) -> list[tuple[int, str]]:
    """(family, cluster network) of each family the node serves."""
    return [(f, str(net)) for f, net in ((4, node.network), (6, node.network6)) if net is not None]


def _addresses(ips, family: int, host: bool = False) -> list[str]:
    """The pod addresses of `family` (host: as /32 or /128 masq sources)."""
    import ipaddress
    out = [ipaddress.ip_interface(ip.address).ip for ip in ips]
    return [f"{a}/{a.max_prefixlen}" if host else str(a) for a in out if a.version == family]


def _masq_families(n: NetConf) -> tuple[int, ...]:
    """The families whose masq rules DEL and GC look for: IPv6 too when the config names ipv6Network
    (DEL is lenient: a value that does not parse still counts)."""
    return (4, 6) if n.network6 is not None or n.raw.get("ipv6Network") else (4,)


def _masq_teardown(n: NetConf, cid: str, ifname: str) -> None:
    """Our rules of this attachment, whatever ipMasq says now (it may have been true at ADD). With
    ipMasq off a host without iptables has none of ours: nothing to do."""
    for family in _masq_families(n):
        try:
            masq.teardown(n.name, cid, ifname, family)
        except FileNotFoundError:
            if n.ip_masq:
                raise


_UNREAD: dict = {}


def _release(n: NetConf, veth: str, cid: str = "", ifname: str = "", rec: dict | None = _UNREAD) -> None:
    """IPAM DEL with the config recorded at ADD (or one that releases by ID), then the record.
    Without a record (written before IPAM ADD) and without the IPAM plugin there is nothing of ours
    to release. `rec`: the record as the caller read it (DEL), else read here."""
    if rec is _UNREAD:
        rec = ipam.read_record(n.state_dir, veth)
    conf_ipam = rec["ipam"] if rec and isinstance(rec.get("ipam"), dict) else _fallback_ipam(n)
    if config.self_delegation(conf_ipam.get("type"), os.environ.get("CNI_PATH", "")):
        log.info("DEL: ipam.type %r would run us again; ADD refuses it, so it allocated nothing",
                 conf_ipam.get("type"))
        ipam.remove_record(n.state_dir, veth)
        return
    if rec is None:
        try:
            ipam.find_plugin(n.ipam_type, os.environ.get("CNI_PATH", ""))
        except CNIError as e:
            log.info("DEL: no attachment record and IPAM plugin unusable (%s): nothing to release", e.msg)
            return
        if not os.path.lexists(ipam.record_path(n.state_dir, veth)):
            # No record: ADD never reached IPAM (it records first, under the node lock). Asking
            # IPAM anyway releases by ID what a lost stateDir may have left; its failure (e.g. a
            # delegation ring cut at PYCNI_DELEGATION_DEPTH) is no allocation of ours left behind.
            try:
                ipam.delete(n.raw, conf_ipam, cid, ifname)
            except CNIError as e:
                log.warning("DEL: no attachment record; IPAM DEL failed (%s): nothing of ours to release",
                            e.msg)
            return
    ipam.delete(n.raw, conf_ipam, cid, ifname)
    ipam.remove_record(n.state_dir, veth)


def _fallback_ipam(n: NetConf) -> dict:
    """Without a record the node's subnet may be unknown; host-local releases by ID over any range."""
    network = str(n.network or "0.0.0.0/0")
    return ipam.ipam_config(n.ipam, n.state_dir, network, "", network)


def _quietly(fn, *a) -> None:
    try:
        fn(*a)
    except Exception as e:  # noqa: BLE001 - undo is best effort; the ADD error is what we report
        log.warning("undo %s failed: %s", getattr(fn, "__name__", fn), e)


PLUGIN = Plugin(add=cmd_add, check=cmd_check, delete=cmd_del, gc=cmd_gc, status=cmd_status,
                about="vxlan: pods on a bridge behind a flannel-style VXLAN overlay",
                validate=validate_conf, translate=errors.translate)


def main():
    plugin_main(PLUGIN)


if __name__ == "__main__":
    main()
