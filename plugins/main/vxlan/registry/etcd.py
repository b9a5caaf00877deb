"""The etcd backend (`registry.type: "etcd"`): leases in an etcd v3 cluster (as flannel keeps them).

    opts = parse_options(conf["registry"], network_name)      # code 7 on a bad key (cheap: no I/O)
    reg = EtcdRegistry(opts, ttl)                             # open_registry("etcd", opts, ttl)

Keys under `prefix` (default `/pycni/<network name>/`):

    <prefix>network          {"network", "subnetLen", "vni"}: written once, create-if-absent
    <prefix>leases/<node>    Lease.to_json() as the lease layer makes it ({"subnet", "publicIP",
                             "vtepMAC", "vni"}, the IPv6 half when it has one): bound to an etcd lease (TTL)
    <prefix>subnets/<addr>-<len>   the node holding that subnet (one key per family the lease
                             holds, IPv4 and IPv6), bound to the same etcd lease

`update(mutate)` runs `mutate` on what this process knows of the prefix (a list, the watch's
events since, its own writes) and commits the difference in ONE transaction whose compares are:
the node's lease key unchanged since it was known (mod_revision), a new subnet key absent
(create_revision == 0), the network key absent or unchanged. A failed compare (another node won,
or the view was stale) is decided again on a full list, so two nodes that pick the same subnet at
the same instant never both get it; a write costs the change, not the size of the cluster.

`watch(revision, timeout)` streams the prefix from revision + 1, so nothing written between the
read and the watch is lost; each event updates only the key it names. When etcd has compacted
that revision it lists the prefix again and returns that snapshot (the caller reconciles as
after any change). `keepalive(node)` renews the etcd lease the node's keys are bound to (the
agent calls it every ttl/3) and answers the seconds left, 0 when the lease is gone (the keys
with it: acquire again).

The client is etcd3gw (OpenStack's, over etcd's v3 JSON gateway with requests; README, "etcd
registry", says why): its Etcd3Client per endpoint (post, transaction, lease grant/refresh/revoke,
the Watcher stream), with what it lacks kept here and small: failover over the `endpoints` (it
talks to one host), the auth token (it has no auth), a deadline on opening a watch, and the
compaction and stream-end answers its watch drops (_Stream). Parsing options imports nothing of
it; only an opened EtcdRegistry imports etcd3gw (requests, ssl). Every failure to reach etcd
within `dialTimeout` is code 100, never a hang.
"""
from __future__ import annotations

import base64
import json
import os
import time
from operator import methodcaller

from libcni_py.errors import CNIError, INVALID_CONFIG
from ..errors import REGISTRY_CORRUPT, REGISTRY_UNREADABLE
from .base import Lease, NetworkRecord, Registry, Snapshot, decode

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .base import Draft

DEFAULT_DIAL_TIMEOUT = 2.0
MAX_TXN_RETRIES = 32
# etcd's answers while members elect a leader or restart: another member, or the same one a moment
# later, will answer.
_TRANSIENT = ("no leader", "leader changed", "timed out", "unavailable", "too many requests", "stopped")
ETCD_KEYS = ("type", "endpoints", "prefix", "caFile", "certFile", "keyFile", "username",
             "passwordFile", "dialTimeout", "ttl")


class Options:
    """The etcd keys of a `registry` section, checked."""
    __slots__ = ("endpoints", "prefix", "ca_file", "cert_file", "key_file", "username",
                 "password_file", "dial_timeout")

    def __init__(self, endpoints: list[tuple[str, str, int]], prefix: str, ca_file: str | None = None,
                 cert_file: str | None = None, key_file: str | None = None, username: str | None = None,
                 password_file: str | None = None, dial_timeout: float = DEFAULT_DIAL_TIMEOUT):
        self.endpoints: list[tuple[str, str, int]] = endpoints    # (scheme, host, port)
        self.prefix: str = prefix
        self.ca_file, self.cert_file, self.key_file = ca_file, cert_file, key_file
        self.username, self.password_file = username, password_file
        self.dial_timeout: float = dial_timeout


