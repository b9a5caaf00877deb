"""edgemesh: a chained plugin that hijacks pods' service traffic to the node's mesh proxy.

ADD adds the pod's rules (and, for the first pod, the chains and root jumps) in one
transaction per family (IPv4: iptables or table ip edgemesh; IPv6: ip6tables or table ip6
edgemesh) under a lock and passes prevResult through unchanged; DEL removes them, and the
last pod's DEL of a family removes everything we own there. `edgemesh sync --config FILE`
re-reads the ignored services (see sync.py).
"""
from __future__ import annotations

import ipaddress
import sys

from libcni_py.errors import PLUGIN_NOT_AVAILABLE, CNIError
from libcni_py.skel import CmdArgs, Plugin, plugin_main
from plugins.pkg.lock import locked
from plugins.pkg.log import get_logger
from plugins.pkg.schema import validator

from . import backends, config, conflict, errors, kernel, listen
from . import rules as R
from .errors import LISTEN_FAILED, NO_POD_ADDRESS, RULES_DIFFER

log = get_logger("pycni.edgemesh")
# What DEL, GC and STATUS read from the config: the lock and the records are in stateDir. Any
# other key with a bad value is dropped there (backend falls back to auto, which finds our rules).
CLEANUP_KEYS = ("stateDir",)


def cmd_add(args: CmdArgs):
    conf, shared, pods = desired(args, "ADD")
    with locked(conf.lock_path):
        created = listen.ensure(*(conf.listen(f) for f in pods)) if conf.ensure_listen_device else False
        applied: list = []
        try:
            backend = backends.for_add(conf.backend)
            views = {f: backends.family_view(backend, f) for f in pods}
            current = {f: b.read() for f, b in views.items()}
            for f, b in views.items():                # every family checked before any is written
                conflict.check(conf, b, current[f], shared[f])
            for f, b in views.items():
                backends.converge(b, current[f], shared=shared[f], pods=pods[f])
                applied.append(b)
            conflict.record(conf, backend)
        except BaseException:
            undo(applied, next(iter(pods.values()))[0].comment)
            if created:
                listen.remove_if_ours()
            raise
    return args.prev_result      # the previous plugin's result, in the config's cniVersion (skel encodes it)


def cmd_check(args: CmdArgs):
    conf, shared, pods = desired(args, "CHECK")
    with locked(conf.lock_path):
        for family in pods:                           # every family the pod is hijacked in
            check_family(conf, family, shared[family], pods[family])
    for family in pods:
        addr = conf.listen(family)
        if conf.ensure_listen_device and not listen.address_is_local(addr):
            raise CNIError(LISTEN_FAILED, f"listen address {addr} is not on this node")
    doctor_check(conf)


def doctor_check(conf: config.NetConf) -> None:
    """pycni-doctor's edgemesh-hijack in the node's netns (where the DNATs are; the listeners read
    from /proc, no pyroute2), failing with the finding's text: a DNAT (either family) to a listen
    address nothing listens on is 151, the pod's service traffic going nowhere (checkProxy false:
    a warning, for a node whose proxy starts after its pods), iptables-legacy and iptables-nft
    both holding rules with edgemesh's among them 152.
    kernel-hazards is refuse_known_bad_kernel's table, checked above (140). Imported here only."""
    from plugins.doctor import checkctx, edgemesh_hijack
    found, failed = checkctx.run_in(None, [edgemesh_hijack], listening=checkctx.listening_proc)
    for text in failed:
        log.warning("CHECK: edgemesh-hijack could not finish: %s", text)
    for f in found:
        no_proxy = f.why == edgemesh_hijack.WHY_DNAT
        if f.severity != "error" or (no_proxy and not conf.check_proxy):
            log.warning("CHECK: %s", checkctx.text(f))
            continue
        raise CNIError(errors.NO_LISTENER if no_proxy else errors.TWO_BACKENDS,
                       f"edgemesh CHECK {checkctx.text(f)}", f.why)


