"""The etcd backend (`registry.type: "etcd"`): leases in an etcd v3 cluster (as flannel keeps them).

    opts = parse_options(conf["registry"], network_name)      # code 7 on a bad key (cheap: no I/O)
    reg = EtcdRegistry(opts, ttl)                             # open_registry("etcd", opts, ttl)

Keys under `prefix` (default `/pycni/<network name>/`):

    <prefix>network          {"network", "subnetLen", "vni"}: written once, create-if-absent
    <prefix>leases/<node>    {"subnet", "publicIP", "vtepMAC", "vni"}: bound to an etcd lease (TTL)
    <prefix>subnets/<a.b.c.d>-<len>   the node holding that subnet, bound to the same etcd lease

`update(mutate)` reads the prefix at one revision, runs `mutate` on a copy and commits the
difference in ONE transaction whose compares are: the node's lease key unchanged since the read
(mod_revision), a new subnet key absent (create_revision == 0), the network key absent or
unchanged. A failed compare (another node won) is read again and retried, so two nodes that
pick the same subnet at the same instant never both get it.

`watch(revision, timeout)` streams /v3/watch from revision + 1, so nothing written between the
read and the watch is lost; when etcd has compacted that revision it lists the prefix again and
returns that snapshot (the caller reconciles as after any change). `keepalive(node)` renews the
etcd lease the node's keys are bound to (the agent calls it every ttl/3) and answers the seconds
left, 0 when the lease is gone (the keys with it: acquire again).

The client is ours: a few requests over etcd's v3 JSON gateway (/v3/kv/range, /v3/kv/txn,
/v3/lease/grant, /v3/lease/keepalive, /v3/watch) with http.client and ssl from the standard library
(README, "etcd registry", says why no PyPI client). Parsing options imports nothing of it; only an
opened EtcdRegistry imports http.client and ssl. Every failure to reach etcd within `dialTimeout` is
code 100, never a hang.
"""
from __future__ import annotations

import base64
import copy
import json
import os
import time

from libcni_py.errors import CNIError, INVALID_CONFIG
from ..errors import REGISTRY_CORRUPT, REGISTRY_UNREADABLE
from .base import Lease, Registry, Snapshot, decode

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


# ---- the wire ---------------------------------------------------------------------------

def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _range_end(prefix: str) -> str:
    raw = bytearray(prefix.encode())
    raw[-1] += 1                      # a prefix ends with '/', never 0xff
    return _b64(bytes(raw))


class Unreachable(Exception):
    """No endpoint answered (connect, TLS or read failed within dialTimeout)."""


class _KV:
    __slots__ = ("value", "mod", "lease")

    def __init__(self, value: bytes, mod: int, lease: int):
        self.value, self.mod, self.lease = value, mod, lease


