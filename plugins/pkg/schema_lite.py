"""A small JSON Schema checker for plugin configs, without importing jsonschema.

`import jsonschema` costs ~70 ms (referencing, attrs, format checkers), paid by every
plugin exec. Plugin schemas use a handful of keywords; this module checks exactly
those (type, enum, const, pattern, minimum, maximum, minLength, maxLength, required,
properties, additionalProperties, items, minItems, uniqueItems) and reports like
plugins.pkg.schema: CNIError(7) naming the first bad field. A schema using any
other keyword is handed to plugins.pkg.schema (real jsonschema) instead, so the
answer is never weaker than the full validator's.
"""
from __future__ import annotations

import json
import os
import re

from libcni_py.errors import CNIError, INVALID_CONFIG

_ANNOTATIONS = {"$schema", "$id", "title", "description", "default", "examples", "$comment"}
_CHECKED = {"type", "enum", "const", "pattern", "minimum", "maximum", "minLength", "maxLength", "required",
            "properties", "additionalProperties", "items", "minItems", "uniqueItems"}
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
_schemas: dict[str, dict | None] = {}


def supported(schema) -> bool:
    """True when every keyword (at every depth) is one this module checks."""
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict) or not set(schema) <= _CHECKED | _ANNOTATIONS:
        return False
    subs = list((schema.get("properties") or {}).values())
    for key in ("additionalProperties", "items"):
        if isinstance(schema.get(key), (dict, bool)):
            subs.append(schema[key])
    return all(supported(s) for s in subs)


def _is_type(value, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool) or (isinstance(value, float) and value.is_integer())
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if name in ("object", "array", "string", "null"):
        return isinstance(value, _TYPES[name])
    if name == "boolean":
        return isinstance(value, bool)
    return False


def errors(value, schema, path: tuple = ()):
    """Yield (path, message, offending value) for each violation."""
    if schema is True:
        return
    if schema is False:
        yield path, "False schema does not allow " + json.dumps(value), value
        return
    t = schema.get("type")
    if t is not None:
        names = t if isinstance(t, list) else [t]
        if not any(_is_type(value, n) for n in names):
            yield path, f"{value!r} is not of type {', '.join(repr(n) for n in names)}", value
            return
    if "enum" in schema and not any(value == e and type(value) is type(e) for e in schema["enum"]):
        yield path, f"{value!r} is not one of {schema['enum']!r}", value
    if "const" in schema and value != schema["const"]:
        yield path, f"{schema['const']!r} was expected", value
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            yield path, f"{value!r} does not match {schema['pattern']!r}", value
        if len(value) < schema.get("minLength", 0):
            yield path, f"{value!r} is too short", value
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            yield path, f"{value!r} is too long", value
    if _is_type(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            yield path, f"{value!r} is less than the minimum of {schema['minimum']!r}", value
        if "maximum" in schema and value > schema["maximum"]:
            yield path, f"{value!r} is greater than the maximum of {schema['maximum']!r}", value
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            yield path, f"{value!r} is too short", value
        if schema.get("uniqueItems") and len({json.dumps(v, sort_keys=True) for v in value}) != len(value):
            yield path, f"{value!r} has non-unique elements", value
        if "items" in schema:
            for i, item in enumerate(value):
                yield from errors(item, schema["items"], path + (i,))
    if isinstance(value, dict):
        for key in schema.get("required", ()):
            if key not in value:
                yield path, f"{key!r} is a required property", value
        props = schema.get("properties") or {}
        extra = sorted(k for k in value if k not in props)
        add = schema.get("additionalProperties", True)
        if extra and add is False:
            yield (path + (",".join(extra),), f"Additional properties are not allowed "
                   f"({', '.join(repr(k) for k in extra)} unexpected)", value)
        for key in sorted(value):
            if key in props:
                yield from errors(value[key], props[key], path + (key,))
            elif isinstance(add, dict):
                yield from errors(value[key], add, path + (key,))


def _schema(name: str) -> dict | None:
    """The schema `name` when this module can check it, else None (cached per process)."""
    if name not in _schemas:
        from plugins.pkg.schema import schema_dir
        with open(os.path.join(schema_dir(), name + ".json")) as f:
            schema = json.load(f)
        _schemas[name] = schema if supported(schema) else None
    return _schemas[name]


def validate(conf: dict, name: str) -> None:
    schema = _schema(name)
    if schema is None:
        from plugins.pkg import schema as full
        full.validate(conf, name)
        return
    found = sorted(errors(conf, schema), key=lambda e: [str(p) for p in e[0]])
    if not found:
        return
    path, message, value = found[0]
    where = ".".join(str(p) for p in path) or "(config)"
    raise CNIError(INVALID_CONFIG, f"invalid config field {where!r}: {message}", f"value: {json.dumps(value)[:200]}")


def validator(name: str):
    """A skel `validate` hook like plugins.pkg.schema.validator, without jsonschema when it can."""
    def hook(conf: dict, command: str) -> None:
        validate(conf, name)
    return hook
