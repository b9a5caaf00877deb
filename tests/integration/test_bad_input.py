"""Bad input gets its spec code, never 999, for every plugin and verb where it applies (issue 8).

Each plugin runs in a world of real test namespaces (tests/kit/fuzz.py: the kits' hosts and pods,
one valid pod attached) from the same valid config the fuzz test mutates; every case is one
forked skel.run(PLUGIN, ...) (a few through the exec'd console script) and must also keep the
contract: one error JSON on stdout, exit 1, no traceback, no hang, and a rejected ADD leaves the
world as it was (links, addresses, routes, iptables/nft rules, state files).
"""
from __future__ import annotations

import json
import os

import pytest

from libcni_py.errors import DECODING_FAILURE, INVALID_CONFIG, INVALID_ENV
from tests.kit import fuzz as F

pytestmark = pytest.mark.root
VERBS = ("ADD", "CHECK", "DEL", "GC", "STATUS")
ENV_VERBS = ("ADD", "CHECK", "DEL")
TARGET = {"ADD": "add", "DEL": "del"}


@pytest.fixture(scope="module", params=F.PLUGINS)
def world(request, tmp_path_factory):
    factory = F.Factory()
    w = None
    try:
        w = F.make_world(request.param, factory, tmp_path_factory.mktemp(request.param))
        yield w
    finally:
        if w is not None:
            w.close()
        factory.close()


def run(world, verb, conf=None, env=None, stdin=None, exec_=False):
    """(outcome, residue): residue is what a rejected ADD changed in the world."""
    target = TARGET.get(verb, "base")
    world.prepare(verb)
    e = {**world.env(verb, target), **(env or {})}
    data = stdin if stdin is not None else json.dumps({**world.conf(verb, target), **(conf or {})}).encode()
    before = world.snapshot() if verb == "ADD" else None
    o = world.run(e, data, exec_)
    residue = F._diff(before, world.snapshot()) if before is not None and o.rc != 0 else {}
    if verb == "ADD" and o.rc == 0:
        world.run(dict(e, CNI_COMMAND="DEL"), data)
    if verb in ("DEL", "GC") and o.rc == 0:
        world.attached.clear()
    assert F.verdict(verb, o) == [], o
    return o, residue


def expect_code(world, verb, code, **kw):
    o, residue = run(world, verb, **kw)
    assert o.rc == 1 and o.code == code, o
    assert not residue, residue
    return o


# ---- stdin that does not decode: 6 --------------------------------------------------------

DOCS = {
    "nested-list-100000": "[" * 100000 + "]" * 100000,
    "nested-object-100000": '{"a":' * 100000 + "1" + "}" * 100000,
    "nested-list-1500": "[" * 1500 + "]" * 1500,
    "number-1e999": '{"cniVersion": "1.1.0", "name": "fznet", "type": "x", "n": 1e999}',
    "number-minus-1e999": '{"cniVersion": "1.1.0", "name": "fznet", "type": "x", "n": -1e999}',
    "integer-5000-digits": '{"cniVersion": "1.1.0", "name": "fznet", "type": "x", "n": ' + "1" * 5000 + "}",
    "NaN": '{"cniVersion": "1.1.0", "name": "fznet", "type": "x", "n": NaN}',
    "Infinity": '{"cniVersion": "1.1.0", "name": "fznet", "type": "x", "n": Infinity}',
    "truncated": '{"cniVersion": "1.1.0", "name": "fzn',
    "not-utf8": b'{"cniVersion": "1.1.0", "name": "fz\xffnet", "type": "x"}',
    "array": "[]",
}


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("doc", sorted(DOCS))
def test_stdin_that_does_not_decode_is_code_6(world, doc, verb):
    raw = DOCS[doc]
    expect_code(world, verb, DECODING_FAILURE, stdin=raw if isinstance(raw, bytes) else raw.encode())


def test_version_ignores_undecodable_stdin_as_go_does(world):
    for raw in ("[" * 100000, '{"cniVersion": 1e999}', "{"):
        o, _ = run(world, "VERSION", stdin=raw.encode())
        assert o.rc == 0 and "supportedVersions" in o.json, o


