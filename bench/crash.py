"""SIGKILL every plugin at seeded random points of ADD, many times: the larger run of
tests/integration/test_crash.py (the loop and what counts as residue: tests/kit/crash.py).

    sudo .venv/bin/python bench/crash.py [--kills 200] [--seed S] [--target NAME ...] [--no-targeted]

Per target (vxlan, dp-steering tap/inline, edgemesh iptables/nftables) --kills rounds of: ADD killed
after a seeded uniform delay in [0, 1.2 x the typical ADD duration] (the median of the last clean
ADDs), DEL, GC with an empty valid list, the residue check, the next ADD + DEL of the same attachment;
then one round per targeted kill point (the moment a link the ADD makes appears or gets its address).
A failed round is counted and the target's world is rebuilt (a stranded attachment would poison the
rounds after it). Root; test namespaces with a unique prefix, all removed; every directory in a
scratch dir. Writes bench/crash.md (or $PYCNI_BENCH_OUT/crash.md); exit status 1 when any round
failed. The seed (default: random) is printed and written.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench import benchout  # noqa: E402
from tests.kit import crash  # noqa: E402
from tests.kit.fuzz import Factory  # noqa: E402


def run_target(name: str, kills: int, seed, scratch: str, targeted: bool, log) -> crash.Report:
    worlds: list = []            # (factory, tmp) of every world made, closed at the end

    def build():
        f = Factory()
        tmp = os.path.join(scratch, f"{name}-{len(worlds)}")
        worlds.append(f)
        return crash.make_target(name, f, tmp)

    def rebuild(old):
        try:
            old.close()
        except Exception as e:  # noqa: BLE001 - a stranded world may not come apart cleanly
            log(f"  (closing the old {name} world: {e})")
        worlds[-1].close()
        return build()

    target = build()
    rep = None
    try:
        rep = crash.crash(target, kills, seed, log=log, rebuild=rebuild, targeted=targeted)
    finally:
        try:
            (rep.target_obj if rep is not None else target).close()
        finally:
            for f in worlds:
                f.close()
    return rep


def _first(rep: crash.Report) -> str:
    if not rep.failures:
        return "-"
    f = rep.failures[0]
    what = []
    for key in ("DEL", "GC", "next ADD", "DEL after next ADD"):
        if key in f:
            what.append(f"{key} failed: {f[key][:200]}")
    for place, d in (f.get("residue") or {}).items():
        lines = [x for x in d.splitlines() if x[:1] in "+-" and not x.startswith(("+++", "---"))]
        what.append(f"{place}: " + "; ".join(x.strip() for x in lines[:6]))
    return f"round {f['round']}, {f.get('kill', '')}, {'mid-ADD' if f.get('mid-ADD') else 'after ADD'}: " + \
        " / ".join(what)


def report(reps: list[crash.Report], seed, kills: int, load: tuple, secs: float, scratch: str = "") -> str:
    rows = ["| plugin | random kills | mid-ADD | targeted kills | rounds with residue | next-ADD failures "
            "| DEL / GC failures | rebuilds | typical ADD ms | s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in reps:
        rows.append(f"| {r.target} | {r.kills} | {r.mid_share:.0%} | {r.targeted} | {r.residue} | "
                    f"{r.next_add_failures} | {r.del_failures} / {r.gc_failures} | {r.rebuilds} | "
                    f"{r.typical * 1000:.0f} | {r.secs:.0f} |")
    firsts = "\n".join(f"- **{r.target}**: {_first(r)}" for r in reps)
    points = "\n".join(f"- **{r.target}**: " + "; ".join(p.replace("killed when ", "") for p in r.points)
                       for r in reps if r.points)
    if scratch:
        firsts, points = firsts.replace(scratch, "$scratch"), points.replace(scratch, "$scratch")
    stamp = time.strftime("%Y-%m-%d %H:%M")
    return f"""# Crash test: SIGKILL during ADD, then DEL and GC

`sudo .venv/bin/python bench/crash.py --kills {kills} --seed {seed}` (tests/kit/crash.py; the CI test
is tests/integration/test_crash.py with 30 kills per plugin). Each round: ADD of one attachment
killed with SIGKILL (the plugin process only, as a runtime's timeout does; what it forked is let
finish), DEL, GC with `cni.dev/valid-attachments: []` (cniVersion 1.1.0), a comparison of every
test netns involved (links, addresses, routes, rules, permanent neighbours, tc qdiscs and filters),
iptables/nft, the state files and host-local reservations, and the dp's registrations (inline)
with the state before; then the next ADD + DEL of the same attachment. "mid-ADD": the plugin was still
running when killed (random kills only). Targeted kills land at an event of the ADD: the moment a
link appears in a netns or gets its IPv4 address (netlink), or inside a record write (fanotify holds
the plugin's open of a `.tmp` file until the kill). A failed round rebuilds the world.

Run {stamp}, seed {seed}, {secs:.0f} s, load average {load[0]:.2f} / {load[1]:.2f} (before/after), 2 CPUs shared.

{chr(10).join(rows)}

First failure per plugin (kill point, then what DEL + GC left or what failed):

{firsts}

Targeted kill points, as they landed (`$scratch` is the run's scratch dir):

{points}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=int(os.environ.get("PYCNI_CRASH_KILLS", "200")), metavar="N",
                    help="random kills per target (default 200, or $PYCNI_CRASH_KILLS)")
    ap.add_argument("--seed", default=os.environ.get("PYCNI_CRASH_SEED"),
                    help="seed of the kill points (default: random, printed; or $PYCNI_CRASH_SEED)")
    ap.add_argument("--target", action="append", choices=crash.TARGETS, help="only this target (repeatable)")
    ap.add_argument("--no-targeted", action="store_true", help="random kills only")
    ap.add_argument("--json", metavar="FILE", help="also write every failure, in full, to FILE")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/crash.py needs root (network namespaces)", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else str(random.SystemRandom().randrange(10**6))
    print(f"crash bench: seed {seed}, {args.kills} kills per target", flush=True)
    load0 = os.getloadavg()
    t0 = time.monotonic()
    scratch = tempfile.mkdtemp(prefix="pycni-crash-")
    reps = []
    try:
        for name in args.target or crash.TARGETS:
            reps.append(run_target(name, args.kills, seed, scratch, not args.no_targeted,
                                   lambda m: print(m, flush=True)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    load1 = os.getloadavg()
    path = benchout.write("crash", report(reps, seed, args.kills, (load0[0], load1[0]), time.monotonic() - t0,
                                         scratch))
    print(f"wrote {path}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({r.target: r.failures for r in reps}, f, indent=1, default=str)
    return 1 if any(r.failures for r in reps) else 0


if __name__ == "__main__":
    sys.exit(main())
