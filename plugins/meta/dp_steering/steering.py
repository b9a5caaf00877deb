"""A pod's steering life: engage (off -> inline/tap), switch (inline <-> tap),
disengage (-> off), verify. Callers hold the state lock; each step that fails
undoes what it did before raising, so the pod is left as it was.
"""
from __future__ import annotations

import contextlib
import os

from libcni_py.errors import CNIError
from plugins.pkg import link, tc
from plugins.pkg.log import get_logger

from . import config, dpctl, enforcer, errors, ids, rules, state, triad

TYPE_CHECKING = False          # typing stays off the exec path; mypy reads the block below
if TYPE_CHECKING:
    from typing import Protocol

    from plugins.pkg.rtnl import Rtnl

    from .rules import Rule

    class Datapath(Protocol):
        """The seam both datapath modules (datapath_pedit, datapath_ebpf) fill."""

        def available(self) -> bool: ...

        def install(self, rt: Rtnl, netns: str, rules: list[Rule], index: dict[str, int]) -> None: ...

        def differences(self, found: dict[tuple[str, int], list[tc.Filter]], rules: list[Rule],
                        index: dict[str, int]) -> str | None: ...


log = get_logger("pycni.dp-steering")


def datapath(name: str) -> Datapath:
    """The module of datapath `name`, imported on first use (DEL needs neither)."""
    if name == "tc-pedit":
        from . import datapath_pedit
        return datapath_pedit
    if name == "ebpf":
        from . import datapath_ebpf
        return datapath_ebpf
    raise ValueError(f"no datapath {name!r}")


def resolve_datapath(name: str) -> str:
    """auto: tc-pedit where the kernel has act_pedit, eBPF otherwise."""
    if name == "auto":
        if datapath("tc-pedit").available():
            return "tc-pedit"
        name = "ebpf"
    if not datapath(name).available():
        raise CNIError(errors.DATAPATH_UNAVAILABLE, f"datapath {name} is not available on this kernel",
                       "tc-pedit needs act_pedit (CONFIG_NET_ACT_PEDIT); ebpf needs bpf(2) and cls_bpf")
    return name


def port(pod: state.Pod) -> rules.Port:
    return rules.Port(pod.vex, pod.vin, pod.vbr, pod.mac, pod.ucmac, pod.vex_pref, pod.vin_pref)


def engage(pod: state.Pod, state_dir: str, mode: str, note=None) -> None:
    """Pull the pod's port and steer it in `mode` (inline may become tap: failOpen), in one go
    (`dp-steering mode`; ADD runs the three parts itself, waiting for the dp unlocked).
    `note(step)` records each step before it is done; on failure what was done is undone."""
    note = note or (lambda step: None)
    try:
        prepare(pod, state_dir, note)
        installed = settle(pod, mode)
        finish(pod, mode, installed, note)
    except BaseException:
        with contextlib.suppress(CNIError, OSError):
            disengage(pod, state_dir)
        raise


def begin(pod: state.Pod, step: str, note) -> None:
    """Journal `step` (with everything the pod knows so far) before doing it."""
    if step not in pod.steps:
        pod.steps.append(step)
    note(step)


