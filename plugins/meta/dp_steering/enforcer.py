"""The enforcer netns side: the shared vbr/vth pair and whether a dp reads vth.

The pair is created by the first pod that needs it and deleted with the last one; who
uses it, and the UCMAC and vbr priorities each user took, is recorded in the state
(state.pair) under the state lock. A dp is "there" when an AF_PACKET socket in the
enforcer netns is bound to vth's ifindex (/proc/net/packet, read from inside that netns).
"""
from __future__ import annotations

import time

from plugins.pkg import link, ns, tc

from . import state, triad

PAIR_INDEX = 10000000     # vbr's ifindex (vth: +1), far from those pods' ports keep (NeuVector's)


def ensure_pair(rt, netns: str, vbr: str, vth: str, mtu: int) -> bool:
    """vbr <-> vth up, with an ingress qdisc on vbr and an MTU of at least `mtu`.
    True when this call created it (a pair it created and could not finish is deleted)."""
    have = link.find(rt, vbr)
    if have is not None and not is_pair(rt, vbr, vth):
        raise FileExistsError(f"{vbr} exists in the enforcer netns but is not our vbr/vth veth pair")
    if have is not None:
        if have.mtu < mtu:
            for index in (have.index, have.peer):       # is_pair: the peer is vth
                link.set_link(rt, index, mtu=mtu)
        tc.ensure_ingress(rt, have.index)
        return False
    free = [rt.link(index=i) is None for i in (PAIR_INDEX, PAIR_INDEX + 1)]
    index = link.create_veth(rt, vbr, vth, mtu=mtu, index=PAIR_INDEX if free[0] else 0,
                             peer_index=PAIR_INDEX + 1 if free[1] else 0)
    try:
        triad.quiet_up(rt, netns, vth, vbr)
        tc.ensure_ingress(rt, index)
    except BaseException:
        link.delete_if_exists(rt, vbr)
        raise
    return True


def is_pair(rt, vbr: str, vth: str) -> bool:
    """Is `vbr` a veth whose peer is `vth` here (the pair we make; never delete anything else)?"""
    have, peer = link.find(rt, vbr), link.find(rt, vth)
    return have is not None and peer is not None and have.kind == "veth" and have.peer == peer.index


def acquire(rt, pod: state.Pod, state_dir: str, mtu: int, taken: tuple[list[str], dict]) -> bool:
    """Count the pod as a user of its pair with the UCMAC and vbr priorities it took, in one
    fsync'd write of the pair's record, then make the pair if needed (a kill in between leaves
    a user the pair's last DEL or GC drops). `taken`: the other users and the allocations to
    write (the pod's among them), as the allocation found them (steering._allocate, under the
    same lock hold). The pod's journal names its UCMAC and priorities before this write (its
    "pair" step): a kill on either side of it leaves them named, in the journal, the record or
    both. True if this created the pair. On failure the pod is no user and nothing it made is
    left."""
    keys, allocations = taken
    state.set_users(state_dir, pod.enforcer, pod.vbr, keys + [pod.key], allocations)
    try:
        return ensure_pair(rt, pod.enforcer, pod.vbr, pod.vth, mtu)
    except BaseException:
        state.set_users(state_dir, pod.enforcer, pod.vbr, state.live_users(state_dir, pod.enforcer, pod.vbr, pod.key))
        raise


def release(rt, pod: state.Pod, state_dir: str, keys: list[str] | None = None, deleted: bool = False,
            allocations: dict | None = None) -> bool:
    """Forget the pod as a user (and its allocations entry); delete the pair when no user that
    still exists is left. True if deleted. `keys`: those users, when the caller read them
    already (`allocations`: the record's, read with them); `deleted`: the caller deleted the
    pair already (with the pod's port, triad.restore's `also`)."""
    if keys is None:
        keys = state.live_users(state_dir, pod.enforcer, pod.vbr, pod.key)
    state.set_users(state_dir, pod.enforcer, pod.vbr, keys, allocations)
    if keys:
        return False
    return deleted or drop_pair(rt, pod.vbr, pod.vth)


def drop_pair(rt, vbr: str, vth: str) -> bool:
    """Delete the pair, if it is ours (a veth vbr <-> vth). True if deleted."""
    if not is_pair(rt, vbr, vth):
        return False
    return link.delete_if_exists(rt, vbr)


def reader_on(netns: str, ifindex: int) -> bool:
    """Is an AF_PACKET socket in `netns` bound to `ifindex`?"""
    with ns.enter(netns):
        with open("/proc/thread-self/net/packet") as f:
            lines = f.read().splitlines()[1:]
    return any(len(cols) > 4 and cols[4] == str(ifindex) for cols in (ln.split() for ln in lines))


def wait_reader(netns: str, ifindex: int, wait_ms: int) -> bool:
    """reader_on, polled for up to `wait_ms` (a dp opens a new vth when it sees it appear)."""
    deadline = time.monotonic() + wait_ms / 1000
    while True:
        if reader_on(netns, ifindex):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