def _with(world, verb, **raw_values) -> bytes:
    """The world's valid config for `verb` with some values as raw JSON text."""
    conf = world.conf(verb, TARGET.get(verb, "base"))
    for k, v in raw_values.items():
        conf[k] = F.Raw(v)
    return F.encode(conf).encode()


@pytest.mark.parametrize("verb", ("ADD", "CHECK", "DEL"))
@pytest.mark.parametrize("depth", [1500, 100000])
def test_deeply_nested_prev_result_is_code_6(world, verb, depth):
    conf = world.conf(verb, TARGET.get(verb, "base"))
    prev = conf.get("prevResult") or F.prev_result("10.22.0.9", world.pod_ns("add").path)
    text = F.encode(F.Pairs(list(prev.items()) + [("deep", F.deep(depth))]))
    expect_code(world, verb, DECODING_FAILURE, stdin=_with(world, verb, prevResult=text))


@pytest.mark.parametrize("verb", VERBS)
def test_number_1e999_in_a_config_field_is_code_6(world, verb):
    expect_code(world, verb, DECODING_FAILURE, stdin=_with(world, verb, mtu="1e999"))


@pytest.mark.parametrize("verb", VERBS)
def test_nesting_the_decoder_takes_is_never_999(world, verb):
    """900 levels decode; whatever the plugin makes of them, it is an answer, not a crash."""
    run(world, verb, stdin=_with(world, verb, **{"cni.dev/deep": F.deep(900).text}))


# ---- the environment: 4 ---------------------------------------------------------------------

@pytest.mark.parametrize("verb", ENV_VERBS)
@pytest.mark.parametrize("ifname", ["\udcff\udcfe", "eth\udcff"], ids=["all-bytes", "trailing-byte"])
def test_non_utf8_ifname_is_code_4(world, verb, ifname):
    expect_code(world, verb, INVALID_ENV, env={"CNI_IFNAME": ifname})


def test_non_utf8_ifname_through_exec(world):
    o, residue = run(world, "ADD", env={"CNI_IFNAME": "eth\udcff"}, exec_=True)
    assert o.how == "exec" and o.rc == 1 and o.code == INVALID_ENV, o
    assert not residue


NETNS_KINDS = ("file", "dir", "fifo", "relative")


def _netns(world, kind: str) -> str:
    return world.bad_paths()[kind] if kind != "relative" else "relative/netns"


@pytest.mark.parametrize("verb", ("ADD", "CHECK"))
@pytest.mark.parametrize("kind", NETNS_KINDS)
def test_cni_netns_that_is_no_netns_is_code_4(world, verb, kind):
    o = expect_code(world, verb, INVALID_ENV, env={"CNI_NETNS": _netns(world, kind)})
    assert o.secs < 5, o


@pytest.mark.parametrize("kind", NETNS_KINDS)
def test_del_with_a_cni_netns_that_is_no_netns_succeeds(world, kind):
    o, _ = run(world, "DEL", env={"CNI_NETNS": _netns(world, kind)})
    assert o.rc == 0, o


@pytest.mark.parametrize("verb", ("ADD", "CHECK", "DEL"))
def test_fifo_netns_through_exec_never_hangs(world, verb):
    o, _ = run(world, verb, env={"CNI_NETNS": world.bad_paths()["fifo"]}, exec_=True)
    assert o.how == "exec" and not o.hang
    assert (o.rc, o.code) == ((0, None) if verb == "DEL" else (1, INVALID_ENV)), o


# ---- directories and files named by the config: 7 ------------------------------------------------

DIR_KINDS = ("file", "fifo", "too long", "too long total", "relative")


@pytest.mark.parametrize("kind", DIR_KINDS)
def test_state_dir_that_cannot_be_one_is_code_7_on_add(world, kind):
    if "stateDir" not in world.path_keys:
        pytest.skip(f"{world.plugin} keeps no state")
    o = expect_code(world, "ADD", INVALID_CONFIG, conf={"stateDir": world.bad_paths()[kind]})
    assert "stateDir" in o.json["msg"], o