def prepare(pod: state.Pod, state_dir: str, note) -> None:
    """What ADD does under the state lock: pull the pod's port (its snapshot journaled first),
    take a UCMAC and vbr priorities (journaled with the "pair" step), count it as a user of the
    pair with them (made if needed), and journal the dp registration about to be done (a tap
    pod without dpSocket has none to journal: one record write fewer). Raises with `pod.steps`
    naming what is left to undo (disengage)."""
    def before_pull(snap):
        pod.mac, pod.snap = snap.mac, triad.snapshot_record(snap)
        begin(pod, "pull", note)
    try:
        snap = triad.pull(pod.netns, pod.enforcer, pod.ifname, pod.vex, pod.vin,
                          ids.parking_mac(pod.container_id, pod.ifname), before=before_pull)
    except BaseException as e:
        if "pull" in pod.steps:       # pull put the pod back itself
            pod.steps.remove("pull")
        if isinstance(e, FileNotFoundError):
            raise CNIError(errors.IFACE_MISSING, str(e)) from None
        if isinstance(e, FileExistsError):
            raise CNIError(errors.NAME_CLASH, str(e)) from None
        if isinstance(e, OSError):
            raise CNIError(errors.PULL_FAILED, f"cannot pull {pod.ifname} into the enforcer netns "
                           "(the pod was put back as it was)", str(e)) from None
        raise
    with link.open_rtnl(pod.enforcer) as rt:
        pod.vex_index = triad.must_index(rt, pod.vex, pod.enforcer)
        pod.vin_index = triad.must_index(rt, pod.vin, pod.enforcer)
        try:
            taken = _allocate(rt, pod, state_dir)      # reads the pair's record; changes nothing
        except OSError as e:
            raise CNIError(errors.RULES_FAILED, f"cannot look at {pod.vbr}'s filters", str(e)) from None
        # the journal names the UCMAC and priorities while this lock hold is still on (so a record
        # of the pair that loses its entries loses nothing the pods' records do not say), then the
        # pair's record does
        begin(pod, "pair", note)
        try:
            enforcer.acquire(rt, pod, state_dir, snap.mtu, taken)
        except CNIError:               # a device of the new pair vanished (IFACE_MISSING)
            pod.steps.remove("pair")   # acquire left nothing
            raise
        except OSError as e:
            pod.steps.remove("pair")   # acquire left nothing
            raise CNIError(errors.RULES_FAILED, f"cannot set up {pod.vbr}/{pod.vth}", str(e)) from None
    if pod.dp_socket or pod.mode != "tap":
        begin(pod, "dp", note)     # the dp is told, or awaited (unlocked, up to dpWaitMs)
    elif "dp" not in pod.steps:    # tap with no dpSocket: settle tells and awaits no one, so there
        pod.steps.append("dp")     # is nothing to journal before it; finish's "rules" write has it


def settle(pod: state.Pod, mode: str) -> str:
    """Register the pod with the dp and wait (up to dpWaitMs) for one to read vth: the mode to
    install. Needs no lock: it changes no kernel state and no record."""
    if mode == "tap":            # tap whatever a dp does (told, with dpSocket): vth is not looked at
        return _effective(pod, None, mode)
    with link.open_rtnl(pod.enforcer) as rt:
        vth_index = link.index_of(rt, pod.vth)
    return _effective(pod, vth_index, mode)


def finish(pod: state.Pod, mode: str, installed: str, note) -> None:
    """Under the state lock again: the filters for `installed`; the pod is steered."""
    begin(pod, "rules", note)
    with link.open_rtnl(pod.enforcer) as rt:
        _install(rt, pod, installed)
    pod.mode = mode
    pod.snap = None


def _allocate(rt, pod: state.Pod, state_dir: str) -> tuple[list[str], dict]:
    """UCMAC and vbr priorities from the vex/vin ifindexes, unless another user of the pair (its
    entry in the pair's record) or a filter on vbr has them: (users, allocations) to write, the
    pod's entry among them. A user without a valid entry (a record from before they were kept, a
    corrupt entry) is read off its own pod record, once: its entry is written with the pod's; one
    whose record is gone or never joined the pair is no user any more (dropped, as GC would). A
    pair that is there (vbr) while its record names no other user (the record was lost: removed
    by hand, or as 126's fix says for a corrupt one), or whose record an older release wrote (it
    may have written it anew after a loss: its users need not be all), is rebuilt from the pods'
    records, once (the write makes it this release's)."""
    keys, kept = state.pair(state_dir, pod.enforcer, pod.vbr)
    allocations = kept or {}
    vbr = link.find(rt, pod.vbr)        # the pair exists unless this pod is its first user
    if vbr is not None and (kept is None or not [k for k in keys if k != pod.key]):
        more, allocations = state.pair_from_pods(state_dir, pod.enforcer, pod.vbr, pod.key)
        if [k for k in more if k not in keys]:
            log.warning("ADD %s: the record of %s in %s names %s but the pods' records name %s: rebuilt",
                        pod.key, pod.vbr, pod.enforcer, keys, more)
        keys = keys + [k for k in more if k not in keys]
    taken, users = {}, []
    for key in keys:
        if key == pod.key:
            continue
        entry = allocations.get(key)
        if state.allocation(entry) is None:
            cid, _, ifname = key.partition("/")
            try:
                other = state.load_pod(state_dir, cid, ifname)
            except CNIError:            # corrupt, or no key of ours: kept, read again next time
                users.append(key)
                continue
            if other is None or "pair" not in other.steps:
                continue
            entry = state.entry_of(other)
        users.append(key)
        if entry is not None:
            taken[key] = entry
    used = [state.allocation(e) for e in taken.values()]
    macs = {u[0] for u in used if u}
    pod.ucmac = ids.ucmac(ids.allocate16(pod.vex_index, macs, "UCMAC"))
    prefs = {u[1] for u in used if u} | {u[2] for u in used if u}
    pod.vex_pref = _free_pref(rt, vbr, pod.vex_index, prefs, pod.vbr)
    pod.vin_pref = _free_pref(rt, vbr, pod.vin_index, prefs | {pod.vex_pref}, pod.vbr)
    taken[pod.key] = state.allocated(pod)
    return users, taken


