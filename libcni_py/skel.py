"""The plugin side of CNI: environment and stdin in, result or error JSON out.

Mirrors Go's pkg/skel: the same required variables per verb, the same name checks,
the same version gates (CHECK >= 0.4.0, GC/STATUS >= 1.1.0). Any failure ends as a
CNI error object on stdout and exit status 1; an unexpected exception becomes code
999 with the traceback on stderr only.
"""
from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable

from . import errors as E
from . import version as V
from .errors import CNIError
from .records import loads

VERBS = ("ADD", "CHECK", "DEL", "GC", "STATUS", "VERSION")
# (variable, verbs that require it), as Go's skel.getCmdArgsFromEnv.
_REQUIRED = (
    ("CNI_COMMAND", VERBS),
    ("CNI_CONTAINERID", ("ADD", "CHECK", "DEL")),
    ("CNI_NETNS", ("ADD", "CHECK")),
    ("CNI_IFNAME", ("ADD", "CHECK", "DEL")),
    ("CNI_ARGS", ()),
    ("CNI_PATH", ("ADD", "CHECK", "DEL", "GC", "STATUS")),
)
# fullmatch: Python's "$" also matches before a trailing newline, Go's does not.
_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
MIN_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}


class CmdArgs:
    """What a cmd_* function gets: the environment, the raw stdin and its parsed config.
    (Plain classes here, not dataclasses: those import inspect, ~8 ms of every exec.)"""

    def __init__(self, command: str, container_id: str = "", netns: str = "", ifname: str = "",
                 args: str = "", path: str = "", stdin: bytes = b"", conf: dict | None = None):
        self.command, self.container_id, self.netns, self.ifname = command, container_id, netns, ifname
        self.args, self.path, self.stdin = args, path, stdin
        self.conf = {} if conf is None else conf
        self.netns_gone = ""      # DEL: the CNI_NETNS given, when it was no network namespace

    @property
    def cni_version(self) -> str:
        return V.config_version(self.conf)

    @property
    def network(self) -> str:
        return self.conf.get("name", "")

    @property
    def args_dict(self) -> dict[str, str]:
        return parse_cni_args(self.args)

    @property
    def prev_result(self):
        """prevResult decoded in the config's version, or None."""
        raw = self.conf.get("prevResult")
        if raw is None:
            return None
        from .types import decode
        return decode(raw, ver=self.cni_version)

    @property
    def valid_attachments(self) -> list[dict]:
        """GC's list of {containerID, ifname}. A malformed entry is an error, never skipped:
        skipping it would let GC release an attachment the runtime still uses."""
        conf = self.conf
        raw = conf.get("cni.dev/valid-attachments") or conf.get("cni.dev/attachments") or []
        if not isinstance(raw, list) or not all(
                isinstance(a, dict) and isinstance(a.get("containerID"), str) and isinstance(a.get("ifname"), str)
                for a in raw):
            raise CNIError(E.INVALID_CONFIG, "cni.dev/valid-attachments must be a list of "
                                             "{containerID, ifname} objects", json.dumps(raw)[:200])
        return list(raw)


def parse_cni_args(raw: str) -> dict[str, str]:
    """'K8S_POD_NAMESPACE=a;IgnoreUnknown=1' -> dict. A pair without '=' is an error."""
    out: dict[str, str] = {}
    if not raw:
        return out
    for pair in raw.split(";"):
        if not pair:
            continue
        key, sep, val = pair.partition("=")
        if not sep or not key:
            raise CNIError(E.INVALID_ENV, f"CNI_ARGS: invalid pair {pair!r}")
        out[key] = val
    return out


def validate_container_id(cid: str) -> None:
    if not cid:
        raise CNIError(E.UNKNOWN_CONTAINER, "missing containerID")
    if not _NAME_RE.fullmatch(cid):
        raise CNIError(E.INVALID_ENV, "invalid characters in containerID", cid)


