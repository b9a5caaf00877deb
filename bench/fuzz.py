"""The larger fuzz run (issue 8): every plugin and verb, N seeded cases each, counts to bench/fuzz.md.

    sudo .venv/bin/python bench/fuzz.py --cases 500 --seed 1 [--plugins vxlan,edgemesh] [--exec-share 0.05]

The same worlds, mutator and verdict as tests/integration/test_fuzz.py (tests/kit/fuzz.py): real
test namespaces (all removed), most cases forked into skel.run, a share exec'd. Writes, per plugin
and verb: cases (forked/exec), codes seen, 999s, tracebacks, hangs, other broken answers, residue
(left by a rejected ADD; left after a successful ADD and its DEL; node-level state a mutated node
key made), and one reproducer per distinct problem. Exit status 1 when a problem or rejected-ADD
residue was found, so a script can gate on it. Root.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import benchout  # noqa: E402
from tests.kit import fuzz as F  # noqa: E402

ORDER = ("VERSION", "STATUS", "CHECK", "ADD", "DEL", "GC")


def _key(plugin: str, verb: str, p: dict) -> tuple:
    msg = ""
    try:
        start = p["outcome"].index("stdout=")
        msg = p["outcome"][start:start + 200]
        j = p["outcome"]
        if '"msg": ' in j:
            msg = j.split('"msg": ', 1)[1].split("\\n", 1)[0][:80]
    except ValueError:
        pass
    return plugin, verb, tuple(p["what"]), msg


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=500, help="cases per plugin and verb (default 500)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--plugins", default=",".join(F.PLUGINS))
    ap.add_argument("--exec-share", type=float, default=0.05, help="share of cases exec'd (default 0.05)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every finding as it comes")
    opts = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.stderr.write("bench/fuzz.py needs root (network namespaces)\n")
        return 2
    load0, started = os.getloadavg(), time.monotonic()
    stats: list[F.Stats] = []
    factory = F.Factory()
    try:
        with tempfile.TemporaryDirectory(prefix="pycni-fuzz-") as tmp:
            for plugin in opts.plugins.split(","):
                world = F.make_world(plugin, factory, os.path.join(tmp, plugin))
                try:
                    for verb in ORDER:
                        st = F.fuzz(world, verb, opts.cases, opts.seed, exec_share=opts.exec_share,
                                    log=print if opts.verbose else None)
                        print(st.summary(), flush=True)
                        stats.append(st)
                finally:
                    world.close()
    finally:
        factory.close()
    text = render(stats, opts, load0, os.getloadavg(), time.monotonic() - started)
    print(f"wrote {benchout.write('fuzz', text)}")
    bad = any(st.problems or any(r["what"] == "left by a rejected ADD" for r in st.residue) for st in stats)
    return 1 if bad else 0


def render(stats: list[F.Stats], opts, load0, load1, secs: float) -> str:
    out = [
        "# Fuzz: every plugin and verb, seeded (bench/fuzz.py)",
        "",
        f"`sudo .venv/bin/python bench/fuzz.py --cases {opts.cases} --seed {opts.seed}` "
        f"(exec share {opts.exec_share}). Run {time.strftime('%Y-%m-%d %H:%M')}, {secs:.0f} s, load average "
        f"{load0[0]:.2f} / {load1[0]:.2f} (before/after). Same worlds, mutator and verdict as the CI fuzz test "
        "(`tests/integration/test_fuzz.py`, fewer cases); see `tests/kit/fuzz.py`.",
        "",
        "What counts: **999** (our bug code on stdout), **traceback** (on stderr), **hang** (no answer "
        f"within {F.FORK_TIMEOUT:.0f} s forked / {F.EXEC_TIMEOUT:.0f} s exec'd, killed), **other** (stdout not one "
        "error JSON nor a valid result, exit status not 1 iff error). Residue: **rejected ADD** (links, "
        "addresses, routes, neighbours of the world's namespaces, iptables/nft rules, files in stateDir, "
        "records, host-local's dataDir and the private /var/lib/cni, after an ADD that failed), **ADD+DEL** "
        "(after a successful ADD and the runtime's DEL of it), **node** (files only, where the case changed a "
        "node key such as stateDir, registry or network: node-level state, reported, not a pod's leftover).",
        "",
        "| plugin | verb | cases | forked | exec | ok | 999 | traceback | hang | other | rejected ADD | ADD+DEL "
        "| node | codes seen |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for st in stats:
        bad = ("code 999", "traceback", "hang")
        other = len([p for p in st.problems if not any(k in " ".join(p["what"]) for k in bad)])
        res = {k: len([r for r in st.residue if r["what"] == k]) for k in
               ("left by a rejected ADD", "left after ADD + DEL")}
        node = len([r for r in st.residue if r["what"].startswith("node state")])
        ordered = sorted(st.codes.items(), key=lambda kv: (isinstance(kv[0], str), str(kv[0])))
        codes = ", ".join(f"{k}: {v}" for k, v in ordered)
        out.append(f"| {st.plugin} | {st.verb} | {st.cases} | {st.forked} | {st.execd} | {st.ok} | "
                   f"{st.count('code 999')} | {st.count('traceback')} | {st.count('hang')} | {other} | "
                   f"{res['left by a rejected ADD']} | {res['left after ADD + DEL']} | {node} | {codes} |")
    total = sum(st.cases for st in stats)
    out += ["", f"Total: {total} cases, {sum(len(st.problems) for st in stats)} broken answers, "
            f"{sum(len([r for r in st.residue if r['what'] == 'left by a rejected ADD']) for st in stats)} "
            "rejected ADDs with residue.", ""]
    seen, repro = set(), []
    for st in stats:
        for p in st.problems:
            k = _key(st.plugin, st.verb, p)
            if k not in seen:
                seen.add(k)
                repro.append((st.plugin, st.verb, p))
        for r in st.residue:
            k = (st.plugin, st.verb, r["what"], tuple(sorted(r["diff"])))
            if k not in seen:
                seen.add(k)
                repro.append((st.plugin, st.verb, r))
    out.append("## Reproducers (one per distinct finding)")
    out.append("")
    if not repro:
        out.append("None.")
    for plugin, verb, p in repro[:60]:
        what = p["what"] if isinstance(p["what"], str) else "; ".join(p["what"])
        out.append(f"- **{plugin} {verb}**, case {p['case']}: {what}, after {p['mutations']}")
        out.append(f"  - env: `{json.dumps(p['env'], ensure_ascii=True)[:600]}`")
        out.append(f"  - stdin: `{json.dumps(p['stdin'], ensure_ascii=True)[:600]}`")
        if "outcome" in p:
            out.append(f"  - outcome: `{p['outcome'][:700]}`")
        if "diff" in p:
            out.append(f"  - residue: `{json.dumps(p['diff'], ensure_ascii=True)[:700]}`")
    if len(repro) > 60:
        out.append(f"- ... {len(repro) - 60} more")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
