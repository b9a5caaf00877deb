"""edgemesh config: the schema names the bad field, semantic checks, the services file (no root)."""
import json
import os
import subprocess

import pytest

from libcni_py.errors import CNIError
from plugins.meta.edgemesh import config
from plugins.pkg.schema import validate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = {"cniVersion": "1.0.0", "name": "emnet", "type": "edgemesh", "serviceCIDR": "10.96.0.0/12"}


def test_defaults():
    c = config.load(BASE)
    assert (c.listen_address, c.listen_port, c.protocols, c.scope, c.backend) == (
        "169.254.96.16", 40001, ("tcp",), "pod", "auto")
    assert not c.ensure_listen_device and not c.allow_known_bad_kernel
    assert c.lock_path == "/var/lib/cni/pycni/edgemesh/edgemesh.lock"


@pytest.mark.parametrize("keys,field", [
    ({"serviceCIDR": None}, "serviceCIDR"),
    ({"listenAddress": "fe80::1"}, "listenAddress"),
    ({"listenAddress": "localhost"}, "listenAddress"),
    ({"listenPort": 0}, "listenPort"),
    ({"protocols": ["sctp"]}, "protocols"),
    ({"scope": "cluster"}, "scope"),
    ({"backend": "ipvs"}, "backend"),
    ({"excludeNamespaces": ["Kube_System"]}, "excludeNamespaces"),
    ({"ignoredServices": [{"ip": "10.96.0.1", "name": "no-namespace"}]}, "ignoredServices"),
    ({"ignoredServicesFile": "relative/path"}, "ignoredServicesFile"),
    ({"serviceCidr": "10.96.0.0/12"}, "serviceCidr"),
])
def test_schema_names_the_bad_field(keys, field):
    conf = {k: v for k, v in dict(BASE, **keys).items() if v is not None}
    with pytest.raises(CNIError) as e:
        validate(conf, "edgemesh")
    assert e.value.code == 7 and field in str(e.value)


@pytest.mark.parametrize("keys,field", [
    ({"serviceCIDR": "10.96.0.0/40"}, "serviceCIDR"),
    ({"serviceCIDR": ["10.96.0.0/12", "10.100.0.0/16"]}, "serviceCIDR"),     # two of one family
    ({"listenAddress": "300.1.2.3"}, "listenAddress"),
    ({"serviceCIDR": "10.96.0.0/12\n"}, "serviceCIDR"),
    ({"kernelRelease": "4.15\n"}, "kernelRelease"),
    ({"excludeNamespaces": ["kube-system\n"]}, "excludeNamespaces"),
    ({"ignoredServices": [{"ip": "10.96.0.1", "name": "a/b\n"}]}, "ignoredServices"),
    ({"ignoredServices": [{"ip": "10.96.0.300", "name": "a/b"}]}, "ignoredServices"),
])
def test_semantic_checks_name_the_field(keys, field):
    with pytest.raises(CNIError) as e:
        config.load(dict(BASE, **keys))
    assert e.value.code == 7 and field in e.value.msg


def test_services_file(tmp_path):
    f = tmp_path / "s.json"
    conf = config.load(dict(BASE, ignoredServicesFile=str(f),
                             ignoredServices=[{"ip": "10.96.0.10", "name": "kube-system/kube-dns"}]))
    assert [s.name for s in conf.all_ignored()] == ["kube-system/kube-dns"]     # missing file: empty
    f.write_text(json.dumps([{"ip": "10.96.0.10", "name": "kube-system/kube-dns"},
                             {"ip": "10.96.0.11", "name": "default/web"}]))
    assert [s.comment for s in conf.all_ignored()] == ["ignore kube-system/kube-dns service",
                                                      "ignore default/web service"]


@pytest.mark.parametrize("text", ["{", '{"ip": "10.96.0.1"}', '[{"ip": "10.96.0.1", "name": "a/b", "x": 1}]',
                                  '[{"ip": "10.96.0.1", "name": "a/b\\nc"}]', '[{"ip": 1, "name": "a/b"}]'])
def test_a_broken_services_file_is_error_144(tmp_path, text):
    f = tmp_path / "s.json"
    f.write_text(text)
    with pytest.raises(CNIError) as e:
        config.read_services_file(str(f))
    assert e.value.code == 144 and str(f) in e.value.msg


def test_pod_comment_round_trip_and_length():
    c = config.pod_comment("emnet", "c1")
    assert config.parse_pod_comment(c) == ("emnet", "c1")
    assert config.parse_pod_comment("ignore a/b service") is None
    with pytest.raises(CNIError):
        config.pod_comment("n" * 200, "c" * 64)


def test_plugin_version_and_bad_config_without_root():
    env = dict(os.environ, CNI_COMMAND="ADD", CNI_CONTAINERID="c1", CNI_NETNS="/proc/self/ns/net",
               CNI_IFNAME="eth0", CNI_PATH="/usr/lib/cni")
    p = subprocess.run([os.path.join(ROOT, ".venv", "bin", "edgemesh")], input=json.dumps(
        {k: v for k, v in BASE.items() if k != "serviceCIDR"}), env=env, capture_output=True, text=True)
    out = json.loads(p.stdout)
    assert p.returncode == 1 and out["code"] == 7 and "serviceCIDR" in out["msg"]
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("name", ["edgemesh.conflist", "edgemesh-node.conflist"])
def test_example_conflists_are_valid(name):
    with open(os.path.join(ROOT, "conf", name)) as f:
        lst = json.load(f)
    [entry] = [p for p in lst["plugins"] if p["type"] == "edgemesh"]
    conf = dict(entry, name=lst["name"], cniVersion=lst["cniVersion"])
    validate(conf, "edgemesh")
    config.load(conf)
    assert lst["plugins"][0]["type"] == "bridge" and lst["plugins"][0]["ipam"]["type"] == "host-local"