def validate_network_name(name: str) -> None:
    if not name:
        raise CNIError(E.INVALID_CONFIG, "missing network name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise CNIError(E.INVALID_CONFIG, "invalid characters found in network name", str(name))


def validate_ifname(name: str) -> None:
    if not name:
        raise CNIError(E.INVALID_ENV, "interface name is empty")
    try:
        name.encode()
    except UnicodeEncodeError:           # os.environ keeps undecodable bytes as surrogates
        raise CNIError(E.INVALID_ENV, "interface name is not UTF-8", repr(name)) from None
    if len(name.encode()) > 15:          # IFNAMSIZ counts bytes, as Go's len() does
        raise CNIError(E.INVALID_ENV, "interface name is too long", "interface name should be less than 16 characters")
    if name in (".", ".."):
        raise CNIError(E.INVALID_ENV, "interface name is . or ..")
    if any(c in name for c in "/:") or any(c.isspace() for c in name):
        raise CNIError(E.INVALID_ENV, "interface name contains / or : or whitespace characters")


Handler = Callable[[CmdArgs], object]


class Plugin:
    """A plugin's handlers and what skel checks before calling them."""

    def __init__(self, add: Handler, check: Handler, delete: Handler, gc: Handler | None = None,
                 status: Handler | None = None, supported: tuple = V.ALL, about: str = "",
                 validate: Callable[[dict, str], None] | None = None, needs_netns: bool = True,
                 translate: Callable[[BaseException], CNIError | None] | None = None):
        self.add, self.check, self.delete, self.gc, self.status = add, check, delete, gc, status
        self.supported, self.about = supported, about
        self.validate = validate          # (conf, command) -> raise CNIError
        self.needs_netns = needs_netns    # ADD/CHECK: CNI_NETNS must be a network namespace
        self.translate = translate        # a failure of shared code -> the plugin's code (its errors.py)


def run(plugin: Plugin, environ, stdin, stdout, stderr) -> int:
    """One plugin invocation. Returns the exit status; never raises."""
    conf_version = V.CURRENT
    args = None
    started = _clock()
    try:
        cmd = environ.get("CNI_COMMAND", "")
        if not cmd and plugin.about:
            stderr.write(plugin.about + "\n")
            stderr.write("CNI protocol versions supported: " + ", ".join(plugin.supported) + "\n")
            return 0
        args = _args_from_env(environ, cmd)
        data = stdin.read() if stdin is not None else b""
        if cmd == "VERSION":
            requested = None
            if data.strip():
                try:      # like Go, an unreadable VERSION input is ignored
                    requested = loads(data).get("cniVersion")
                except (ValueError, AttributeError):
                    requested = None
            _write(stdout, V.version_answer(requested, plugin.supported))
            return 0
        args.stdin = data
        args.conf = _decode_conf(data)
        _setup_logging(args.conf, stderr, cmd)
        conf_version = V.config_version(args.conf)
        _check_version(cmd, conf_version, plugin.supported)
        validate_network_name(args.conf.get("name", ""))
        if cmd in ("ADD", "CHECK", "DEL"):
            validate_container_id(args.container_id)
            validate_ifname(args.ifname)
            parse_cni_args(args.args)
        _check_netns(plugin, args)
        if plugin.validate is not None:
            plugin.validate(args.conf, cmd)
        handler = {"ADD": plugin.add, "CHECK": plugin.check, "DEL": plugin.delete,
                   "GC": plugin.gc, "STATUS": plugin.status}[cmd]
        result = None if handler is None else handler(args)   # no GC/STATUS: nothing to do
        if cmd == "ADD":
            if result is None:
                raise CNIError(E.INTERNAL, "plugin returned no result for ADD")
            out = result if isinstance(result, dict) else result.encode(conf_version)  # type: ignore[attr-defined]
            _write(stdout, out)
            _log_outcome(args, started, None, out)
        else:
            _log_outcome(args, started, None, None)
        return 0
    except Exception as e:  # noqa: BLE001 - the contract: never a traceback on stdout
        err = e if isinstance(e, CNIError) else _translate(plugin, e, stderr)
        _log_failure(err, args, started, stderr)
        _write(stdout, err.to_dict(conf_version if _known(conf_version) else V.CURRENT))
        return 1


def _translate(plugin: Plugin, e: Exception, stderr) -> CNIError:
    """A failure the plugin's errors.py knows (a kernel refusal, the xtables lock, the dp) becomes
    its code; anything else is our bug: 999, with the traceback on stderr only."""
    if isinstance(e, RecursionError):
        return CNIError(E.DECODING_FAILURE, "input nested too deeply", str(e))
    err = None
    if plugin.translate is not None:
        try:
            err = plugin.translate(e)
        except Exception:  # noqa: BLE001 - a broken table must not hide the original failure
            err = None
    if err is not None:
        return err
    import traceback
    traceback.print_exception(e, file=stderr)
    return CNIError(E.INTERNAL, f"internal error: {type(e).__name__}: {e}")


def _check_netns(plugin: Plugin, args: CmdArgs) -> None:
    """ADD/CHECK: CNI_NETNS must be a network namespace (code 4; a FIFO never blocks). DEL: a path
    that is not one (what an unmounted netns leaves behind) is a namespace that is gone."""
    if not plugin.needs_netns or args.command not in ("ADD", "CHECK", "DEL") or not args.netns:
        return
    from .netns import NetnsError, check_netns
    try:
        check_netns(args.netns)
    except NetnsError as e:
        if args.command != "DEL":
            raise CNIError(E.INVALID_ENV, f"CNI_NETNS {args.netns!r} is not a network namespace",
                           e.strerror or str(e)) from None
        args.netns_gone, args.netns = args.netns, ""


def plugin_main(plugin: Plugin) -> None:
    """Entry point for a plugin executable. Once the answer and the logs are flushed it leaves
    with os._exit: tearing the interpreter down module by module serves nothing here."""
    code = run(plugin, os.environ, sys.stdin.buffer if sys.stdin else None, sys.stdout, sys.stderr)
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()      # flush and close a logFile
    try:
        sys.stdout.flush()
    except (OSError, ValueError):              # the runtime did not get the answer
        code = code or 1
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code)


