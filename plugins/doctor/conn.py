"""Who owns this connection (the article on mapping connections to processes by polling /proc/net/tcp and
/proc/PID/fd): `pycni-doctor --conn ADDR:PORT
[--watch SECONDS]` names the process, PID and executable behind every TCP/UDP socket of either family
to or from ADDR:PORT (`[V6ADDR]:PORT` for IPv6; and listeners on the wildcard address at PORT), in every
network namespace;
`--conn mesh` watches the listen addresses edgemesh's rules DNAT service traffic to.

The kernel is asked, not /proc/net/tcp: one sock_diag (inet_diag) netlink socket is opened inside
each namespace (a netlink socket stays bound to the namespace it was made in), and with --watch they
are all dumped again every few milliseconds until the time is up, so a connection that lives 50 ms
is still caught. A socket's inode is matched with the `socket:[INODE]` links of /proc/PID/fd, read
as soon as the socket is first seen (a socket that has no process any more, as in TIME_WAIT, has
inode 0 and is reported without one)."""
from __future__ import annotations

import ipaddress
import os
import socket
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from .finding import Namespace

NAME = "conn-owner"
POLL = 0.003
STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
          7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV"}


def parse_target(text: str) -> tuple[str, int]:
    """'ADDR:PORT' or '[V6ADDR]:PORT' (also 'V6ADDR:PORT', the last colon the port's) -> (address
    as sock_diag prints it, port); ValueError when it is not one."""
    bracketed = text.startswith("[")
    if bracketed:
        addr, _, rest = text[1:].partition("]")
        sep, port = rest[:1], rest[1:]
    else:
        addr, sep, port = text.rpartition(":")
    if sep != ":" or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not ADDR:PORT or [IPV6]:PORT")
    ip = ipaddress.IPv6Address(addr) if bracketed else ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped                 # the IPv4 peer of a dual-stack socket: matched as IPv4
    return str(ip), int(port)


