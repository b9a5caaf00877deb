"""dp-steering: pull a pod's traffic through a userspace datapath (a chained plugin).

ADD    prevResult has CNI_IFNAME -> the enforcer netns is there -> pick the datapath ->
       pull the pod port (vex/vin) -> shared vbr/vth -> inline or tap filters -> tell the dp
CHECK  the record, devices, MACs, filters and mode; the first difference is the error
DEL    filters, the pod's original interface back, vex/vin gone, the shared pair with the
       last pod; idempotent, also when the pod or the enforcer netns is gone
GC     DEL for every recorded pod of this network not in cni.dev/valid-attachments
mode   `dp-steering mode <containerID> <ifname> inline|tap|off [--state-dir DIR]`
       switches a running pod in place (off: its original single interface again)
"""
from __future__ import annotations

import json
import os
import sys

from libcni_py.errors import CNIError
from libcni_py.skel import CmdArgs, Plugin, plugin_main
from plugins.pkg.schema import validator

from . import netconf


def cmd_add(args: CmdArgs):
    from . import state, steering
    cfg = netconf.load(args.conf)
    prev = _prev_result(args)
    netconf.check_enforcer(cfg.enforcer_netns)
    pod = _new_pod(args, cfg, steering.resolve_datapath(cfg.datapath))
    with state.lock(cfg.state_dir):
        if state.load_pod(cfg.state_dir, args.container_id, args.ifname) is not None:
            raise CNIError(netconf.NAME_CLASH, f"{pod.key} is steered already (DEL it first)")
        steering.engage(pod, cfg.state_dir, cfg.mode)
        state.save_pod(cfg.state_dir, pod)
    return prev


def cmd_check(args: CmdArgs):
    from . import state, steering
    cfg = netconf.load(args.conf)
    _prev_result(args)
    with state.lock(cfg.state_dir):
        pod = _recorded(cfg.state_dir, args.container_id, args.ifname)
        _same_config(pod, cfg)
        problem = steering.verify(pod) or steering.mode_problem(pod, cfg.mode)
    if problem:
        raise CNIError(netconf.CHECK_MISMATCH, f"dp-steering CHECK {pod.key}: {problem}")


def cmd_del(args: CmdArgs):
    from . import state, steering
    cfg = netconf.load(args.conf)
    with state.lock(cfg.state_dir):
        pod = state.load_pod(cfg.state_dir, args.container_id, args.ifname)
        if pod is None:
            return
        pod.netns = args.netns if args.netns and os.path.exists(args.netns) else ""
        steering.disengage(pod, cfg.state_dir)
        state.remove_pod(cfg.state_dir, args.container_id, args.ifname)


def cmd_gc(args: CmdArgs):
    """Undo the steering of every pod of this network the runtime no longer lists."""
    from . import state, steering
    cfg = netconf.load(args.conf)
    valid = {(a.get("containerID"), a.get("ifname")) for a in args.valid_attachments}
    with state.lock(cfg.state_dir):
        for pod in state.all_pods(cfg.state_dir):
            if pod.network == cfg.network and (pod.container_id, pod.ifname) not in valid:
                pod.netns = pod.netns if os.path.exists(pod.netns) else ""
                steering.disengage(pod, cfg.state_dir)
                state.remove_pod(cfg.state_dir, pod.container_id, pod.ifname)


def _prev_result(args: CmdArgs):
    prev = args.prev_result
    if prev is None:
        raise CNIError(netconf.NO_PREV_RESULT, "dp-steering needs prevResult: chain it after an interface plugin")
    if not any(i.name == args.ifname and i.sandbox for i in prev.interfaces):
        raise CNIError(netconf.IFACE_MISSING, f"prevResult has no interface {args.ifname} in a sandbox",
                       f"interfaces: {[i.name for i in prev.interfaces]}")
    return prev


def _new_pod(args: CmdArgs, cfg: netconf.Config, datapath: str):
    from .state import Pod
    vex, vin = netconf.port_names(args.container_id, args.ifname)
    return Pod(container_id=args.container_id, ifname=args.ifname, network=cfg.network,
               netns=args.netns, enforcer=cfg.enforcer_netns, vex=vex, vin=vin, vbr=cfg.vbr,
               vth=cfg.vth, datapath=datapath, mode=cfg.mode, fail_open=cfg.fail_open,
               dp_socket=cfg.dp_socket, dp_wait_ms=cfg.dp_wait_ms,
               name=args.args_dict.get("K8S_POD_NAME") or args.container_id)


def _recorded(state_dir: str, container_id: str, ifname: str):
    from . import state
    pod = state.load_pod(state_dir, container_id, ifname)
    if pod is None:
        raise CNIError(netconf.NO_STATE, f"no dp-steering record of {container_id}/{ifname} in {state_dir}")
    return pod


def _same_config(pod, cfg: netconf.Config) -> None:
    for key, have, want in (("enforcerNetns", pod.enforcer, cfg.enforcer_netns), ("vbrName", pod.vbr, cfg.vbr),
                            ("vthName", pod.vth, cfg.vth), ("failOpen", pod.fail_open, cfg.fail_open),
                            ("datapath", pod.datapath, pod.datapath if cfg.datapath == "auto" else cfg.datapath)):
        if have != want:
            raise CNIError(netconf.CONFIG_CHANGED, f"{key} is {want!r} in the config but the pod was set up "
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
    ap.add_argument("--state-dir", default=netconf.DEFAULT_STATE_DIR)
    opts = ap.parse_args(argv)
    logging.basicConfig(format="dp-steering: %(levelname)s %(message)s", stream=sys.stderr)
    try:
        with state.lock(opts.state_dir):
            pod = _recorded(opts.state_dir, opts.container_id, opts.ifname)
            steering.set_mode(pod, opts.state_dir, opts.mode)
            state.save_pod(opts.state_dir, pod)
    except CNIError as e:
        sys.stderr.write(f"dp-steering: error {e.code}: {e}\n")
        return 1
    print(json.dumps({"containerID": pod.container_id, "ifname": pod.ifname, "mode": pod.mode,
                      "installed": pod.installed}))
    return 0


PLUGIN = Plugin(add=cmd_add, check=cmd_check, delete=cmd_del, gc=cmd_gc,
                about="dp-steering: steers a pod's traffic through a userspace datapath (NeuVector style)",
                validate=validator("dp-steering"))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "mode":
        sys.exit(cmd_mode(sys.argv[2:]))
    plugin_main(PLUGIN)


if __name__ == "__main__":
    main()