def _bad(key: str, why: str, fix: str = "") -> CNIError:
    return CNIError(INVALID_CONFIG, f"invalid config field 'registry.{key}': {why}", fix)


def parse_endpoint(url: object) -> tuple[str, str, int]:
    from urllib.parse import urlsplit
    fix = "an etcd client URL such as http://198.18.0.1:2379 or https://etcd-1.example:2379"
    if not isinstance(url, str) or not url or len(url) > 512 or any(c in url for c in "\0\n\r \t"):
        raise _bad("endpoints", f"{str(url)[:100]!r} is not a URL", fix)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise _bad("endpoints", f"{url[:100]!r}: {e}", fix) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _bad("endpoints", f"{url[:100]!r} is not an http:// or https:// URL with a host", fix)
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise _bad("endpoints", f"{url[:100]!r}: a client URL has no path, query or user", fix)
    return parts.scheme, parts.hostname, port or 2379


def _file(registry: dict, key: str) -> str | None:
    path = registry.get(key)
    if path is None:
        return None
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path or "\n" in path:
        raise _bad(key, f"{str(path)[:100]!r} is not an absolute path")
    if not os.path.isfile(path):
        raise _bad(key, f"{path[:200]} does not exist or is not a file", "give the path of a PEM file")
    if not os.access(path, os.R_OK):
        raise _bad(key, f"{path[:200]} is not readable")
    return path


def parse_options(registry: dict, network_name: str) -> Options:
    """The checked etcd options of a `registry` section (CNIError 7 naming the key)."""
    unknown = sorted(k for k in registry if k not in ETCD_KEYS)
    if unknown:
        raise _bad(unknown[0], "not a key of the etcd registry", f"etcd keys: {', '.join(ETCD_KEYS[1:])}")
    endpoints = registry.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        raise _bad("endpoints", "the etcd registry needs a non-empty list of client URLs",
                   "e.g. [\"https://198.18.0.1:2379\", \"https://198.18.0.2:2379\"]")
    eps = [parse_endpoint(u) for u in endpoints]
    prefix = registry.get("prefix", f"/pycni/{network_name}/")
    if not isinstance(prefix, str) or not prefix.startswith("/") or not prefix.endswith("/") \
            or len(prefix) > 512 or any(c in prefix for c in "\0\n"):
        raise _bad("prefix", f"{str(prefix)[:100]!r} must start and end with '/'", "e.g. /pycni/vxnet/")
    ca, cert, key = _file(registry, "caFile"), _file(registry, "certFile"), _file(registry, "keyFile")
    if (cert is None) != (key is None):
        raise _bad("certFile" if cert is None else "keyFile", "certFile and keyFile go together",
                   "give both (client-cert auth) or neither")
    if (ca or cert) and any(scheme != "https" for scheme, _, _ in eps):
        raise _bad("endpoints", "caFile/certFile/keyFile are set but an endpoint is http://",
                   "use https:// endpoints with TLS files")
    username = registry.get("username")
    password_file = _file(registry, "passwordFile")
    if username is not None and (not isinstance(username, str) or not username or len(username) > 256
                                 or any(c in username for c in "\0\n")):
        raise _bad("username", f"{str(username)[:100]!r} is not a user name")
    if (username is None) != (password_file is None):
        raise _bad("username" if username is None else "passwordFile",
                   "username and passwordFile go together")
    dial = registry.get("dialTimeout", DEFAULT_DIAL_TIMEOUT)
    if isinstance(dial, bool) or not isinstance(dial, (int, float)) or not 0 < dial <= 60:
        raise _bad("dialTimeout", f"{dial!r} is not a number of seconds in (0, 60]")
    return Options(eps, prefix, ca, cert, key, username, password_file, float(dial))


# ---- the wire: etcd3gw, one client per endpoint, behind our failover -----------------------

def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _range_end(prefix: str) -> bytes:
    raw = bytearray(prefix.encode())
    raw[-1] += 1                      # a prefix ends with '/', never 0xff
    return bytes(raw)


