"""vxlan: a pod on a bridge behind a flannel-style VXLAN overlay.

ADD    ensure the node (lease, device, peers: one reconcile) -> IPAM -> bridge + veth -> masq
CHECK  the node's device and peer entries, IPAM, the pod's interface, addresses, routes, masq
DEL    masq rules, veth, IPAM allocation; idempotent, fine when the netns is gone
GC     the same for every attachment of this network the runtime no longer lists
STATUS the registry can be read (code 50 otherwise)
A failed ADD undoes what it did, in reverse.
"""
from __future__ import annotations

import contextlib

from libcni_py.errors import CNIError, INVALID_CONFIG, IO_FAILURE
from libcni_py.skel import CmdArgs, Plugin, plugin_main
from libcni_py.types import Interface, Result
from plugins.pkg.log import get_logger
from plugins.pkg.names import check_ifname, host_veth
from plugins.pkg.schema import validator

from . import ipam, masq, overlay, pod

log = get_logger("pycni.vxlan")


def cmd_add(args: CmdArgs) -> Result:
    conf, cid, ifname = args.conf, args.container_id, check_ifname(args.ifname, "CNI_IFNAME")
    cfg = overlay.node_config(conf)
    ipam.find_plugin(_ipam_type(conf), args.path)           # fail before creating anything
    node = overlay.ensure_node(cfg)
    net = _pod_net(conf, node)
    veth = host_veth(cid, ifname)
    ipam_conf = ipam.ipam_config(conf, cfg.state_dir, node.subnet, node.gateway, node.network)
    with pod_links() as ipr, contextlib.ExitStack() as undo:      # undo runs while ipr is open
        ipam.write_record(cfg.state_dir, veth, {"containerID": cid, "ifname": ifname,
                                                "netns": args.netns, "ipam": ipam_conf})
        undo.callback(_quietly, ipam.remove_record, cfg.state_dir, veth)
        allocated = ipam.add(conf, ipam_conf)
        undo.callback(_quietly, ipam.delete, conf, ipam_conf)
        ips = pod.pod_ips(net, allocated.ips)
        routes = pod.pod_routes(net, allocated.routes)
        br = pod.ensure_bridge(ipr, net)
        undo.callback(_quietly, pod.detach, ipr, veth)
        host_if, pod_if = pod.attach(ipr, net, br, pod.Attachment(args.netns, ifname, veth, ips, routes))
        if conf.get("ipMasq"):
            undo.callback(_quietly, masq.teardown, args.network, cid, ifname)
            masq.setup(args.network, cid, ifname, [ip.address.split("/")[0] for ip in ips], node.network)
        undo.pop_all()
    return Result(cni_version=args.cni_version, interfaces=[Interface(br.name, br.mac), host_if, pod_if],
                  ips=ips, routes=routes, dns=allocated.dns)


def cmd_check(args: CmdArgs) -> None:
    conf, cid, ifname = args.conf, args.container_id, check_ifname(args.ifname, "CNI_IFNAME")
    prev = args.prev_result
    if prev is None:
        raise CNIError(INVALID_CONFIG, "CHECK: required prevResult missing")
    cfg = overlay.node_config(conf)
    node = overlay.check_node(cfg)
    net = _pod_net(conf, node)
    veth = host_veth(cid, ifname)
    rec = ipam.read_record(cfg.state_dir, veth)
    ipam.check(conf, rec["ipam"] if rec else ipam.ipam_config(conf, cfg.state_dir, node.subnet,
                                                               node.gateway, node.network))
    ips = [ip for ip in prev.ips if ip.interface is not None and ip.interface < len(prev.interfaces)
           and prev.interfaces[ip.interface].name == ifname]
    with pod_links() as ipr:
        pod.check(ipr, net, pod.Attachment(args.netns, ifname, veth, ips, prev.routes))
    if conf.get("ipMasq"):
        installed = masq.present(args.network, cid, ifname)
        for ip in ips:
            src = ip.address.split("/")[0] + "/32"
            if src not in installed:
                raise CNIError(pod.POD_DRIFT, f"CHECK: ipMasq rule for {src} missing in nat POSTROUTING")


