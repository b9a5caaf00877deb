"""dp-steering's config (schema, defaults), derived names and MACs, and its records."""
import os

import pytest

from libcni_py.errors import CNIError
from plugins.meta.dp_steering import config, errors, ids, state
from plugins.pkg import schema

BASE = {"cniVersion": "1.0.0", "name": "net", "type": "dp-steering", "enforcerNetns": "/run/netns/enf"}


def test_defaults():
    cfg = config.load(BASE)
    assert (cfg.mode, cfg.datapath, cfg.fail_open, cfg.vbr, cfg.vth, cfg.dp_socket) == \
        ("inline", "auto", False, "vbr-dp", "vth-dp", "")
    assert cfg.state_dir == "/var/lib/cni/pycni/dp-steering"


@pytest.mark.parametrize("key,value", [("mode", "off"), ("datapath", "xdp"), ("failOpen", "yes"),
                                       ("vbrName", "a-very-long-name-x"), ("vthName", "v th"),
                                       ("enforcerNetns", "relative/path"), ("dpSocket", "x.sock"),
                                       ("dpWaitMs", -1), ("surprise", 1)])
def test_schema_names_the_bad_field(key, value):
    with pytest.raises(CNIError) as e:
        schema.validate({**BASE, key: value}, "dp-steering")
    assert e.value.code == 7 and key in e.value.msg


def test_schema_needs_the_enforcer_and_the_lite_checker_covers_it():
    conf = dict(BASE)
    del conf["enforcerNetns"]
    with pytest.raises(CNIError) as e:
        schema.validate(conf, "dp-steering")
    assert "enforcerNetns" in str(e.value)
    with open(schema.schema_dir() + "/dp-steering.json") as f:
        import json
        assert schema.supported(json.load(f))      # so plugin execs never import jsonschema


def test_vbr_and_vth_must_differ():
    with pytest.raises(CNIError):
        config.load({**BASE, "vbrName": "x", "vthName": "x"})


def test_enforcer_netns_must_exist(tmp_path):
    with pytest.raises(CNIError) as e:
        config.check_enforcer(str(tmp_path / "missing"))
    assert e.value.code == errors.ENFORCER_NETNS


def test_port_names_are_short_stable_and_distinct():
    vex, vin = ids.port_names("c1", "eth0")
    assert vex.startswith("vex") and vin.startswith("vin") and vex[3:] == vin[3:] and len(vex) == 9
    assert ids.port_names("c1", "eth0") == (vex, vin)
    assert ids.port_names("c1", "eth1") != (vex, vin)
    with pytest.raises(CNIError):
        ids.port_names("../x", "eth0")


def test_parking_mac_is_locally_administered_unicast():
    mac = ids.parking_mac("c1", "eth0")
    first = int(mac[:2], 16)
    assert first & 0x02 and not first & 0x01 and len(mac) == 17


def test_ucmac_is_neuvectors():
    assert ids.ucmac(0xB4) == "4e:65:75:56:00:b4"
    assert ids.ucmac(0x1_0203) == "4e:65:75:56:02:03"


def test_allocate16_prefers_the_index_then_the_next_free():
    assert ids.allocate16(180, set(), "x") == 180
    assert ids.allocate16(180, {180, 181}, "x") == 182
    assert ids.allocate16(0x10000, set(), "x") == 1          # 0 is never handed out
    with pytest.raises(CNIError) as e:
        ids.allocate16(1, set(range(1, 0x10000)), "x")
    assert e.value.code == errors.INDEX_CLASH


def pod(cid="c1", ifname="eth0", **kw):
    return state.Pod(container_id=cid, ifname=ifname, network="n", netns="/run/netns/p", enforcer="/e",
                     vex="vexa", vin="vina", vbr="vbr", vth="vth", datapath="ebpf", mode="inline", **kw)


def test_pod_records_round_trip_and_vanish(tmp_path):
    d = str(tmp_path)
    assert state.load_pod(d, "c1", "eth0") is None
    p = pod(installed="tap", ucmac="4e:65:75:56:00:02")
    state.save_pod(d, p)
    assert state.load_pod(d, "c1", "eth0") == p
    state.save_pod(d, pod(cid="c2"))
    assert [q.key for q in state.all_pods(d)] == ["c1/eth0", "c2/eth0"]
    state.remove_pod(d, "c1", "eth0")
    state.remove_pod(d, "c1", "eth0")
    assert [q.key for q in state.all_pods(d)] == ["c2/eth0"]