class Unreachable(Exception):
    """No endpoint answered (connect, TLS or read failed within dialTimeout)."""


class EtcdError(Exception):
    """etcd answered with an error (the message of its JSON answer)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class _KV:
    __slots__ = ("value", "mod", "lease")

    def __init__(self, value: bytes, mod: int, lease: int):
        self.value, self.mod, self.lease = value, mod, lease


def _etcd_message(e: BaseException) -> str | None:
    """The `error` of etcd's JSON answer carried by an etcd3gw exception, None when the exception
    is not an answer of etcd (etcd3gw puts requests' connection errors in detail_text too)."""
    try:
        doc = json.loads(getattr(e, "detail_text", None) or "")
    except ValueError:
        return None
    return str(doc.get("error") or doc.get("message") or doc) if isinstance(doc, dict) else None


def _why(e: BaseException) -> str:
    """Why a member could not be reached, from the chain etcd3gw <- requests <- urllib3 <- ssl/OSError:
    a TLS failure with what to check, a timeout as 'no answer within dialTimeout', else the OS's word."""
    import ssl
    todo, seen, timeout, leaf = [e], set(), False, None
    while todo:
        x = todo.pop(0)
        if id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, ssl.SSLCertVerificationError):
            return f"TLS: {x.verify_message or x} (is registry.caFile the CA that signed etcd's certificate?)"
        if isinstance(x, ssl.SSLError):
            return f"TLS: {x.reason or x} (does etcd want a client certificate: certFile/keyFile?)"
        if isinstance(x, TimeoutError) or "Timeout" in type(x).__name__:
            timeout = True
        elif isinstance(x, OSError) and x.strerror:
            leaf = x.strerror
        todo.extend(c for c in (x.__cause__, x.__context__, getattr(x, "reason", None), *x.args)
                    if isinstance(c, BaseException))
    if timeout:
        return "no answer within dialTimeout"
    return leaf or str(getattr(e, "detail_text", None) or e)[:300] or type(e).__name__


