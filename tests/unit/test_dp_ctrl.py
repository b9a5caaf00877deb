"""The dp's control messages: validation, replies, never a crash; dpctl round trips."""
import json
import os
import select
import socket
import threading

import pytest

from plugins.dp import ctrl
from plugins.dp.datapath import Datapath
from plugins.dp.policy import Policy
from plugins.meta.dp_steering import dpctl

MAC, UCMAC = "02:00:00:00:00:01", "4e:65:75:56:00:01"


@pytest.fixture
def control():
    def reload():
        raise ctrl.CtrlError("no --policy file to reload")
    return ctrl.Control(Datapath(Policy()), reload)


def ask(control, msg):
    data = msg if isinstance(msg, bytes) else json.dumps(msg).encode()
    return control.handle(data)


@pytest.mark.parametrize("data, error", [
    (b"{not json", "bad JSON"),
    (b"\xff\xfe", "bad JSON"),
    (b"[]", "exactly one message key"),
    (b'"ctrl_keep_alive"', "exactly one message key"),
    (b'{"ctrl_keep_alive": {}, "ctrl_stats": {}}', "exactly one message key"),
    (b'{"ctrl_bogus": {}}', "unknown message 'ctrl_bogus'"),
    (b'{"ctrl_add_mac": [1]}', "parameters must be an object"),
    (b'{"ctrl_add_mac": {"mac": "zz:00:00:00:00:01"}}', "mac:"),
    (b'{"ctrl_add_mac": {"mac": "02:00:00:00:00"}}', "mac:"),
    (b'{"ctrl_add_mac": {"mac": 5}}', "mac:"),
    (b'{"ctrl_add_mac": {"mac": "02:00:00:00:00:01", "ucmac": "ff:ff:ff:00:00:01"}}', "ucmac"),
    (b'{"ctrl_add_mac": {"mac": "02:00:00:00:00:01", "iface": "a/b"}}', "iface"),
    (b'{"ctrl_add_mac": {"mac": "02:00:00:00:00:01", "tap": "yes"}}', "tap"),
    (b'{"ctrl_add_srvc_port": {}}', "iface"),
    (b'{"ctrl_add_srvc_port": {"iface": "0123456789abcdef"}}', "iface"),
    (b'{"ctrl_add_srvc_port": {"iface": "vth\\n"}}', "iface"),
    (b'{"ctrl_add_srvc_port": {"iface": "vth", "jumboframe": 1}}', "jumboframe"),
    (b'{"ctrl_cfg_mac": {"tap": true}}', "macs"),
    (b'{"ctrl_cfg_mac": {"macs": ["x"]}}', "macs"),
    (b'{"ctrl_cfg_mac": {"macs": ["02:00:00:00:00:01"], "tap": "no"}}', "tap"),
    (b'{"ctrl_keep_alive": {"seq_num": "1"}}', "seq_num"),
    (b'{"ctrl_stats": {"macs": "02:00:00:00:00:01"}}', "macs"),
    (b'{"ctrl_cfg_internal_net": {"subnet_addr": 3}}', "subnet_addr"),
    (b'{"ctrl_reload_policy": {}}', "no --policy file"),
    (b'{"ctrl_reload_policy": {"policy": {"rules": [{"action": "maybe"}]}}}', "rules[0].action"),
    (b"[" * 2048, "nested too deeply"),                   # the datagram that killed the dp
    (b'{"ctrl_stats": ' + b"[" * 100000 + b"]" * 100000 + b"}", "nested too deeply"),
    (b'{"ctrl_stats": {"macs": ' + b"[" * 30 + b"]" * 30 + b"}}", "nested deeper than 16"),
    (b'{"ctrl_keep_alive": {"seq_num": 1e999}}', "bad JSON"),
    (b'{"ctrl_keep_alive": {"seq_num": NaN}}', "bad JSON"),
    (b'{"ctrl_keep_alive": {"seq_num": 1.5}}', "seq_num"),
    (b'{"' + b"x" * 5000 + b'": {}}', "unknown message 'xxxx"),
    (b'{"ctrl_add_mac": {"mac": "02:00:00:00:00:01", "name": "' + b"n" * 300 + b'"}}', "name"),
])
def test_bad_requests_get_an_error_reply(control, data, error):
    reply = control.handle(data)
    assert reply["ok"] is False
    assert error in reply["error"]


