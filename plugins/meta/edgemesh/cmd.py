"""edgemesh: a chained plugin that hijacks pods' service traffic to the node's mesh proxy.

ADD adds the pod's rules (and, for the first pod, the chains and root jumps) in one
transaction under a lock and passes prevResult through unchanged; DEL removes them,
and the last pod's DEL removes everything we own. `edgemesh sync --config FILE`
re-reads the ignored services (see sync.py).
"""
from __future__ import annotations

import sys

from libcni_py.errors import CNIError
from libcni_py.skel import CmdArgs, Plugin, plugin_main
from plugins.pkg.lock import locked
from plugins.pkg.log import get_logger
from plugins.pkg.schema import validator

from . import backends, config, kernel, listen
from . import rules as R

NO_POD_ADDRESS = 146
RULES_DIFFER = 145
log = get_logger("pycni.edgemesh")


def cmd_add(args: CmdArgs):
    conf, shared, pods = desired(args)
    with locked(conf.lock_path):
        created = listen.ensure(conf.listen_address) if conf.ensure_listen_device else False
        try:
            backends.converge(backends.for_add(conf.backend), shared=shared, pods=pods)
        except CNIError:
            if created:
                listen.remove_if_ours()
            raise
    return args.conf["prevResult"]          # unchanged, as the previous plugin wrote it


def cmd_check(args: CmdArgs):
    conf, shared, pods = desired(args)
    with locked(conf.lock_path):
        holders = backends.holding_rules(conf.backend)
        if not holders:
            raise CNIError(RULES_DIFFER, "no edgemesh rules found on this node")
        plan = R.plan(holders[0].read(), holders[0].render, shared=shared, pods=pods)
    if not plan.empty():
        raise CNIError(RULES_DIFFER, f"edgemesh rules ({holders[0].name}) differ from the config",
                       R.describe(plan, holders[0].render)[:2000])
    if conf.ensure_listen_device and not listen.address_is_local(conf.listen_address):
        raise CNIError(listen.LISTEN_FAILED, f"listen address {conf.listen_address} is not on this node")


def cmd_del(args: CmdArgs):
    conf = config.parse(args.conf)
    try:
        comment = config.pod_comment(args.network, args.container_id)
    except CNIError:
        return None                          # ADD refused it: nothing to remove
    remove_pods(conf, lambda c: c == comment)


def cmd_gc(args: CmdArgs):
    conf = config.parse(args.conf)
    valid = {a.get("containerID") for a in args.valid_attachments}

    def stale(comment: str) -> bool:
        net, cid = config.parse_pod_comment(comment) or ("", "")
        return net == conf.network and cid not in valid
    remove_pods(conf, stale)


def desired(args: CmdArgs) -> tuple[config.NetConf, dict[str, list[R.Item]], list[R.PodMatch]]:
    """What ADD installs and CHECK expects: the config, the node-wide rules, this pod's rules."""
    conf = config.parse(args.conf)
    refuse_known_bad_kernel(conf)
    pods = pod_rules(args, conf)
    return conf, R.shared_items(conf, conf.all_ignored()), pods


def remove_pods(conf: config.NetConf, drop) -> None:
    """Drop the selected pods' rules; with none left, remove chains, jumps and our device."""
    with locked(conf.lock_path):
        torn = [backends.converge(b, shared=None, drop=drop, teardown_when_empty=True).teardown
                for b in backends.holding_rules(conf.backend)]
        if any(torn) and not backends.footprints():
            listen.remove_if_ours()


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


PLUGIN = Plugin(add=cmd_add, check=cmd_check, delete=cmd_del, gc=cmd_gc,
                about="edgemesh: hijack pods' service traffic to the node's mesh proxy (chained)",
                validate=validator("edgemesh"))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "sync":
        from .sync import main as sync_main
        sys.exit(sync_main(sys.argv[2:]))
    plugin_main(PLUGIN)


if __name__ == "__main__":
    main()
