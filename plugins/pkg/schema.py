"""Validate a plugin config against its JSON Schema under conf/schema/.

One path for every plugin. A quick checker (`accepts`) implements the keywords our schemas
use and only ever says "valid": a config it accepts never imports jsonschema (~60 ms of
imports per exec). When it finds a problem, or meets a keyword it does not implement, the
real jsonschema validator decides and its first error is what the runtime sees:
CNIError(7) naming the field and the value. If jsonschema accepts what the quick checker
refused (a float-valued integer, say), the config is accepted and a debug line says so.
"""
from __future__ import annotations

import json
import os
import re

from libcni_py.errors import CNIError, INVALID_CONFIG
from plugins.pkg.log import get_logger

log = get_logger("pycni.schema")

# Keywords the quick checker applies; those that apply to nothing; anything else: jsonschema.
_CHECKED = {"type", "enum", "const", "pattern", "minimum", "maximum", "minLength", "maxLength", "required",
            "properties", "additionalProperties", "items", "minItems", "uniqueItems", "$ref"}
_INERT = {"$schema", "$comment", "$defs", "definitions", "title", "description", "default", "examples"}
_KNOWN = _CHECKED | _INERT
_TYPES = {"string": str, "object": dict, "array": list, "boolean": bool, "null": type(None)}
_schemas: dict[str, dict] = {}
_validators: dict[str, object] = {}