def test_unknown_message_name_is_shortened_in_the_reply(control):
    reply = control.handle(b'{"' + b"x" * 5000 + b'": {}}')
    assert len(reply["msg"]) < 80 and len(json.dumps(reply)) < 300


def test_a_handler_bug_is_an_error_reply(control):
    def broken(p):
        return {"x": 1 // 0}
    control.handlers["ctrl_keep_alive"] = broken
    reply = ask(control, {"ctrl_keep_alive": {}})
    assert reply["ok"] is False and "internal error" in reply["error"]
    assert "ZeroDivisionError" in reply["error"]


def add(control, i, client="c1"):
    return control.handle(json.dumps({"ctrl_add_mac": {
        "mac": f"02:00:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"}}).encode(),
        client)


def test_registrations_per_client_are_capped(control):
    cap = ctrl.MAX_PODS_PER_CLIENT
    assert all(add(control, i)["ok"] for i in range(cap))
    reply = add(control, cap)
    assert reply["ok"] is False and f"the limit per client is {cap}" in reply["error"]
    assert add(control, 5)["ok"]                          # re-adding one of its own: fine
    assert add(control, cap, client="c2")["ok"]           # another client may
    assert ask(control, {"ctrl_del_mac": {"mac": "02:00:00:00:00:07"}})["found"]
    assert add(control, cap + 1)["ok"]                    # a deleted pod frees its slot
    assert control.dp.registered == cap + 1 and control.dp.by_owner == {"c1": cap, "c2": 1}


def test_registrations_in_total_are_capped(control):
    total, per = ctrl.MAX_PODS, ctrl.MAX_PODS_PER_CLIENT
    for i in range(total):
        assert add(control, i, client=f"c{i // per}")["ok"]
    reply = add(control, total, client="new")
    assert reply["ok"] is False and f"the limit is {total}" in reply["error"]
    assert add(control, 3, client="new")["ok"]            # replacing one: no growth
    assert control.dp.registered == total
    assert len(control.dp.endpoints) == total


def test_service_ports_are_capped(control):
    for i in range(ctrl.MAX_SRVC_PORTS):
        assert ask(control, {"ctrl_add_srvc_port": {"iface": f"fz{i}"}})["ok"]
    reply = ask(control, {"ctrl_add_srvc_port": {"iface": "one-more"}})
    assert reply["ok"] is False and f"the limit is {ctrl.MAX_SRVC_PORTS}" in reply["error"]
    assert ask(control, {"ctrl_add_srvc_port": {"iface": "fz0", "tap": True}})["ok"]


def test_learned_pods_are_capped():
    from plugins.dp import datapath

    class Port:
        iface = "vth"
    dp = Datapath(Policy())
    for i in range(datapath.MAX_LEARNED + 10):
        uc = datapath.UCMAC_PREFIX + i.to_bytes(2, "big")
        ep, _ = dp._classify(uc, bytes(6), Port())
        assert (ep is not None) == (i < datapath.MAX_LEARNED)
    assert dp.learned == len(dp.endpoints) == datapath.MAX_LEARNED
    dp.del_endpoint(datapath.UCMAC_PREFIX + bytes(2))
    assert dp.learned == datapath.MAX_LEARNED - 1


def test_neuvector_sequence_registers_the_pod(control):
    """NeuVector's four dp control messages (ctrl_add_srvc_port, ctrl_add_mac, ...), as its agent sends them."""
    assert ask(control, {"ctrl_cfg_internal_net": {"flag": 3, "subnet_addr": [
        {"ip": "10.10.10.0", "mask": "255.255.255.0"}]}})["ok"]
    reply = ask(control, {"ctrl_add_srvc_port": {"iface": "vth", "jumboframe": False}})
    assert reply["ok"] and reply["open"] is False          # no such interface here
    reply = ask(control, {"ctrl_add_mac": {
        "iface": "vth", "mac": "1a:27:f3:87:3a:27", "ucmac": "4e:65:75:56:00:b4",
        "bcmac": "ff:ff:ff:00:00:b4", "oldmac": "", "pmac": "", "pips": None}})
    assert reply["ok"] and reply["pod"]["tap"] is True     # NeuVector: tap until cfg_mac
    assert ask(control, {"ctrl_cfg_mac": {"tap": False, "macs": ["1a:27:f3:87:3a:27"]}}) == {
        "ok": True, "msg": "ctrl_cfg_mac", "missing": []}
    pod = ask(control, {"ctrl_stats": {}})["pods"]["1a:27:f3:87:3a:27"]
    assert (pod["ucmac"], pod["bcmac"], pod["tap"]) == ("4e:65:75:56:00:b4",
                                                        "ff:ff:ff:00:00:b4", False)
    assert ask(control, {"ctrl_keep_alive": {"seq_num": 7}})["wanted"] == ["vth"]


def test_readd_keeps_tap_and_counters_and_oldmac_replaces(control):
    ask(control, {"ctrl_add_mac": {"mac": MAC, "ucmac": UCMAC, "tap": False}})
    control.dp.endpoints[bytes.fromhex("020000000001")].allowed = 5
    reply = ask(control, {"ctrl_add_mac": {"mac": MAC, "ucmac": "4e:65:75:56:00:02"}})
    assert reply["pod"]["tap"] is False and reply["pod"]["allowed"] == 5
    reply = ask(control, {"ctrl_add_mac": {"mac": "02:00:00:00:00:03", "oldmac": MAC}})
    assert reply["pod"]["allowed"] == 5
    assert list(ask(control, {"ctrl_stats": {}})["pods"]) == ["02:00:00:00:00:03"]


def test_del_mac_is_idempotent_and_returns_counters(control):
    ask(control, {"ctrl_add_mac": {"mac": MAC, "ucmac": UCMAC, "name": "web"}})
    reply = ask(control, {"ctrl_del_mac": {"mac": MAC}})
    assert reply["ok"] and reply["found"] and reply["pod"]["name"] == "web"
    reply = ask(control, {"ctrl_del_mac": {"mac": MAC}})
    assert reply == {"ok": True, "msg": "ctrl_del_mac", "found": False, "pod": None}


def test_cfg_mac_reports_missing_pods(control):
    reply = ask(control, {"ctrl_cfg_mac": {"tap": True, "macs": [MAC]}})
    assert reply["ok"] and reply["missing"] == [MAC]


def test_stats_for_selected_macs_by_pod_mac_or_ucmac(control):
    ask(control, {"ctrl_add_mac": {"mac": MAC, "ucmac": UCMAC}})
    ask(control, {"ctrl_add_mac": {"mac": "02:00:00:00:00:02"}})
    assert list(ask(control, {"ctrl_stats": {"macs": [UCMAC]}})["pods"]) == [MAC]
    assert len(ask(control, {"ctrl_stats": {}})["pods"]) == 2


def test_inline_policy_applies_to_registered_pods(control):
    ask(control, {"ctrl_add_mac": {"mac": MAC, "name": "web"}})
    reply = ask(control, {"ctrl_reload_policy": {"policy": {
        "rules": [{"action": "deny", "pod": "web"}, {"action": "deny", "pod": "other"}]}}})
    assert reply["policy"] == {"default": "allow", "rules": 2, "source": "control socket"}
    assert len(control.dp.endpoints[bytes.fromhex("020000000001")].rules) == 1


def test_srvc_port_del(control):
    ask(control, {"ctrl_add_srvc_port": {"iface": "vth", "tap": True}})
    assert ask(control, {"ctrl_del_srvc_port": {"iface": "vth"}})["found"] is True
    assert ask(control, {"ctrl_del_srvc_port": {"iface": "vth"}})["found"] is False


# -- over a real socket, with the plugin's client


@pytest.fixture
def server(tmp_path, control):
    srv = ctrl.Server(str(tmp_path / "run" / "dp.sock"), control)
    stop_r, stop_w = socket.socketpair()

    def loop():
        while True:
            ready, _, _ = select.select([srv.sock, stop_r], [], [])
            if stop_r in ready:
                return
            srv.serve()
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield srv
    stop_w.send(b"x")
    t.join()
    srv.close()
    stop_r.close()
    stop_w.close()


def test_dpctl_round_trip(server):
    path = server.path
    assert os.stat(path).st_mode & 0o077 == 0            # only root talks to the dp
    assert dpctl.ping(path)["pid"] == os.getpid()
    assert dpctl.add_port(path, mac=MAC, ucmac=UCMAC, mode="tap", vex="vex1", vin="vin1",
                          name="pod-a") is True
    pod = dpctl.stats(path)["pods"][MAC]
    assert (pod["tap"], pod["vex"], pod["vin"], pod["bcmac"]) == (
        True, "vex1", "vin1", "ff:ff:ff:00:00:01")
    assert dpctl.set_mode(path, MAC, "inline") is True
    assert dpctl.stats(path, [MAC])["pods"][MAC]["tap"] is False
    assert dpctl.set_mode(path, "02:00:00:00:00:99", "tap") is False     # unknown pod
    assert dpctl.reload_policy(path, {"default": "deny"})["default"] == "deny"
    with pytest.raises(dpctl.DpError, match="default"):
        dpctl.reload_policy(path, {"default": "nope"})
    assert dpctl.del_port(path, MAC)["name"] == "pod-a"
    assert dpctl.del_port(path, MAC) == {}
    assert dpctl.del_srvc_port(path, "vth") is True
    with pytest.raises(dpctl.DpError, match="iface"):
        dpctl.add_port(path, mac=MAC, ucmac=UCMAC, iface="bad/name")
    with pytest.raises(ValueError):
        dpctl.add_port(path, mac=MAC, ucmac=UCMAC, mode="off")


def test_dpctl_sees_a_missing_or_silent_dp(tmp_path):
    assert dpctl.ping(str(tmp_path / "nothing.sock")) is None
    assert dpctl.add_port(str(tmp_path / "nothing.sock"), mac=MAC, ucmac=UCMAC) is False
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)     # bound, never answers
    silent.bind(str(tmp_path / "silent.sock"))
    try:
        assert dpctl.ping(str(tmp_path / "silent.sock"), timeout=0.2) is None
        assert dpctl.stats(str(tmp_path / "silent.sock"), timeout=0.2) is None
    finally:
        silent.close()
    dead = tmp_path / "silent.sock"                  # socket file left by a dead dp
    assert dead.exists() and dpctl.del_port(str(dead), MAC) is None