def test_corrupt_record_is_a_clear_error(tmp_path):
    d = str(tmp_path)
    state.save_pod(d, pod())
    (tmp_path / "pods" / "c1" / "eth0.json").write_text("{not json")
    with pytest.raises(CNIError) as e:
        state.load_pod(d, "c1", "eth0")
    assert e.value.code == errors.NO_STATE


def test_shared_pair_users_are_a_set_and_the_file_goes_with_the_last(tmp_path):
    d = str(tmp_path)
    state.set_users(d, "/e", "vbr", ["a/eth0", "b/eth0", "a/eth0"])
    assert state.users(d, "/e", "vbr") == ["a/eth0", "b/eth0"]
    assert state.users(d, "/other", "vbr") == []
    state.set_users(d, "/e", "vbr", [])
    assert state.users(d, "/e", "vbr") == [] and not list((tmp_path / "shared").iterdir())


@pytest.mark.parametrize("name", ["dp-steering.conflist", "dp-steering-tap.conflist"])
def test_example_conflists_are_valid(name):
    import json
    import os
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "conf", name)) as f:
        lst = json.load(f)
    conf = {"cniVersion": lst["cniVersion"], "name": lst["name"], **lst["plugins"][-1]}
    schema.validate(conf, "dp-steering")
    assert config.load(conf).enforcer_netns == "/run/netns/enforcer"


def test_dp_refusal_and_no_answer_have_codes_with_fixes():
    from plugins.meta.dp_steering import dpctl
    err = errors.translate(dpctl.DpError("ctrl_add_mac: ucmac: must be a unicast MAC"))
    assert err.code == errors.DP_REFUSED and "unicast" in err.details
    assert errors.translate(TimeoutError("no answer to ctrl_stats")).code == errors.DP_TIMED_OUT
    for code in (errors.NO_DP, errors.DP_REFUSED, errors.DP_TIMED_OUT):
        assert errors.CODES.table[code].fix


def lenient(conf: dict, command: str) -> config.NetConf:
    conf = dict(conf)
    config.validate(conf, command)
    return config.load(conf, command)


def test_outside_add_bad_values_are_dropped_and_remembered_but_state_dir_is_checked(tmp_path):
    bad = {**BASE, "vbrName": "not a name!", "mode": "sideways", "surprise": 1, "stateDir": str(tmp_path),
           "capabilities": {"ips": True}, "dns": {"nameservers": ["10.96.0.10"]}}
    for command in ("DEL", "CHECK", "GC"):
        cfg = lenient(bad, command)
        assert (cfg.vbr, cfg.mode, cfg.state_dir) == ("vbr-dp", "inline", str(tmp_path))
        assert {"vbrName", "mode"} <= cfg.dropped and "capabilities" not in cfg.dropped
    with pytest.raises(CNIError) as e:
        lenient(bad, "ADD")
    assert e.value.code == 7
    with pytest.raises(CNIError) as e:
        lenient(bad, "STATUS")                      # STATUS needs what ADD would use
    assert e.value.code == 7 and "vbrName" in e.value.msg
    (tmp_path / "file").write_text("")
    for command in ("ADD", "DEL", "CHECK", "GC", "STATUS"):
        with pytest.raises(CNIError) as e:
            config.load({**BASE, "stateDir": str(tmp_path / "file")}, command)
        assert e.value.code == 7 and "stateDir" in e.value.msg


def test_del_needs_no_enforcer_netns():
    conf = {k: v for k, v in BASE.items() if k != "enforcerNetns"}
    assert lenient(conf, "DEL").enforcer_netns == ""


def test_records_go_through_libcni_records(tmp_path):
    d = str(tmp_path)
    state.save_pod(d, pod())
    assert not [n for n in os.listdir(tmp_path / "pods" / "c1") if ".tmp" in n]
    fifo = tmp_path / "pods" / "c1" / "eth1.json"
    os.mkfifo(fifo)                                  # never blocks: a clear NO_STATE
    with pytest.raises(CNIError) as e:
        state.load_pod(d, "c1", "eth1")
    assert e.value.code == errors.NO_STATE
    (tmp_path / "pods" / "c1" / "eth1.json").unlink()
    (tmp_path / "pods" / "c1" / "eth1.json").write_text("[1, 2]")
    with pytest.raises(CNIError) as e:
        state.load_pod(d, "c1", "eth1")
    assert e.value.code == errors.NO_STATE
