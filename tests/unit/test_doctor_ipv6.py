"""The IPv6 reverse-path filter rules pycni-doctor's rp-filter-forwarding reads (no root): nft fib
expressions as `nft -j` prints them (checked against the kernel by tests/integration/test_doctor_ipv6.py)."""
import pytest

from plugins.doctor.sysctl import _fib_missing_drop


def fib(flags, right=False, op="=="):
    return {"match": {"op": op, "left": {"fib": {"result": "oif", "flags": flags}}, "right": right}}


V4 = {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4"}}
V6 = {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv6"}}


@pytest.mark.parametrize("exprs,flags", [
    ([fib(["saddr", "iif"]), {"drop": None}], ["saddr", "iif"]),                    # strict
    ([fib(["saddr", "mark", "iif"]), {"drop": None}], ["saddr", "mark", "iif"]),    # firewalld's
    ([V6, fib(["saddr"]), {"drop": None}], ["saddr"]),                              # loose, IPv6 only
    ([V4, fib(["saddr", "iif"]), {"drop": None}], None),                            # IPv4 only: not ours
    ([fib(["saddr", "iif"]), {"accept": None}], None),                              # no drop
    ([fib(["daddr", "iif"]), {"drop": None}], None),                                # not the source
    ([fib(["saddr", "iif"], right=True), {"drop": None}], None),                    # `oif exists drop`
    ([{"counter": None}, {"drop": None}], None),
])
def test_fib_rules_that_filter_the_reverse_path(exprs, flags):
    assert _fib_missing_drop(exprs) == flags