def test_dpctl_leaves_no_reply_socket_behind(server, tmp_path, monkeypatch):
    """Each call's private reply directory goes with it: answered, silent or no dp at all."""
    replies = tmp_path / "tmpdir"
    replies.mkdir()
    monkeypatch.setenv("TMPDIR", str(replies))
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    silent.bind(str(tmp_path / "silent.sock"))
    try:
        assert dpctl.ping(server.path) is not None
        assert dpctl.ping(str(tmp_path / "silent.sock"), timeout=0.1) is None
        assert dpctl.ping(str(tmp_path / "nothing.sock")) is None
    finally:
        silent.close()
    assert list(replies.iterdir()) == []


def test_server_refuses_a_live_socket_and_replaces_a_stale_one(tmp_path, control):
    path = str(tmp_path / "dp.sock")
    first = ctrl.Server(path, control)
    with pytest.raises(OSError, match="another dp serves"):
        ctrl.Server(path, control)
    first.sock.close()                       # dies without cleaning up
    assert os.path.exists(path)
    second = ctrl.Server(path, control)
    second.close()
    assert not os.path.exists(path)


def test_too_large_reply_becomes_an_error_reply(server, control):
    for i in range(1500):
        control.dp.add_endpoint(ctrl.Endpoint(i.to_bytes(6, "big"), name="p" * 40))
    with pytest.raises(dpctl.DpError, match="too large"):
        dpctl.stats(server.path, timeout=5)
    assert len(dpctl.stats(server.path, ["00:00:00:00:00:07"], timeout=5)["pods"]) == 1


