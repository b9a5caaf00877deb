"""Validate a plugin config against its JSON Schema under conf/schema/."""
from __future__ import annotations

import json
import os

from libcni_py.errors import CNIError, INVALID_CONFIG

_validators: dict[str, object] = {}


def schema_dir() -> str:
    """conf/schema in a checkout, or the copy a PyInstaller bundle carries."""
    import sys
    base = getattr(sys, "_MEIPASS", None)
    if base:
        return os.path.join(base, "conf", "schema")
    return os.path.join(os.path.dirname(__file__), "..", "..", "conf", "schema")


def _validator(name: str):
    v = _validators.get(name)
    if v is None:
        import jsonschema
        with open(os.path.join(schema_dir(), name + ".json")) as f:
            schema = json.load(f)
        cls = jsonschema.validators.validator_for(schema)
        v = _validators[name] = cls(schema)
    return v


def validate(conf: dict, name: str) -> None:
    """Raise CNIError(7) naming the first bad field and its value."""
    errors = sorted(_validator(name).iter_errors(conf), key=lambda e: list(e.absolute_path))
    if not errors:
        return
    e = errors[0]
    path = ".".join(str(p) for p in e.absolute_path)
    if e.validator == "additionalProperties":
        extra = sorted(set(e.instance) - set(e.schema.get("properties", {})))
        path = ".".join(p for p in (path, ",".join(extra)) if p)
    path = path or "(config)"
    if e.validator == "additionalProperties":
        value = json.dumps({k: e.instance[k] for k in extra})[:200]
    else:
        value = json.dumps(e.instance)[:200]
    raise CNIError(INVALID_CONFIG, f"invalid config field {path!r}: {e.message}", f"value: {value}")


def validator(name: str):
    """A skel `validate` hook for schema `name` (conf/schema/<name>.json)."""
    def hook(conf: dict, command: str) -> None:
        validate(conf, name)
    return hook
