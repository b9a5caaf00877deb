"""plugins/pkg/schema.py: the quick checker gives jsonschema's verdict on every schema under
conf/schema/, for the example configs and for mutations breaking each rule; errors are
jsonschema's, naming the field; a valid config never imports jsonschema."""
import glob
import json
import os
import subprocess
import sys

import jsonschema
import pytest

from libcni_py.conf import conflist_from_file
from libcni_py.errors import CNIError
from plugins.pkg import schema

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEMAS = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, "conf", "schema", "*.json")))
TYPE_OF = {"vxlan": "vxlan", "dp-steering": "dp-steering", "edgemesh": "edgemesh", "pycni-passthrough": "passthrough"}
WRONG_TYPE: dict[str, list[object]] = {"string": [7, None], "integer": ["7", 2.5, True], "number": ["7", False],
                                       "boolean": ["true", 1], "object": [[], "x"], "array": [{}, "x"]}
NOT_MATCHING = ["", " ", "relative", "a b;c\n", "999.999.999.999/999", "-" * 300]


def examples() -> list[tuple[str, dict]]:
    """(schema name, config as the plugin receives it) for each of our entries in conf/*.conflist."""
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "conf", "*.conflist"))):
        lst = conflist_from_file(path)
        for net in lst.plugins:
            if net.type in TYPE_OF:
                out.append((TYPE_OF[net.type], dict(json.loads(net.raw), name=lst.name, cniVersion=lst.cni_version)))
    return out


def deref(sub: dict, root: dict) -> dict:
    """`sub` with its local `$ref` (if any) merged in; our schemas' refs all resolve."""
    if "$ref" not in sub:
        return sub
    target = schema._resolve(root, sub["$ref"])
    assert isinstance(target, dict), f"$ref {sub['$ref']!r} does not resolve to a schema"
    return {**sub, **target}


def bad_values(sub: dict, root: dict):
    """(what, value) pairs that break one rule of the (sub)schema `sub`."""
    sub = deref(sub, root)
    for t in ([sub["type"]] if isinstance(sub.get("type"), str) else []):
        for v in WRONG_TYPE[t]:
            yield f"wrong type {v!r}", v
    if "enum" in sub:
        yield "enum miss", "not-one-of-them"
        yield "enum miss (case)", str(sub["enum"][0]).upper()
    if "pattern" in sub:
        import re
        yield "pattern miss", next(s for s in NOT_MATCHING if not re.search(sub["pattern"], s))
    if "minimum" in sub:
        yield "below minimum", sub["minimum"] - 1
    if "maximum" in sub:
        yield "above maximum", sub["maximum"] + 1
    if "minItems" in sub:
        yield "too few items", []
    if isinstance(sub.get("items"), dict):
        for what, v in bad_values(sub["items"], root):
            yield f"item: {what}", [v]
    if sub.get("additionalProperties") is False:
        yield "object with an unknown key", {"zzUnknown": 1}


def edge_values(sub: dict):
    """Valid values at the edges of a range (the checker must not be stricter there)."""
    for key in ("minimum", "maximum"):
        if key in sub:
            yield f"at {key}", sub[key]


def mutations(conf: dict, sub: dict, root: dict, path: tuple = ()):
    """(label, path of the broken field, config) for rules of `sub` over the object `conf`."""
    sub = deref(sub, root)
    props = sub.get("properties", {})
    for key in sub.get("required", ()):
        yield f"missing required {key}", path, {k: v for k, v in conf.items() if k != key}
    if sub.get("additionalProperties") is False:
        yield "unknown key", path + ("zzUnknown",), {**conf, "zzUnknown": 1}
    for key, prop in props.items():
        if not isinstance(prop, dict):
            continue
        for what, value in [*bad_values(prop, root), *edge_values(prop)]:
            yield f"{key}: {what}", path + (key,), {**conf, key: value}
        value = conf.get(key)
        if isinstance(value, dict):          # present nested objects: their own rules
            for label, where, inner in mutations(value, prop, root, path + (key,)):
                yield label, where, {**conf, key: inner}
        if isinstance(value, list) and value:
            if prop.get("uniqueItems"):
                yield f"{key}: duplicate item", path + (key,), {**conf, key: value + value[:1]}
            items = prop.get("items")
            if isinstance(items, dict) and isinstance(value[0], dict):
                for label, where, inner in mutations(value[0], items, root, path + (key, 0)):
                    yield label, where, {**conf, key: [inner, *value[1:]]}


def cases():
    out = []
    for name, conf in examples():
        root = schema.load(name)
        out.append(pytest.param(name, conf, (), id=f"{name}: example {conf['name']}"))
        for label, where, mutated in mutations(conf, root, root):
            out.append(pytest.param(name, mutated, where, id=f"{name} {conf['name']}: {label}"))
    return out


def jsonschema_errors(conf: dict, name: str) -> list:
    s = schema.load(name)
    v = jsonschema.validators.validator_for(s)(s)
    return sorted(v.iter_errors(conf), key=lambda e: (e.validator == "required", list(e.absolute_path)))


def test_every_schema_has_an_example_config():
    assert {name for name, _ in examples()} == set(SCHEMAS)


