"""dp-steering: pull a pod's traffic through a userspace datapath (a chained plugin).

ADD    prevResult has CNI_IFNAME -> the enforcer netns is there -> pick the datapath ->
       pull the pod port (vex/vin) -> shared vbr/vth -> inline or tap filters -> tell the dp
CHECK  the record, devices, MACs, filters and mode; the first difference is the error;
       then an inline pod must have a dp to go to (NO_DP)
DEL    filters, the pod's original interface back, vex/vin gone, the shared pair with the
       last pod; idempotent, also when the pod or the enforcer netns is gone, without a
       record (vex/vin found by name), and with a CNI_IFNAME ADD refuses (nothing to do)
GC     DEL for every recorded pod of this network not in cni.dev/valid-attachments
STATUS 50 unless a new pod can be steered: enforcer netns, datapath, and (inline without
       failOpen) a reachable dp
mode   `dp-steering mode <containerID> <ifname> inline|tap|off [--state-dir DIR]`
       switches a running pod in place (off: its original single interface again)
"""
from __future__ import annotations

import json
import os
import sys

from libcni_py.errors import INVALID_ENV, PLUGIN_NOT_AVAILABLE, CNIError
from libcni_py.skel import CmdArgs, Plugin, plugin_main
from plugins.pkg.log import get_logger

from . import config, errors, ids

log = get_logger("pycni.dp-steering")


def cmd_add(args: CmdArgs):
    from . import state, steering
    cfg = config.load(args.conf, "ADD")
    try:
        ids.port_names(args.container_id, args.ifname)
    except CNIError as e:
        raise CNIError(INVALID_ENV, e.msg, e.details) from None
    prev = _prev_result(args)
    config.check_enforcer(cfg.enforcer_netns)
    pod = _new_pod(args, cfg, steering.resolve_datapath(cfg.datapath))
    with state.lock(cfg.state_dir):
        if state.load_pod(cfg.state_dir, args.container_id, args.ifname) is not None:
            raise CNIError(errors.NAME_CLASH, f"{pod.key} is steered already (DEL it first)")
        steering.engage(pod, cfg.state_dir, cfg.mode)
        state.save_pod(cfg.state_dir, pod)
    return prev


def cmd_check(args: CmdArgs):
    from . import state, steering
    cfg = config.load(args.conf, "CHECK")
    _prev_result(args)
    with state.lock(cfg.state_dir):
        pod = _recorded(cfg.state_dir, args.container_id, args.ifname)
        _same_config(pod, cfg)
        problem = steering.verify(pod) or steering.mode_problem(pod, cfg.mode)
        if problem:
            raise CNIError(errors.CHECK_MISMATCH, f"dp-steering CHECK {pod.key}: {problem}")
        problem = steering.traffic_problem(pod)
    if problem:
        raise CNIError(errors.NO_DP, f"dp-steering CHECK {problem}")


def cmd_del(args: CmdArgs):
    """Remove whatever is found by container ID and ifname: the recorded pod port, or (no
    record, or a corrupt one) vex/vin by their names in the config's enforcer netns."""
    from . import state, steering
    cfg = config.load(args.conf, "DEL")
    try:
        ids.port_names(args.container_id, args.ifname)
    except CNIError as e:            # ADD refuses such a name: nothing of ours can carry it
        log.info("DEL %s/%s: nothing to remove (%s: ADD refuses it)", args.container_id, args.ifname, e.msg)
        return
    if not os.path.isdir(cfg.state_dir):
        log.info("DEL %s/%s: no stateDir %s, nothing recorded", args.container_id, args.ifname, cfg.state_dir)
        return
    with state.lock(cfg.state_dir):
        corrupt = None
        try:
            pod = state.load_pod(cfg.state_dir, args.container_id, args.ifname)
        except CNIError as e:
            pod, corrupt = None, e
            log.warning("DEL %s/%s: %s (%s): removing it and what its names find", args.container_id,
                        args.ifname, e.msg, e.details)
        if pod is None:
            enforcer_ns = cfg.enforcer_netns if "enforcerNetns" not in cfg.dropped else ""
            steering.sweep(cfg.state_dir, enforcer_ns, cfg.vbr, args.netns, args.container_id, args.ifname)
            if corrupt is not None:
                state.remove_pod(cfg.state_dir, args.container_id, args.ifname)
            return
        pod.netns = args.netns if args.netns and os.path.exists(args.netns) else ""
        steering.disengage(pod, cfg.state_dir)
        state.remove_pod(cfg.state_dir, args.container_id, args.ifname)


def cmd_gc(args: CmdArgs):
    """Undo the steering of every pod of this network the runtime no longer lists; a pod that
    cannot be undone does not stop the others (the first failure is the answer)."""
    from . import state, steering
    cfg = config.load(args.conf, "GC")
    valid = {(a.get("containerID"), a.get("ifname")) for a in args.valid_attachments}
    if not os.path.isdir(cfg.state_dir):
        return
    failed = None
    with state.lock(cfg.state_dir):
        for pod in state.all_pods(cfg.state_dir):
            if pod.network == cfg.network and (pod.container_id, pod.ifname) not in valid:
                pod.netns = pod.netns if os.path.exists(pod.netns) else ""
                try:
                    steering.disengage(pod, cfg.state_dir)
                except CNIError as e:
                    log.error("GC %s: %s (%s)", pod.key, e.msg, e.details)
                    failed = failed or e
                    continue
                state.remove_pod(cfg.state_dir, pod.container_id, pod.ifname)
    if failed is not None:
        raise failed


