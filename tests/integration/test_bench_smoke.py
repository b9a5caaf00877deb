"""Every bench script runs in CI: once, in quick mode (a few rounds, 100 leases or services,
1 s of iperf3), writing into a tmp dir through PYCNI_BENCH_OUT, never over the committed
figures in bench/*.md. Each must exit 0 and fill its ratio tables: every figure present,
positive and finite, every ratio the quotient of the figures beside it (to their printed
precision). No speed is asserted: the figures of a quick run on a loaded machine say nothing.
"""
import glob
import math
import os
import re
import subprocess

import pytest

from tests.conftest import ROOT, VENV_BIN

pytestmark = [pytest.mark.root, pytest.mark.slow]
pytest_plugins = ["tests.kit.bundle"]        # foundation_startup times the bundle's binary

BENCH = os.path.join(ROOT, "bench")
NUMBER = re.compile(r"(\d+(?:\.(\d+))?)x?")


def number(cell: str) -> tuple[float, float]:
    """(value, half a unit of its last printed digit) of a figure; it must be a positive number."""
    m = NUMBER.fullmatch(cell.strip())
    assert m, f"not a figure: {cell!r}"
    value = float(m.group(1))
    assert math.isfinite(value) and value > 0, cell
    return value, 0.5 * 10 ** -len(m.group(2) or "")


def assert_quotient(ratio: str, num: str, den: str) -> None:
    """`ratio` is num / den, given that each of the three was rounded when printed."""
    (r, hr), (a, ha), (b, hb) = number(ratio), number(num), number(den)
    low, high = (a - ha) / (b + hb), (a + ha) / max(b - hb, 1e-9)
    assert r + hr >= low and r - hr <= high, f"{ratio} is not {num} / {den}"


def tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Markdown tables by their first header cell; each row maps header -> cell."""
    def cells(line):
        return [c.strip() for c in line.strip().strip("|").split("|")]
    lines, out = text.splitlines(), {}
    for i, line in enumerate(lines[:-1]):
        if line.startswith("|") and lines[i + 1].startswith("|---"):
            head, rows = cells(line), []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(dict(zip(head, cells(row))))
            out[head[0]] = rows
    return out


def by_first(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {next(iter(r.values())): r for r in rows}


def without(text: str, sections: tuple[str, ...]) -> str:
    for s in sections:
        text = re.sub(rf"<!-- {s}:begin -->.*?<!-- {s}:end -->", "", text, flags=re.S)
    return text


# ---- what each script's figures must hold; each returns the start of its main table's header ----

def check_foundation(md: str, bundle) -> str:
    rows = by_first(tables(md)["pycni-passthrough"])
    assert {"Go bridge VERSION", "binary VERSION", "binary ADD", "venv script VERSION",
            "venv script ADD"} <= set(rows), rows
    for row in rows.values():
        assert_quotient(row["x Go bridge VERSION"], row["median ms"], rows["Go bridge VERSION"]["median ms"])
    assert f"- bundle: {bundle / 'pycni'}:" in md          # the binary timed is PYCNI_DIST's
    assert "median of 3 " in md
    return "| pycni-passthrough |"


def check_vxlan_pod(md: str, bundle) -> str:
    rows = by_first(tables(md)["config"])
    assert set(rows) == {"ipMasq off", "ipMasq on"}, rows
    for row in rows.values():
        for verb in ("ADD", "DEL"):
            assert_quotient(row[f"{verb} ratio"], row[f"ours {verb} ms"], row[f"Go {verb} ms"])
    phases = by_first(tables(md)["phase"])
    number(phases["total"]["ADD ms"])
    number(phases["total"]["DEL ms"])
    tput = by_first(tables(md)["datapath"])
    ratio = re.search(r"^Ratio ours / hand-made: (\S+)$", md, re.M)
    assert ratio, md
    assert_quotient(ratio.group(1), tput["pycni vxlan pods"]["median Gbit/s"],
                    tput["hand-made (ip) vxlan pods"]["median Gbit/s"])
    return "| config |"


def check_vxlan_reconcile(md: str, bundle) -> str:
    rows = tables(md)["case"]
    assert [r["case"].split(":")[0] for r in rows] == [
        "program 100 leases (300 entries) from empty", "apply one change (a new public IP) at 100",
        "apply one change at 100"], rows
    for row in rows:
        assert_quotient(row["ratio"], row["pycni (ms)"], row["ip/bridge -batch (ms)"])
    agent = re.search(r"registry write to the new FDB entry in the kernel: (\S+)\*\*", md)
    assert agent, md
    number(agent.group(1))
    return "| case |"


def check_edgemesh_addel(md: str, bundle) -> str:
    rows = by_first(tables(md)["plugin, scenario"])
    assert set(rows) == {"portmap", "edgemesh first/last", "edgemesh steady", "edgemesh first/last +device"}
    for row in rows.values():
        for verb in ("ADD", "DEL"):
            assert_quotient(row[f"{verb} / portmap"], row[f"{verb} median ms"], rows["portmap"][f"{verb} median ms"])
    return "| plugin, scenario |"


def check_edgemesh_ignored(md: str, bundle) -> str:
    rows = by_first(tables(md)["100 ignored services"])
    assert set(rows) == {"plugin ADD", "one restore", "one call per rule"}, rows
    for row in rows.values():
        assert_quotient(row["/ one restore"], row["median ms"], rows["one restore"]["median ms"])
    return "| 100 ignored services |"


def check_dp_steering(md: str, bundle) -> str:
    pods = by_first(tables(md)["pod"])
    assert set(pods) == {"Go bridge alone", "dp-steering tap", "dp-steering inline"}, pods
    for row in pods.values():
        for way, col in (("in", "host -> pod Gbit/s"), ("out", "pod -> host Gbit/s")):
            assert_quotient(row[f"vs bridge ({way})"], row[col], pods["Go bridge alone"][col])
    for steered in ("dp-steering tap", "dp-steering inline"):
        number(pods[steered]["through the dp, GB"])          # the traffic did cross the dp
    rows = by_first(tables(md)["plugin"])
    assert set(rows) == {"Go bridge (+host-local)", "dp-steering (inline)"}, rows
    for row in rows.values():
        for verb in ("ADD", "DEL"):
            assert_quotient(row[f"{verb} / bridge"], row[f"{verb} median ms"],
                            rows["Go bridge (+host-local)"][f"{verb} median ms"])
    return "| pod |"


def check_fuzz(md: str, bundle) -> str:
    rows = tables(md)["plugin"]
    assert {r["plugin"] for r in rows} == {"pycni-passthrough", "edgemesh", "vxlan", "dp-steering"}, rows
    for row in rows:
        assert int(row["cases"]) > 0
        for col in ("999", "traceback", "hang", "other", "rejected ADD"):
            assert row[col] == "0", (row["plugin"], row["verb"], col, row[col])
    return "| plugin | verb |"


def check_crash(md: str, bundle) -> str:
    (row,) = tables(md)["plugin"]
    assert row["random kills"] == "2" and row["rounds with residue"] == "0", row
    assert row["next-ADD failures"] == "0", row
    return "| plugin | random kills |"


def check_vxlan_etcd_scale(md: str, bundle) -> str:
    rows = by_first(tables(md)["peers"])
    assert set(rows) == {"10", "50"}, rows
    for row in rows.values():
        assert_quotient(row["ratio"], row["agent from empty (ms)"], row["ip/bridge -batch (ms)"])
        for col in ("one added (ms)", "one removed (ms)", "put call (ms)", "agent VmRSS (MiB)"):
            number(row[col])
    pods = tables(md)["registry"]
    assert {(r["registry"], r["peers"]) for r in pods} == {(g, n) for g in ("file", "etcd") for n in ("10", "50")}
    for row in pods:
        base = next(r for r in pods if r["registry"] == row["registry"] and r["peers"] == "10")
        for verb in ("ADD", "DEL"):
            assert_quotient(row[f"{verb} / {verb} at fewest"], row[f"pod {verb} (ms)"], base[f"pod {verb} (ms)"])
    assert re.search(r"^\*\*Linear: (yes|no)\*\*", md, re.M), md
    assert "![vxlan-agent on etcd, scale](vxlan_etcd_scale.png)" in md     # the plot was drawn
    return "| peers |"


def check_node_daemon(md: str, bundle) -> str:
    rows = by_first(tables(md)["plugin, mode"])
    plugins = ("vxlan", "dp-steering", "edgemesh", "pycni-passthrough")
    assert set(rows) == {"Go bridge+host-local"} | {f"{p}, {m}" for p in plugins for m in ("in-process", "daemon")}
    go = rows["Go bridge+host-local"]
    for row in rows.values():
        for verb in ("ADD", "DEL"):
            assert_quotient(row[f"{verb} / Go"], row[f"{verb} median ms"], go[f"{verb} median ms"])
    speed = by_first(tables(md)["plugin"])
    for p in plugins:
        for verb in ("ADD", "DEL"):
            assert_quotient(speed[p][f"{verb} in-process / daemon"], rows[f"{p}, in-process"][f"{verb} median ms"],
                            rows[f"{p}, daemon"][f"{verb} median ms"])
    return "| plugin, mode |"


def check_doctor_scale(md: str, bundle) -> str:
    rows = by_first(tables(md)["parallel"])
    assert set(rows) == {"4"}, rows
    total, per_ns = number(rows["4"]["total s"]), number(rows["4"]["per namespace ms"])
    assert abs(per_ns[0] - total[0] * 1000 / 20) <= total[1] * 1000 / 20 + per_ns[1], rows   # 20 namespaces
    assert_quotient(rows["4"]["of the 5 s goal"], rows["4"]["total s"], "5")
    number(rows["4"]["CPU s"])
    parts = by_first(tables(md)["in each namespace's child"])
    for part in ("fork and setns", "nft", "child in all"):
        number(parts[part]["mean ms"])
    assert {"nfqueue-no-reader", "policy-route-steals-replies"} <= set(by_first(tables(md)["check"])), md
    assert "Every run found the node healthy" in md, md
    assert "**Goal: well under 5 s at 100 namespaces: not judged at 20 namespaces**" in md, md
    return "| parallel |"


def check_vxlan_ipv6_iperf(md: str, bundle) -> str:
    rows = by_first(tables(md)["datapath"])
    assert len(rows) == 6, rows
    for row in rows.values():
        for cell in [row["median Gbit/s"], row["sender CPU %"], row["receiver CPU %"], row["Gbit per CPU-second"],
                     *row["rounds"].split(", ")]:
            number(cell)
    ratios = by_first(tables(md)["ratio"])
    pairs = {"IPv6 pods: pycni / hand-made": ("pycni pods, IPv6 overlay", "hand-made pods, IPv6 vxlan"),
             "IPv4 pods: pycni / hand-made (reference)": ("pycni pods, IPv4 overlay", "hand-made pods, IPv4 vxlan")}
    for label, (a, b) in pairs.items():
        assert_quotient(ratios[label]["of medians"], rows[a]["median Gbit/s"], rows[b]["median Gbit/s"])
    head = re.search(r"^\*\*IPv6 overlay / hand-built IPv6 VXLAN: (\S+)\*\*", md, re.M)
    assert head and head.group(1) == ratios["IPv6 pods: pycni / hand-made"]["per-round median"], md
    number(ratios["IPv6 pods: pycni / hand-made"]["per CPU-second, per-round median"])
    return "| datapath |"


def check_startup_floor(md: str, bundle) -> str:
    rows = by_first(tables(md)["case"])
    assert {"Go bridge VERSION (reference)", "venv python -I -S -c pass", "venv pip console script, through the daemon",
            "venv launcher (build.sh, python -IS), through the daemon",
            "bundle bootloader (a link to pycni/pycni), through the daemon"} <= set(rows), rows
    if not os.path.islink(os.path.join(bundle, "bin", "pycni-passthrough")):     # build.sh gave it launchers
        assert "bundle launcher (bin/<name> on pycni/bin/python3), through the daemon" in rows, rows
    assert any(k.startswith("bundle variant thin:") for k in rows), rows
    go = rows["Go bridge VERSION (reference)"]["median ms"]
    for row in rows.values():
        assert_quotient(row["x Go bridge VERSION"], row["median ms"], go)
        low, high = (number(x)[0] for x in row["p10-p90 ms"].split("-"))
        assert low <= number(row["median ms"])[0] <= high, row
    phases = next(v for k, v in tables(md).items() if k.startswith("phase (strace"))
    assert by_first(phases)["total under strace"], phases
    for row in phases:
        for cell in list(row.values())[1:]:
            assert cell == "-" or number(cell), row
    counts = by_first(tables(md)["syscalls per exec (median)"])
    number(counts["syscalls"]["bundle bootloader"])
    number(counts["syscalls"]["venv launcher"])
    assert "plugins.node.client" in by_first(tables(md)["frozen import (thin variant, -X importtime)"])
    assert re.search(r"^Fastest client exec: \*\*.+, [\d.]+ ms \([\d.]+x Go bridge VERSION\)\*\*", md, re.M), md
    return "| case |"


def check_cri_pod(md: str, bundle) -> str:
    rows = by_first(tables(md)["mode"])
    go = "Go bridge+host-local+portmap"
    assert set(rows) == {go, "ours, in-process", "ours, daemon"}, rows
    for row in rows.values():
        for cell in list(row.values())[1:]:
            number(cell)
        stop, remove, both = (number(row[f"{s} ms"]) for s in ("StopPodSandbox", "RemovePodSandbox", "Stop+Remove"))
        assert abs(stop[0] + remove[0] - both[0]) <= stop[1] + remove[1] + both[1], row
    ratios = by_first(tables(md)["ours / Go"])
    assert set(ratios) == {"ours, in-process", "ours, daemon"}, ratios
    for mode, row in ratios.items():
        for step in ("chain ADD", "chain DEL", "RunPodSandbox", "Stop+Remove"):
            assert_quotient(row[step], rows[mode][f"{step} ms"], rows[go][f"{step} ms"])
    goal = re.search(r"^\*\*Goal, through pycni-node within 1.5x of Go: (met|not met)\*\* \(RunPodSandbox (\S+)x, "
                     r"Stop\+Remove (\S+)x\)", md, re.M)
    assert goal, md
    assert_quotient(goal.group(2), rows["ours, daemon"]["RunPodSandbox ms"], rows[go]["RunPodSandbox ms"])
    usage = by_first(tables(md)["pycni-node"])
    number(usage["VmRSS idle (MiB)"]["value"])
    for row in usage.values():
        assert re.fullmatch(r"\d+(\.\d+)?", row["value"]), row
    # pycni-node as a node runs it (--conf): its vxlan agent and fail-open watcher, counted apart
    for service in ("vxlan-agent", "dp-failopen"):
        number(usage[f"{service} (a service of pycni-node): private memory idle (MiB)"]["value"])
    served = re.search(r"^Requests pycni-node served per CRI pod .*?: (.*)\.$", md, re.M)
    assert served, md
    counts = dict(item.rsplit(" ", 1) for item in served.group(1).split(", "))
    assert {k: float(v) for k, v in counts.items()} == {   # containerd 1.6 tears the network down at Stop and Remove
        f"{p} {v}": (1.0 if v == "ADD" else 2.0) for p in ("vxlan", "dp-steering", "edgemesh") for v in ("ADD", "DEL")}
    assert "![containerd CRI pod times](cri_pod.png)" in md
    return "| mode |"


# script: (quick options, figures file, sections it writes (None: the whole file), check)
QUICK = {
    "foundation_startup.py": (["--runs", "3"], "foundation", None, check_foundation),
    "vxlan_pod.py": (["--runs", "3", "--iperf-seconds", "1", "--iperf-rounds", "1"], "vxlan_pod", None,
                     check_vxlan_pod),
    "vxlan_reconcile.py": (["--runs", "3", "--leases", "100"], "vxlan_reconcile", ("reconcile",),
                           check_vxlan_reconcile),
    "edgemesh_addel.py": (["--runs", "3"], "edgemesh", ("addel",), check_edgemesh_addel),
    "edgemesh_ignored.py": (["--runs", "3", "--services", "100"], "edgemesh", ("ignored",),
                            check_edgemesh_ignored),
    "dp_steering.py": (["--runs", "3", "--seconds", "1"], "dp_steering", ("iperf", "addel"), check_dp_steering),
    "fuzz.py": (["--cases", "5"], "fuzz", None, check_fuzz),
    "crash.py": (["--kills", "2", "--seed", "1", "--target", "edgemesh-iptables", "--no-targeted"], "crash", None,
                 check_crash),
    "vxlan_etcd_scale.py": (["--peers", "10,50", "--pod-peers", "10,50", "--runs", "1"], "vxlan_etcd_scale",
                            ("scale",), check_vxlan_etcd_scale),
    "node_daemon.py": (["--runs", "2"], "node_daemon", None, check_node_daemon),
    "doctor_scale.py": (["--namespaces", "20", "--runs", "1", "--parallel", "4"], "doctor_scale", None,
                        check_doctor_scale),
    "vxlan_ipv6_iperf.py": (["--runs", "1", "--seconds", "1"], "vxlan_ipv6_iperf", None, check_vxlan_ipv6_iperf),
    "startup_floor.py": (["--runs", "3", "--variants", "quick"], "startup_floor", None, check_startup_floor),
    "cri_pod.py": (["--runs", "2"], "cri_pod", None, check_cri_pod),
}


# The probes: scripts that print where a plugin's own time goes (counts, profiles) and write no
# figures file. script: (quick options, a line their table must print)
PROBES = {
    "pod_work.py": (["--pods", "1", "--cases", "chain,agent"], "| agent vxlan ADD (steady)"),
    "skel_cost.py": (["--runs", "3"], "| edgemesh ADD"),
}


def test_every_bench_script_is_smoked():
    scripts = {os.path.basename(p) for p in glob.glob(os.path.join(BENCH, "*.py"))} - {"benchout.py", "__init__.py"}
    assert scripts == set(QUICK) | set(PROBES)


@pytest.mark.parametrize("script", list(PROBES))
def test_probe_runs_quick_and_prints_its_table(script, tmp_path):
    args, line = PROBES[script]
    before = sorted(os.listdir(BENCH))
    p = subprocess.run([os.path.join(VENV_BIN, "python"), os.path.join(BENCH, script), *args],
                       env=dict(os.environ, PYCNI_BENCH_OUT=str(tmp_path)), cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert any(row.startswith(line) for row in p.stdout.splitlines()), p.stdout
    assert sorted(os.listdir(BENCH)) == before and not os.listdir(tmp_path)      # it wrote nothing


@pytest.mark.parametrize("script", list(QUICK))
def test_bench_runs_quick_and_fills_its_ratios(script, bundle, tmp_path):
    args, name, sections, check = QUICK[script]
    out = tmp_path / "figures"
    env = dict(os.environ, PYCNI_BENCH_OUT=str(out), PYCNI_DIST=str(bundle))
    p = subprocess.run([os.path.join(VENV_BIN, "python"), os.path.join(BENCH, script), *args], env=env,
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert set(os.listdir(out)) - {f"{name}.png"} == {f"{name}.md"}       # a plot beside it, if any
    md = (out / f"{name}.md").read_text()
    head = check(md, bundle)
    committed = open(os.path.join(BENCH, f"{name}.md")).read()
    table = md[md.index(head):].split("\n\n")[0]
    assert table not in committed                             # this run's figures went to the tmp dir only
    if sections:                                              # the rest is the committed file's prose
        assert without(md, sections) == without(committed, sections)