def _free_pref(rt, vbr, start: int, used: set[int], name: str) -> int:
    """ids.allocate16's priority that no filter on vbr has either (one someone else put there):
    each candidate asked of the kernel alone (tc.pref_taken), not vbr's whole dump, which
    grows with the pods (two filters each: ~8 ms of an ADD with 100 pods, loaded)."""
    while True:
        pref = ids.allocate16(start, used, f"{name} priority")
        if vbr is None or not tc.pref_taken(rt, vbr.index, pref):
            return pref
        used = used | {pref}


def switch(pod: state.Pod, mode: str) -> None:
    """inline <-> tap on a steered pod (the dp told first, and awaited for inline)."""
    with link.open_rtnl(pod.enforcer) as rt:
        installed = _effective(pod, link.index_of(rt, pod.vth), mode)
    refilter(pod, installed)
    pod.mode = mode


def refilter(pod: state.Pod, installed: str) -> None:
    """The pod's filters replaced by those of `installed`; the dp is told nothing and the wanted
    mode is kept (the fail-open watcher, failopen.py, when the dp is gone)."""
    with link.open_rtnl(pod.enforcer) as rt:
        _remove_rules(rt, pod)
        _install(rt, pod, installed)


def disengage(pod: state.Pod, state_dir: str) -> None:
    """Undo the steps the pod's journal or record names (all of them for a steered pod), last
    first: back to its single original interface, the enforcer keeps nothing of it. With
    pod.netns "" (gone) vex/vin are just deleted. A dead ADD's journal is undone with the
    snapshot its pull took."""
    steps = set(pod.steps)
    if "dp" in steps:
        forget(pod)
    if not os.path.exists(pod.enforcer):        # vex, vin, filters and pair went with it
        if "pair" in steps:
            keys = state.live_users(state_dir, pod.enforcer, pod.vbr, pod.key)
            state.set_users(state_dir, pod.enforcer, pod.vbr, keys)
    elif steps:
        before = triad.snapshot_from(pod.snap) if pod.phase == "adding" and pod.snap else None
        try:
            with link.open_rtnl(pod.enforcer) as rt:
                # the pair's other users, once: with none left the pair goes in vin's deletion
                others, entries = (state.staying_users(state_dir, pod.enforcer, pod.vbr, pod.key) if "pair" in steps
                                   else (None, None))
                last = "pull" in steps and others == [] and enforcer.is_pair(rt, pod.vbr, pod.vth)
                if "rules" in steps:
                    # only the filters no deletion or move below takes with its device: vin is
                    # deleted and vex moved back (the move drops its qdiscs) whenever "pull" is
                    # undone, the pair with its last pod
                    _remove_rules(rt, pod, port="pull" not in steps, vbr=not last)
                if "pull" in steps:
                    try:
                        triad.restore(pod.netns or None, pod.enforcer, pod.ifname, pod.vex, pod.vin,
                                      pod.mac or None, before, also=(pod.vbr,) if last else ())
                    except OSError:
                        if last and link.find(rt, pod.vbr) is None:
                            _stop_reading(pod)     # the pair went before the pod's port failed to
                        raise
                if others is not None and enforcer.release(rt, pod, state_dir, others, deleted=last,
                                                           allocations=entries):
                    _stop_reading(pod)
        except OSError as e:
            raise CNIError(errors.PULL_FAILED, f"cannot put {pod.ifname} of {pod.key} back", str(e)) from None
    pod.steps = []
    pod.installed = "off"


