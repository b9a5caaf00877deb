"""schema_lite gives the same verdict and field as jsonschema on the vxlan schema."""
import json
import os

import jsonschema
import pytest

from libcni_py.errors import CNIError
from plugins.pkg import schema, schema_lite

BASE = {"cniVersion": "1.0.0", "name": "n", "type": "vxlan", "network": "10.244.0.0/16"}
CASES = [
    {},
    {"hairpinMode": True, "ipMasq": False, "bridge": "cni0", "isDefaultGateway": True},
    {"ipam": {"type": "host-local", "dataDir": "/x", "ranges": [[{"subnet": "10.244.1.0/24"}]]}},
    {"registry": {"type": "file", "path": "/tmp/r.json", "ttl": 0}},
    {"subnetLen": 24, "vni": 42, "port": 4789, "publicIP": "198.18.0.1", "iface": "eth0"},
    {"hairpinMode": "yes"},
    {"ipMasq": 1},
    {"bridge": "a-bridge-name-too-long"},
    {"bridge": "br0;rm"},
    {"ipam": {"dataDir": "/tmp"}},
    {"ipam": {"type": 7}},
    {"network": "10.244.0.0/33x"},
    {"subnetLen": 40},
    {"subnetLen": 24.5},
    {"vni": 0},
    {"port": True},
    {"registry": {"type": "file", "extra": 1}},
    {"registry": {"path": "relative"}},
    {"mtu": 1400},
    {"mtu": 1400, "zzz": 1},
    {"logLevel": "loud"},
    {"logFile": "relative.log"},
    {"stateDir": 5},
]


def _schema(name):
    with open(os.path.join(schema.schema_dir(), name + ".json")) as f:
        return json.load(f)


def _full_first(conf, name):
    v = jsonschema.validators.validator_for(_schema(name))(_schema(name))
    errs = sorted(v.iter_errors(conf), key=lambda e: [str(p) for p in e.absolute_path])
    return errs


@pytest.mark.parametrize("extra", CASES)
def test_same_verdict_and_field_as_jsonschema(extra):
    conf = {**BASE, **extra}
    full = _full_first(conf, "vxlan")
    try:
        schema_lite.validate(conf, "vxlan")
        lite_error = None
    except CNIError as e:
        lite_error = e
    assert (lite_error is None) == (not full), (extra, lite_error, [e.message for e in full])
    if full:
        with pytest.raises(CNIError) as e:
            schema.validate(conf, "vxlan")
        assert lite_error.code == e.value.code == 7
        assert lite_error.msg.split(":")[0] == e.value.msg.split(":")[0]      # "invalid config field 'x'"


def test_the_vxlan_schema_is_checked_without_jsonschema():
    assert schema_lite.supported(_schema("vxlan"))


def test_unsupported_keywords_fall_back_to_jsonschema():
    assert not schema_lite.supported({"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}})
    assert not schema_lite.supported({"oneOf": [{"type": "string"}]})
    assert schema_lite.supported({"type": "object", "additionalProperties": {"type": "integer"}})
