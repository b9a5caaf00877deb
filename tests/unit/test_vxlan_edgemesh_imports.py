"""The start-up diet of the vxlan, edgemesh and dp-steering plugins holds (bench/vxlan_pod.md,
bench/edgemesh.md, bench/dp_steering.md): what every exec imports, and the modules a vxlan or a
dp-steering ADD loads on the way, pull in none of these.
dataclasses brings inspect/ast/dis (~6-8 ms), logging ~4-6 ms, hashlib OpenSSL (~3 ms), typing ~4 ms, pyroute2
~130 ms, jsonschema ~60 ms; each exec is a fresh interpreter, so a fresh one is asked."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEAVY = ("dataclasses", "logging", "hashlib", "typing", "pyroute2", "jsonschema", "etcd3gw", "requests")
VXLAN_ADD = ("plugins.main.vxlan.cmd", "plugins.main.vxlan.lease", "plugins.main.vxlan.device",
             "plugins.main.vxlan.peers", "plugins.main.vxlan.registry.file", "plugins.main.vxlan.masq",
             "plugins.main.vxlan.config", "plugins.main.vxlan.errors", "plugins.main.vxlan.overlay",
             "plugins.main.vxlan.pod", "plugins.main.vxlan.ipam", "plugins.main.vxlan.registry",
             "libcni_py.records",
             "libcni_py.invoke", "plugins.pkg.link", "plugins.pkg.lock", "plugins.pkg.ns")
# edgemesh's first-pod ADD and last-pod DEL: edgemesh0 through plugins.pkg's raw rtnetlink (the
# execs themselves: tests/integration/test_edgemesh_crash.py::test_first_and_last_pod_import_no_pyroute2)
EDGEMESH_DEVICE = ("plugins.meta.edgemesh.cmd", "plugins.meta.edgemesh.listen", "plugins.meta.edgemesh.conflict",
                   "plugins.meta.edgemesh.backends", "plugins.pkg.link", "plugins.pkg.rtnl", "plugins.pkg.lock",
                   "libcni_py.records")
# vxlan's CHECK: the doctor's diagnoses 3, 5, 8 with their light context and the rtnl backend of
# plugins/doctor/netlink.py (the execs: tests/integration/test_check_runs_doctor.py::test_vxlan_check_runs_...)
VXLAN_CHECK = ("plugins.main.vxlan.cmd", "plugins.doctor.checkctx", "plugins.doctor.netlink", "plugins.doctor.net",
               "plugins.doctor.overlay", "plugins.doctor.policy_routing", "plugins.doctor.sysctl",
               "plugins.doctor.nfqueue", "plugins.main.vxlan.registry.file")
DP_STEERING_ADD = ("plugins.meta.dp_steering.cmd", "plugins.meta.dp_steering.state",
                   "plugins.meta.dp_steering.steering", "plugins.meta.dp_steering.datapath_ebpf",
                   "plugins.meta.dp_steering.datapath_pedit", "plugins.meta.dp_steering.dpctl",
                   "plugins.pkg.tc", "plugins.pkg.link", "plugins.pkg.lock", "plugins.pkg.ns")


@pytest.mark.parametrize("modules", [("plugins.main.vxlan.cmd",), VXLAN_ADD, VXLAN_CHECK,
                                     ("plugins.meta.edgemesh.cmd",), EDGEMESH_DEVICE,
                                     ("plugins.meta.dp_steering.cmd",), DP_STEERING_ADD,
                                     ("libcni_py.skel", "libcni_py.types", "plugins.meta.passthrough.cmd"),
                                     ("plugins.entrypoints", "plugins.node.client")],
                         ids=["vxlan", "vxlan-add-path", "vxlan-check-path", "edgemesh", "edgemesh-device-path",
                              "dp-steering", "dp-steering-add-path", "skel", "node-client"])
def test_plugin_imports_nothing_heavy(modules):
    code = (f"import sys\nimport {', '.join(modules)}\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"
