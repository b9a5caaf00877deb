"""The etcd registry's keys: checked like every other key (code 7 naming it), the schema takes
them, and nothing of the etcd backend is imported on the per-pod path."""
import json
import os
import subprocess
import sys

import pytest

from libcni_py.errors import CNIError
from plugins.main.vxlan import errors, registry
from plugins.main.vxlan.registry import etcd
from plugins.pkg.schema import validate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def reg(**kw):
    return {"type": "etcd", "endpoints": ["http://198.18.0.1:2379"], **kw}


def test_defaults():
    o = etcd.parse_options(reg(endpoints=["http://198.18.0.1:2379", "https://etcd-2.example/",
                                          "http://[fd00::1]:4001"]), "vxnet")
    assert o.endpoints == [("http", "198.18.0.1", 2379), ("https", "etcd-2.example", 2379),
                           ("http", "fd00::1", 4001)]
    assert o.prefix == "/pycni/vxnet/" and o.dial_timeout == 2.0
    assert o.ca_file is o.cert_file is o.key_file is o.username is o.password_file is None
    assert etcd.parse_options(reg(prefix="/x/", dialTimeout=0.5), "n").prefix == "/x/"


@pytest.mark.parametrize("url", ["", 5, None, "198.18.0.1:2379", "ftp://h:2379", "http://", "http://h:99999",
                                 "http://h:2379/v3", "http://u:p@h:2379", "http://h:2379?x=1", "http://h :1",
                                 "http://h:port"])
def test_a_bad_endpoint_is_7(url):
    with pytest.raises(CNIError) as e:
        etcd.parse_options(reg(endpoints=[url]), "n")
    assert e.value.code == 7 and "registry.endpoints" in e.value.msg


@pytest.mark.parametrize("endpoints", [None, [], "http://h:2379"])
def test_endpoints_are_a_non_empty_list(endpoints):
    r = reg(endpoints=endpoints) if endpoints is not None else {"type": "etcd"}
    with pytest.raises(CNIError) as e:
        etcd.parse_options(r, "n")
    assert e.value.code == 7 and "registry.endpoints" in e.value.msg


def test_tls_and_auth_files(tmp_path):
    pem = tmp_path / "x.pem"
    pem.write_text("junk")
    https = ["https://198.18.0.1:2379"]
    for bad, key in ((dict(caFile=str(tmp_path / "missing.pem")), "caFile"),
                     (dict(caFile="relative.pem"), "caFile"),
                     (dict(certFile=str(pem)), "keyFile"),
                     (dict(keyFile=str(pem)), "certFile"),
                     (dict(caFile=str(tmp_path)), "caFile"),
                     (dict(username="u"), "passwordFile"),
                     (dict(passwordFile=str(pem)), "username"),
                     (dict(username="", passwordFile=str(pem)), "username"),
                     (dict(passwordFile=str(tmp_path / "nope")), "passwordFile")):
        with pytest.raises(CNIError) as e:
            etcd.parse_options(reg(endpoints=https, **bad), "n")
        assert e.value.code == 7 and f"registry.{key}" in e.value.msg, (bad, e.value.msg)
    with pytest.raises(CNIError) as e:                        # TLS files with an http:// endpoint
        etcd.parse_options(reg(caFile=str(pem)), "n")
    assert e.value.code == 7 and "an endpoint is http://" in e.value.msg
    o = etcd.parse_options(reg(endpoints=https, caFile=str(pem), certFile=str(pem), keyFile=str(pem),
                               username="u", passwordFile=str(pem)), "n")
    assert (o.ca_file, o.cert_file, o.key_file, o.username) == (str(pem), str(pem), str(pem), "u")
    with pytest.raises(CNIError) as e:                        # not PEM: refused when opened, no network
        etcd.EtcdRegistry(reg(endpoints=https, caFile=str(pem)), network_name="n")
    assert e.value.code == 7 and "TLS" in e.value.msg


@pytest.mark.parametrize("bad", [dict(dialTimeout=0), dict(dialTimeout=61), dict(dialTimeout=True),
                                 dict(dialTimeout="2"), dict(prefix="pycni/"), dict(prefix="/pycni"),
                                 dict(prefix=3), dict(path="/tmp/r.json"), dict(endpionts=[])])
def test_other_bad_keys_are_7_naming_them(bad):
    with pytest.raises(CNIError) as e:
        etcd.parse_options(reg(**bad), "n")
    assert e.value.code == 7 and f"registry.{next(iter(bad))}" in e.value.msg


def test_the_schema_takes_the_etcd_keys_and_refuses_bad_values():
    conf = {"cniVersion": "1.0.0", "name": "vxnet", "type": "vxlan", "network": "10.244.0.0/16",
            "registry": reg(prefix="/p/", caFile="/a.pem", certFile="/c.pem", keyFile="/k.pem", username="u",
                            passwordFile="/pw", dialTimeout=1.5, ttl=30,
                            endpoints=["https://198.18.0.1:2379", "https://198.18.0.2:2379"])}
    validate(json.loads(json.dumps(conf)), "vxlan")
    for key, value in (("endpoints", []), ("endpoints", ["198.18.0.1:2379"]), ("dialTimeout", 0),
                       ("caFile", "a.pem"), ("prefix", "p/"), ("endpoints", "http://h:1")):
        bad = json.loads(json.dumps(conf))
        bad["registry"][key] = value
        with pytest.raises(CNIError) as e:
            validate(bad, "vxlan")
        assert e.value.code == 7 and key in e.value.msg, (key, value, e.value.msg)


def test_etcd_is_a_registered_type_and_needs_its_options():
    assert "etcd" in registry.types()
    with pytest.raises(CNIError) as e:
        registry.open_registry("etcd", "/var/lib/registry.json", 10)
    assert e.value.code == errors.REGISTRY_UNREADABLE and "vxlan-agent" in e.value.details


@pytest.mark.parametrize("modules", [
    ("plugins.main.vxlan.cmd", "plugins.main.vxlan.registry", "plugins.main.vxlan.config",
     "plugins.main.vxlan.lease", "plugins.main.vxlan.registry.file"),
    ("plugins.main.vxlan.registry.etcd",)], ids=["per-pod-path", "etcd-options"])
def test_the_etcd_client_stays_off_the_per_pod_path(modules):
    """The per-pod path never loads the etcd backend; parsing its options loads no client
    (etcd3gw, requests, http.client, ssl are only imported by an opened EtcdRegistry)."""
    code = (f"import sys\nimport {', '.join(modules)}\n"
            "print(sorted(m for m in sys.modules if m in ('http.client', 'ssl', 'urllib.parse', "
            "'plugins.main.vxlan.registry.etcd', 'http', 'etcd3gw', 'requests')))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    want = ["plugins.main.vxlan.registry.etcd"] if modules == ("plugins.main.vxlan.registry.etcd",) else []
    assert json.loads(p.stdout.replace("'", '"')) == want
