"""Every example under conf/ loads as libcni loads it, and each of our plugins'
entries passes that plugin's JSON Schema, so the examples never drift from the code."""
import glob
import json
import os

import pytest

from libcni_py.conf import conflist_from_file
from plugins.pkg.schema import validate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OURS = {"vxlan": "vxlan", "dp-steering": "dp-steering", "edgemesh": "edgemesh",
        "pycni-passthrough": "passthrough"}
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "conf", "*.conflist")))


def test_there_are_examples():
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_example_loads_and_our_entries_validate(path):
    lst = conflist_from_file(path)
    assert lst.plugins and lst.name
    for net in lst.plugins:
        schema = OURS.get(net.type)
        if schema is None:
            continue
        # What the plugin receives: the entry plus the injected name and version.
        conf = dict(json.loads(net.raw), name=lst.name, cniVersion=lst.cni_version)
        validate(conf, schema)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "conf", "schema", "*.json"))),
                         ids=os.path.basename)
def test_schema_is_valid_json_schema(path):
    import jsonschema
    with open(path) as f:
        schema = json.load(f)
    jsonschema.validators.validator_for(schema).check_schema(schema)


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_our_entries_accept_what_a_runtime_injects(path):
    """GC carries both attachment keys (libcni >= 1.2.3), CHECK/DEL a prevResult, ADD
    runtimeConfig; a schema that refused one of them would break that verb."""
    lst = conflist_from_file(path)
    injected = {"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
                "cni.dev/attachments": [{"containerID": "c1", "ifname": "eth0"}],
                "prevResult": {"cniVersion": lst.cni_version, "interfaces": [{"name": "eth0"}]},
                "runtimeConfig": {}, "args": {}}
    for net in lst.plugins:
        schema = OURS.get(net.type)
        if schema is None:
            continue
        conf = dict(json.loads(net.raw), name=lst.name, cniVersion=lst.cni_version, **injected)
        validate(conf, schema)