def _args_from_env(environ, cmd: str) -> CmdArgs:
    missing = [name for name, verbs in _REQUIRED if (not cmd or cmd in verbs) and not environ.get(name)]
    if cmd and cmd not in VERBS:
        raise CNIError(E.INVALID_ENV, f"unknown CNI_COMMAND: {cmd}")
    if missing:
        raise CNIError(E.INVALID_ENV, f"required env variables [{','.join(missing)}] missing")
    return CmdArgs(command=cmd, container_id=environ.get("CNI_CONTAINERID", ""),
                   netns=environ.get("CNI_NETNS", ""), ifname=environ.get("CNI_IFNAME", ""),
                   args=environ.get("CNI_ARGS", ""), path=environ.get("CNI_PATH", ""))


def _decode_conf(data: bytes) -> dict:
    try:
        conf = loads(data)
    except ValueError as e:
        raise CNIError(E.DECODING_FAILURE, "error unmarshaling network config", str(e)) from None
    if not isinstance(conf, dict):
        raise CNIError(E.DECODING_FAILURE, "network config must be a JSON object")
    return conf


def _check_version(cmd: str, conf_version, supported) -> None:
    if not isinstance(conf_version, str):     # Go's ConfigDecoder cannot decode it
        raise CNIError(E.DECODING_FAILURE, "cniVersion must be a string", repr(conf_version))
    floor = MIN_VERSION.get(cmd)
    # Go compares CHECK/GC/STATUS versions first (junk: code 6), ADD/DEL only look it up (code 1).
    if floor and V.lt(conf_version, floor):
        raise CNIError(E.INCOMPATIBLE_VERSION, f"config version does not allow {cmd}",
                       f"{cmd} needs cniVersion >= {floor}, config is {conf_version}")
    V.require_supported(conf_version, supported)


def _known(v: str) -> bool:
    return v in V.ALL


def _write(stdout, obj: dict) -> None:
    stdout.write(json.dumps(obj, indent=4) + "\n")


_deferred_log_stderr = None     # set-up owed to a run that logs nothing so far
LOG_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
PATH_MAX = 4096


def _clock() -> float:
    import time
    return time.monotonic()


