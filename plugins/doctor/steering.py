"""Steering integrity (the NeuVector enforcer article: container traffic pulled through an enforcer
namespace's vex/vin/vbr veths): every pod dp-steering handles, read from its records (one per
attachment under the stateDir of each dp-steering config, plugins/meta/dp_steering/state.py),
checked against the kernel with the plugin's own code (steering.verify, mode_problem,
dp_missing: what dp-steering CHECK runs, one source of truth): the pod's interface and MAC, vex,
vin and the shared vbr/vth pair in the enforcer netns, the tc filters of the installed mode,
the installed mode against the wanted one, and, for a pod steered inline, a dp reading vth (an
AF_PACKET socket bound to vth's ifindex in the enforcer netns, and an answer on dpSocket when
the pod has one). An inline pod with no dp is blackholed: its unicast frames are redirected
to vth and nothing takes them.

Which stateDirs: that of each dp-steering config in ctx.confs (--conf, or the runtime's config
dir: main.py), the plugin's default /var/lib/cni/pycni/dp-steering when a config sets none (a
stateDir holds the records of every network using it; those of the configs' networks are
checked). With no dp-steering config the runner skips this check: a record names its enforcer
netns, devices, datapath and mode, but only a config says which networks are ours to judge and
the mode they want (a pod `dp-steering mode` switched by hand keeps its own). Read-only: the state
lock is not taken (records are replaced atomically); a record that changes while it is checked
(an ADD, DEL or `mode` at work) is checked again, or skipped when it is gone."""
from __future__ import annotations

import os
import shlex

from .finding import Finding, Fix

TYPE_CHECKING = False          # typing stays off dp-steering CHECK's path (it imports this module)
if TYPE_CHECKING:
    from plugins.meta.dp_steering.state import Pod

    from .runner import Context

NAME = "steering-integrity"
PER_NAMESPACE = False
PLUGIN = "dp-steering"
# What a problem means for the pod's traffic: CHECK's code for it (plugins/meta/dp_steering/errors.py)
MISMATCH, MODE, NO_DP, STALE = "mismatch", "mode", "no-dp", "stale"
WHY_DEVICES = ("dp-steering moved the pod's interface into the enforcer netns (vex) and gave the pod a "
               "veth (vin) in its place; tc filters on vex, vin and vbr carry every frame between them, "
               "inline through the dp on vth, tap mirrored to it. A device or filter missing or changed "
               "behind the plugin's back drops the pod's traffic or lets it bypass the dp's policy")
WHY_MODE = ("the pod's filters do something else than the mode it should be in: tap lets traffic pass "
            "unenforced (the dp only sees copies), inline stops it until the dp allows it")
WHY_NO_DP = ("inline, the filters redirect the pod's unicast frames to vth and only the dp puts them back; "
             "with no dp reading vth they go nowhere: the pod is blackholed (fail closed)")


def state_dirs(ctx: Context) -> list[tuple[str, dict[str, str]]]:
    """(stateDir, {network: the config's mode}) of the dp-steering configs in ctx.confs."""
    from plugins.meta.dp_steering import config
    from .runner import confs_of
    out: dict[str, dict[str, str]] = {}
    for conf in confs_of(ctx, PLUGIN):
        try:
            cfg = config.NetConf(conf, "DEL")       # the keys the records need; no name checks
        except Exception as e:  # noqa: BLE001 - one bad config must not hide the others
            ctx.error(f"dp-steering config of network {conf.get('name')!r}: {e}")
            continue
        out.setdefault(cfg.state_dir, {})[cfg.network] = cfg.mode
    return list(out.items())


def check(ctx: Context) -> list[Finding]:
    from plugins.meta.dp_steering import state
    findings: list[Finding] = []
    for state_dir, modes in state_dirs(ctx):
        if not os.path.isdir(state_dir):
            continue
        for pod in state.all_pods(state_dir):
            if pod.network not in modes:
                continue                        # another network's: not asked about
            for _ in range(3):                  # a record changing under us: look again
                found = [f for _, f in pod_problems(pod, state_dir, modes[pod.network])]
                again = state.load_pod_quietly(state_dir, pod.container_id, pod.ifname)
                if again == pod:
                    findings += found
                    break
                if again is None:
                    break
                pod = again
    return findings


def _mode_cmd(pod: Pod, state_dir: str, mode: str) -> str:
    from plugins.meta.dp_steering import config
    argv = ["dp-steering", "mode", pod.container_id, pod.ifname, mode]
    if state_dir != config.DEFAULT_STATE_DIR:
        argv += ["--state-dir", state_dir]
    return shlex.join(argv)


def dp_command(pod: Pod) -> str:
    argv = ["pycni-dp", "--netns", pod.enforcer, "--iface", pod.vth]
    return shlex.join(argv + (["--socket", pod.dp_socket] if pod.dp_socket else []))


def pod_problems(pod: Pod, state_dir: str, config_mode: str | None = None) -> list[tuple[str, Finding]]:
    """What is wrong with one steered pod, each as (kind, finding): kind MISMATCH (devices,
    MACs, filters), MODE (installed mode not the wanted one), NO_DP (inline, no dp: blackholed),
    STALE (a dead ADD's journal, a pod netns gone). `config_mode`: the config's mode (None:
    the one recorded)."""
    found = record_problems(pod, state_dir, config_mode)
    if any(kind != MODE for kind, _ in found):
        return found
    return found + dp_problems(pod, state_dir)