def _stop_reading(pod: state.Pod) -> None:
    """The pod's pair is gone: its dp (if any) stops reading vth."""
    if not pod.dp_socket:
        return
    try:
        dpctl.del_srvc_port(pod.dp_socket, pod.vth)
    except dpctl.DpError as e:     # the dp's table is the dp's (as forget)
        log.warning("the dp on %s refused to stop reading %s: %s", pod.dp_socket, pod.vth, e)


def drop_dead_users(state_dir: str) -> None:
    """GC: every shared pair forgets users whose journal or record is gone (a pair left without
    users is deleted), and learns the allocations entry of a user that lacks one (a record from
    before they were kept) from the user's record. A pair the pods' records name whose record is
    gone or unreadable gets it back, rebuilt from those records."""
    pods = state.all_pods(state_dir)
    shared = state.all_shared(state_dir)
    have = {(enf, vbr) for enf, vbr, _, _ in shared}
    lost = sorted({(p.enforcer, p.vbr) for p in pods if "pair" in p.steps} - have)
    for enf, vbr in lost:
        what = "unreadable" if os.path.exists(state._shared_path(state_dir, enf, vbr)) else "gone"
        log.warning("GC: the record of %s in %s is %s: rebuilt from its pods' records", vbr, enf, what)
    for enf, vbr, keys, allocations in shared + [(enf, vbr, [], {}) for enf, vbr in lost]:
        mine = {p.key: p for p in pods if p.enforcer == enf and p.vbr == vbr}
        live = [k for k in keys if state.attached(state_dir, k)]
        live += [k for k, p in mine.items() if "pair" in p.steps and k not in live]   # a pod the record lost
        entries = {k: allocations[k] for k in live if state.allocation(allocations.get(k)) is not None}
        for k in live:
            entry = state.entry_of(mine.get(k)) if k not in entries else None
            if entry is not None:
                entries[k] = entry
        if (enf, vbr) not in lost and sorted(live) == sorted(keys) and \
                entries == {k: v for k, v in allocations.items() if k in keys}:
            continue
        if sorted(live) != sorted(keys) and (enf, vbr) not in lost:
            log.warning("GC: %s in %s forgets users that no longer exist: %s", vbr, enf,
                        sorted(set(keys) - set(live)))
        state.set_users(state_dir, enf, vbr, live, entries)
        if not live and os.path.exists(enf):
            with link.open_rtnl(enf) as rt:
                have_vbr = link.find(rt, vbr)
                peer = (rt.link(index=have_vbr.peer)
                        if have_vbr is not None and have_vbr.kind == "veth" and have_vbr.peer else None)
                if peer is not None:
                    enforcer.drop_pair(rt, vbr, peer.name)     # only a veth pair vbr <-> its peer


def set_mode(pod: state.Pod, state_dir: str, mode: str) -> None:
    """`dp-steering mode`: inline, tap or off, from whatever the pod is in now."""
    pod.mode_by_hand = True
    if mode == "off":
        disengage(pod, state_dir)
        pod.mode = mode
    elif pod.installed == "off":
        if not os.path.exists(pod.netns):
            raise CNIError(errors.NO_STATE, f"the netns {pod.netns} of {pod.key} is gone")
        config.check_enforcer(pod.enforcer)
        try:
            engage(pod, state_dir, mode, lambda step: state.save_pod(state_dir, pod))
        except BaseException:
            state.save_pod(state_dir, pod)      # what is left: nothing (engage undid it), or what a retry undoes
            raise
    else:
        switch(pod, mode)


def mode_problem(pod: state.Pod, config_mode: str) -> str | None:
    """How the installed mode differs from the wanted one (the config's, or the one
    `dp-steering mode` set), unless failOpen explains it."""
    wanted = pod.mode if pod.mode_by_hand else config_mode
    if pod.installed == wanted:
        return None
    if wanted == "inline" and pod.installed == "tap" and pod.fail_open:
        if not dp_present(pod):
            return None
        return (f"a dp is there now but the pod is still in tap mode (failOpen); "
                f"run `dp-steering mode {pod.container_id} {pod.ifname} inline`")
    return f"mode is {pod.installed}, the config says {wanted}"