def _client(tmp_path, name, server):
    c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    c.bind(str(tmp_path / name))
    c.connect(server.path)
    c.settimeout(5)
    return c


def test_nested_datagram_over_the_socket_gets_an_error_reply(server, tmp_path):
    c = _client(tmp_path, "c", server)
    c.send(b"[" * 2048)
    reply = json.loads(c.recv(1 << 16))
    assert reply["ok"] is False and "nested too deeply" in reply["error"]
    c.send(b'{"ctrl_keep_alive": {"seq_num": "x' + b"y" * (ctrl.MAX_MSG + 10) + b'"}}')
    reply = json.loads(c.recv(1 << 16))
    assert reply["ok"] is False and f"over {ctrl.MAX_MSG} bytes" in reply["error"]
    c.close()
    assert dpctl.ping(server.path)["pid"] == os.getpid()


def test_a_client_that_never_reads_does_not_silence_the_server(server, tmp_path):
    """Unread replies stay charged to the dp's socket: without the stall the 213 KiB
    default send buffer was full after ~170 replies and nobody got an answer; a larger
    buffer alone only delays it (40 KB replies here fill 16 MiB in ~400)."""
    for i in range(100):
        server.control.dp.add_endpoint(ctrl.Endpoint(i.to_bytes(6, "big"), name="p" * 40))
    bad = _client(tmp_path, "bad", server)
    good = _client(tmp_path, "good", server)          # long-lived and reading
    for i in range(4000):
        bad.send(b'{"ctrl_stats": {}}')
        if i % 20 == 0:
            good.send(json.dumps({"ctrl_keep_alive": {"seq_num": i}}).encode())
            assert json.loads(good.recv(1 << 16))["seq_num"] == i
        if i % 500 == 0:
            assert dpctl.ping(server.path) is not None
    assert server.clients.dropped > 0
    assert str(tmp_path / "bad") in server.clients.stalled
    assert server.clients.outq() < 2 * ctrl.MAX_UNREAD + ctrl.SLACK
    bad.close()                                          # gone: its replies freed
    assert dpctl.ping(server.path) is not None
    assert server.clients.stalled == {} and server.clients.outq() < ctrl.SLACK


