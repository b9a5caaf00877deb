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
    """Journal first, then each step (see state.py): the global lock is held to pull the port,
    join the pair and take a UCMAC/priorities, let go while the dp is told and awaited
    (dpWaitMs), and taken again to install the filters and write the final record. A failure
    undoes only what this ADD made; a live attachment of the same key is never touched."""
    from . import state, steering
    cfg = config.load(args.conf, "ADD")
    try:
        ids.port_names(args.container_id, args.ifname)
    except CNIError as e:
        raise CNIError(INVALID_ENV, e.msg, e.details) from None
    prev = _prev_result(args)
    config.check_enforcer(cfg.enforcer_netns)
    _not_the_host(args.netns, cfg.enforcer_netns, args.ifname)
    pod = _new_pod(args, cfg, steering.resolve_datapath(cfg.datapath))
    pod.phase, pod.adder, pod.steps = "adding", state.me(), []

    def note(step):
        state.save_pod(cfg.state_dir, pod)

    with state.lock(cfg.state_dir):
        have = state.load_pod(cfg.state_dir, args.container_id, args.ifname)
        if have is not None and not have.dead_journal():
            if have.phase == "adding":
                raise CNIError(errors.NAME_CLASH, f"{pod.key} is being added by another ADD (pid {have.adder[0]})")
            raise CNIError(errors.NAME_CLASH, f"{pod.key} is steered already (DEL it first)")
        if have is not None:
            log.warning("ADD %s: an earlier ADD (pid %s) died half-way; undoing its steps %s first",
                        pod.key, have.adder[0] if have.adder else "?", have.steps)
            _undo(have, cfg.state_dir, args.netns)
        # the journal's first write is the pull's (with its snapshot), before the first change:
        # nothing before it changes the kernel, and the lock is held until it is written
        _guarded(pod, cfg.state_dir, steering.prepare, pod, cfg.state_dir, note)
    try:
        installed = steering.settle(pod, cfg.mode)      # unlocked: may wait dpWaitMs
    except BaseException:
        with state.lock(cfg.state_dir):
            _rollback(pod, cfg.state_dir)
        raise
    with state.lock(cfg.state_dir):
        _guarded(pod, cfg.state_dir, _finish, pod, cfg, installed, note)
    return prev


def _finish(pod, cfg: config.NetConf, installed: str, note) -> None:
    from . import state, steering
    if not _ours(pod, cfg.state_dir):
        raise CNIError(errors.NO_STATE, f"{pod.key} was deleted (DEL or GC) while its ADD waited for the dp",
                       "ADD it again")
    steering.finish(pod, cfg.mode, installed, note)
    pod.phase, pod.adder = "done", []
    state.save_pod(cfg.state_dir, pod)


def _guarded(pod, state_dir: str, step, *a) -> None:
    """Run an ADD step under the lock; on failure roll this ADD back (only what it made)."""
    try:
        step(*a)
    except BaseException:
        _rollback(pod, state_dir)
        raise


def _ours(pod, state_dir: str) -> bool:
    """Is the journal at the pod's key still this ADD's (no DEL or GC took it, no other ADD)?"""
    from . import state
    try:
        have = state.load_pod(state_dir, pod.container_id, pod.ifname)
    except CNIError:
        return False
    return have is not None and have.phase == "adding" and have.adder == pod.adder


def _rollback(pod, state_dir: str) -> None:
    """Undo what this ADD did (pod.steps) and drop its journal, if the journal is still ours.
    If the undo fails the journal stays: DEL or GC finish it once this process is gone."""
    from . import state, steering
    if not _ours(pod, state_dir):
        if "dp" in pod.steps and state.load_pod_quietly(state_dir, pod.container_id, pod.ifname) is None:
            steering.forget(pod)            # told the dp after a DEL took the journal
        return
    try:
        steering.disengage(pod, state_dir)
    except (CNIError, OSError) as e:
        log.error("ADD %s: rollback failed (%s); the journal stays for DEL/GC", pod.key, e)
        return
    state.remove_pod(state_dir, pod.container_id, pod.ifname)


