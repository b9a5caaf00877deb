"""pycni-doctor [--json] [--check NAME] [--netns PATH]... [--conf FILE]... [--conf-dir DIR]
             [--kernel-release REL] [--list-checks] [--profile] [--parallel N]
pycni-doctor --conn ADDR:PORT [--watch SECONDS] [--json] [--netns PATH]   (who owns a connection)

Exit status: 0 healthy, 1 problems found, 2 the doctor could not run (or a diagnosis could not
finish somewhere and nothing was found). Read-only: it changes nothing on the node."""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time

from .errors import BAD_ARGUMENTS, BAD_CONF, CHECK_FAILED, NETNS_UNUSABLE, NOT_ROOT, UNKNOWN_CHECK
from .finding import Finding


OUR_TYPES = ("vxlan", "dp-steering", "edgemesh")     # the plugin types whose configs the doctor reads
CONF_DIR = "/etc/cni/net.d"                           # where runtimes (containerd, CRI-O, podman) read them
CONF_EXTENSIONS = (".conf", ".conflist", ".json")     # libcni's ConfFiles: these, sorted by file name


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
    p.add_argument("--netns", metavar="PATH", action="append",
                   help="check this network namespace only (/run/netns/X, /proc/PID/ns/net); repeatable")
    p.add_argument("--kernel-release", metavar="REL",
                   help="judge this kernel release instead of the running one (a kernel you plan to boot)")
    p.add_argument("--conf", metavar="FILE", action="append", default=[],
                   help="a CNI config or conflist our plugins run in (repeatable): adds the checks of their "
                   "state (overlay drift, steering integrity) for those networks. Without --conf, the "
                   f"networks of the runtime's config dir (--conf-dir) that hold {', '.join(OUR_TYPES)}")
    p.add_argument("--conf-dir", metavar="DIR",
                   help=f"the runtime's CNI config dir to read when no --conf is given (default {CONF_DIR}): "
                   "its .conf, .conflist and .json files in libcni's order, read-only")
    p.add_argument("--list-checks", action="store_true", help="print the diagnoses' names and exit")
    p.add_argument("--parallel", metavar="N", type=int, default=0,
                   help="namespaces checked at once (default 4; each child mostly waits for its tools)")
    p.add_argument("--profile", action="store_true",
                   help="where the time went: each namespace's enter, checks and tool runs (in the JSON as "
                   "`profile`, else a summary on stderr)")
    p.add_argument("--conn", metavar="ADDR:PORT",
                   help="name the process, PID and executable behind every TCP/UDP socket to or from ADDR:PORT "
                   "([V6ADDR]:PORT for IPv6), in every namespace (the conn-owner check; exit 0 found, 1 none); "
                   "`mesh`: the addresses edgemesh's rules DNAT service traffic to")
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
    from .runner import NAMES, PARALLEL, run
    args = parser().parse_args(argv)
    if args.list_checks:
        if args.json:
            print(json.dumps({"checks": [{"name": n, "conf": conf_type(n)} for n in NAMES]}, indent=2))
        else:
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
    if not 0 <= args.parallel <= 64:
        raise Failed(BAD_ARGUMENTS, BAD_ARGUMENTS.meaning, "--parallel: 1 to 64 namespaces at once (0: the default)")
    started = time.monotonic()
    namespaces = _namespaces(args)
    discovered = time.monotonic()
    conf_errors: list[dict] = []
    if args.conf:
        if args.conf_dir is not None:
            raise Failed(BAD_ARGUMENTS, BAD_ARGUMENTS.meaning, "--conf and --conf-dir: give one or the other")
        read = [_read_conf(path) for path in args.conf]
        sources = [{"file": path, "network": name, "types": [p.get("type") for p in plugins]}
                   for path, name, plugins in read]
        confs = [conf for _, _, plugins in read for conf in plugins]
    elif args.conf_dir is not None or any(conf_type(name) for name in names):    # the default dir: when needed
        confs, sources, conf_errors = scan_conf_dir(args.conf_dir)
    else:
        confs, sources = [], []
    skipped = {name: why for name in names if (why := skip_reason(name, confs, args)) is not None}
    names = [n for n in names if n not in skipped]
    timing: list[dict] | None = [] if args.profile else None
    findings, errors, visited = run(namespaces, names, args.kernel_release, confs, args.parallel, timing)
    for err in errors:
        err["code"] = int(CHECK_FAILED)
    errors = conf_errors + errors
    report: dict = {"healthy": not findings and not errors, "checks": names,
                    "namespaces": [{"where": n.label, "netns": n.path} for n in visited],
                    "confs": sources, "skipped": [{"check": n, "why": w} for n, w in skipped.items()],
                    "findings": [f.to_dict() for f in findings], "errors": errors}
    if timing is not None:
        report["profile"] = {"total_s": time.monotonic() - started, "discover_s": discovered - started,
                             "parallel": args.parallel or PARALLEL, "namespaces": timing}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(table(findings, errors, names, visited, skipped))
        if timing is not None:
            sys.stderr.write(profile_summary(report["profile"]) + "\n")
    if findings:
        return 1
    return 2 if errors else 0


def conf_type(name: str) -> str | None:
    """The plugin type whose configs check `name` reads (None: it reads the node, not configs)."""
    from .runner import CHECKS, CONF_CHECKS
    for c in CHECKS:
        if c.NAME == name:
            return getattr(c, "CONF_TYPE", None) or CONF_CHECKS.get(name)
    return CONF_CHECKS.get(name)