class Client:
    """A minimal etcd v3 JSON-gateway client: unary POSTs with endpoint failover, one watch stream."""

    def __init__(self, opts: Options):
        import http.client
        import ssl
        self._http = http.client
        self.opts = opts
        self.timeout = opts.dial_timeout
        self._ctx = None
        if any(scheme == "https" for scheme, _, _ in opts.endpoints):
            try:
                self._ctx = ssl.create_default_context(cafile=opts.ca_file)
                if opts.cert_file:
                    self._ctx.load_cert_chain(opts.cert_file, opts.key_file)
            except (ssl.SSLError, OSError) as e:
                raise CNIError(INVALID_CONFIG, "registry TLS files cannot be loaded",
                               f"caFile/certFile/keyFile: {e}") from None
        self._password = None
        if opts.password_file:
            try:
                with open(opts.password_file, encoding="utf-8") as f:
                    self._password = f.read(4096).rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as e:
                raise CNIError(REGISTRY_UNREADABLE, f"cannot read registry.passwordFile {opts.password_file}",
                               str(e)) from None
        self._token: str | None = None
        self._good = 0                 # index of the endpoint that answered last
        self._conn: tuple[int, Any] | None = None      # (endpoint index, HTTP(S)Connection)

    # -- unary --------------------------------------------------------------------------
    def _connect(self, index: int, timeout: float):
        scheme, host, port = self.opts.endpoints[index]
        if scheme == "https":
            return self._http.HTTPSConnection(host, port, timeout=timeout, context=self._ctx)
        return self._http.HTTPConnection(host, port, timeout=timeout)

    def _endpoint(self, index: int) -> str:
        scheme, host, port = self.opts.endpoints[index]
        return f"{scheme}://{host}:{port}"

    def call(self, path: str, body: dict, deadline: float | None = None) -> dict:
        """POST /v3/<path>; the decoded answer. Tries every endpoint (the last good one first)
        within 2 x dialTimeout overall; Unreachable when none answered, CNIError for an etcd error."""
        if self.opts.username and self._token is None and path != "auth/authenticate":
            self._authenticate()
        deadline = time.monotonic() + 2 * self.timeout if deadline is None else deadline
        n = len(self.opts.endpoints)
        errors = []
        i = 0
        while True:              # every endpoint in turn, round after round, until the deadline
            index = (self._good + i) % n
            if i and not i % n:
                time.sleep(0.05)     # a whole round failed (an election, members restarting): a breath
            i += 1
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                try:
                    reused = self._conn is not None and self._conn[0] == index
                    status, data = self._post(index, path, body, min(self.timeout, left))
                except (ConnectionError, self._http.HTTPException):
                    if not reused:           # an idle kept-alive connection the member closed: once more
                        raise
                    self._drop()
                    status, data = self._post(index, path, body, min(self.timeout, left))
                if status == 401 and self.opts.username and path != "auth/authenticate":
                    self._token = None       # the auth token expired
                    self._authenticate()
                    status, data = self._post(index, path, body, min(self.timeout, max(left, 0.1)))
            except (OSError, self._http.HTTPException) as e:
                self._drop()
                errors.append(f"{self._endpoint(index)}: {_why(e)}")
                continue
            try:
                answer = json.loads(data) if data else {}
            except ValueError:
                answer = {"error": data[:200].decode(errors="replace")}
            if status != 200:
                message = str(answer.get("error") or answer.get("message") or f"HTTP {status}")
                if status >= 500 and any(w in message for w in _TRANSIENT):
                    errors.append(f"{self._endpoint(index)}: {message}")     # a member cut off: next
                    self._drop()
                    continue
                raise EtcdError(status, message)
            self._good = index
            return answer
        raise Unreachable("; ".join(errors) or "no time left")

    def _post(self, index: int, path: str, body: dict, timeout: float) -> tuple[int, bytes]:
        if self._conn is None or self._conn[0] != index:
            self._drop()
            conn = self._connect(index, timeout)
            self._conn = (index, conn)
        else:
            conn = self._conn[1]
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = self._token
        conn.request("POST", "/v3/" + path, body=json.dumps(body), headers=headers)
        resp = conn.getresponse()
        data = resp.read(64 << 20)
        return resp.status, data

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None

    def _authenticate(self) -> None:
        try:
            answer = self.call("auth/authenticate", {"name": self.opts.username, "password": self._password})
        except EtcdError as e:
            raise CNIError(REGISTRY_UNREADABLE, f"etcd refused user {self.opts.username!r}",
                           f"{e}; check registry.username/passwordFile") from None
        self._token = answer.get("token")

    def close(self) -> None:
        self._drop()


class EtcdError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