def _undo(pod, state_dir: str, netns: str) -> None:
    """DEL/GC/ADD of a journal or record: undo its steps, then remove it."""
    from . import state, steering
    pod.netns = netns if netns and os.path.exists(netns) and not _is_host(netns) else ""
    steering.disengage(pod, state_dir)
    state.remove_pod(state_dir, pod.container_id, pod.ifname)


def _is_host(path: str) -> bool:
    from plugins.pkg import ns
    try:
        return ns.is_current(path)
    except OSError:
        return False


def _not_the_host(netns: str, enforcer_ns: str, ifname: str) -> None:
    """Refuse (4) a pod netns that is the plugin's own (the host's: /proc/self/ns/net or any
    path to it), where CNI_IFNAME names a host interface (its uplink), or the enforcer's."""
    if _is_host(netns):
        raise CNIError(INVALID_ENV, f"CNI_NETNS {netns} is the network namespace dp-steering runs in (the "
                       f"host's): it would steer the host's {ifname}", "CNI_NETNS must be the pod's own netns")
    try:
        same = os.stat(netns).st_ino == os.stat(enforcer_ns).st_ino and \
            os.stat(netns).st_dev == os.stat(enforcer_ns).st_dev
    except OSError:
        same = False
    if same:
        raise CNIError(INVALID_ENV, f"CNI_NETNS {netns} is the enforcerNetns: it would steer the enforcer's "
                       f"{ifname}", "CNI_NETNS must be the pod's own netns")


def cmd_check(args: CmdArgs):
    """The record against the config, then pycni-doctor's steering-integrity for this pod (devices,
    MACs, filters, mode: 127; inline with no dp: 131) and nfqueue-no-reader in the pod's and the
    enforcer netns (137); a finding's text is the error. The doctor's code is imported here only.
    Then the pod's interface must still carry prevResult's addresses and routes (127)."""
    from . import state, triad
    cfg = config.load(args.conf, "CHECK")
    prev = _prev_result(args)
    with state.lock(cfg.state_dir):
        pod = _recorded(cfg.state_dir, args.container_id, args.ifname)
        _same_config(pod, cfg)
        _say_runtime(pod)
        from plugins.doctor import checkctx, nfqueue
        from plugins.doctor import steering as integrity
        problems = integrity.record_problems(pod, cfg.state_dir, cfg.mode)
    for kind, finding in problems or integrity.dp_problems(pod, cfg.state_dir):     # the dp asked unlocked
        code = errors.NO_DP if kind == integrity.NO_DP else errors.CHECK_MISMATCH
        raise CNIError(code, f"dp-steering CHECK {checkctx.text(finding, where=False)}", finding.why)
    gone = triad.lost(pod.netns, pod.ifname, prev) if os.path.exists(pod.netns) else None
    if gone is not None:                                # prevResult's addresses/routes, both families
        raise CNIError(errors.CHECK_MISMATCH, f"dp-steering CHECK {pod.key}: {gone}",
                       "the pod's interface must keep what prevResult gave it; DEL and ADD the pod again")
    for path in (pod.netns, pod.enforcer):
        found, failed = checkctx.run_in(path, [nfqueue])
        for text in failed:
            log.warning("CHECK %s: nfqueue-no-reader could not finish in %s: %s", pod.key, path, text)
        queued = checkctx.first_error(found)
        if queued is not None:
            raise CNIError(errors.NFQUEUE_NO_READER, f"dp-steering CHECK {pod.key}: {checkctx.text(queued)}",
                           queued.why)


def _say_runtime(pod) -> None:
    """CHECK says what a missing dp does to the pod (the fail-open watcher's record, failopen.py):
    a failed-open pod passes CHECK (failOpen chose exactly that) with this warning; a fail-closed
    one fails it (131) with this on stderr too."""
    said = pod.runtime()
    if said:
        log.warning("CHECK %s: %s", pod.key, said)


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
            netns = "" if _is_host(args.netns) else args.netns
            steering.sweep(cfg.state_dir, enforcer_ns, cfg.vbr, netns, args.container_id, args.ifname)
            if corrupt is not None:
                state.remove_pod(cfg.state_dir, args.container_id, args.ifname)
            return
        if pod.phase == "adding":
            log.warning("DEL %s: the ADD (pid %s) did not finish; undoing its steps %s", pod.key,
                        pod.adder[0] if pod.adder else "?", pod.steps)
        _undo(pod, cfg.state_dir, args.netns)