def skip_reason(name: str, confs: list[dict], args) -> str | None:
    """Why a check of our plugins' state is not run: no config of that plugin was given or found."""
    kind = conf_type(name)
    if kind is None or any(c.get("type") == kind for c in confs):
        return None
    if args.conf:
        return f"no {kind} plugin in the --conf files"
    return f"no {kind} network in {args.conf_dir or CONF_DIR}"


def _read_conf(path: str) -> tuple[str, str, list[dict]]:
    """(path, network name, plugin configs) of a .conf or .conflist; raises Failed (165)."""
    from libcni_py import records
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
    out = []
    for plugin in plugins:
        conf = dict(plugin)
        conf.setdefault("name", doc["name"])
        conf.setdefault("cniVersion", doc.get("cniVersion", "1.1.0"))
        out.append(conf)
    return path, doc["name"], out


def load_confs(paths: list[str]) -> list[dict]:
    """Each plugin config of the --conf files, as the runtime hands it to the plugin: a .conflist's
    `plugins` with the list's name and cniVersion, or a single .conf."""
    confs: list[dict] = []
    for path in paths:
        confs += _read_conf(path)[2]
    return confs


def scan_conf_dir(d: str | None) -> tuple[list[dict], list[dict], list[dict]]:
    """No --conf: the networks of the runtime's config dir that hold our plugins, read-only.
    Files in libcni's order (.conf, .conflist, .json, sorted by name); a network name already
    seen is skipped, as libcni takes the first file of a name. Returns (plugin configs, the files
    used, error entries): a file that cannot be read or parsed is an error entry (code 165), the
    rest is still read. A missing default dir is no config; a given --conf-dir must be a dir."""
    from libcni_py.conf import conf_files
    where = d or CONF_DIR
    if d is not None and not os.path.isdir(d):
        raise Failed(BAD_CONF, BAD_CONF.meaning, f"--conf-dir {d}: not a directory")
    try:
        files = conf_files(where, CONF_EXTENSIONS)
    except OSError as e:
        return [], [], [_conf_error(where, f"{where}: {e}")]
    confs: list[dict] = []
    sources: list[dict] = []
    errors: list[dict] = []
    seen: set[str] = set()
    for path in files:
        try:
            _, name, plugins = _read_conf(path)
        except Failed as e:
            errors.append(_conf_error(path, e.details))
            continue
        types = [p.get("type") for p in plugins]
        if name in seen or not any(t in OUR_TYPES for t in types):
            continue
        seen.add(name)
        confs += plugins
        sources.append({"file": path, "network": name, "types": types})
    return confs, sources, errors


def _conf_error(path: str, details: str) -> dict:
    return {"check": "conf", "where": f"conf {path}", "netns": None, "details": details, "code": int(BAD_CONF)}


def _namespaces(args) -> list:
    """--netns PATH (each given, once), else every namespace of the node."""
    from .runner import discover, namespace_for
    if os.geteuid() != 0:
        raise Failed(NOT_ROOT, NOT_ROOT.meaning)
    if not args.netns:
        return discover()
    from libcni_py.netns import NetnsError
    out, seen = [], set()
    for path in args.netns:
        try:
            ns = namespace_for(path)
            st = os.stat(path)
        except (NetnsError, OSError) as e:
            raise Failed(NETNS_UNUSABLE, NETNS_UNUSABLE.meaning, str(e)) from None
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            out.append(ns)
    return out


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
    shown = ", ".join(conn.show(a, p) for a, p in targets) or "no edgemesh listen address"
    def ready() -> None:            # on stderr: stdout stays the report
        if args.watch:
            sys.stderr.write(f"pycni-doctor: watching {shown} for {args.watch:g} s\n")
            sys.stderr.flush()
    found, errors = conn.watch(namespaces, targets, args.watch, ready) if targets else ([], [])
    for err in errors:
        err["code"] = int(CHECK_FAILED)
    if args.json:
        print(json.dumps({"check": conn.NAME, "conn": args.conn, "targets": [conn.show(a, p) for a, p in targets],
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


def profile_summary(profile: dict) -> str:
    """--profile without --json: totals of what the namespaces' children spent their time on."""
    per_ns = [t for t in profile["namespaces"] if "wall_s" in t]
    tools: dict[str, float] = {}
    checks: dict[str, float] = {}
    for t in profile["namespaces"]:
        for k, v in t.get("tools_s", {}).items():
            tools[k] = tools.get(k, 0.0) + v
        for k, v in t.get("checks_s", {}).items():
            checks[k] = checks.get(k, 0.0) + v
    lines = [f"profile: {profile['total_s']:.2f} s in all, {len(per_ns)} namespace(s) "
             f"{profile['parallel']} at a time, discovery {profile['discover_s'] * 1000:.0f} ms; "
             f"summed over the children: enter {sum(t['enter_s'] for t in per_ns) * 1000:.0f} ms"]
    lines += [f"  tool {k}: {v * 1000:.0f} ms" for k, v in sorted(tools.items(), key=lambda kv: -kv[1])]
    lines += [f"  check {k}: {v * 1000:.0f} ms" for k, v in sorted(checks.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)


def table(findings: list[Finding], errors: list[dict], names: list[str], visited: list,
          skipped: dict[str, str] | None = None) -> str:
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
        if e["check"] == "conf":
            lines.append(f"could not read a CNI config (code {e['code']}): {e['details']}")
        else:
            lines.append(f"could not check: {e['check']} in {e['where']} (code {e['code']}): {e['details']}")
    for name, why in (skipped or {}).items():
        lines.append(f"skipped: {name} ({why})")
    lines.append(head)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