def cmd_status(args: CmdArgs):
    """Can a new pod be served? The enforcer netns is there, the datapath runs on this kernel,
    and, inline without failOpen, a dp is reachable; code 50 with the reason otherwise."""
    from . import steering
    cfg = config.load(args.conf, "STATUS")
    try:
        config.check_enforcer(cfg.enforcer_netns)
        steering.resolve_datapath(cfg.datapath)
    except CNIError as e:
        known = errors.CODES.table.get(e.code)
        fix = f"{known.fix} (code {e.code})" if known else f"code {e.code}"
        raise CNIError(PLUGIN_NOT_AVAILABLE, f"dp-steering cannot steer a new pod: {e.msg}",
                       fix + (f"; {e.details}" if e.details else "")) from None
    if cfg.mode == "inline" and not cfg.fail_open:
        why = steering.dp_missing(cfg.enforcer_netns, cfg.vth, cfg.dp_socket, need_vth=False)
        if why:
            raise CNIError(PLUGIN_NOT_AVAILABLE, f"dp-steering: a new inline pod would have no dp ({why}) "
                           "and its unicast traffic would be dropped",
                           f"start pycni-dp (`pycni-dp --netns {cfg.enforcer_netns} --iface {cfg.vth}"
                           + (f" --socket {cfg.dp_socket}" if cfg.dp_socket else "") + "`), or set failOpen")


def _prev_result(args: CmdArgs):
    prev = args.prev_result
    if prev is None:
        raise CNIError(errors.NO_PREV_RESULT, "dp-steering needs prevResult: chain it after an interface plugin")
    if not any(i.name == args.ifname and i.sandbox for i in prev.interfaces):
        raise CNIError(errors.IFACE_MISSING, f"prevResult has no interface {args.ifname} in a sandbox",
                       f"interfaces: {[i.name for i in prev.interfaces]}")
    return prev


def _new_pod(args: CmdArgs, cfg: config.NetConf, datapath: str):
    from .state import Pod
    vex, vin = ids.port_names(args.container_id, args.ifname)
    return Pod(container_id=args.container_id, ifname=args.ifname, network=cfg.network,
               netns=args.netns, enforcer=cfg.enforcer_netns, vex=vex, vin=vin, vbr=cfg.vbr,
               vth=cfg.vth, datapath=datapath, mode=cfg.mode, fail_open=cfg.fail_open,
               dp_socket=cfg.dp_socket, dp_wait_ms=cfg.dp_wait_ms,
               name=args.args_dict.get("K8S_POD_NAME") or args.container_id)


def _recorded(state_dir: str, container_id: str, ifname: str):
    from . import state
    pod = state.load_pod(state_dir, container_id, ifname)
    if pod is None:
        raise CNIError(errors.NO_STATE, f"no dp-steering record of {container_id}/{ifname} in {state_dir}")
    return pod


def _same_config(pod, cfg: config.NetConf) -> None:
    """The keys the record keeps against the config's; a key whose bad value the lenient schema
    dropped is left out (CHECK cannot tell what it was meant to be)."""
    for key, have, want in (("enforcerNetns", pod.enforcer, cfg.enforcer_netns), ("vbrName", pod.vbr, cfg.vbr),
                            ("vthName", pod.vth, cfg.vth), ("failOpen", pod.fail_open, cfg.fail_open),
                            ("datapath", pod.datapath, pod.datapath if cfg.datapath == "auto" else cfg.datapath)):
        if have != want and key not in cfg.dropped:
            raise CNIError(errors.CONFIG_CHANGED, f"{key} is {want!r} in the config but the pod was set up "
                           f"with {have!r}", "DEL and ADD the pod again to apply it")


def cmd_mode(argv: list[str]) -> int:
    """`dp-steering mode <containerID> <ifname> inline|tap|off [--state-dir DIR]`"""
    import argparse
    import logging
    from . import state, steering
    ap = argparse.ArgumentParser(prog="dp-steering mode", description="switch a steered pod's mode in place")
    ap.add_argument("container_id")
    ap.add_argument("ifname")
    ap.add_argument("mode", choices=("inline", "tap", "off"))
    ap.add_argument("--state-dir", default=config.DEFAULT_STATE_DIR)
    opts = ap.parse_args(argv)
    logging.basicConfig(format="dp-steering: %(levelname)s %(message)s", stream=sys.stderr)
    try:
        with state.lock(opts.state_dir):
            pod = _recorded(opts.state_dir, opts.container_id, opts.ifname)
            steering.set_mode(pod, opts.state_dir, opts.mode)
            state.save_pod(opts.state_dir, pod)
    except Exception as e:  # noqa: BLE001 - an operator's command: a code and a message, no traceback
        err = e if isinstance(e, CNIError) else errors.translate(e)
        if err is None:
            raise
        sys.stderr.write(f"dp-steering: error {err.code}: {err}\n")
        return 1
    print(json.dumps({"containerID": pod.container_id, "ifname": pod.ifname, "mode": pod.mode,
                      "installed": pod.installed}))
    return 0


PLUGIN = Plugin(add=cmd_add, check=cmd_check, delete=cmd_del, gc=cmd_gc, status=cmd_status,
                about="dp-steering: steers a pod's traffic through a userspace datapath (NeuVector style)",
                validate=config.validate, translate=errors.translate)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "mode":
        sys.exit(cmd_mode(sys.argv[2:]))
    plugin_main(PLUGIN)


if __name__ == "__main__":
    main()