def cmd_gc(args: CmdArgs):
    """Undo the steering of every pod of this network the runtime no longer lists, and of every
    ADD of it that died half-way (its journal is there, its process is not; listed or not: a
    runtime never got a result for it); a live ADD's journal is left alone. Then every pair
    forgets users that no longer exist (deleted with the last). A pod that cannot be undone
    does not stop the others (the first failure is the answer)."""
    from . import state, steering
    cfg = config.load(args.conf, "GC")
    valid = {(a.get("containerID"), a.get("ifname")) for a in args.valid_attachments}
    if not os.path.isdir(cfg.state_dir):
        return
    failed = None
    with state.lock(cfg.state_dir):
        for pod in state.all_pods(cfg.state_dir):
            if pod.network != cfg.network:
                continue
            if pod.phase == "adding":
                if not pod.dead_journal():
                    continue
                log.warning("GC %s: its ADD (pid %s) died; undoing its steps %s", pod.key,
                            pod.adder[0] if pod.adder else "?", pod.steps)
            elif (pod.container_id, pod.ifname) in valid:
                continue
            try:
                _undo(pod, cfg.state_dir, pod.netns)
            except CNIError as e:
                log.error("GC %s: %s (%s)", pod.key, e.msg, e.details)
                failed = failed or e
        state.tidy(cfg.state_dir)
        try:
            steering.drop_dead_users(cfg.state_dir)
        except (CNIError, OSError) as e:
            log.error("GC: dropping users that no longer exist: %s", e)
            failed = failed or (e if isinstance(e, CNIError) else CNIError(errors.KERNEL_REFUSED, str(e)))
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
    running = _running_without_dp(cfg)
    if cfg.mode == "inline" and not cfg.fail_open:
        why = steering.dp_missing(cfg.enforcer_netns, cfg.vth, cfg.dp_socket, need_vth=False)
        if why:
            raise CNIError(PLUGIN_NOT_AVAILABLE, f"dp-steering: a new inline pod would have no dp ({why}) "
                           "and its unicast traffic would be dropped" + running,
                           f"start pycni-dp (`pycni-dp --netns {cfg.enforcer_netns} --iface {cfg.vth}"
                           + (f" --socket {cfg.dp_socket}" if cfg.dp_socket else "") + "`), or set failOpen")
    if running:
        log.warning("STATUS network %s: %s", cfg.network, running[2:])


def _running_without_dp(cfg: config.NetConf) -> str:
    """STATUS: the network's running pods a missing dp affects now (Pod.dp_gone: ADD's failOpen
    fallback, the fail-open watcher's records), as "; N running pod(s) fail closed (...): a since T"."""
    from . import state
    by: dict[str, list[str]] = {}
    try:
        pods = state.all_pods(cfg.state_dir) if os.path.isdir(cfg.state_dir) else []
    except OSError:
        return ""
    for pod in pods:
        gone = pod.dp_gone() if pod.network == cfg.network and pod.phase == "done" else ""
        if gone:
            by.setdefault(gone, []).append(f"{pod.key} {pod.since()}")
    what = {"fail-closed": "fail closed (their unicast traffic is dropped)",
            "failed-open": "failed open (their traffic bypasses the dp)"}
    return "".join(f"; {len(keys)} running pod(s) {what[gone]}: {', '.join(keys)}" for gone, keys in sorted(by.items()))


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
    if pod.phase == "adding":
        why = ("its process died half-way: DEL or GC undoes it" if pod.dead_journal()
               else f"it is still running (pid {pod.adder[0]})")
        raise CNIError(errors.NO_STATE, f"the ADD of {container_id}/{ifname} has not finished: {why}")
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