@pytest.mark.parametrize("name,conf,where", cases())
def test_quick_checker_agrees_with_jsonschema(name, conf, where):
    s = schema.load(name)
    full = jsonschema_errors(conf, name)
    assert schema.accepts(conf, s, s) == (not full), [e.message for e in full]
    if not full:
        schema.validate(conf, name)
        return
    with pytest.raises(CNIError) as e:
        schema.validate(conf, name)
    assert e.value.code == 7
    field = ".".join(map(str, where)) if where else "(config)"
    first = full[0]
    if first.validator == "required":          # named as the missing field, jsonschema's words after
        missing = [k for k in first.validator_value if k not in first.instance][0]
        assert e.value.msg == f"missing required field {'.'.join([*map(str, where), missing])!r}"
        assert e.value.details == first.message
    elif first.validator == "additionalProperties":      # the unknown key, and the nearest known one
        assert e.value.msg.startswith("unknown config key '"), e.value.msg
        assert e.value.details.startswith("value: ")
    else:
        assert e.value.msg.endswith(": " + first.message)    # jsonschema's words
        assert e.value.msg.startswith(f"invalid config field '{field}"), (where, e.value.msg)
        assert e.value.details.startswith("value: ")


# Hand-picked vxlan cases, from the vxlan helper's first comparison of the two checkers.
VXLAN = {"cniVersion": "1.0.0", "name": "n", "type": "vxlan", "network": "10.244.0.0/16"}
VXLAN_CASES = [
    {}, {"hairpinMode": True, "ipMasq": False, "bridge": "cni0", "isDefaultGateway": True},
    {"ipam": {"type": "host-local", "dataDir": "/x", "ranges": [[{"subnet": "10.244.1.0/24"}]]}},
    {"registry": {"type": "file", "path": "/tmp/r.json", "ttl": 0}},
    {"subnetLen": 24, "vni": 42, "port": 4789, "publicIP": "198.18.0.1", "iface": "eth0"},
    {"hairpinMode": "yes"}, {"ipMasq": 1}, {"bridge": "a-bridge-name-too-long"}, {"bridge": "br0;rm"},
    {"ipam": {"dataDir": "/tmp"}}, {"ipam": {"type": 7}}, {"network": "10.244.0.0/33x"}, {"subnetLen": 40},
    {"subnetLen": 24.5}, {"vni": 0}, {"port": True}, {"registry": {"type": "file", "extra": 1}},
    {"registry": {"path": "relative"}}, {"mtu": 1400}, {"mtu": 1400, "zzz": 1}, {"logLevel": "loud"},
    {"logFile": "relative.log"}, {"stateDir": 5},
]


@pytest.mark.parametrize("extra", VXLAN_CASES, ids=lambda x: json.dumps(x)[:60])
def test_vxlan_same_verdict_and_field_as_jsonschema(extra):
    conf = {**VXLAN, **extra}
    s = schema.load("vxlan")
    full = jsonschema_errors(conf, "vxlan")
    assert schema.accepts(conf, s, s) == (not full), (extra, [e.message for e in full])
    if full:
        with pytest.raises(CNIError) as e:
            schema.validate(conf, "vxlan")
        starts = [(f"invalid config field '{k}", "unknown config key", "missing required field") for k in extra]
        assert e.value.code == 7 and any(e.value.msg.startswith(s) for s in starts), e.value.msg


def test_every_schema_is_checked_without_jsonschema():
    for name in SCHEMAS:
        assert schema.supported(schema.load(name)), name


def test_unsupported_keywords_and_foreign_references_go_to_jsonschema():
    assert not schema.supported({"type": "object", "properties": {"a": {"$ref": "https://x/y.json"}}})
    assert not schema.supported({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}})
    assert not schema.supported({"oneOf": [{"type": "string"}]})
    assert schema.supported({"type": "object", "additionalProperties": {"type": "integer"}})
    one_of = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    assert not schema.accepts("x", one_of, one_of)


def test_jsonschema_decides_what_the_quick_checker_refuses(tmp_path, monkeypatch):
    """A float-valued integer and an unimplemented keyword: refused quickly, accepted by jsonschema."""
    (tmp_path / "t-oneof.json").write_text(json.dumps({
        "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
        "properties": {"n": {"type": "integer"}, "x": {"oneOf": [{"type": "string"}, {"type": "integer"}]}}}))
    monkeypatch.setattr(schema, "schema_dir", lambda: str(tmp_path))
    s = schema.load("t-oneof")
    for conf in ({"n": 24.0}, {"x": "a"}):
        assert not schema.accepts(conf, s, s)
        schema.validate(conf, "t-oneof")
    with pytest.raises(CNIError) as e:
        schema.validate({"x": 1.5}, "t-oneof")
    assert e.value.code == 7 and "'x'" in e.value.msg and "oneOf" not in e.value.details


def test_equality_is_json_schemas():
    """enum/const/uniqueItems: 1 equals 1.0, but true is not 1 (nor inside containers)."""
    s = {"type": "array", "uniqueItems": True, "items": {"enum": [1, [True], {"a": 1}]}}
    assert schema.accepts([1.0, [True], {"a": 1.0}], s, s)
    assert not schema.accepts([True], s, s) and not schema.accepts([[1]], s, s)
    assert not schema.accepts([{"a": True}], s, s) and not schema.accepts([1, 1.0], s, s)
    assert not schema.accepts(False, {"const": 0}, {})


def test_valid_configs_never_import_jsonschema():
    prog = ("import json, sys\nfrom plugins.pkg import schema\n"
            "for name, conf in json.load(sys.stdin):\n    schema.validate(conf, name)\n"
            "assert 'jsonschema' not in sys.modules, 'jsonschema imported'\n")
    p = subprocess.run([sys.executable, "-c", prog], input=json.dumps(examples()), capture_output=True,
                       text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
