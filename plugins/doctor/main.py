"""pycni-doctor [--json] [--check NAME] [--netns PATH] [--kernel-release REL] [--list-checks]
pycni-doctor --conn ADDR:PORT [--watch SECONDS] [--json] [--netns PATH]   (who owns a connection)

Exit status: 0 healthy, 1 problems found, 2 the doctor could not run (or a diagnosis could not
finish somewhere and nothing was found). Read-only: it changes nothing on the node."""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap

from .errors import BAD_ARGUMENTS, BAD_CONF, CHECK_FAILED, NETNS_UNUSABLE, NOT_ROOT, UNKNOWN_CHECK
from .finding import Finding


class Failed(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):      # argparse's own exit(2) would skip the JSON answer
        raise Failed(BAD_ARGUMENTS, BAD_ARGUMENTS.meaning, message)


def parser() -> argparse.ArgumentParser:
    from .runner import NAMES
    p = _Parser(prog="pycni-doctor", description="Find what silently drops pod traffic on this node: "
                "every network namespace (named ones under /run/netns, and those of running processes), "
                "read-only.", epilog="checks, in order: " + ", ".join(NAMES)
                + ". Exit status: 0 healthy, 1 problems found, 2 doctor could not run.")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--check", metavar="NAME", help="run this diagnosis only")
    p.add_argument("--netns", metavar="PATH", help="check this network namespace only (/run/netns/X, /proc/PID/ns/net)")
    p.add_argument("--kernel-release", metavar="REL",
                   help="judge this kernel release instead of the running one (a kernel you plan to boot)")
    p.add_argument("--conf", metavar="FILE", action="append", default=[],
                   help="a CNI config or conflist our plugins run in (repeatable): adds the checks of their "
                   "state (overlay drift, steering integrity) for those networks")
    p.add_argument("--list-checks", action="store_true", help="print the diagnoses' names and exit")
    p.add_argument("--conn", metavar="ADDR:PORT",
                   help="name the process, PID and executable behind every TCP/UDP socket to or from ADDR:PORT "
                   "(IPv4), in every namespace (the conn-owner check; exit 0 found, 1 none); `mesh`: the "
                   "addresses edgemesh's rules DNAT service traffic to")
    p.add_argument("--watch", metavar="SECONDS", type=float, default=0.0,
                   help="with --conn: keep asking the kernel for SECONDS, catching short-lived connections")
    return p


def _fail(e: Failed, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"code": e.code, "msg": e.msg, "details": e.details}, indent=2))
    else:
        sys.stderr.write(f"pycni-doctor: {e.msg} (code {e.code})" + (f": {e.details}" if e.details else "")
                         + f"\n  fix: {getattr(e.code, 'fix', '')}\n")
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    as_json = "--json" in argv
    try:
        return _main(argv)
    except Failed as e:
        return _fail(e, as_json)


def _main(argv: list[str]) -> int:
    from .runner import NAMES, discover, namespace_for, run
    args = parser().parse_args(argv)
    if args.list_checks:
        print("\n".join(NAMES))
        return 0
    if args.conn is not None or args.check == "conn-owner":
        return _conn(args)
    names = NAMES
    if args.check is not None:
        if args.check not in NAMES:
            raise Failed(UNKNOWN_CHECK, UNKNOWN_CHECK.meaning, f"{args.check!r}; known: {', '.join(NAMES)}")
        names = [args.check]
    if os.geteuid() != 0:
        raise Failed(NOT_ROOT, NOT_ROOT.meaning)
    if args.netns is not None:
        from libcni_py.netns import NetnsError
        try:
            namespaces = [namespace_for(args.netns)]
        except NetnsError as e:
            raise Failed(NETNS_UNUSABLE, NETNS_UNUSABLE.meaning, str(e)) from None
    else:
        namespaces = discover()
    confs = load_confs(args.conf)
    findings, errors, visited = run(namespaces, names, args.kernel_release, confs)
    for err in errors:
        err["code"] = int(CHECK_FAILED)
    if args.json:
        where = [{"where": n.label, "netns": n.path} for n in visited]
        print(json.dumps({"healthy": not findings and not errors, "checks": names, "namespaces": where,
                          "findings": [f.to_dict() for f in findings], "errors": errors}, indent=2))
    else:
        print(table(findings, errors, names, visited))
    if findings:
        return 1
    return 2 if errors else 0