def show(addr: str, port: int) -> str:
    """addr:port, [v6]:port."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _plain(addr: str) -> str:
    """An IPv4-mapped IPv6 address (::ffff:a.b.c.d, an IPv4 peer of a dual-stack socket) as IPv4."""
    if addr.startswith("::ffff:") and "." in addr:
        return addr[7:]
    return addr


def matches(m: Any, addr: str, port: int) -> bool:
    src, sport, dst, dport = _plain(m["idiag_src"]), m["idiag_sport"], _plain(m["idiag_dst"]), m["idiag_dport"]
    if (src, sport) == (addr, port) or (dst, dport) == (addr, port):
        return True
    if sport != port or dport != 0:
        return False
    # a wildcard listener / unconnected UDP: 0.0.0.0 for IPv4, :: for IPv6, and for IPv4 an
    # AF_INET6 socket on :: without IPV6_V6ONLY (it takes IPv4 too, as the kernel's lookup does)
    if ":" in addr:
        return src == "::"
    return src == "0.0.0.0" or (src == "::" and m["idiag_family"] == socket.AF_INET6
                                and not m.get_attr("INET_DIAG_SKV6ONLY"))


def mesh_targets(namespaces: list[Namespace]) -> set[tuple[str, int]]:
    """`--conn mesh`: the listen addresses edgemesh's DNAT rules send service traffic to, in any of
    the namespaces (their iptables and nft rules read inside each)."""
    from plugins.pkg import ns as nsmod

    from . import edgemesh_hijack
    from .runner import Context
    out: set[tuple[str, int]] = set()
    for n in namespaces:
        try:
            with nsmod.enter(n.path):
                out |= {(addr, port) for *_, addr, port in edgemesh_hijack.dnats(Context(n))}
        except Exception:  # noqa: BLE001 - a namespace gone while we look
            continue
    return out


def owners(inodes: set[int]) -> dict[int, list[dict]]:
    """inode -> the processes holding it ({pid, comm, exe}), from /proc/PID/fd."""
    want = {f"socket:[{i}]": i for i in inodes}
    out: dict[int, list[dict]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        fd_dir = f"/proc/{d}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if link in want:
                out.setdefault(want[link], []).append(_process(int(d)))
    return out


def _process(pid: int) -> dict:
    def read(path: str) -> str:
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return ""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = ""
    cmdline = read(f"/proc/{pid}/cmdline").replace("\0", " ").strip()
    return {"pid": pid, "comm": read(f"/proc/{pid}/comm"), "exe": exe, "cmdline": cmdline[:300]}


class Watcher:
    """A sock_diag socket in each namespace, and what it has seen."""

    def __init__(self, namespaces: list[Namespace]):
        from pyroute2 import DiagSocket

        from plugins.pkg import ns as nsmod
        self.socks: list[tuple[Namespace, Any]] = []
        self.errors: list[dict] = []
        for n in namespaces:
            try:
                with nsmod.enter(n.path):
                    ds = DiagSocket()
                    ds.bind()
            except Exception as e:  # noqa: BLE001 - a namespace gone or unenterable: noted, others go on
                if n.own or os.path.exists(n.path):
                    self.errors.append({"check": NAME, "where": n.label, "netns": n.path,
                                        "details": f"{type(e).__name__}: {e}"})
                continue
            self.socks.append((n, ds))
        self.seen: dict[tuple[str, str, int, str, int, str, int], dict] = {}

    def look(self, targets: list[tuple[str, int]]) -> None:
        new: list[tuple[Any, dict]] = []
        for n, ds in self.socks:
            for proto, number, family in (("tcp", socket.IPPROTO_TCP, socket.AF_INET),
                                          ("udp", socket.IPPROTO_UDP, socket.AF_INET),
                                          ("tcp", socket.IPPROTO_TCP, socket.AF_INET6),
                                          ("udp", socket.IPPROTO_UDP, socket.AF_INET6)):
                try:
                    msgs = ds.get_sock_stats(family=family, protocol=number)
                except Exception:  # noqa: BLE001 - a namespace that went away while we watch
                    continue
                for m in msgs:
                    if not any(matches(m, addr, port) for addr, port in targets):
                        continue
                    key = (n.path, proto, m["idiag_inode"], m["idiag_src"], m["idiag_sport"], m["idiag_dst"],
                           m["idiag_dport"])
                    if key in self.seen:
                        continue
                    state = STATES.get(m["idiag_state"], str(m["idiag_state"]))
                    if proto == "udp":
                        state = "UNCONNECTED" if m["idiag_dport"] == 0 else "CONNECTED"
                    rec = {"where": n.label, "netns": n.path, "proto": proto, "state": state,
                           "local": show(m["idiag_src"], m["idiag_sport"]),
                           "remote": show(m["idiag_dst"], m["idiag_dport"]), "inode": m["idiag_inode"],
                           "uid": m["idiag_uid"], "processes": []}
                    self.seen[key] = rec
                    if m["idiag_inode"]:
                        new.append((m["idiag_inode"], rec))
        if new:
            found = owners({i for i, _ in new})
            for i, rec in new:
                rec["processes"] = found.get(i, [])

    def close(self) -> None:
        for _, ds in self.socks:
            ds.close()


def watch(namespaces: list[Namespace], targets: list[tuple[str, int]], seconds: float,
          ready: Callable[[], None] | None = None) -> tuple[list[dict], list[dict]]:
    """(every socket to or from one of the targets (addr, port) seen within `seconds` (one look
    when 0), errors).
    `ready` is called once every namespace's socket is open, before the first look."""
    w = Watcher(namespaces)
    if ready is not None:
        ready()
    try:
        deadline = time.monotonic() + max(0.0, seconds)
        while True:
            w.look(targets)
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL)
        return list(w.seen.values()), w.errors
    finally:
        w.close()


def describe(c: dict) -> str:
    procs = ", ".join(f"pid {p['pid']} {p['comm']} ({p['exe'] or '?'})" for p in c["processes"])
    if not procs:
        procs = "no process holds it" + (" (inode 0: closed, kept by the kernel)" if not c["inode"] else "")
    return f"{c['proto']} {c['local']} -> {c['remote']} {c['state']}: {procs}, uid {c['uid']}"