def schema_dir() -> str:
    """plugins/schema: package data, so a checkout, a wheel install and the PyInstaller
    bundle (which carries it at the same place under _MEIPASS) all find it beside the code.
    conf/schema is a link to it for readers of conf/."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schema")


# Keys the CNI spec defines for every plugin's config, the ones runtimes inject, and our own
# logging keys: every plugin accepts them (a plugin's schema may define one more narrowly).
# Keys starting with "cni.dev/" are the spec's reserved namespace and always accepted.
STANDARD_KEYS: dict = {
    "cniVersion": {"type": "string"},
    "name": {"type": "string"},
    "type": {"type": "string"},
    "args": {"type": "object"},
    "runtimeConfig": {"type": "object"},
    "capabilities": {"type": "object"},
    "prevResult": {"type": "object"},
    "ipMasq": {"type": "boolean"},
    "ipam": {"type": "object"},
    "dns": {"type": "object", "properties": {
        "nameservers": {"type": "array", "items": {"type": "string"}},
        "domain": {"type": "string"},
        "search": {"type": "array", "items": {"type": "string"}},
        "options": {"type": "array", "items": {"type": "string"}}}},
    "logLevel": {"enum": ["debug", "info", "warning", "error"]},
    "logFile": {"type": "string", "pattern": "^/"},
}
RESERVED_PREFIX = "cni.dev/"
ALWAYS_NEEDED = ("cniVersion", "name", "type")


def load(name: str) -> dict:
    """plugins/schema/<name>.json with the standard keys added, read once per process."""
    schema = _schemas.get(name)
    if schema is None:
        with open(os.path.join(schema_dir(), name + ".json")) as f:
            schema = json.load(f)
        props = schema.setdefault("properties", {})
        for key, sub in STANDARD_KEYS.items():
            props.setdefault(key, sub)
        _schemas[name] = schema
    return schema


def compile_patterns(schema) -> None:
    """Compile every "pattern" of `schema` now, into re's own cache (which `accepts` reads through
    re.search). pycni-node's main does this for every schema (plugins.node.daemon.preload_schemas)
    and forks a worker per request: the compiled patterns are every worker's, where compiling them
    on first use cost each request its own (~0.1-0.3 ms a pattern, 19 in vxlan's schema). A plugin's
    exec compiles only the patterns its config meets."""
    if isinstance(schema, dict):
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            try:
                re.compile(pattern)
            except re.error:          # the quick checker meets it per request and says so
                pass
        for sub in schema.values():
            compile_patterns(sub)
    elif isinstance(schema, list):
        for sub in schema:
            compile_patterns(sub)


def validate(conf: dict, name: str, command: str = "ADD", cleanup: tuple = ()) -> None:
    """ADD: raise CNIError(7) naming the first bad field and its value (jsonschema's first error),
    an unknown key with the nearest known one, a missing required field by its name.
    Every other verb (DEL, CHECK, GC, STATUS) must not fail on what cleanup does not need: unknown
    keys are dropped from `conf` (in place, at every depth the schema closes), and so is a known
    key whose value the schema refuses, unless it is in `cleanup` (the keys this plugin's
    cleanup reads): those are still checked, and required when the schema requires them."""
    schema = load(name)
    checked = _without_reserved(conf)
    if command != "ADD":
        _lenient(conf, checked, schema, name, cleanup)
        return
    if accepts(checked, schema, schema):
        return
    _raise_first_error(checked, name)
    log.debug("schema %s: jsonschema accepts a config the quick checker did not", name)


def validator(name: str, cleanup: tuple = ()):
    """A skel `validate` hook for schema `name` (plugins/schema/<name>.json); `cleanup` names the
    config keys the plugin's DEL/CHECK/GC/STATUS need (see validate)."""
    def hook(conf: dict, command: str) -> None:
        validate(conf, name, command, cleanup)
    return hook


def _without_reserved(conf: dict) -> dict:
    if not any(isinstance(k, str) and k.startswith(RESERVED_PREFIX) for k in conf):
        return conf
    return {k: v for k, v in conf.items() if not k.startswith(RESERVED_PREFIX)}


def _lenient(conf: dict, checked: dict, schema: dict, name: str, cleanup: tuple) -> None:
    props = schema.get("properties", {})
    needed = set(ALWAYS_NEEDED) | set(cleanup)
    for key in list(checked):
        if key not in props:
            log.debug("schema %s: ignoring unknown key %r outside ADD", name, key)
            conf.pop(key, None)
            continue
        _prune(conf[key], props[key], schema)
        if accepts(conf[key], props[key], schema):
            continue
        if key in needed:
            _raise_first_error({key: conf[key]}, name, only=key)
        log.warning("schema %s: ignoring key %r outside ADD: its value is invalid", name, key)
        conf.pop(key, None)
    for key in schema.get("required", ()):
        if key in needed and key not in conf:
            raise CNIError(INVALID_CONFIG, f"missing required field {key!r}")


def _prune(value, schema, root: dict) -> None:
    """Drop keys a closed object schema does not know, at every depth (outside ADD only)."""
    if isinstance(schema, dict) and "$ref" in schema:
        schema = _resolve(root, schema["$ref"]) or {}
    if not isinstance(schema, dict):
        return
    if isinstance(value, dict):
        props = schema.get("properties", {})
        if schema.get("additionalProperties", True) is False:
            for key in [k for k in value if k not in props]:
                del value[key]
        for key, sub in props.items():
            if key in value:
                _prune(value[key], sub, root)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _prune(item, schema["items"], root)


# ---- the quick checker ----

def accepts(value, schema, root: dict) -> bool:
    """True only when `value` satisfies `schema`; False when it does not, or when `schema`
    uses a keyword not implemented here. At least as strict as jsonschema, never looser."""
    if schema is True:
        return True
    if not isinstance(schema, dict) or not schema.keys() <= _KNOWN:
        return False
    if "$ref" in schema and not accepts(value, _resolve(root, schema["$ref"]), root):
        return False
    if "type" in schema and not _has_type(value, schema["type"]):
        return False
    if "enum" in schema and not any(_key(value) == _key(e) for e in schema["enum"]):
        return False
    if "const" in schema and _key(value) != _key(schema["const"]):
        return False
    if isinstance(value, str):
        return (("pattern" not in schema or re.search(schema["pattern"], value) is not None)
                and len(value) >= schema.get("minLength", 0)
                and len(value) <= schema.get("maxLength", len(value)))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return ("minimum" not in schema or value >= schema["minimum"]) and \
               ("maximum" not in schema or value <= schema["maximum"])
    if isinstance(value, list):
        items = schema.get("items", True)
        return (len(value) >= schema.get("minItems", 0)
                and not (schema.get("uniqueItems") and len({_key(v) for v in value}) < len(value))
                and all(accepts(v, items, root) for v in value))
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        return (all(k in value for k in schema.get("required", ()))
                and all(accepts(v, props[k] if k in props else extra, root) for k, v in value.items()))
    return True


def supported(schema, root: dict | None = None) -> bool:
    """True when the quick checker implements every keyword of `schema` at every depth and
    every reference is local, so a valid config never needs jsonschema."""
    root = schema if root is None else root
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict) or not schema.keys() <= _KNOWN:
        return False
    if "$ref" in schema and _resolve(root, schema["$ref"]) is None:
        return False
    subs = [*schema.get("properties", {}).values(), *schema.get("$defs", {}).values()]
    subs += [schema[k] for k in ("additionalProperties", "items") if k in schema]
    return all(supported(s, root) for s in subs)


def _resolve(root: dict, ref) -> dict | bool | None:
    """A local reference ('#' or '#/$defs/name'); None for any other (jsonschema decides)."""
    if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
        return None
    node = root
    for part in ref[2:].split("/") if ref != "#" else ():
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _has_type(value, names) -> bool:
    for name in names if isinstance(names, list) else [names]:
        if name in ("integer", "number"):
            kinds = int if name == "integer" else (int, float)    # 1.0 as integer: jsonschema's call
            if isinstance(value, kinds) and not isinstance(value, bool):
                return True
        elif name in _TYPES and isinstance(value, _TYPES[name]):
            return True
    return False


def _key(value):
    """Equal for values JSON Schema calls equal (enum, const, uniqueItems): 1 == 1.0, true != 1."""
    if isinstance(value, bool) or value is None:
        return ("literal", value)
    if isinstance(value, (int, float)):
        return ("number", value)
    if isinstance(value, list):
        return ("array", tuple(_key(v) for v in value))
    if isinstance(value, dict):
        return ("object", frozenset((k, _key(v)) for k, v in value.items()))
    return ("string", value)


# ---- the authority: jsonschema ----

def _validator(name: str):
    v = _validators.get(name)
    if v is None:
        import jsonschema
        schema = load(name)
        v = _validators[name] = jsonschema.validators.validator_for(schema)(schema)
    return v


def _raise_first_error(conf: dict, name: str, only: str = "") -> None:
    """Raise jsonschema's first error (by path) as CNIError(7); return when there is none.
    `only`: report errors under that top-level key alone (the others were dealt with)."""
    errors = [e for e in _validator(name).iter_errors(conf)
              if not only or (list(e.absolute_path)[:1] == [only])]
    errors.sort(key=lambda e: (e.validator == "required", list(e.absolute_path)))
    if not errors:
        return
    e = errors[0]
    path = ".".join(str(p) for p in e.absolute_path)
    if e.validator == "additionalProperties":
        known = list(e.schema.get("properties", {}))
        extra = sorted(set(e.instance) - set(known))
        where = ".".join(p for p in (path, extra[0]) if p)
        hint = _nearest(extra[0], known)
        more = f" (and {len(extra) - 1} more unknown)" if len(extra) > 1 else ""
        raise CNIError(INVALID_CONFIG, f"unknown config key {where!r}{hint}{more}",
                       f"value: {json.dumps({k: e.instance[k] for k in extra})[:200]}")
    if e.validator == "required":
        missing = [k for k in e.validator_value if isinstance(e.instance, dict) and k not in e.instance]
        where = ".".join(p for p in (path, missing[0] if missing else "") if p)
        raise CNIError(INVALID_CONFIG, f"missing required field {where!r}", e.message)
    value = json.dumps(e.instance)[:200]
    raise CNIError(INVALID_CONFIG, f"invalid config field {path or '(config)'!r}: {e.message}", f"value: {value}")


def _nearest(key: str, known: list) -> str:
    import difflib
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not close:
        close = [k for k in known if k.lower() == key.lower()]
    return f" (did you mean {close[0]!r}?)" if close else ""