def dp_present(pod: state.Pod) -> bool:
    return dp_missing(pod.enforcer, pod.vth, pod.dp_socket, need_vth=True) is None


def dp_missing(enforcer_ns: str, vth: str, dp_socket: str, need_vth: bool) -> str | None:
    """Why no dp would take steered frames (None: one is there). A dp is there when it answers
    on `dp_socket` (if any) and an AF_PACKET socket reads `vth`. Without `need_vth` a vth that
    does not exist yet is no reason (a dp opens it when the first pod makes it, or is told to
    over dp_socket)."""
    if dp_socket and dpctl.ping(dp_socket) is None:
        return f"no dp answers on dpSocket {dp_socket}"
    with link.open_rtnl(enforcer_ns) as rt:
        index = link.index_of(rt, vth)
    if index is None:
        return f"{vth} is missing in {enforcer_ns}" if need_vth else None
    if not enforcer.reader_on(enforcer_ns, index):
        if dp_socket and not need_vth:
            return None          # the dp answers; the next ADD tells it to read vth (ctrl_add_srvc_port)
        return f"no dp reads {vth} in {enforcer_ns}"
    return None


def traffic_problem(pod: state.Pod) -> str | None:
    """CHECK: a pod steered inline whose frames have no dp to go to (they are dropped)."""
    if pod.installed != "inline":
        return None
    why = dp_missing(pod.enforcer, pod.vth, pod.dp_socket, need_vth=True)
    if why is None:
        return None
    if pod.fail_open:
        fix = (f"start pycni-dp on {pod.vth} in {pod.enforcer}, or switch the pod to tap "
               f"(`dp-steering mode {pod.container_id} {pod.ifname} tap`)")
    else:
        fix = (f"start pycni-dp on {pod.vth} in {pod.enforcer} (`pycni-dp --netns {pod.enforcer} "
               f"--iface {pod.vth}" + (f" --socket {pod.dp_socket}" if pod.dp_socket else "") +
               "`), or set failOpen and ADD the pod again")
    return f"{pod.key} is steered inline but {why}: its unicast traffic is dropped; {fix}"


def sweep(state_dir: str, enforcer_ns: str, vbr: str, pod_ns: str, container_id: str, ifname: str) -> bool:
    """DEL without a (readable) record: put back what a pod port of (container ID, ifname) left in
    `enforcer_ns` (vex/vin by their derived names) and drop it from the pair's users, deleting
    the pair with its last user. True when something was found."""
    vex, vin = ids.port_names(container_id, ifname)
    key = f"{container_id}/{ifname}"
    keys = state.users(state_dir, enforcer_ns, vbr)
    found = key in keys
    if not enforcer_ns or not os.path.exists(enforcer_ns):
        if found:
            state.set_users(state_dir, enforcer_ns, vbr, state.live_users(state_dir, enforcer_ns, vbr, key))
        return found
    try:
        with link.open_rtnl(enforcer_ns) as rt:
            if link.index_of(rt, vex) is not None or link.index_of(rt, vin) is not None:
                found = True
                mac = None
                if pod_ns:
                    with link.open_rtnl(pod_ns) as prt:
                        have = link.find(prt, ifname)
                    mac = have.mac if have is not None else None   # our veth wears the pod's MAC
                log.warning("DEL %s: no record, putting back %s/%s found in %s", key, vex, vin, enforcer_ns)
                triad.restore(pod_ns or None, enforcer_ns, ifname, vex, vin, mac)
            if key in keys:
                keys = state.live_users(state_dir, enforcer_ns, vbr, key)
                state.set_users(state_dir, enforcer_ns, vbr, keys)
                have = link.find(rt, vbr)
                if not keys and have is not None and have.kind == "veth":
                    link.delete_if_exists(rt, vbr)
    except OSError as e:
        raise CNIError(errors.PULL_FAILED, f"cannot put {ifname} of {key} back", str(e)) from None
    return found