def check_family(conf: config.NetConf, family: str, shared: dict[str, list[R.Item]],
                 pods: list[R.PodMatch]) -> None:
    """CHECK of one family's rules: CNIError(145) listing what differs."""
    found = backends.holding_rules_read(conf.backend, (family,))
    where = "" if family == "4" else "IPv6 "
    if not found:
        raise CNIError(RULES_DIFFER, f"no {where}edgemesh rules found on this node")
    holders = [b for b, _ in found]
    current = found[0][1] if found[0][1] is not None else holders[0].read()
    conflict.check(conf, holders[0], current, shared)
    plan = R.plan(current, holders[0].render, shared=shared, pods=pods)
    if not plan.empty():
        name = holders[0].name if family == "4" else holders[0].label
        raise CNIError(RULES_DIFFER, f"edgemesh rules ({name}) differ from the config",
                       R.describe(plan, holders[0].render)[:2000])


def undo(applied: list, comment: str) -> None:
    """A failed ADD: take this pod's rules out of the families already written (the last pod's
    out of a family tears it down), so nothing is left; a failure here is logged, the ADD's
    own error is the one reported."""
    for b in applied:
        try:
            backends.converge(b, shared=None, drop=lambda c: c == comment, teardown_when_empty=True)
        except Exception as e:  # noqa: BLE001 - the original error goes up, this one is logged
            log.warning("edgemesh: undoing the %s rules of a failed ADD failed: %s", b.label, e)


def cmd_del(args: CmdArgs):
    """Remove this attachment's rules wherever they are (no prevResult, netns or full config
    needed); the last pod's DEL removes the chains, the jumps, our edgemesh0 and the record."""
    conf = config.load(args.conf, "DEL")
    try:
        comment = config.pod_comment(args.network, args.container_id)
    except CNIError:
        return None                          # ADD refused it: nothing to remove
    remove_pods(conf, lambda c: c == comment)


def cmd_gc(args: CmdArgs):
    conf = config.load(args.conf, "GC")
    valid = {a.get("containerID") for a in args.valid_attachments}

    def stale(comment: str) -> bool:
        net, cid = config.parse_pod_comment(comment) or ("", "")
        return net == conf.network and cid not in valid
    remove_pods(conf, stale)


def cmd_status(args: CmdArgs):
    """Can a new pod be served? The kernel is not known bad (or allowKnownBadKernel), the backend's
    tools are there and work in this netns, and no other network applied a conflicting config.
    Code 50 with the reason otherwise."""
    conf = config.load(args.conf, "STATUS")
    try:
        refuse_known_bad_kernel(conf)
        backend = backends.for_add(conf.backend)
        ignored = conf.all_ignored() if conf.families else ()
        for family in conf.families or ("4",):    # no family: serviceCIDR dropped as invalid outside ADD
            view = backends.family_view(backend, family)
            current = view.read()
            if conf.families:
                conflict.check(conf, view, current, R.shared_items(conf, ignored, family))
    except Exception as e:  # noqa: BLE001 - every reason becomes the answer "not available"
        err = e if isinstance(e, CNIError) else errors.translate(e)
        if err is None:
            raise                            # our bug: a 999
        raise CNIError(PLUGIN_NOT_AVAILABLE, f"edgemesh cannot serve a new pod: {err.msg}",
                       f"(code {err.code}) {err.details}".strip()) from None


def desired(args: CmdArgs, command: str) -> tuple[config.NetConf, dict[str, dict[str, list[R.Item]]],
                                                  dict[str, list[R.PodMatch]]]:
    """What ADD installs and CHECK expects: the config, and per family the pod is hijacked in
    ("4", "6": a service CIDR and a pod address of it) the node-wide rules and this pod's rules."""
    conf = config.load(args.conf, command)
    refuse_known_bad_kernel(conf)
    pods = pod_rules(args, conf)
    ignored = conf.all_ignored()
    return conf, {f: R.shared_items(conf, ignored, f) for f in pods}, pods