class Client:
    """etcd3gw's Etcd3Client (one host each) for every endpoint, and our failover over them: a call
    tries every endpoint (the last good one first), round after round, within 2 x dialTimeout, and
    the etcd auth token (etcd3gw has no auth: we authenticate and put the token on its sessions)."""

    def __init__(self, opts: Options):
        import ssl

        import etcd3gw
        from etcd3gw import exceptions
        self._exc = exceptions
        self.opts = opts
        self.timeout = opts.dial_timeout
        https = any(scheme == "https" for scheme, _, _ in opts.endpoints)
        if https:           # files that do not load are 7 now, not a vague connect error later
            try:
                ctx = ssl.create_default_context(cafile=opts.ca_file)
                if opts.cert_file:
                    ctx.load_cert_chain(opts.cert_file, opts.key_file)
            except (ssl.SSLError, OSError) as e:
                raise CNIError(INVALID_CONFIG, "registry TLS files cannot be loaded",
                               f"caFile/certFile/keyFile: {e}") from None
        # without caFile the system's CAs (what ssl trusts), not requests' certifi bundle
        system = ssl.get_default_verify_paths().cafile
        verify = opts.ca_file or system or None
        self._password = None
        if opts.password_file:
            try:
                with open(opts.password_file, encoding="utf-8") as f:
                    self._password = f.read(4096).rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as e:
                raise CNIError(REGISTRY_UNREADABLE, f"cannot read registry.passwordFile {opts.password_file}",
                               str(e)) from None
        self.members: list[Any] = []
        for scheme, host, port in opts.endpoints:
            member = etcd3gw.client(host=host, port=port, protocol=scheme, timeout=self.timeout,
                                    ca_cert=verify if scheme == "https" else None,
                                    cert_cert=opts.cert_file, cert_key=opts.key_file,
                                    api_path="/v3/")     # etcd >= 3.4: no /version round trip
            member.session.trust_env = False              # no proxy or .netrc from the environment
            self.members.append(member)
        self._token: str | None = None
        self._good = 0                 # index of the endpoint that answered last

    def endpoint(self, index: int) -> str:
        scheme, host, port = self.opts.endpoints[index]
        return f"{scheme}://{host}:{port}"

    def call(self, path: str, body: dict) -> dict:
        """POST /v3/<path> (etcd3gw's post): the decoded answer."""
        return self.run(lambda m: m.post(m.get_url(path), json=body), path)

    def run(self, fn: Callable[[Any], Any], what: str = "", deadline: float | None = None) -> Any:
        """fn(an Etcd3Client) on every endpoint in turn until one answers; Unreachable when none did
        within 2 x dialTimeout, EtcdError when etcd refused."""
        if self.opts.username and self._token is None and what != "auth/authenticate":
            self._authenticate()
        deadline = time.monotonic() + 2 * self.timeout if deadline is None else deadline
        exc = self._exc
        n = len(self.members)
        errors: list[str] = []
        i, reauthenticated = 0, False
        while True:
            index = (self._good + i) % n
            if i and not i % n:
                time.sleep(0.05)     # a whole round failed (an election, members restarting): a breath
            i += 1
            left = deadline - time.monotonic()
            if left <= 0:
                break
            member = self.members[index]
            member.timeout = min(self.timeout, left)
            try:
                answer = fn(member)
            except (exc.ConnectionFailedError, exc.ConnectionTimeoutError) as e:
                errors.append(f"{self.endpoint(index)}: {_etcd_message(e) or _why(e)}")   # down, or no leader
                continue
            except exc.Etcd3Exception as e:
                message = _etcd_message(e) or str(e.detail_text or e)[:300]
                if isinstance(e, exc.InternalServerError) and any(w in message for w in _TRANSIENT):
                    errors.append(f"{self.endpoint(index)}: {message}")         # a member cut off: next
                    continue
                if "invalid auth token" in message and self.opts.username and not reauthenticated \
                        and what != "auth/authenticate":
                    reauthenticated = True             # the token expired: once more with a new one
                    self._token = None
                    self._authenticate()
                    i -= 1
                    continue
                raise EtcdError(message) from None
            except ValueError as e:                  # an answer that is not JSON
                errors.append(f"{self.endpoint(index)}: garbled answer ({e})")
                continue
            self._good = index
            return answer
        raise Unreachable("; ".join(errors) or "no time left")

    def _authenticate(self) -> None:
        for member in self.members:          # etcd checks a token sent along, even here
            member.session.headers.pop("Authorization", None)
        try:
            answer = self.call("auth/authenticate", {"name": self.opts.username, "password": self._password})
        except EtcdError as e:
            raise CNIError(REGISTRY_UNREADABLE, f"etcd refused user {self.opts.username!r}",
                           f"{e}; check registry.username/passwordFile") from None
        except Unreachable as e:
            raise CNIError(REGISTRY_UNREADABLE, "etcd registry unreachable", str(e)[:1500]) from None
        self._token = str(answer.get("token") or "")
        for member in self.members:
            member.session.headers["Authorization"] = self._token

    def close(self) -> None:
        for member in self.members:
            member.session.close()


# ---- the watch stream -------------------------------------------------------------------