def load_confs(paths: list[str]) -> list[dict]:
    """Each plugin config of the --conf files, as the runtime hands it to the plugin: a .conflist's
    `plugins` with the list's name and cniVersion, or a single .conf."""
    from libcni_py import records
    confs: list[dict] = []
    for path in paths:
        try:                                # a symlink is fine: /etc/cni/net.d often holds them
            with open(path, "rb") as f:
                data = f.read(records.MAX_BYTES + 1)
            if len(data) > records.MAX_BYTES:
                raise ValueError(f"more than {records.MAX_BYTES} bytes")
            doc = records.loads(data)
        except (OSError, ValueError) as e:
            raise Failed(BAD_CONF, BAD_CONF.meaning, f"{path}: {e}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
            raise Failed(BAD_CONF, BAD_CONF.meaning, f"{path}: not a JSON object with a network name")
        plugins = doc.get("plugins", [doc]) if "plugins" in doc else [doc]
        if not isinstance(plugins, list) or not all(isinstance(p, dict) for p in plugins):
            raise Failed(BAD_CONF, BAD_CONF.meaning, f"{path}: `plugins` is not a list of objects")
        for plugin in plugins:
            conf = dict(plugin)
            conf.setdefault("name", doc["name"])
            conf.setdefault("cniVersion", doc.get("cniVersion", "1.1.0"))
            confs.append(conf)
    return confs


def _namespaces(args) -> list:
    from .runner import discover, namespace_for
    if os.geteuid() != 0:
        raise Failed(NOT_ROOT, NOT_ROOT.meaning)
    if args.netns is None:
        return discover()
    from libcni_py.netns import NetnsError
    try:
        return [namespace_for(args.netns)]
    except NetnsError as e:
        raise Failed(NETNS_UNUSABLE, NETNS_UNUSABLE.meaning, str(e)) from None


def _conn(args) -> int:
    """--conn ADDR:PORT: every socket to or from it, with its processes. 0 found, 1 none, 2 errors only."""
    from . import conn
    if args.conn is None:
        raise Failed(BAD_ARGUMENTS, BAD_ARGUMENTS.meaning, "--check conn-owner needs --conn ADDR:PORT")
    targets: list[tuple[str, int]] = []
    if args.conn != "mesh":
        try:
            targets = [conn.parse_target(args.conn)]
        except ValueError as e:
            raise Failed(BAD_ARGUMENTS, BAD_ARGUMENTS.meaning, f"--conn: {e}") from None
    if not 0 <= args.watch <= 3600:
        raise Failed(BAD_ARGUMENTS, BAD_ARGUMENTS.meaning, "--watch: 0 to 3600 seconds")
    namespaces = _namespaces(args)
    if args.conn == "mesh":
        targets = sorted(conn.mesh_targets(namespaces))
    shown = ", ".join(f"{a}:{p}" for a, p in targets) or "no edgemesh listen address"
    def ready() -> None:            # on stderr: stdout stays the report
        if args.watch:
            sys.stderr.write(f"pycni-doctor: watching {shown} for {args.watch:g} s\n")
            sys.stderr.flush()
    found, errors = conn.watch(namespaces, targets, args.watch, ready) if targets else ([], [])
    for err in errors:
        err["code"] = int(CHECK_FAILED)
    if args.json:
        print(json.dumps({"check": conn.NAME, "conn": args.conn, "targets": [f"{a}:{p}" for a, p in targets],
                          "watch": args.watch,
                          "namespaces": [{"where": n.label, "netns": n.path} for n in namespaces],
                          "connections": found, "errors": errors}, indent=2))
    else:
        w = max((len(c["where"]) for c in found), default=5)
        lines = [f"{'WHERE':{w}}  SOCKET"] if found else []
        lines += [f"{c['where']:{w}}  {conn.describe(c)}" for c in found]
        lines += [f"could not check: {e['check']} in {e['where']} (code {e['code']}): {e['details']}" for e in errors]
        lines.append(f"pycni-doctor: {len(found)} socket(s) to or from {shown} in {len(namespaces)} "
                     f"namespace(s)" + (f", watched {args.watch:g} s" if args.watch else ""))
        print("\n".join(lines))
    if found:
        return 0
    return 2 if errors else 1


def table(findings: list[Finding], errors: list[dict], names: list[str], visited: list) -> str:
    lines = []
    head = f"pycni-doctor: {len(names)} check(s) in {len(visited)} namespace(s): "
    head += f"{len(findings)} problem(s)" if findings else "no problems found"
    if findings:
        w = max(len(f.where) for f in findings)
        lines.append(f"{'SEVERITY':8}  {'WHERE':{w}}  WHAT")
        for f in findings:
            lines.append(f"{f.severity.upper():8}  {f.where:{w}}  {f.what}")
            pad = " " * (8 + 2 + w + 2)
            lines += textwrap.wrap(f"why: {f.why}", 110, initial_indent=pad, subsequent_indent=pad + "     ")
            for fix in f.fixes:
                lines += textwrap.wrap(f"fix: {fix.how}", 110, initial_indent=pad, subsequent_indent=pad + "     ")
                if fix.command:
                    lines.append(f"{pad}     $ {fix.command}")
            lines.append(f"{pad}({f.check})")
    for e in errors:
        lines.append(f"could not check: {e['check']} in {e['where']} (code {e['code']}): {e['details']}")
    lines.append(head)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
