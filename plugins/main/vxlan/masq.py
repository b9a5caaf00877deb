"""ipMasq: masquerade what a pod sends outside the cluster network.

The shape of Go's ip.SetupIPMasq: a chain per attachment in the nat table that
ACCEPTs traffic to the cluster network and MASQUERADEs the rest (multicast aside),
and a POSTROUTING jump per pod address. Every rule carries the comment
`pycni-vxlan net=<network> id=<container> if=<ifname>`, so DEL and GC find them in
iptables-save output without state and never touch a rule we did not write.
IPv6 (`family=6`): the same chain and jumps with ip6tables (its nat table; on an nftables host
ip6tables is ip6tables-nft, the `ip6 nat` table), /128 sources, multicast ff00::/8 aside.
"""
from __future__ import annotations

import ipaddress
import re

from libcni_py.errors import CNIError
from plugins.pkg import iptables
from plugins.pkg.names import check_ifname, check_path_component, short_hash

TABLE = "nat"
_TAG_RE = re.compile(r"pycni-vxlan net=(\S+) id=(\S+) if=([^\"\s]+)")
_SRC_RE = re.compile(r"^-A POSTROUTING -s (\S+) ")


def chain_name(network: str, container_id: str, ifname: str) -> str:
    return "PYCNI-VX-" + short_hash(network, container_id, ifname, n=16).upper()


def comment(network: str, container_id: str, ifname: str) -> str:
    check_path_component(network, "network name")
    check_path_component(container_id, "container ID")
    check_ifname(ifname)
    return iptables.check_comment(f"pycni-vxlan net={network} id={container_id} if={ifname}")


def _binary(family: int) -> str:
    return "ip6tables" if family == 6 else "iptables"


def setup(network: str, container_id: str, ifname: str, pod_ips: list[str], cluster: str,
          family: int = 4) -> None:
    """Install (or complete) the attachment's rules in one iptables-restore transaction (family 6:
    ip6tables-restore)."""
    tag = iptables.comment_arg(comment(network, container_id, ifname))
    chain = chain_name(network, container_id, ifname)
    cluster = str(ipaddress.ip_network(cluster, strict=False))
    binary = _binary(family)
    installed = _jumps(iptables.save(TABLE, binary), network, container_id, ifname)
    multicast, host = ("ff00::/8", 128) if family == 6 else ("224.0.0.0/4", 32)
    lines = [f":{chain} - [0:0]",                     # declares, or flushes ours
             f"-A {chain} -d {cluster} {tag} -j ACCEPT",
             f"-A {chain} ! -d {multicast} {tag} -j MASQUERADE"]
    for ip in pod_ips:
        src = f"{ipaddress.ip_address(ip)}/{host}"
        if src not in installed:
            lines.append(f"-A POSTROUTING -s {src} {tag} -j {chain}")
    iptables.restore(TABLE, lines, binary)


def teardown(network: str, container_id: str, ifname: str, family: int = 4) -> bool:
    """Remove the attachment's rules and chain. False when there was nothing to remove.

    Its chain missing (one netfilter netlink dump with iptables-nft) means nothing to remove:
    setup makes the chain and its jumps in one transaction, and iptables deletes no chain a rule
    still jumps to; so no iptables-save then (the exec a DEL of an ipMasq-off pod paid)."""
    binary = _binary(family)
    comment(network, container_id, ifname)            # the names checked as the save path checks them
    found = iptables.chains(TABLE, binary)
    if found is not None and chain_name(network, container_id, ifname) not in found:
        return False
    lines = _teardown_lines(iptables.save(TABLE, binary), network, container_id, ifname)
    if lines:
        iptables.restore(TABLE, lines, binary)
    return bool(lines)


def gc(network: str, keep: set[tuple[str, str]], family: int = 4) -> list[tuple[str, str]]:
    """Remove the rules of every attachment of `network` not in `keep`; returns those removed."""
    binary = _binary(family)
    saved = iptables.save(TABLE, binary)
    stale = sorted({(cid, ifn) for net, cid, ifn in _TAG_RE.findall(saved)
                    if net == network and (cid, ifn) not in keep and _ours(network, cid, ifn)})
    lines: list[str] = []
    for cid, ifn in stale:
        lines += _teardown_lines(saved, network, cid, ifn)
    if lines:
        iptables.restore(TABLE, lines, binary)
    return stale


def _ours(network: str, container_id: str, ifname: str) -> bool:
    """A tag we could have written (anything else in a comment is left alone)."""
    try:
        comment(network, container_id, ifname)
    except CNIError:
        return False
    return True


def present(network: str, container_id: str, ifname: str, family: int = 4) -> list[str]:
    """Source addresses whose jump to the attachment's chain is installed (for CHECK)."""
    return sorted(_jumps(iptables.save(TABLE, _binary(family)), network, container_id, ifname))


def _jumps(saved: str, network: str, container_id: str, ifname: str) -> set[str]:
    """Sources of our POSTROUTING jumps, parsed back and validated as addresses."""
    chain = chain_name(network, container_id, ifname)
    text = comment(network, container_id, ifname)
    out = set()
    for line in saved.splitlines():
        m = _SRC_RE.match(line)
        if m and text in line and line.rstrip().endswith(f"-j {chain}"):
            out.add(str(ipaddress.ip_network(m.group(1), strict=False)))
    return out


def _teardown_lines(saved: str, network: str, container_id: str, ifname: str) -> list[str]:
    tag = iptables.comment_arg(comment(network, container_id, ifname))
    chain = chain_name(network, container_id, ifname)
    lines = [f"-D POSTROUTING -s {src} {tag} -j {chain}"
             for src in sorted(_jumps(saved, network, container_id, ifname))]
    if re.search(rf"^:{chain} ", saved, re.M):
        lines += [f"-F {chain}", f"-X {chain}"]
    return lines