def remove_pods(conf: config.NetConf, drop) -> None:
    """Drop the selected pods' rules; with none left, remove chains, jumps and our device; with
    none of this network left, its record. A backend that can (remove_quick: nf_tables over
    netlink) finds and deletes them without an exec; otherwise it is read and planned as always.

    Our (marked) edgemesh0 goes whenever no edgemesh rule is left on the node, also when this
    call tore nothing down: an ADD killed after creating the device and before its rules were
    applied leaves only the device, and its DEL or a GC must remove it."""
    with locked(conf.lock_path):
        torn, left = [], set()
        found = backends.holding_rules_read(conf.backend)
        held = [b for b, _ in found]
        for b, current in found:
            quick = b.remove_quick(drop) if current is None else None   # current: read already (legacy)
            if quick is not None:
                torn.append(quick[0])
                left |= quick[1]
                continue
            if current is None:
                current = b.read()
            left |= conflict.networks_in(current, drop)
            torn.append(backends.converge(b, current, shared=None, drop=drop, teardown_when_empty=True).teardown)
        if all(torn) and listen.present() and not backends.rules_left(conf.backend, held):
            listen.remove_if_ours()
        if conf.network not in left:
            conflict.forget(conf)


def refuse_known_bad_kernel(conf: config.NetConf) -> None:
    """ADD and CHECK: a known-bad kernel is an error unless allowKnownBadKernel (then a warning)."""
    release = conf.kernel_release or kernel.running_release()
    bad = kernel.error_for(release)
    if bad and not conf.allow_known_bad_kernel:
        raise bad
    if bad:
        log.warning("allowKnownBadKernel is set, going on: %s", bad)


def pod_rules(args: CmdArgs, conf: config.NetConf) -> dict[str, list[R.PodMatch]]:
    """The pod's addresses from prevResult of the families with a service CIDR, as rules tagged
    with network and container, by family."""
    if not isinstance(args.conf.get("prevResult"), dict):
        raise CNIError(NO_POD_ADDRESS, "edgemesh must be chained: prevResult is missing",
                       "put edgemesh after the plugin that gives the pod its address")
    ips = [ip for ip in pod_addresses(args.prev_result, args.ifname) if config.family_of(ip) in conf.families]
    if not ips:
        wanted = " or ".join(f"IPv{f}" for f in conf.families)
        raise CNIError(NO_POD_ADDRESS, f"prevResult holds no {wanted} address for the pod",
                       f"interface {args.ifname}; edgemesh hijacks the service traffic of the families "
                       f"serviceCIDR names ({wanted})")
    hijack = args.args_dict.get("K8S_POD_NAMESPACE", "") not in conf.exclude_namespaces
    return R.by_family(R.pod_items(ips, config.pod_comment(args.network, args.container_id), hijack))


def pod_ipv4s(result, ifname: str) -> list[str]:
    """IPv4s on the sandbox interface `ifname` (or not tied to an interface), as portmap picks."""
    return [ip for ip in pod_addresses(result, ifname) if ":" not in ip]


def pod_addresses(result, ifname: str) -> list[str]:
    """Addresses (both families) on the sandbox interface `ifname` (or not tied to an
    interface), as portmap picks; IPv4 first."""
    out = []
    for ip in result.ips:
        if ip.interface is not None and 0 <= ip.interface < len(result.interfaces):
            iface = result.interfaces[ip.interface]
            if iface.name != ifname or not iface.sandbox:
                continue
        out.append(str(ipaddress.ip_interface(ip.address).ip))     # as iptables-save and nft print it
    return sorted(set(out), key=lambda a: (":" in a, a))


PLUGIN = Plugin(add=cmd_add, check=cmd_check, delete=cmd_del, gc=cmd_gc, status=cmd_status,
                about="edgemesh: hijack pods' service traffic to the node's mesh proxy (chained)",
                validate=validator("edgemesh", cleanup=CLEANUP_KEYS), translate=errors.translate)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "sync":
        from .sync import main as sync_main
        sys.exit(sync_main(sys.argv[2:]))
    plugin_main(PLUGIN)


if __name__ == "__main__":
    main()