def _setup_logging(conf: dict, stderr, command: str = "") -> None:
    """The "pycni" logger: to stderr, and to logFile when configured, at logLevel (warning).
    With neither key and logging not imported yet, the set-up waits for the first record
    (setup_deferred_logging): importing logging costs ~5-10 ms of an exec that may never log.
    A logFile that is not an absolute path to a regular file (or where one can be made) is
    code 7 on ADD; the other verbs warn on stderr and go on (cleanup does not need a log)."""
    global _deferred_log_stderr
    if "logging" in sys.modules or "logFile" in conf or "logLevel" in conf:
        stream = None
        if "logFile" in conf:
            try:
                stream = open_log_file(conf["logFile"])
            except CNIError as e:
                if command == "ADD":
                    raise
                stderr.write(f"pycni: warning: {e}; logging to stderr only\n")
        _configure_logging(conf, stderr, stream)
    else:
        _deferred_log_stderr = stderr


def open_log_file(path):
    """A text stream appending to `path`, opened without following a symlink and without
    blocking (a FIFO there is refused, never waited on). CNIError(7) for anything else."""
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path or "\n" in path:
        raise CNIError(E.INVALID_CONFIG, "logFile must be an absolute path", repr(path)[:200])
    if len(path.encode(errors="surrogateescape")) >= PATH_MAX or any(
            len(part.encode(errors="surrogateescape")) > 255 for part in path.split("/")):
        raise CNIError(E.INVALID_CONFIG, "logFile path is too long", f"{len(path)} characters")
    import stat
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        raise CNIError(E.INVALID_CONFIG, f"cannot open logFile {path!r}", e.strerror or str(e)) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CNIError(E.INVALID_CONFIG, f"logFile {path!r} is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "a", buffering=1, encoding="utf-8", errors="backslashreplace")


def setup_deferred_logging() -> None:
    """What plugins/pkg/log.py calls before it emits a record: the set-up a run deferred."""
    global _deferred_log_stderr
    stderr, _deferred_log_stderr = _deferred_log_stderr, None
    if stderr is not None:
        _configure_logging({}, stderr, None)


_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
_LEVEL_NAMES = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL", 0: "NOTSET"}


class _Sink:
    """The "pycni" logger's handlers, set up without the logging module: the lines logging's
    StreamHandlers would write (_FORMAT, stderr then the logFile, each flushed), for the records
    of plugins/pkg/log.py and skel. Importing logging costs an exec 5-15 ms, and as much a request
    of pycni-node's worker (it forgets the daemon's logging so that a request sees what an exec
    does, and a config with logLevel or logFile imported it afresh every time). A record this does
    not format as logging would (keyword arguments such as exc_info, a logger outside "pycni", a
    message whose % formatting fails, a stream that refuses the write) goes to the real logging,
    set up then with the same level and streams; the sink is gone from then on."""

    def __init__(self, level: int, streams: list):
        self.level, self.streams = level, streams

    def emit(self, name: str, level: int, msg, args: tuple, kwargs: dict) -> None:
        if kwargs or not (name == "pycni" or name.startswith("pycni.")):
            return self._fallback(name, level, msg, args, kwargs, 0)
        if level < self.level:
            return None
        line = None
        try:
            values = args[0] if len(args) == 1 and isinstance(args[0], dict) and args[0] else args   # as logging
            text = str(msg) % values if values else str(msg)
            line = f"{_asctime()} {name} {_LEVEL_NAMES.get(level) or f'Level {level}'} {text}\n"
        except Exception:  # noqa: BLE001 - logging reports it its way (handleError), outside this handler
            pass
        if line is None:
            return self._fallback(name, level, msg, args, kwargs, 0)
        for i, stream in enumerate(self.streams):
            failed = False
            try:
                stream.write(line)
                stream.flush()
            except Exception:  # noqa: BLE001 - as above, from the stream that failed on
                failed = True
            if failed:
                return self._fallback(name, level, msg, args, kwargs, i)
        return None

    def _fallback(self, name: str, level: int, msg, args, kwargs: dict, first: int) -> None:
        """This record and every later one through the real logging, its handlers on the same streams
        (this record only through those from `first` on: the earlier ones have it)."""
        global _sink
        import logging
        if _sink is self:
            _sink = None
        handlers = _configure_real(self.level, self.streams)
        logger = logging.getLogger(name)
        if first == 0 or handlers is None:
            logger.log(level, msg, *args, stacklevel=3, **kwargs)
            return
        record = logger.makeRecord(name, level, "(unknown file)", 0, msg, args, None)
        for h in handlers[first:]:
            h.handle(record)


_sink: _Sink | None = None


def _asctime() -> str:
    """logging.Formatter's default asctime: local time, milliseconds after a comma."""
    import time
    ct = time.time()
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ct))},{int((ct - int(ct)) * 1000):03d}"