@pytest.mark.parametrize("verb", ("CHECK", "DEL", "GC", "STATUS"))
@pytest.mark.parametrize("kind", DIR_KINDS)
def test_state_dir_that_cannot_be_one_other_verbs(world, verb, kind):
    """CHECK needs the state (7); the cleanup verbs may say 7 or find nothing; never 999 or a hang."""
    if "stateDir" not in world.path_keys:
        pytest.skip(f"{world.plugin} keeps no state")
    o, _ = run(world, verb, conf={"stateDir": world.bad_paths()[kind]})
    if verb == "CHECK":
        assert o.rc == 1 and o.code == INVALID_CONFIG, o
    else:
        assert o.rc == 0 or o.code == INVALID_CONFIG, o


LOG_KINDS = ("dir", "fifo", "too long", "too long total", "relative")


@pytest.mark.parametrize("kind", LOG_KINDS)
def test_log_file_that_cannot_be_one_is_code_7_on_add(world, kind):
    o = expect_code(world, "ADD", INVALID_CONFIG, conf={"logFile": world.bad_paths()[kind]})
    assert "logFile" in o.json["msg"], o


@pytest.mark.parametrize("verb", ("CHECK", "DEL", "GC", "STATUS"))
@pytest.mark.parametrize("kind", LOG_KINDS)
def test_log_file_that_cannot_be_one_does_not_stop_cleanup(world, verb, kind):
    """Outside ADD a bad logFile is a warning on stderr; the command answers as without it."""
    o, _ = run(world, verb, conf={"logFile": world.bad_paths()[kind]})
    plain, _ = run(world, verb)
    assert (o.rc, o.code) == (plain.rc, plain.code), (o, plain)
    assert b"logFile" in o.stderr, o


@pytest.mark.parametrize("verb", ("ADD", "CHECK", "DEL", "GC", "STATUS"))
def test_every_path_key_as_a_fifo_never_hangs(world, verb):
    """Nothing that can block is opened without a check: each path-valued key of the plugin
    pointing at a FIFO gets an answer (never 999) well inside the timeout."""
    fifo = world.bad_paths()["fifo"]
    for key in world.path_keys:
        conf = world.conf(verb, TARGET.get(verb, "base"))
        if key == "registry.path":
            conf["registry"] = {**conf["registry"], "path": fifo}
        else:
            conf[key] = fifo
        o, residue = run(world, verb, stdin=json.dumps(conf).encode())
        assert o.secs < F.FORK_TIMEOUT / 2, (key, o)
        assert not residue, (key, o, residue)


def test_world_is_clean_after_the_cases(world):
    """The valid pod still answers CHECK: no case above damaged what it did not own."""
    world.prepare("CHECK")
    o = world.run_verb("CHECK", "base")
    assert o.rc == 0, o
    assert os.path.isdir(world.scratch)


# ---- what a chained plugin answers -------------------------------------------------------------

@pytest.mark.parametrize("prev_version", [None, "9.9.9"], ids=["no-cniVersion", "unknown-cniVersion"])
def test_add_result_carries_the_config_version(world, prev_version, request):
    """An ADD that succeeds answers a result of the config's cniVersion, whatever prevResult says
    (libcni cannot read one without). Found by the fuzz test (edgemesh returns prevResult as is)."""
    conf = world.conf("ADD", "add")
    prev = conf.get("prevResult") or F.prev_result("10.22.0.6", world.pod_ns("add").path)
    prev = {k: v for k, v in prev.items() if k != "cniVersion"}
    if prev_version:
        prev["cniVersion"] = prev_version
    conf["prevResult"] = prev
    o, residue = run(world, "ADD", stdin=json.dumps(conf).encode())
    assert not residue
    if o.rc == 0:
        assert o.json.get("cniVersion") == conf["cniVersion"], o