def test_error_replies_do_not_flood_the_log(server, caplog):
    with caplog.at_level("WARNING", logger="pycni-dp"):
        for _ in range(200):
            server.warn("bad JSON: " + "x" * 5000)
    assert len(caplog.records) <= ctrl.WARNINGS + 1
    assert all(len(r.getMessage()) < 400 for r in caplog.records)


def test_dpctl_binds_beside_the_dp_and_leaves_nothing(server, tmp_path, monkeypatch):
    """The client's socket is a name of this process beside the dp's socket (mode 0600), gone after
    the call; one a killed call left (same pid and thread) is taken over; a path too long for a
    socket address falls back to a private directory in $TMPDIR, removed as well."""
    import _thread
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    run = os.path.dirname(server.path)
    seen = []
    real_bind = socket.socket.bind

    def bind(sock, address):
        real_bind(sock, address)
        if isinstance(address, str) and address != server.path:
            seen.append((address, os.stat(address).st_mode & 0o777))
    monkeypatch.setattr(socket.socket, "bind", bind)
    assert dpctl.ping(server.path)["pid"] == os.getpid()
    mine = os.path.join(run, f".dpctl-{os.getpid()}-{_thread.get_ident()}")
    assert seen == [(mine, 0o600)]
    assert os.listdir(run) == ["dp.sock"] and os.listdir(tmp_path / "tmp") == []
    left = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)    # as a call killed mid-way leaves it
    left.bind(mine)
    left.close()
    assert dpctl.ping(server.path) is not None
    assert os.listdir(run) == ["dp.sock"]
    monkeypatch.setattr(dpctl, "MAX_SOCKET_PATH", len(mine) - 1)
    assert dpctl.ping(server.path) is not None
    assert seen[-1][0].startswith(str(tmp_path / "tmp" / "pycni-dpctl-"))
    assert os.listdir(run) == ["dp.sock"] and os.listdir(tmp_path / "tmp") == []
