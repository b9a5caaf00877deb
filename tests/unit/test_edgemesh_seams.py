"""edgemesh's seams without root: the backend registry, the translation of shared-code failures,
NetConf/load outside ADD, and the conflict check between networks over their records."""
import pytest

from libcni_py import records
from libcni_py.errors import CNIError
from plugins.meta.edgemesh import backend_iptables, backends, config, conflict, errors
from plugins.meta.edgemesh import rules as R
from plugins.pkg.iptables import IptablesError, XtablesLockError
from plugins.pkg.nft import NftError

BASE = {"cniVersion": "1.1.0", "name": "neta", "type": "edgemesh", "serviceCIDR": "10.96.0.0/12",
        "protocols": ["tcp", "udp"], "ignoredServices": [{"ip": "10.96.0.10", "name": "kube-system/kube-dns"}]}


def test_registry_knows_both_backends_and_names_them_for_an_unknown_one():
    assert {"iptables", "nftables"} <= set(backends.REGISTRY)
    assert backends.get("nft").name == backends.get("nftables").name == "nftables"
    assert backends.get("iptables").name == "iptables"
    with pytest.raises(CNIError) as e:
        backends.get("ipvs")
    assert e.value.code == errors.NO_BACKEND == 142
    assert "ipvs" in e.value.msg and all(n in e.value.details for n in ("auto", "iptables", "nftables"))


def test_a_registered_backend_is_found_by_name():
    class Fake:
        name = "fake"
    backends.register("fake", Fake)
    try:
        assert isinstance(backends.get("fake"), Fake)
        assert "fake" in backends.known()
    finally:
        del backends.REGISTRY["fake"]


@pytest.mark.parametrize("exc,code,word", [
    (XtablesLockError("iptables-restore failed: Another app is currently holding the xtables lock"), 148, "fuser"),
    (IptablesError("iptables-restore failed: line 2 failed"), 141, "EDGE-MESH"),
    (NftError("nft -f failed: Error: Could not process rule"), 141, "ip edgemesh"),
    (FileNotFoundError(2, "No such file or directory", "nft"), 142, "install"),
    (TimeoutError("lock"), 150, "retry"),
])
def test_shared_failures_become_codes_with_their_fix(exc, code, word):
    err = errors.translate(exc)
    assert err.code == code and word in err.details and str(exc)[:20] in err.details
    assert err.msg == errors.CODES.table[code].meaning


def test_del_gc_status_load_keeps_only_what_they_need():
    bad = dict(BASE, serviceCIDR="10.96.0.0/40", listenAddress="300.1.2.3", kernelRelease="4.15\n",
               excludeNamespaces=["BAD"], ignoredServices=[{"ip": "x", "name": "y"}])
    for verb in ("DEL", "GC", "STATUS"):
        c = config.load(bad, verb)
        assert (c.service_cidr, c.listen_address, c.ignored_services, c.exclude_namespaces) == (
            "", "169.254.96.16", (), ())
    for verb in ("ADD", "CHECK"):
        with pytest.raises(CNIError) as e:
            config.load(bad, verb)
        assert e.value.code == 7
    c = config.load({"name": "neta"}, "DEL")              # no serviceCIDR at all: DEL still works
    assert c.network == "neta" and c.backend == "auto"


def test_state_dir_is_checked_on_every_verb(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    for verb in ("ADD", "DEL", "GC", "STATUS"):
        with pytest.raises(CNIError) as e:
            config.load(dict(BASE, stateDir=str(f)), verb)
        assert e.value.code == 7 and "stateDir" in e.value.msg


def test_services_file_that_is_a_fifo_is_144_and_never_blocks(tmp_path):
    import os
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(CNIError) as e:
        config.read_services_file(str(fifo))
    assert e.value.code == 144 and "regular file" in e.value.details


def _mesh(*nets_ids):
    """A backend's reading with pods of the given (network, id) in the mesh chain and the shared
    chains as `BASE` wants them."""
    conf = config.load(BASE)
    render = backend_iptables.render
    current = {chain: [R.Entry(render(i), getattr(i, "comment", ""), n + 1) for n, i in enumerate(items)]
               for chain, items in R.shared_items(conf, conf.all_ignored()).items()}
    current["mesh"] = [R.Entry(render(m), m.comment, n + 1) for n, (net, cid) in enumerate(nets_ids)
                       for m in R.pod_items([f"10.22.0.{n + 5}"], config.pod_comment(net, cid), True)]
    return current


def _check(conf_dict, current):
    conf = config.load(conf_dict)
    conflict.check(conf, backend_iptables.Backend(), current, R.shared_items(conf, conf.all_ignored()))


def test_conflict_same_config_passes_a_different_one_names_the_network(tmp_path):
    state = str(tmp_path)
    other = config.load(dict(BASE, name="netb", stateDir=state))
    conflict.record(other, backend_iptables.Backend())
    current = _mesh(("netb", "c2"))
    _check(dict(BASE, stateDir=state), current)                       # same config: fine
    with pytest.raises(CNIError) as e:
        _check(dict(BASE, stateDir=state, protocols=["tcp"]), current)
    assert e.value.code == errors.CONFIG_CONFLICT == 147
    assert "'netb'" in e.value.msg and "protocols" in e.value.details
    _check(dict(BASE, stateDir=state, protocols=["tcp"]), _mesh(("neta", "c1")))   # only our own pods
    assert conflict.networks_in(current) == {"netb"}


def test_conflict_without_a_record_only_when_the_shared_chains_would_change(tmp_path):
    current = _mesh(("netb", "c2"))
    _check(dict(BASE, stateDir=str(tmp_path)), current)               # would change nothing
    with pytest.raises(CNIError) as e:
        _check(dict(BASE, stateDir=str(tmp_path), listenPort=40002), current)
    assert e.value.code == 147 and "no record" in e.value.msg and "DNAT" in e.value.details


def test_record_is_written_once_and_forgotten(tmp_path):
    conf = config.load(dict(BASE, stateDir=str(tmp_path)))
    conflict.record(conf, backend_iptables.Backend())
    path = conf.record_path("neta")
    assert records.read(path)["shared"] == conf.shared()
    mtime = __import__("os").stat(path).st_mtime_ns
    conflict.record(conf, backend_iptables.Backend())
    assert __import__("os").stat(path).st_mtime_ns == mtime          # unchanged: not rewritten
    conflict.forget(conf)
    assert records.read_or(path) is None