def cmd_del(args: CmdArgs) -> None:
    conf, cid, ifname = args.conf, args.container_id, args.ifname
    cfg = overlay.node_config(conf)
    try:
        check_ifname(ifname, "CNI_IFNAME")
    except CNIError:
        log.info("DEL %s/%r: an ADD refuses this ifname, so nothing of it exists", cid, ifname)
        return
    veth = host_veth(cid, ifname)
    if conf.get("ipMasq"):
        masq.teardown(args.network, cid, ifname)
    with pod_links() as ipr:
        pod.detach(ipr, veth)
    _release(conf, cfg, veth)


def cmd_gc(args: CmdArgs) -> None:
    conf, cfg = args.conf, overlay.node_config(args.conf)
    valid = {(a.get("containerID"), a.get("ifname")) for a in args.valid_attachments}
    errors = []
    with pod_links() as ipr:
        for rec in ipam.records(cfg.state_dir):
            cid, ifname = rec["containerID"], rec["ifname"]
            if (cid, ifname) in valid:
                continue
            log.info("GC: releasing stale attachment %s/%s", cid, ifname)
            try:
                veth = host_veth(cid, ifname)
                pod.detach(ipr, veth)
                _release(conf, cfg, veth, cid, ifname)
            except (CNIError, OSError) as e:
                errors.append(f"{cid}/{ifname}: {e}")
    masq.gc(args.network, valid)
    ipam.gc(conf, _fallback_ipam(conf, cfg), args.valid_attachments)
    if errors:
        raise CNIError(IO_FAILURE, "GC: some stale attachments could not be released", "; ".join(errors))


def cmd_status(args: CmdArgs) -> None:
    overlay.registry_status(overlay.node_config(args.conf))


# ---- helpers ----

def pod_links():
    """The netlink socket of the host namespace for the whole command."""
    from plugins.pkg.link import open_rtnl
    return open_rtnl()


def _pod_net(conf: dict, node) -> pod.PodNet:
    return pod.PodNet(bridge=check_ifname(conf.get("bridge", "cni0"), "bridge"), subnet=str(node.subnet),
                      gateway=str(node.gateway), network=str(node.network), mtu=int(node.mtu),
                      hairpin=bool(conf.get("hairpinMode", False)),
                      default_route=bool(conf.get("isDefaultGateway", True)))


def _ipam_type(conf: dict) -> str:
    return (conf.get("ipam") or {}).get("type", "host-local")


def _release(conf: dict, cfg, veth: str, cid: str = "", ifname: str = "") -> None:
    """IPAM DEL with the config recorded at ADD (or one that releases by ID), then the record."""
    rec = ipam.read_record(cfg.state_dir, veth)
    ipam.delete(conf, rec["ipam"] if rec else _fallback_ipam(conf, cfg), cid, ifname)
    ipam.remove_record(cfg.state_dir, veth)


def _fallback_ipam(conf: dict, cfg) -> dict:
    """Without a record the node's subnet may be unknown; host-local releases by ID over any range."""
    return ipam.ipam_config(conf, cfg.state_dir, cfg.network, "", cfg.network)


def _quietly(fn, *a) -> None:
    try:
        fn(*a)
    except Exception as e:  # noqa: BLE001 - undo is best effort; the ADD error is what we report
        log.warning("undo %s failed: %s", getattr(fn, "__name__", fn), e)


PLUGIN = Plugin(add=cmd_add, check=cmd_check, delete=cmd_del, gc=cmd_gc, status=cmd_status,
                about="vxlan: pods on a bridge behind a flannel-style VXLAN overlay",
                validate=validator("vxlan"))


def main():
    plugin_main(PLUGIN)


if __name__ == "__main__":
    main()
