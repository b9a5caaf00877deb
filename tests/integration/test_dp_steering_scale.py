"""20 pods share one enforcer netns (ADDs racing on the state lock); deleting them in random
order leaves the enforcer netns with nothing of ours: no device, no qdisc, no filter, no record."""
import os
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from plugins.meta.dp_steering import datapath_pedit
from plugins.pkg import probe
from tests.kit.dp_steering import World

pytestmark = pytest.mark.root
PODS = 20


def test_twenty_pods_share_the_enforcer_and_leave_nothing_behind(netns, tmp_path):
    w = World(netns, tmp_path)
    with w.dp() as dp, ThreadPoolExecutor(4) as pool:
        pods = list(pool.map(lambda i: w.add(f"p{i:02d}"), range(PODS)))
        records = [w.record(p) for p in pods]
        assert {r["installed"] for r in records} == {"inline"}
        auto = "tc-pedit" if datapath_pedit.available() else "ebpf"      # datapath auto
        assert {r["datapath"] for r in records} == {auto}
        assert len({r["ucmac"] for r in records}) == PODS
        assert len({r["vex"] for r in records} | {r["vin"] for r in records}) == 2 * PODS
        vbr_filters = w.enf.run("tc", "filter", "show", "dev", "vbr", "ingress").stdout
        assert vbr_filters.count("direct-action") == 2 * PODS
        for p in random.sample(pods, 3):
            assert probe.ping(w.host.path, p.ip, count=1, timeout=2) == [0]
        dp.wait(lambda s: len(s["pods"]) >= 3, "the dp learned the pods it saw")

        order = random.sample(pods, PODS)
        for n, p in enumerate(order, 1):
            w.delete(p)
            if n == PODS // 2:             # half gone: the others still work
                left = order[n:]
                assert probe.ping(w.host.path, left[0].ip, count=1, timeout=2) == [0]
                assert w.enf.run("tc", "filter", "show", "dev", "vbr", "ingress").stdout.count(
                    "direct-action") == 2 * len(left)

    assert w.enf.run("ip", "-o", "link", "show").stdout.split(":")[1].strip() == "lo"
    assert len(w.enf.run("ip", "-o", "link", "show").stdout.splitlines()) == 1
    assert "ingress" not in w.enf.run("tc", "qdisc", "show").stdout
    assert not os.listdir(os.path.join(w.state_dir, "pods"))
    assert not os.path.exists(os.path.join(w.state_dir, "shared")) or not os.listdir(
        os.path.join(w.state_dir, "shared"))
