"""plugins.pkg.nft's netfilter netlink parts as edgemesh's DEL uses them, against the kernel in a
scratch netns: rules()' jump target, delete()'s answer when the kernel refuses the whole batch,
and the generation a teardown's transaction holds to."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest

from plugins.pkg import nft, ns

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft")


def _table(box, chains=("mesh",)) -> None:
    box.run("nft", "add", "table", "ip", "rvt")
    for c in chains:
        box.run("nft", "add", "chain", "ip", "rvt", c)


def test_rules_finds_the_jump_after_an_immediate_without_a_verdict(netns):
    """`meta mark set 0x1 jump tgt`: the mark's value is an immediate too (loaded into a
    register), before the jump's; the jump is still found."""
    box = netns("nfj")
    _table(box, ("mesh", "tgt"))
    box.run("nft", "add", "rule", "ip", "rvt", "mesh", "meta", "mark", "set", "0x1", "jump", "tgt",
            "comment", '"marked"')
    box.run("nft", "add", "rule", "ip", "rvt", "mesh", "jump", "tgt")
    box.run("nft", "add", "rule", "ip", "rvt", "mesh", "meta", "mark", "set", "0x2")
    with ns.enter(box.path):
        got = nft.rules("ip", "rvt", "mesh")
    assert [(c, j) for _, c, j in got] == [("marked", "tgt"), ("", "tgt"), ("", "")], got


# delete() in a child that has lost CAP_NET_ADMIN: DROP takes it out of the bounding set and
# execs AFTER, which (root, but capabilities recomputed at exec) then has it nowhere; the
# kernel refuses the batch whole, answering its begin message.
DROP = r"""
import ctypes, os, sys
PR_CAPBSET_DROP, CAP_NET_ADMIN = 24, 12
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_CAPBSET_DROP, CAP_NET_ADMIN, 0, 0, 0) != 0:
    sys.exit("prctl: " + os.strerror(ctypes.get_errno()))
os.execv(sys.executable, [sys.executable, "-c", sys.argv[1], sys.argv[2]])
"""
AFTER = r"""
import json, sys, time
from plugins.pkg import nft, ns
with ns.enter(sys.argv[1]):
    start = time.monotonic()
    try:
        nft.delete([("table", "ip", "rvt")])
        out = {"errno": 0}
    except OSError as e:
        out = {"errno": e.errno, "msg": str(e)}
    out["seconds"] = time.monotonic() - start
print(json.dumps(out))
"""


def test_delete_refused_whole_fails_at_once_with_the_kernels_errno(netns):
    box = netns("nfp")
    _table(box)
    p = subprocess.run([sys.executable, "-c", DROP, AFTER, box.path], capture_output=True, text=True, cwd=ROOT,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["errno"] == errno.EPERM, got                 # not ETIMEDOUT after BATCH_TIMEOUT
    assert got["seconds"] < nft.BATCH_TIMEOUT / 2, got
    assert "table ip rvt" in box.run("nft", "list", "tables").stdout          # nothing changed


def test_delete_holds_to_the_generation_it_was_given(netns):
    """A commit after generation() (here an `nft add rule`, a process of its own) makes the
    kernel refuse the transaction given that generation (ERESTART) and change nothing; given
    the generation read after it, the same transaction goes through."""
    box = netns("nfg")
    _table(box)
    with ns.enter(box.path):
        gen = nft.generation()
        assert nft.generation() == gen                                     # reading commits nothing
        box.run("nft", "add", "rule", "ip", "rvt", "mesh", "ip", "saddr", "10.9.9.4", "return")
        with pytest.raises(OSError) as e:
            nft.delete([("rules", "ip", "rvt", "mesh")], generation=gen)
        assert e.value.errno == errno.ERESTART, e.value
        assert len(nft.rules("ip", "rvt", "mesh")) == 1
        now = nft.generation()
        assert now != gen
        nft.delete([("rules", "ip", "rvt", "mesh")], generation=now)
        assert nft.rules("ip", "rvt", "mesh") == []