def log_record(name: str, level: int, msg, args: tuple, kwargs: dict) -> bool:
    """plugins/pkg/log.py's way in: True when the sink took the record (it is set up, or a deferred
    set-up made it now), False when the real logging is the one to ask."""
    if _sink is None and level >= 30 and _deferred_log_stderr is not None and "logging" not in sys.modules:
        setup_deferred_logging()          # as before the sink: a record below WARNING sets up nothing
    if _sink is None:
        return False
    _sink.emit(name, level, msg, args, kwargs)
    return True


def _configure_logging(conf: dict, stderr, stream) -> None:
    global _sink
    if _sink is not None:
        return
    level = conf.get("logLevel", "warning")
    value = LOG_LEVELS.get(level if isinstance(level, str) else "", 30)
    streams = [stderr] if stream is None else [stderr, stream]
    if "logging" in sys.modules:
        _configure_real(value, streams)
    else:
        _sink = _Sink(value, streams)


def _configure_real(level: int, streams: list):
    """The "pycni" logger's handlers on `streams` (None when it has handlers already)."""
    import logging
    root = logging.getLogger("pycni")
    if root.handlers:
        return None
    root.setLevel(level)
    fmt = logging.Formatter(_FORMAT)
    for stream in streams:
        h = logging.StreamHandler(stream)
        h.setFormatter(fmt)
        root.addHandler(h)
    return list(root.handlers)


def _what(args: CmdArgs | None) -> str:
    if args is None:
        return "?"
    parts = [args.command or "?", f"network={args.network or '?'}"]
    if args.container_id:
        parts.append(f"containerID={args.container_id}")
    if args.ifname:
        parts.append(f"ifname={args.ifname}")
    return " ".join(parts)


def _log_outcome(args: CmdArgs, started: float, err: CNIError | None, result) -> None:
    """One line per command at info; what went in and out at debug. Costs nothing when the
    "pycni" logger was never set up (no logFile/logLevel): logging is not even imported."""
    sink = _sink
    if sink is None and "logging" not in sys.modules:
        return
    if sink is not None:
        def enabled(level: int) -> bool:
            return level >= sink.level

        def emit(level: int, msg: str, *a) -> None:
            sink.emit("pycni.skel", level, msg, a, {})
    else:
        import logging
        log = logging.getLogger("pycni.skel")
        enabled, emit = log.isEnabledFor, log.log
    ms = (_clock() - started) * 1000
    if enabled(10):
        emit(10, "%s: config %s", _what(args), args.stdin[:4096].decode(errors="replace"))
        if result is not None:
            emit(10, "%s: result %s", _what(args), json.dumps(result))
    if err is None:
        emit(20, "%s: ok (%.1f ms)", _what(args), ms)
    else:
        emit(40, "%s: failed, code %d: %s (%.1f ms)", _what(args), err.code, err, ms)


def _log_failure(e: CNIError, args: CmdArgs | None, started: float, stderr) -> None:
    """Every failure is logged at error whatever logLevel says: through the logger (stderr and
    logFile) when it is set up, else one line on stderr."""
    try:
        root = sys.modules["logging"].getLogger("pycni") if "logging" in sys.modules else None
        if args is not None and (_sink is not None or (root is not None and root.handlers)):
            _log_outcome(args, started, e, None)
        else:
            stderr.write(f"pycni: error {e.code}: {e} [{_what(args)}]\n")
    except Exception:  # noqa: BLE001 - logging must never change the answer
        pass