class _Stream:
    """One etcd3gw Watcher (its thread reads the stream and calls back per event) feeding a queue.

    etcd3gw hands on events only. What it drops we get otherwise: a start revision etcd has
    compacted (etcd cancels the watch with compact_revision; etcd3gw's stream then just stays
    silent) is found before opening, by a range at that revision (EtcdRegistry._compacted); a
    stream that ended (its member died) shows as the Watcher's task having run to its end (its
    futurist executor's statistics). Its opening request has no timeout in etcd3gw, so it is made
    in a thread we wait dialTimeout for; one given up on is stopped when it comes back."""

    def __init__(self, member: Any, key: bytes, range_end: bytes, start: int, timeout: float):
        import queue
        import threading

        from etcd3gw.watch import Watcher
        self.events: queue.Queue = queue.Queue()
        self._watcher: Any = None
        self._closed = False
        self._lock = threading.Lock()
        opened = threading.Event()
        failed: list[BaseException] = []

        def open_stream() -> None:
            try:
                watcher = Watcher(member, key, self.events.put, start_revision=start,
                                  range_end=range_end.decode("latin-1"))   # etcd3gw encodes str as latin-1
            except Exception as e:       # noqa: BLE001 - handed to the waiting thread
                failed.append(e)
                opened.set()
                return
            with self._lock:
                if self._closed:
                    watcher.stop()
                    return
                self._watcher = watcher
            opened.set()

        threading.Thread(target=open_stream, name="etcd-watch-open", daemon=True).start()
        if not opened.wait(timeout):
            self.close()
            raise TimeoutError("no answer within dialTimeout")
        if failed:
            raise failed[0]
        status = getattr(getattr(self._watcher, "_response", None), "status_code", 200)
        if status != 200:
            self.close()
            raise ValueError(f"watch refused: HTTP {status}")

    def ended(self) -> bool:
        stats = getattr(getattr(self._watcher, "_executor", None), "statistics", None)
        return stats is not None and stats.executed > 0

    def close(self) -> None:
        with self._lock:
            self._closed = True
            watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()


# ---- the backend ------------------------------------------------------------------------

