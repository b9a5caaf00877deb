"""edgemesh: a chained plugin that hijacks pods' service traffic to the node's mesh proxy.

ADD adds the pod's rules (and, for the first pod, the chains and root jumps) in one
transaction under a lock and passes prevResult through unchanged; DEL removes them,
and the last pod's DEL removes everything we own. `edgemesh sync --config FILE`
re-reads the ignored services (see sync.py).
"""
from __future__ import annotations

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
        created = listen.ensure(conf.listen_address) if conf.ensure_listen_device else False
        try:
            backend = backends.for_add(conf.backend)
            current = backend.read()
            conflict.check(conf, backend, current, shared)
            backends.converge(backend, current, shared=shared, pods=pods)
            conflict.record(conf, backend)
        except BaseException:
            if created:
                listen.remove_if_ours()
            raise
    return args.prev_result      # the previous plugin's result, in the config's cniVersion (skel encodes it)


def cmd_check(args: CmdArgs):
    conf, shared, pods = desired(args, "CHECK")
    with locked(conf.lock_path):
        holders = backends.holding_rules(conf.backend)
        if not holders:
            raise CNIError(RULES_DIFFER, "no edgemesh rules found on this node")
        current = holders[0].read()
        conflict.check(conf, holders[0], current, shared)
        plan = R.plan(current, holders[0].render, shared=shared, pods=pods)
    if not plan.empty():
        raise CNIError(RULES_DIFFER, f"edgemesh rules ({holders[0].name}) differ from the config",
                       R.describe(plan, holders[0].render)[:2000])
    if conf.ensure_listen_device and not listen.address_is_local(conf.listen_address):
        raise CNIError(LISTEN_FAILED, f"listen address {conf.listen_address} is not on this node")


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
        current = backend.read()
        if conf.service_cidr:               # dropped as invalid outside ADD: nothing to compare
            conflict.check(conf, backend, current, R.shared_items(conf, conf.all_ignored()))
    except Exception as e:  # noqa: BLE001 - every reason becomes the answer "not available"
        err = e if isinstance(e, CNIError) else errors.translate(e)
        if err is None:
            raise                            # our bug: a 999
        raise CNIError(PLUGIN_NOT_AVAILABLE, f"edgemesh cannot serve a new pod: {err.msg}",
                       f"(code {err.code}) {err.details}".strip()) from None


def desired(args: CmdArgs, command: str) -> tuple[config.NetConf, dict[str, list[R.Item]], list[R.PodMatch]]:
    """What ADD installs and CHECK expects: the config, the node-wide rules, this pod's rules."""
    conf = config.load(args.conf, command)
    refuse_known_bad_kernel(conf)
    pods = pod_rules(args, conf)
    return conf, R.shared_items(conf, conf.all_ignored()), pods


def remove_pods(conf: config.NetConf, drop) -> None:
    """Drop the selected pods' rules; with none left, remove chains, jumps and our device; with
    none of this network left, its record.

    Our (marked) edgemesh0 goes whenever no edgemesh rule is left on the node, also when this
    call tore nothing down: an ADD killed after creating the device and before its rules were
    applied leaves only the device, and its DEL or a GC must remove it."""
    with locked(conf.lock_path):
        torn, left = [], set()
        held = backends.holding_rules(conf.backend)
        for b in held:
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


def pod_rules(args: CmdArgs, conf: config.NetConf) -> list[R.PodMatch]:
    """The pod's IPv4 addresses from prevResult, as rules tagged with network and container."""
    if not isinstance(args.conf.get("prevResult"), dict):
        raise CNIError(NO_POD_ADDRESS, "edgemesh must be chained: prevResult is missing",
                       "put edgemesh after the plugin that gives the pod its address")
    ips = pod_ipv4s(args.prev_result, args.ifname)
    if not ips:
        raise CNIError(NO_POD_ADDRESS, "prevResult holds no IPv4 address for the pod",
                       f"interface {args.ifname}; edgemesh hijacks IPv4 service traffic only")
    hijack = args.args_dict.get("K8S_POD_NAMESPACE", "") not in conf.exclude_namespaces
    return R.pod_items(ips, config.pod_comment(args.network, args.container_id), hijack)


def pod_ipv4s(result, ifname: str) -> list[str]:
    """IPv4s on the sandbox interface `ifname` (or not tied to an interface), as portmap picks."""
    out = []
    for ip in result.ips:
        if ip.interface is not None and 0 <= ip.interface < len(result.interfaces):
            iface = result.interfaces[ip.interface]
            if iface.name != ifname or not iface.sandbox:
                continue
        if ip.family == "4":
            out.append(ip.address.split("/")[0])
    return sorted(set(out))


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