def _why(e: BaseException) -> str:
    import ssl
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS: {e.verify_message or e} (is registry.caFile the CA that signed etcd's certificate?)"
    if isinstance(e, ssl.SSLError):
        return f"TLS: {e.reason or e} (does etcd want a client certificate: certFile/keyFile?)"
    if isinstance(e, TimeoutError):
        return "no answer within dialTimeout"
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


# ---- the watch stream -------------------------------------------------------------------

class _Stream:
    """One /v3/watch stream read off a raw socket (our own chunked decoding, so a read timeout
    never leaves a buffer half consumed): JSON messages, one a line."""

    def __init__(self, client: Client, key: str, range_end: str, start: int, timeout: float):
        import socket
        self._socket = socket
        errors = []
        n = len(client.opts.endpoints)
        for i in range(n):
            index = (client._good + i) % n
            scheme, host, port = client.opts.endpoints[index]
            sock = None
            try:
                sock = socket.create_connection((host, port), timeout=timeout)
                if scheme == "https" and client._ctx is not None:
                    sock = client._ctx.wrap_socket(sock, server_hostname=host)
                body = json.dumps({"create_request": {"key": key, "range_end": range_end,
                                                      "start_revision": start}}).encode()
                auth = f"Authorization: {client._token}\r\n" if client._token else ""
                sock.sendall((f"POST /v3/watch HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}"
                              f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                              ).encode() + body)
                self.sock, self.buf, self.body, self.head = sock, b"", b"", False
                self._read_head(time.monotonic() + timeout)
                return
            except (OSError, ValueError) as e:
                errors.append(f"{client._endpoint(index)}: {_why(e)}")
                if sock is not None:
                    sock.close()
        raise Unreachable("; ".join(errors))

    def _recv(self, deadline: float) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(1 << 16)
        except TimeoutError:
            return False
        if not data:
            raise ConnectionResetError("etcd closed the watch stream")
        self.buf += data
        return True

    def _read_head(self, deadline: float) -> None:
        while b"\r\n\r\n" not in self.buf:
            if not self._recv(deadline):
                raise TimeoutError("no answer within dialTimeout")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].split()
        if len(status) < 2 or status[1] != b"200":
            raise ValueError(f"watch refused: {head[:200].decode(errors='replace')}")

    def message(self, deadline: float) -> dict | None:
        """The next JSON message, None at the deadline. ConnectionResetError when the stream ended."""
        while True:
            line, sep, rest = self.body.partition(b"\n")
            if sep:
                self.body = rest
                if line.strip():
                    return json.loads(line)
                continue
            size_line, sep, tail = self.buf.partition(b"\r\n")
            if sep:
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    raise ConnectionResetError("etcd ended the watch stream")
                if len(tail) >= size + 2:
                    self.body += tail[:size]
                    self.buf = tail[size + 2:]
                    continue
            if not self._recv(deadline):
                return None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


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
        self.client = Client(opts)
        self._kvs: dict[str, _KV] = {}      # the prefix at self._rev
        self._rev = 0
        self._cache: dict = {}               # decode cache of leases
        self._lease_id = 0                   # the etcd lease this process writes its keys with
        self._stream: _Stream | None = None
        self._stream_rev = -1                # the revision the stream has delivered up to
        self.relists = 0                     # how often a compacted watch made us list again

    # -- keys --
    def network_key(self) -> str:
        return self.prefix + "network"

    def lease_key(self, node: str) -> str:
        return self.prefix + "leases/" + node

    def subnet_key(self, subnet) -> str:
        return f"{self.prefix}subnets/{subnet.network_address}-{subnet.prefixlen}"

    def _call(self, path: str, body: dict) -> dict:
        try:
            return self.client.call(path, body)
        except Unreachable as e:
            raise CNIError(REGISTRY_UNREADABLE, "etcd registry unreachable", str(e)[:1500]) from None
        except EtcdError as e:
            hint = ""
            if "user name is empty" in e.message or "permission denied" in e.message:
                hint = " (etcd has auth enabled: set registry.username and registry.passwordFile to a user " \
                       f"allowed to read and write {self.prefix})"
            raise CNIError(REGISTRY_UNREADABLE, f"etcd refused {path}", e.message[:500] + hint) from None

    # -- reads --
    def snapshot(self) -> Snapshot:
        answer = self._call("kv/range", {"key": _b64(self.prefix), "range_end": _range_end(self.prefix)})
        kvs = {}
        for kv in answer.get("kvs", ()):
            kvs[_unb64(kv["key"]).decode(errors="surrogateescape")] = _KV(
                _unb64(kv.get("value", "")), int(kv.get("mod_revision", 0)), int(kv.get("lease", 0)))
        self._kvs, self._rev = kvs, int(answer["header"]["revision"])
        return self._decode()

    def _decode(self) -> Snapshot:
        doc: dict = {"revision": self._rev, "network": None, "leases": {}}
        lease_prefix = self.prefix + "leases/"
        try:
            for key, kv in self._kvs.items():
                if key == self.network_key():
                    doc["network"] = json.loads(kv.value)
                elif key.startswith(lease_prefix):
                    raw = json.loads(kv.value)
                    if not isinstance(raw, dict):
                        raise ValueError("a lease is not a JSON object")
                    raw.pop("expires", None)          # etcd expires keys itself
                    doc["leases"][key[len(lease_prefix):]] = raw
        except ValueError as e:
            raise CNIError(REGISTRY_CORRUPT, f"etcd key {key} is not JSON we wrote", str(e)[:200]) from None
        return decode(doc, cache=self._cache)

    def stamp(self, lease: Lease) -> Lease:
        return lease.with_expiry(None)       # the etcd lease's TTL is the expiry

    # -- writes --
    def update(self, mutate: Callable[[Draft], None]) -> Snapshot:
        for _ in range(MAX_TXN_RETRIES):
            current = self.snapshot()
            kvs = self._kvs
            draft = copy.deepcopy(current)
            mutate(draft)
            if draft.network == current.network and draft.leases == current.leases:
                return current
            compares, ops = self._plan(current, draft, kvs)
            try:
                answer = self._call("kv/txn", {"compare": compares, "success": ops})
            except CNIError as e:
                if "lease not found" in (e.details or ""):
                    self._lease_id = 0            # our etcd lease expired: grant another
                    continue
                raise
            if answer.get("succeeded"):
                draft.revision = int(answer["header"]["revision"])
                return draft
            # someone else wrote first: read again
        raise CNIError(REGISTRY_UNREADABLE, "etcd registry: too much contention",
                       f"{MAX_TXN_RETRIES} transactions lost to other writers in a row; retry")

    def _plan(self, current: Snapshot, draft: Snapshot, kvs: dict) -> tuple[list, list]:
        compares: list = []
        ops: list = []

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

        def delete(key: str) -> None:
            ops.append({"request_delete_range": {"key": _b64(key)}})

        if draft.network != current.network:
            unchanged(self.network_key())
            if draft.network is None:
                delete(self.network_key())
            else:
                put(self.network_key(), json.dumps(draft.network.to_json()))
        for node in sorted(set(current.leases) | set(draft.leases)):
            old, new = current.leases.get(node), draft.leases.get(node)
            if old == new:
                continue
            key = self.lease_key(node)
            unchanged(key)
            if old is not None and (new is None or new.subnet != old.subnet):
                delete(self.subnet_key(old.subnet))
            if new is None:
                delete(key)
                continue
            lease_id = self._grant()
            skey = self.subnet_key(new.subnet)
            unchanged(skey)                 # absent (compare-create) or the one we read
            put(key, json.dumps(new.to_json()), lease_id)
            put(skey, node, lease_id)
        return compares, ops

    def _grant(self) -> int:
        if not self.ttl:
            return 0
        if not self._lease_id:
            answer = self._call("lease/grant", {"TTL": self.ttl})
            self._lease_id = int(answer["ID"])
        return self._lease_id

    def keepalive(self, node: str | None = None) -> int:
        """Renew the etcd lease of `node`'s keys (the one read last, else this process's); the
        seconds left, 0 when it is gone (its keys with it). CNIError(100) when etcd is unreachable."""
        lease_id = self._lease_id
        kv = self._kvs.get(self.lease_key(node)) if node else None
        if kv is not None and kv.lease:
            lease_id = kv.lease
        if not lease_id:
            return 0
        answer = self._call("lease/keepalive", {"ID": lease_id})
        ttl = int((answer.get("result") or answer).get("TTL", 0) or 0)
        if ttl > 0:
            self._lease_id = lease_id          # adopt it: later writes keep the same lease
        elif lease_id == self._lease_id:
            self._lease_id = 0
        return ttl

    def revoke(self, node: str | None = None) -> None:
        """Give this process's etcd lease back (its keys vanish at once); with `node`, the lease its
        keys were bound to when last read (`--leave` after release). An etcd lease that is already
        gone is no error."""
        lease_id = self._lease_id
        kv = self._kvs.get(self.lease_key(node)) if node else None
        if kv is not None and kv.lease:
            lease_id = kv.lease
        if not lease_id:
            return
        try:
            self._call("lease/revoke", {"ID": lease_id})
        except CNIError as e:
            if "not found" not in (e.details or ""):
                raise
        if lease_id == self._lease_id:
            self._lease_id = 0

    def compact(self, revision: int) -> None:
        """Compact etcd's history up to `revision` (tests and operators; the agent never does)."""
        self._call("kv/compaction", {"revision": revision, "physical": True})

    # -- watch --
    def watch(self, revision: int, timeout: float) -> Snapshot | None:
        deadline = time.monotonic() + timeout
        if revision != self._rev:
            self._close_stream()
            snap = self.snapshot()                  # the caller holds another revision: list anew
            if snap.revision != revision:
                return snap
        while True:
            if self._stream is None or self._stream_rev != self._rev:
                self._close_stream()
                try:
                    self._stream = _Stream(self.client, _b64(self.prefix), _range_end(self.prefix),
                                           self._rev + 1, max(0.1, min(self.client.timeout,
                                                                       deadline - time.monotonic())))
                except Unreachable as e:
                    raise CNIError(REGISTRY_UNREADABLE, "etcd registry unreachable (watch)",
                                   str(e)[:1500]) from None
                self._stream_rev = self._rev
            try:
                msg = self._stream.message(deadline)
            except (OSError, ValueError) as e:       # a member went away: resume on another
                self._close_stream()
                if time.monotonic() >= deadline:
                    return None
                if isinstance(e, ValueError):
                    raise CNIError(REGISTRY_UNREADABLE, "etcd watch stream garbled", str(e)[:200]) from None
                continue
            if msg is None:
                return None
            result = msg.get("result") or {}
            if "error" in msg and not result:
                self._close_stream()
                raise CNIError(REGISTRY_UNREADABLE, "etcd watch failed", str(msg["error"])[:300])
            if int(result.get("compact_revision", 0) or 0) or result.get("canceled"):
                self._close_stream()                 # history gone: list again and reconcile
                self.relists += 1
                return self.snapshot()
            events = result.get("events") or ()
            if not events:
                continue
            for ev in events:
                kv = ev["kv"]
                key = _unb64(kv["key"]).decode(errors="surrogateescape")
                if ev.get("type") == "DELETE":
                    self._kvs.pop(key, None)
                else:
                    self._kvs[key] = _KV(_unb64(kv.get("value", "")), int(kv.get("mod_revision", 0)),
                                         int(kv.get("lease", 0)))
            # the events' revision, not the header's: later events of the header's may still come
            self._rev = max(int(ev["kv"].get("mod_revision", 0)) for ev in events)
            self._stream_rev = self._rev
            return self._decode()

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def close(self) -> None:
        self._close_stream()
        self.client.close()
