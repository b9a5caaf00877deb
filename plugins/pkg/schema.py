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


def load(name: str) -> dict:
    """conf/schema/<name>.json, read once per process."""
    schema = _schemas.get(name)
    if schema is None:
        with open(os.path.join(schema_dir(), name + ".json")) as f:
            schema = _schemas[name] = json.load(f)
    return schema


def validate(conf: dict, name: str) -> None:
    """Raise CNIError(7) naming the first bad field and its value (jsonschema's first error)."""
    schema = load(name)
    if accepts(conf, schema, schema):
        return
    _raise_first_error(conf, name)
    log.debug("schema %s: jsonschema accepts a config the quick checker did not", name)


def validator(name: str):
    """A skel `validate` hook for schema `name` (conf/schema/<name>.json)."""
    def hook(conf: dict, command: str) -> None:
        validate(conf, name)
    return hook


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


def _raise_first_error(conf: dict, name: str) -> None:
    """Raise jsonschema's first error (by path) as CNIError(7); return when there is none."""
    errors = sorted(_validator(name).iter_errors(conf), key=lambda e: list(e.absolute_path))
    if not errors:
        return
    e = errors[0]
    path = ".".join(str(p) for p in e.absolute_path)
    if e.validator == "additionalProperties":
        extra = sorted(set(e.instance) - set(e.schema.get("properties", {})))
        path = ".".join(p for p in (path, ",".join(extra)) if p)
        value = json.dumps({k: e.instance[k] for k in extra})[:200]
    else:
        value = json.dumps(e.instance)[:200]
    raise CNIError(INVALID_CONFIG, f"invalid config field {path or '(config)'!r}: {e.message}", f"value: {value}")