class EtcdRegistry(Registry):
    def __init__(self, opts: Options | dict | str, ttl: int = 0, network_name: str = ""):
        super().__init__(ttl)
        if isinstance(opts, str):
            raise CNIError(REGISTRY_UNREADABLE, "the etcd registry needs its options, not a file path",
                           "the per-pod plugin never talks to etcd: vxlan-agent opens it (issue 10)")
        if isinstance(opts, dict):
            opts = parse_options(opts, network_name or "default")
        self.opts = opts
        self.prefix = opts.prefix
        self._lease_prefix = self.prefix + "leases/"
        self.client = Client(opts)
        # the prefix as this process knows it: complete up to revision _rev (a list and the watch's
        # events since), plus this process's own transactions after it (the last at _txn_rev)
        self._kvs: dict[str, _KV] = {}
        self._rev = 0
        self._listed = False
        self._txn_rev = 0
        self._leases: dict[str, Lease] = {}      # the decoded leases of _kvs
        self._network: NetworkRecord | None = None
        self._cache: dict = {}               # decode cache of leases (a full list)
        self._lease_id = 0                   # the etcd lease this process writes its keys with
        self._released: dict[str, int] = {}  # lease key -> the etcd lease it had when we deleted it
        self._stream: _Stream | None = None
        self._stream_rev = -1                # the revision the stream has delivered up to
        self.relists = 0                     # how often a compacted watch made us list again

    # -- keys --
    def network_key(self) -> str:
        return self.prefix + "network"

    def lease_key(self, node: str) -> str:
        return self._lease_prefix + node

    def subnet_key(self, subnet) -> str:
        return f"{self.prefix}subnets/{subnet.network_address}-{subnet.prefixlen}"

    def _call(self, what: str, body: dict | None = None, fn: Callable[[Any], Any] | None = None) -> Any:
        """A call through the failover client; etcd's errors and silence as CNIError(100)."""
        try:
            if fn is None:
                return self.client.call(what, body or {})
            return self.client.run(fn, what)
        except Unreachable as e:
            raise CNIError(REGISTRY_UNREADABLE, "etcd registry unreachable", str(e)[:1500]) from None
        except EtcdError as e:
            hint = ""
            if "user name is empty" in e.message or "permission denied" in e.message:
                hint = " (etcd has auth enabled: set registry.username and registry.passwordFile to a user " \
                       f"allowed to read and write {self.prefix})"
            raise CNIError(REGISTRY_UNREADABLE, f"etcd refused {what}", e.message[:500] + hint) from None

    # -- reads --
    def snapshot(self) -> Snapshot:
        """List the whole prefix (the one read whose cost grows with the cluster)."""
        answer = self._call("kv/range", {"key": _b64(self.prefix), "range_end": _b64(_range_end(self.prefix))})
        kvs = {}
        for kv in answer.get("kvs", ()):
            kvs[_unb64(kv["key"]).decode(errors="surrogateescape")] = _KV(
                _unb64(kv.get("value", "")), int(kv.get("mod_revision", 0)), int(kv.get("lease", 0)))
        rev = int(answer["header"]["revision"])
        doc: dict = {"revision": rev, "network": None, "leases": {}}
        for key, kv in kvs.items():
            if key == self.network_key():
                doc["network"] = self._json(key, kv.value)
            elif key.startswith(self._lease_prefix):
                doc["leases"][key[len(self._lease_prefix):]] = self._lease_json(key, kv.value)
        snap = decode(doc, cache=self._cache)
        self._kvs, self._rev, self._listed = kvs, rev, True
        self._leases, self._network = snap.leases, snap.network
        return self._view()

    def _view(self) -> Snapshot:
        return Snapshot(self._rev, self._network, dict(self._leases))

    @staticmethod
    def _json(key: str, value: bytes) -> Any:
        try:
            return json.loads(value)
        except ValueError as e:
            raise CNIError(REGISTRY_CORRUPT, f"etcd key {key} is not JSON we wrote", str(e)[:200]) from None

    def _lease_json(self, key: str, value: bytes) -> dict:
        raw = self._json(key, value)
        if not isinstance(raw, dict):
            raise CNIError(REGISTRY_CORRUPT, f"etcd key {key} is not JSON we wrote", "a lease is not a JSON object")
        raw.pop("expires", None)          # etcd expires keys itself
        return raw

    def _apply(self, key: str, kv: _KV | None) -> None:
        """One key changed (a watch event): the cache and its decoded form, that key only."""
        if kv is None:
            self._kvs.pop(key, None)
        else:
            self._kvs[key] = kv
        if key == self.network_key():
            self._network = None if kv is None else \
                decode({"network": self._json(key, kv.value), "leases": {}}).network
        elif key.startswith(self._lease_prefix):
            node = key[len(self._lease_prefix):]
            if kv is None:
                self._leases.pop(node, None)
            else:
                lease = decode({"leases": {node: self._lease_json(key, kv.value)}}).leases.get(node)
                if lease is None:
                    self._leases.pop(node, None)
                else:
                    self._leases[node] = lease

    def stamp(self, lease: Lease) -> Lease:
        return lease.with_expiry(None)       # the etcd lease's TTL is the expiry

    # -- writes --
    def update(self, mutate: Callable[[Draft], None]) -> Snapshot:
        """mutate() on what this process knows (no list when it knows the prefix: the cost of a write
        is the change), committed by a transaction whose compares make a stale view lose; a lost
        transaction, a mutate that raised and one that changed nothing are decided again on a full
        list, so an outdated view never answers."""
        fresh = not self._listed
        for _ in range(MAX_TXN_RETRIES):
            current = self.snapshot() if fresh else self._view()
            draft = Snapshot(current.revision, current.network, dict(current.leases))   # leases are immutable
            try:
                mutate(draft)
            except Exception:
                if fresh:
                    raise
                fresh = True
                continue
            if draft.network == current.network and draft.leases == current.leases:
                if fresh:
                    return current
                fresh = True
                continue
            compares, ops, writes = self._plan(current, draft)
            try:
                txn = methodcaller("transaction", {"compare": compares, "success": ops})
                answer = self._call("kv/txn", fn=txn)
            except CNIError as e:
                if "lease not found" in (e.details or ""):
                    self._lease_id = 0            # our etcd lease expired: grant another
                    fresh = True
                    continue
                raise
            if answer.get("succeeded"):
                rev = int(answer["header"]["revision"])
                for key, value, lease_id in writes:          # our own writes into what we know
                    if value is not None:
                        self._kvs[key] = _KV(value, rev, lease_id)
                        continue
                    gone = self._kvs.pop(key, None)
                    if gone is not None and gone.lease and key.startswith(self._lease_prefix):
                        self._released[key] = gone.lease     # revoke(node) after release
                self._network = draft.network
                self._leases = dict(draft.leases)
                self._txn_rev = draft.revision = rev
                return draft
            fresh = True                       # someone else wrote first: read again
        raise CNIError(REGISTRY_UNREADABLE, "etcd registry: too much contention",
                       f"{MAX_TXN_RETRIES} transactions lost to other writers in a row; retry")

    def _plan(self, current: Snapshot, draft: Snapshot) -> tuple[list, list, list]:
        compares: list = []
        ops: list = []
        writes: list = []             # (key, value or None for a delete, etcd lease)
        kvs = self._kvs

        def unchanged(key: str) -> None:
            kv = kvs.get(key)
            if kv is None:
                compares.append({"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0})
            else:
                compares.append({"key": _b64(key), "target": "MOD", "result": "EQUAL",
                                 "mod_revision": kv.mod})

        def put(key: str, value: str, lease: int = 0) -> None:
            req: dict = {"key": _b64(key), "value": _b64(value)}
            if lease:
                req["lease"] = lease
            ops.append({"request_put": req})
            writes.append((key, value.encode(), lease))

        def delete(key: str) -> None:
            ops.append({"request_delete_range": {"key": _b64(key)}})
            writes.append((key, None, 0))

        if draft.network != current.network:
            unchanged(self.network_key())
            if draft.network is None:
                delete(self.network_key())
            else:
                put(self.network_key(), json.dumps(draft.network.to_json()))
        old_leases, new_leases = current.leases, draft.leases
        changed = [n for n, new in new_leases.items() if old_leases.get(n) is not new]
        changed += [n for n in old_leases if n not in new_leases]
        for node in sorted(changed):
            old, new = old_leases.get(node), new_leases.get(node)
            if old == new:
                continue
            key = self.lease_key(node)
            unchanged(key)
            subnets = [(getattr(old, a, None), getattr(new, a, None)) for a in ("subnet", "subnet6")]
            for was, now in subnets:
                if was is not None and was != now:
                    delete(self.subnet_key(was))
            if new is None:
                delete(key)
                continue
            lease_id = self._grant()
            put(key, json.dumps(new.to_json()), lease_id)
            for was, now in subnets:         # a subnet key per family (IPv4, IPv6) the lease holds
                if now is not None:
                    if was != now:
                        unchanged(self.subnet_key(now))     # absent: compare-create
                    put(self.subnet_key(now), node, lease_id)
        return compares, ops, writes

    def _grant(self) -> int:
        if not self.ttl:
            return 0
        if not self._lease_id:
            self._lease_id = int(self._call("lease/grant", fn=lambda m: m.lease(self.ttl).id))
        return self._lease_id

    def _lease_of(self, node: str | None) -> int:
        lease_id = self._lease_id
        if node:
            kv = self._kvs.get(self.lease_key(node))
            if kv is not None and kv.lease:
                return kv.lease
            return self._released.get(self.lease_key(node), lease_id)
        return lease_id

    def keepalive(self, node: str | None = None) -> int:
        """Renew the etcd lease of `node`'s keys (the one read last, else this process's); the
        seconds left, 0 when it is gone (its keys with it). CNIError(100) when etcd is unreachable."""
        import etcd3gw
        lease_id = self._lease_of(node)
        if not lease_id:
            return 0
        ttl = int(self._call("lease/keepalive", fn=lambda m: etcd3gw.Lease(lease_id, client=m).refresh()))
        if ttl > 0:
            self._lease_id = lease_id          # adopt it: later writes keep the same lease
            return ttl
        if lease_id == self._lease_id:
            self._lease_id = 0
        return 0

    def revoke(self, node: str | None = None) -> None:
        """Give this process's etcd lease back (its keys vanish at once); with `node`, the lease its
        keys were bound to when last read (`--leave` after release). An etcd lease that is already
        gone is no error."""
        import etcd3gw
        lease_id = self._lease_of(node)
        if not lease_id:
            return
        try:
            self._call("lease/revoke", fn=lambda m: etcd3gw.Lease(lease_id, client=m).revoke())
        except CNIError as e:
            if "not found" not in (e.details or ""):
                raise
        if lease_id == self._lease_id:
            self._lease_id = 0

    def compact(self, revision: int) -> None:
        """Compact etcd's history up to `revision` (tests and operators; the agent never does)."""
        self._call("kv/compaction", {"revision": revision, "physical": True})

    # -- watch --
    def _compacted(self, revision: int) -> bool:
        """etcd has compacted `revision` away (a range there says so; a future one is fine). Also the
        probe that finds a member answering before a watch is opened on it."""
        try:
            self._call("kv/range", {"key": _b64(self.prefix), "range_end": _b64(_range_end(self.prefix)),
                                    "revision": revision, "count_only": True})
        except CNIError as e:
            if "required revision has been compacted" in (e.details or ""):
                return True
            if "future revision" in (e.details or ""):
                return False
            raise CNIError(REGISTRY_UNREADABLE, f"{e.msg} (watch)", e.details) from None
        return False

    def _open_stream(self, deadline: float) -> _Stream:
        n = len(self.client.members)
        errors = []
        for i in range(n):                 # the member that just answered first
            index = (self.client._good + i) % n
            left = deadline - time.monotonic()
            try:
                stream = _Stream(self.client.members[index], self.prefix.encode(), _range_end(self.prefix),
                                 self._rev + 1, max(0.1, min(self.client.timeout, left)))
            except (OSError, ValueError) as e:       # requests' errors are OSErrors
                errors.append(f"{self.client.endpoint(index)}: {_why(e)}")
                continue
            self.client._good = index
            return stream
        raise CNIError(REGISTRY_UNREADABLE, "etcd registry unreachable (watch)", "; ".join(errors)[:1500])

    def watch(self, revision: int, timeout: float) -> Snapshot | None:
        import queue
        deadline = time.monotonic() + timeout
        catch_up = False
        if revision != self._rev:
            if self._listed and revision == self._txn_rev and revision > self._rev:
                catch_up = True             # our own write: the stream brings it and what came before
            else:
                self._close_stream()
                snap = self.snapshot()                  # the caller holds another revision: list anew
                if snap.revision != revision:
                    return snap
        while True:
            if self._stream is None or self._stream_rev != self._rev:
                self._close_stream()
                if self._compacted(self._rev + 1):      # history gone: list again and reconcile
                    self.relists += 1
                    return self.snapshot()
                self._stream = self._open_stream(deadline)
                self._stream_rev = self._rev
                # a compaction between the probe and the watch's creation (etcd cancels the watch
                # with compact_revision, which etcd3gw drops): asked once more, now it exists
                if self._compacted(self._rev + 1):
                    self._close_stream()
                    self.relists += 1
                    return self.snapshot()
            try:
                events = [self._stream.events.get(timeout=max(0.0, min(0.1, deadline - time.monotonic())))]
            except queue.Empty:
                if self._stream.ended():                # its member went away: resume on another
                    self._close_stream()
                elif time.monotonic() >= deadline:
                    return None
                continue
            while True:               # the rest of the same answer (etcd3gw calls back event by event)
                try:
                    events.append(self._stream.events.get(timeout=0.002))
                except queue.Empty:
                    break
            for ev in events:
                kv = ev["kv"]
                key = bytes(kv["key"]).decode(errors="surrogateescape")
                if ev.get("type") == "DELETE":
                    self._apply(key, None)
                else:
                    self._apply(key, _KV(bytes(kv.get("value", b"")), int(kv.get("mod_revision", 0)),
                                         int(kv.get("lease", 0))))
            # the events' revision, not a header's: later events of the same revision may still come
            self._rev = max(self._rev, max(int(ev["kv"].get("mod_revision", 0)) for ev in events))
            self._stream_rev = self._rev
            if catch_up and self._rev < revision:
                continue
            return self._view()

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def close(self) -> None:
        self._close_stream()
        self.client.close()