def record_problems(pod: Pod, state_dir: str, config_mode: str | None = None) -> list[tuple[str, Finding]]:
    """pod_problems but NO_DP: the kernel against the record (dp-steering CHECK, under its lock)."""
    from plugins.meta.dp_steering import steering
    where = f"dp-steering {pod.key}"
    net = f" (network {pod.network})"
    if pod.phase == "adding":
        if not pod.dead_journal():
            return []                           # an ADD at work
        return [(STALE, Finding(
            NAME, "warning", where, pod.netns,
            f"the ADD of {pod.key}{net} died half-way (pid {pod.adder[0] if pod.adder else '?'}); its steps "
            f"{pod.steps} are still in place", "the pod may be half steered: no filters, or its interface "
            "parked in the enforcer netns", [Fix("the runtime's next GC (or DEL of the pod) undoes them", None)]))]
    if not os.path.exists(pod.netns):
        return [(STALE, Finding(
            NAME, "warning", where, pod.netns,
            f"dp-steering still records {pod.key}{net}, but its netns {pod.netns} is gone",
            "a stale record keeps the pod a user of the shared vbr/vth pair, whose UCMAC and vbr priorities "
            "stay taken", [Fix("the runtime's next GC (or DEL of the pod) removes it", None)]))]
    try:
        problem = steering.verify(pod)
    except OSError as e:
        problem = f"cannot look into the pod netns {pod.netns} or the enforcer netns {pod.enforcer}: {e}"
    except Exception as e:  # noqa: BLE001 - a CNIError of the plugin's code: its text is the finding
        problem = f"{getattr(e, 'msg', e)}"
    if problem:
        names = (pod.vex, pod.vin, pod.vbr, pod.vth)
        device = problem.split(" ", 1)[0] in names and " is missing" in problem
        pod_side = problem.split(" ", 1)[0] == pod.ifname
        again = [Fix("re-steer the pod from its record: put its own interface back (off) ...",
                     _mode_cmd(pod, state_dir, "off")),
                 Fix(f"... then steer it {pod.installed} again (vex/vin, the vbr/vth pair and the filters "
                     "made anew)", _mode_cmd(pod, state_dir, pod.installed))]
        if not device and not pod_side and pod.installed != "off":
            fixes = [Fix(f"re-install the pod's {pod.installed} filters (dp-steering removes its own and "
                         "installs them again)", _mode_cmd(pod, state_dir, pod.installed))]
        else:
            fixes = again
        fixes.append(Fix("or DEL and ADD the pod (restart its sandbox in the runtime)", None))
        return [(MISMATCH, Finding(
            NAME, "error", where, pod.netns if pod_side else pod.enforcer,
            f"{pod.key}{net} is steered {pod.installed} ({pod.datapath}) but the kernel differs from its "
            f"record: {problem}", WHY_DEVICES, fixes))]
    out: list[tuple[str, Finding]] = []
    try:
        problem = steering.mode_problem(pod, config_mode or pod.mode)
    except Exception as e:  # noqa: BLE001 - the dp's socket or the enforcer netns: said as such
        problem = f"the dp could not be asked ({getattr(e, 'msg', e)})"
    if problem:
        wanted = pod.mode if pod.mode_by_hand or not config_mode else config_mode
        out.append((MODE, Finding(
            NAME, "warning", where, pod.enforcer, f"{pod.key}{net}: {problem}", WHY_MODE,
            [Fix(f"switch it to {wanted} in place", _mode_cmd(pod, state_dir, wanted))])))
    return out


def dp_problems(pod: Pod, state_dir: str) -> list[tuple[str, Finding]]:
    """NO_DP: an inline pod with no dp to take its frames (asks the dp's socket and the enforcer
    netns; dp-steering CHECK calls it with the state lock released, as ADD waits for a dp)."""
    from plugins.meta.dp_steering import steering
    where, net = f"dp-steering {pod.key}", f" (network {pod.network})"
    out: list[tuple[str, Finding]] = []
    if pod.installed == "inline":
        try:
            why = steering.dp_missing(pod.enforcer, pod.vth, pod.dp_socket, need_vth=True)
        except OSError as e:
            why = f"the enforcer netns {pod.enforcer} cannot be looked into ({e})"
        if why:
            fixes = [Fix(f"start the dp in the enforcer netns, reading {pod.vth}", dp_command(pod)),
                     Fix("or let the pod's traffic pass unenforced until a dp is there: switch it to tap",
                         _mode_cmd(pod, state_dir, "tap"))]
            if not pod.fail_open:
                fixes.append(Fix("or set failOpen in the network's dp-steering config (new pods are then "
                                 "steered in tap mode while no dp is there) and ADD the pod again", None))
            out.append((NO_DP, Finding(
                NAME, "error", where, pod.enforcer,
                f"{pod.key}{net} is steered inline but {why}: its unicast traffic is blackholed "
                f"{without_dp_since(pod)}", WHY_NO_DP, fixes)))
    return out


def without_dp_since(pod: Pod) -> str:
    """Since when the inline pod has had no dp, from its record: dp_lost_since, stamped by the
    watcher (pycni-node's fail-open watch) that saw its dp go; none recorded when no watcher saw it."""
    if pod.dp_lost_since:
        from plugins.meta.dp_steering.state import stamp
        return f"since {stamp(pod.dp_lost_since)} (when the fail-open watcher saw its dp go)"
    return "since a time nothing recorded (no fail-open watcher saw its dp go)"
