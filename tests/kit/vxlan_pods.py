"""Pods on vxlan test hosts (tests/kit/vxlan_hosts.py), attached through libcni_py.

    pods = Pods(cluster, netns, tmp_path, ipMasq=True, chain=[{"type": "portmap", ...}])
    pod = pods.add(cluster.hosts[0], "c1")      # a pod netns + ADD of the conflist, in the host's netns
    pods.check(pod); pods.delete(pod); pods.assert_gone(pod)

IPAM is the real Go host-local (generated over the host's subnet, dataDir under the
host's stateDir); every host gets its own libcni cache dir.
"""
from __future__ import annotations

import ipaddress
import os
import threading
from dataclasses import dataclass, field

from libcni_py.api import CNIConfig, RuntimeConf
from libcni_py.conf import conflist_from_dict
from libcni_py.types import Result
from plugins.pkg import ns as nsmod
from plugins.pkg.names import host_veth

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CNI_PATH = [os.path.join(ROOT, ".venv", "bin"), "/usr/lib/cni"]


@dataclass
class Pod:
    host: object
    cid: str
    ns: object
    result: Result | None = None
    ifname: str = "eth0"
    caps: dict = field(default_factory=dict)        # capability args (runtimeConfig): ips, mac, ...
    extra_args: list = field(default_factory=list)  # more CNI_ARGS pairs, e.g. [("MAC", "...")]

    @property
    def cidr(self) -> str:
        return self.result.ips[0].address

    @property
    def ip(self) -> str:
        return self.cidr.split("/")[0]

    @property
    def gateway(self) -> str:
        return self.result.ips[0].gateway

    @property
    def veth(self) -> str:
        return host_veth(self.cid, self.ifname)

    @property
    def rt(self) -> RuntimeConf:
        return RuntimeConf(container_id=self.cid, netns=self.ns.path, ifname=self.ifname,
                           args=[("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", "default"), ("K8S_POD_NAME", self.cid),
                                 *self.extra_args],
                           capability_args=dict(self.caps))


class Pods:
    def __init__(self, cluster, netns_factory, tmp_path, version: str = "1.0.0", chain=(), **pod_keys):
        self.cluster, self.netns_factory = cluster, netns_factory
        self.tmp, self.version, self.chain, self.pod_keys = str(tmp_path), version, list(chain), pod_keys
        self._cni: dict[str, CNIConfig] = {}

    def conflist(self, host, **overrides):
        return conflist_from_dict({"cniVersion": self.version, "name": self.cluster.network_name,
                                   "plugins": [{**host.conf, **self.pod_keys, **overrides}, *self.chain]})

    def cni(self, host) -> CNIConfig:
        if host.node not in self._cni:
            self._cni[host.node] = CNIConfig(path=CNI_PATH, cache_dir=os.path.join(self.tmp, "cache", host.node))
        return self._cni[host.node]

    def _on(self, host, verb: str, pod: Pod, **overrides):
        lst, cni = self.conflist(host, **overrides), self.cni(host)
        with nsmod.enter(host.path):
            if verb == "add":
                return cni.add_network_list(lst, pod.rt)
            if verb == "check":
                return cni.check_network_list(lst, pod.rt)
            return cni.del_network_list(lst, pod.rt)

    def add(self, host, cid: str, caps: dict | None = None, extra_args=(), **overrides) -> Pod:
        pod = Pod(host, cid, self.netns_factory("pod"), caps=dict(caps or {}), extra_args=list(extra_args))
        pod.result = self._on(host, "add", pod, **overrides)
        return pod

    def check(self, pod: Pod, **overrides) -> None:
        self._on(pod.host, "check", pod, **overrides)

    def delete(self, pod: Pod, **overrides) -> None:
        self._on(pod.host, "del", pod, **overrides)

    def add_many(self, host, cids: list[str]) -> list:
        """Concurrent ADDs (one thread each); a Pod or the exception per container ID."""
        pods = [Pod(host, cid, self.netns_factory("pod")) for cid in cids]
        out: list = [None] * len(pods)

        def one(i: int) -> None:
            try:
                pods[i].result = self._on(host, "add", pods[i])
                out[i] = pods[i]
            except BaseException as e:  # noqa: BLE001 - reported by the test
                out[i] = e
        _run_threads(one, len(pods))
        return out

    def delete_many(self, pods: list[Pod]) -> list:
        out: list = [None] * len(pods)

        def one(i: int) -> None:
            try:
                self.delete(pods[i])
            except BaseException as e:  # noqa: BLE001
                out[i] = e
        _run_threads(one, len(pods))
        return out

    def data_dir(self, host) -> str:
        return os.path.join(host.conf["stateDir"], "ipam", self.cluster.network_name)

    def allocations(self, host) -> list[str]:
        """Addresses host-local holds on the host (files named by IP in its dataDir)."""
        try:
            names = os.listdir(self.data_dir(host))
        except FileNotFoundError:
            return []
        out = []
        for n in names:
            try:
                out.append(str(ipaddress.ip_address(n)))
            except ValueError:
                pass
        return sorted(out)

    def assert_gone(self, pod: Pod) -> None:
        """No host veth, no allocation, no record, no masq rule left for the pod."""
        host = pod.host
        assert pod.veth not in host.run("ip", "-o", "link").stdout
        assert pod.ip not in self.allocations(host)
        assert not os.path.exists(os.path.join(host.conf["stateDir"], "attachments", pod.veth + ".json"))
        assert f"id={pod.cid} " not in host.run("iptables-save", "-t", "nat").stdout


def _run_threads(fn, n: int) -> None:
    threads = [threading.Thread(target=fn, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