def _effective(pod: state.Pod, vth_index: int | None, mode: str) -> str:
    """The mode to install: inline unless the dp is not there and failOpen says tap."""
    answered = not pod.dp_socket or dpctl.add_port(
        pod.dp_socket, mac=pod.mac, ucmac=pod.ucmac, iface=pod.vth, mode=mode,
        vex=pod.vex, vin=pod.vin, name=pod.name)
    if mode == "tap":
        return mode
    if not answered:
        why = f"no answer on dpSocket {pod.dp_socket}"
    elif vth_index is not None and enforcer.wait_reader(pod.enforcer, vth_index, pod.dp_wait_ms):
        return mode
    else:
        why = f"no reader on {pod.vth}"
    if pod.fail_open:
        log.warning("dp not there (%s): pod %s steered in tap mode instead of inline (failOpen)", why, pod.key)
        if pod.dp_socket:
            dpctl.set_mode(pod.dp_socket, pod.mac, "tap")
        return "tap"
    log.warning("dp not there (%s): pod %s steered inline, its unicast traffic is blocked until a dp "
                "reads %s (fail closed; set failOpen to steer in tap mode instead)", why, pod.key, pod.vth)
    return mode


def _install(rt, pod: state.Pod, mode: str) -> None:
    p = port(pod)
    index = {name: triad.must_index(rt, name, pod.enforcer) for name in (p.vex, p.vin, p.vbr)}
    want = sorted(rules.rules_for(mode, p), key=lambda r: r.dev != p.vbr)   # return path first
    try:
        tc.ensure_ingress_all(rt, [index[name] for name in (p.vex, p.vin, p.vbr)])
        datapath(pod.datapath).install(rt, pod.enforcer, want, index)
    except OSError as e:
        _remove_rules(rt, pod)
        raise CNIError(errors.RULES_FAILED, f"cannot install the {pod.datapath} filters", str(e)) from None
    pod.installed = mode


def _remove_rules(rt, pod: state.Pod, port: bool = True, vbr: bool = True) -> None:
    """The pod's filters, in one round trip (a device that is gone took its filters with it):
    those on vbr, and (`port`) on vex and vin."""
    gone = []
    for name, prefs in ((pod.vbr, (pod.vex_pref, pod.vin_pref) if vbr else ()),
                        (pod.vex, rules.PORT_PREFS if port else ()), (pod.vin, rules.PORT_PREFS if port else ())):
        if not any(prefs):
            continue
        index = link.index_of(rt, name)
        if index is not None:
            gone += [(index, pref) for pref in prefs if pref]
    tc.delete_filters(rt, gone)


def forget(pod: state.Pod) -> None:
    """Unregister the pod from the dp. A dp that refuses is logged, not fatal: what the kernel
    holds for the pod is ours to remove, the dp's table is the dp's."""
    if pod.dp_socket and pod.mac:
        try:
            dpctl.del_port(pod.dp_socket, pod.mac)
        except dpctl.DpError as e:
            log.warning("the dp on %s refused to forget %s (%s): %s", pod.dp_socket, pod.key, pod.mac, e)


def verify(pod: state.Pod) -> str | None:
    """The first difference between the pod's record and the kernel, or None."""
    with link.open_rtnl(pod.netns) as rt:
        have = link.find(rt, pod.ifname)
    if have is None:
        return f"{pod.ifname} is missing in the pod netns"
    if have.mac != pod.mac:
        return f"{pod.ifname} has MAC {have.mac}, expected {pod.mac}"
    if pod.installed == "off":
        return None
    with link.open_rtnl(pod.enforcer) as rt:
        index: dict[str, int] = {}
        for name, want in ((pod.vex, pod.vex_index), (pod.vin, pod.vin_index), (pod.vbr, None), (pod.vth, None)):
            got = link.index_of(rt, name)
            if got is None or (want is not None and got != want):
                return f"{name} is missing in the enforcer netns (or was re-created)"
            index[name] = got
        found: dict = {}
        for name in (pod.vex, pod.vin, pod.vbr):
            for f in tc.filters(rt, index[name]):
                found.setdefault((name, f.pref), []).append(f)
    why = datapath(pod.datapath).differences(found, rules.rules_for(pod.installed, port(pod)), index)
    v6 = (rules.ND_PREF, rules.ND2_PREF, rules.POD6_PREF)
    if why and not any((name, pref) in found for name in (pod.vex, pod.vin) for pref in v6):
        why += (f" (none of the IPv6 filters is there: steered before IPv6 steering? `dp-steering mode "
                f"{pod.container_id} {pod.ifname} {pod.installed}` installs them in place)")
    return why
