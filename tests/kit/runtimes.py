"""Real container runtimes (containerd's CRI, podman's CNI backend) driving our plugins in a test host.

    chain, host, client = test_hosts(netns, str(tmp_path))   # two vxlan test hosts + an enforcer netns
    with Containerd(chain, str(tmp_path), "/pycnit123-cd") as cd:   # or Podman(chain, tmp, cgroup parent)
        cd.load_images(build_images(str(tmp_path)))       # pause + busybox OCI archives
        pod_id = cd.run_pod(cd.sandbox_config("web", "uid1", port_mappings=[(80, 18080)]))
    assert not chain.leftovers(cd.cni_cache); remove_cgroups("/pycnit123-cd")

Nothing touches the machine: each runtime runs in a *sandbox*, a private mount namespace
(everything made rprivate) whose processes live in the test host's netns. Inside it:

- /sys is a new sysfs (the host netns' devices) with the machine's cgroup hierarchies mounted again
  on a tmpfs at /sys/fs/cgroup (the same hierarchies: runc's cgroups go under a parent named after
  the test, removed at the end by remove_cgroups());
- /run and /dev/shm are tmpfs, /run/netns is inside it (podman's netns files, the CNI plugins' own
  runtime files, iptables' lock) and holds a bind of every namespace the plugins must name (the
  enforcer);
- /var/lib and /etc/cni are binds of temp dirs (the CNI result cache /var/lib/cni/results of both
  runtimes, and any default state place) that the test reads from outside.

The sandbox is one long-lived process (containerd itself, or a sleeper for podman); every other
command joins it with nsenter. Images are OCI archives built here from Debian's busybox-static.
"""
from __future__ import annotations

import contextlib
import ctypes
import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
GO_CNI_DIR = "/usr/lib/cni"
BUSYBOX = "/bin/busybox"
OUR_PLUGINS = ("vxlan", "dp-steering", "edgemesh", "pycni-passthrough")
GO_PLUGINS = ("portmap", "host-local", "loopback", "bridge")
RUNTIME_BINARIES = ("containerd", "containerd-shim-runc-v2", "ctr", "runc", "podman", "conmon", "nsenter")
CHAIN_EXAMPLE = os.path.join(ROOT, "conf", "runtime-chain.conflist")
PAUSE_IMAGE = "localhost/pycni/pause:1"
BUSYBOX_IMAGE = "localhost/pycni/busybox:1"
APPLETS = ("sh", "sleep", "ip", "cat", "echo", "httpd", "nc", "printf", "mkdir", "hostname", "ls", "ps")


def missing_binaries() -> list[str]:
    import shutil
    return [b for b in (*RUNTIME_BINARIES, BUSYBOX) if shutil.which(b) is None]


# ---- the sandbox launcher (runs as its own process: python runtimes.py sandbox ...) -------------

_CLONE_NEWNS = 0x00020000
_CLONE_NEWNET = 0x40000000
_MS_BIND, _MS_REC, _MS_PRIVATE = 0x1000, 0x4000, 1 << 18
_MNT_DETACH = 2


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _mount(libc, src: str, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    if libc.mount(src.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                  data.encode() if data else None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {src} {target} ({fstype} {data}): {os.strerror(e)}")


def _cgroup_mounts() -> list[tuple[str, str, str, str]]:
    """(mountpoint, fstype, source, super options) of every mount at or under /sys/fs/cgroup."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, post = line.rstrip("\n").split(" - ", 1)
            mountpoint = pre.split()[4]
            fstype, source, opts = post.split()[:3]
            if mountpoint == "/sys/fs/cgroup" or mountpoint.startswith("/sys/fs/cgroup/"):
                out.append((mountpoint, fstype, source, opts))
    return out


def _sandbox_main(argv: list[str]) -> None:
    """sandbox --netns PATH [--ns NAME=PATH]... [--bind SRC=DST]... -- COMMAND..."""
    sep = argv.index("--")
    opts, command = argv[:sep], argv[sep + 1:]
    netns: str | None = None
    nsbinds: list[tuple[str, int]] = []
    binds: list[tuple[str, ...]] = []
    for i in range(0, len(opts), 2):
        key, val = opts[i], opts[i + 1]
        if key == "--netns":
            netns = val
        elif key == "--ns":
            name, path = val.split("=", 1)
            nsbinds.append((name, os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
        elif key == "--bind":
            binds.append(tuple(val.split("=", 1)))
    if netns is None:
        sys.exit("sandbox: --netns PATH is required")
    libc = _libc()
    cgroups = _cgroup_mounts()
    fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    if libc.setns(fd, _CLONE_NEWNET) != 0 or libc.unshare(_CLONE_NEWNS) != 0:
        sys.exit(f"sandbox: setns/unshare: {os.strerror(ctypes.get_errno())}")
    os.close(fd)
    _mount(libc, "none", "/", None, _MS_REC | _MS_PRIVATE)
    # /sys of this netns, then the same cgroup hierarchies again on top of it.
    libc.umount2(b"/sys", _MNT_DETACH)
    _mount(libc, "sysfs", "/sys", "sysfs")
    for mountpoint, fstype, source, mount_opts in cgroups:
        os.makedirs(mountpoint, exist_ok=True)
        if fstype == "tmpfs":
            _mount(libc, "tmpfs", mountpoint, "tmpfs", 0, "mode=755")
        else:
            data = ",".join(o for o in mount_opts.split(",") if o not in ("rw", "ro"))
            _mount(libc, source, mountpoint, fstype, 0, data or None)
    _mount(libc, "tmpfs", "/run", "tmpfs", 0, "mode=755")
    _mount(libc, "tmpfs", "/dev/shm", "tmpfs", 0, "mode=1777")
    os.makedirs("/run/netns")
    for name, nsfd in nsbinds:
        target = os.path.join("/run/netns", name)
        open(target, "w").close()
        _mount(libc, f"/proc/self/fd/{nsfd}", target, None, _MS_BIND)
        os.close(nsfd)
    for src, dst in binds:
        _mount(libc, src, dst, None, _MS_BIND | _MS_REC)
    os.chdir("/")
    os.execvp(command[0], command)


class Sandbox:
    """One long-lived process in the test host's netns and a private mount namespace."""

    def __init__(self, host, tmp: str, command: list[str], log_path: str, env: dict | None = None,
                 netns_binds: dict[str, str] | None = None):
        self.host, self.tmp = host, tmp
        self.varlib = os.path.join(tmp, "varlib")
        self.etccni = os.path.join(tmp, "etc-cni")
        for d in (self.varlib, os.path.join(self.varlib, "cni"), os.path.join(self.etccni, "net.d")):
            os.makedirs(d, exist_ok=True)
        argv = [sys.executable, os.path.abspath(__file__), "sandbox", "--netns", host.path]
        for name, path in (netns_binds or {}).items():
            argv += ["--ns", f"{name}={path}"]
        argv += ["--bind", f"{self.varlib}=/var/lib"]
        if os.path.isdir("/etc/cni"):
            argv += ["--bind", f"{self.etccni}=/etc/cni"]
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv + ["--", *command], stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_mounted(self, timeout: float = 10) -> None:
        """Until the sandbox process has its own mount namespace (and exec'd its command)."""
        mine = os.readlink("/proc/self/ns/mnt")
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise AssertionError(f"sandbox exited {self.proc.returncode}:\n{self.log()}")
            try:
                with open(f"/proc/{self.proc.pid}/cmdline", "rb") as f:
                    execd = b"runtimes.py" not in f.read()
                if os.readlink(f"/proc/{self.proc.pid}/ns/mnt") != mine and execd:
                    return
            except FileNotFoundError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"sandbox not up in {timeout}s:\n{self.log()}")
            time.sleep(0.02)

    def argv(self, *command: str) -> list[str]:
        return ["nsenter", "-t", str(self.proc.pid), "-m", "-n", "--", *command]

    def run(self, *command: str, check: bool = True, timeout: float = 60, env: dict | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:
        p = subprocess.run(self.argv(*command), capture_output=True, text=True, timeout=timeout, env=env,
                           input=input)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(command)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
        return p

    def stop(self, timeout: float = 15) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def remove_cgroups(parent: str, timeout: float = 10) -> list[str]:
    """rmdir `parent` (a cgroup path like /pycnit123-cd) and everything below it, in every hierarchy,
    once the processes in it are gone (a shim or conmon exits a moment after its container); return
    what could not be removed."""
    tops = [mp + parent for mp, fstype, _, _ in _cgroup_mounts()
            if fstype in ("cgroup", "cgroup2") and os.path.isdir(mp + parent)]
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for top in tops:
            for d, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
                try:
                    os.rmdir(d)
                except FileNotFoundError:
                    pass
                except OSError:
                    left.append(d)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


# ---- OCI images from busybox-static ----------------------------------------------------------------

def _tar_add(tar: tarfile.TarFile, name: str, kind: bytes = tarfile.DIRTYPE, data: bytes = b"",
             mode: int = 0o755, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.linkname = kind, mode, 0, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _layer() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "dev", "etc", "proc", "sys", "tmp", "run", "var", "root", "www"):
            _tar_add(tar, d, mode=0o1777 if d == "tmp" else 0o755)
        with open(BUSYBOX, "rb") as f:
            _tar_add(tar, "bin/busybox", tarfile.REGTYPE, f.read())
        for applet in APPLETS:
            _tar_add(tar, f"bin/{applet}", tarfile.SYMTYPE, link="busybox", mode=0o777)
        _tar_add(tar, "etc/passwd", tarfile.REGTYPE, b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        _tar_add(tar, "etc/group", tarfile.REGTYPE, b"root:x:0:\n", 0o644)
        _tar_add(tar, "www/index.html", tarfile.REGTYPE, b"pod-ok\n", 0o644)
    return buf.getvalue()


def build_image(path: str, name: str, cmd: list[str]) -> str:
    """An OCI image archive at `path`: busybox-static and a few applets, `cmd` as its Cmd; named `name`
    (ref annotations for both ctr import and podman load). Returns path."""
    layer = _layer()
    gz = gzip.compress(layer, mtime=0)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": cmd, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }, sort_keys=True).encode()
    blobs: dict[str, bytes] = {}

    def blob(data: bytes, media: str) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media, "digest": "sha256:" + digest, "size": len(data)}
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob(config, "application/vnd.oci.image.config.v1+json"),
        "layers": [blob(gz, "application/vnd.oci.image.layer.v1.tar+gzip")],
    }, sort_keys=True).encode()
    desc = blob(manifest, "application/vnd.oci.image.manifest.v1+json")
    desc["annotations"] = {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name}
    desc["platform"] = {"architecture": "amd64", "os": "linux"}
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [desc]}).encode()
    with tarfile.open(path, "w") as tar:
        _tar_add(tar, "blobs")
        _tar_add(tar, "blobs/sha256")
        for digest, data in blobs.items():
            _tar_add(tar, f"blobs/sha256/{digest}", tarfile.REGTYPE, data, 0o644)
        _tar_add(tar, "oci-layout", tarfile.REGTYPE, b'{"imageLayoutVersion":"1.0.0"}', 0o644)
        _tar_add(tar, "index.json", tarfile.REGTYPE, index, 0o644)
    return path


def build_images(tmp: str) -> dict[str, str]:
    """{image name: archive path} of the pause image (sleeps forever) and the busybox image."""
    return {PAUSE_IMAGE: build_image(os.path.join(tmp, "pause.tar"), PAUSE_IMAGE, ["sleep", "2147483647"]),
            BUSYBOX_IMAGE: build_image(os.path.join(tmp, "busybox.tar"), BUSYBOX_IMAGE, ["sh"])}


# ---- the chain --------------------------------------------------------------------------------------

class RuntimeChain:
    """conf/runtime-chain.conflist: our vxlan + dp-steering (tap, failOpen: no dp needed) + edgemesh +
    Go portmap, for one test host.

    Every directory is under tmp; the enforcer netns is named `enforcer_name` inside the sandbox
    (/run/netns/<name>, a bind of the test's netns)."""

    def __init__(self, host, tmp: str, enforcer, name: str | None = None, enforcer_name: str = "enforcer"):
        self.host, self.tmp, self.enforcer, self.enforcer_name = host, tmp, enforcer, enforcer_name
        self.name = name or host.conf["name"]
        self.steer_dir = os.path.join(tmp, "state", "dp-steering")
        self.mesh_dir = os.path.join(tmp, "state", "edgemesh")
        self.bin_dir = os.path.join(tmp, "cni-bin")
        os.makedirs(self.bin_dir, exist_ok=True)
        for plugin in OUR_PLUGINS:
            _symlink(os.path.join(VENV_BIN, plugin), os.path.join(self.bin_dir, plugin))
        for plugin in GO_PLUGINS:
            _symlink(os.path.join(GO_CNI_DIR, plugin), os.path.join(self.bin_dir, plugin))

    @property
    def vxlan_state(self) -> str:
        return self.host.conf["stateDir"]

    def conflist(self, ips: bool = True) -> dict:
        """conf/runtime-chain.conflist made local to the test: vxlan is the test host's config (registry,
        stateDir, nodeName in tmp), every other state place and the enforcer are the test's. Without
        `ips`, vxlan does not declare the `ips` capability (podman's --ip arrives as runtimeConfig.ips)."""
        with open(CHAIN_EXAMPLE) as f:
            lst = json.load(f)
        lst["name"] = self.name
        local = {
            "vxlan": {**self.host.conf},
            "dp-steering": {"enforcerNetns": f"/run/netns/{self.enforcer_name}", "stateDir": self.steer_dir,
                            "vbrName": "vbr-rt", "vthName": "vth-rt", "dpWaitMs": 100},
            "edgemesh": {"stateDir": self.mesh_dir},
        }
        plugins = []
        for plugin in lst["plugins"]:
            plugin = {**plugin, **local.get(plugin["type"], {})}
            if plugin["type"] == "vxlan" and not ips:
                plugin.pop("capabilities", None)
            plugins.append(plugin)
        lst["plugins"] = plugins
        return lst

    def write(self, conf_dir: str, ips: bool = True) -> str:
        os.makedirs(conf_dir, exist_ok=True)
        path = os.path.join(conf_dir, f"10-{self.name}.conflist")
        with open(path, "w") as f:
            json.dump(self.conflist(ips), f, indent=2)
        return path

    # what must be gone after the last pod
    def leftovers(self, cache_dir: str) -> list[str]:
        """What the chain left behind on the host after every pod was removed: CNI result cache
        entries, attachment/pod records, IPAM allocations, pod veths, vex/vin devices in the enforcer,
        our iptables rules (edgemesh, portmap's per-pod ones, vxlan's masquerade)."""
        left = []
        results = os.path.join(cache_dir, "results")
        if os.path.isdir(results):
            left += [f"cache {n}" for n in os.listdir(results)]
        att = os.path.join(self.vxlan_state, "attachments")
        if os.path.isdir(att):
            left += [f"vxlan attachment {n}" for n in os.listdir(att)]
        ipam = os.path.join(self.vxlan_state, "ipam", self.name)
        if os.path.isdir(ipam):
            left += [f"ipam {n}" for n in os.listdir(ipam) if n[0].isdigit()]
        if os.path.isdir(self.steer_dir):
            for d, _, files in os.walk(self.steer_dir):
                left += [f"dp-steering {os.path.join(d, n)}" for n in files if n.endswith(".json")]
        links = self.host.run("ip", "-o", "link", "show").stdout
        left += [f"host link {ln.split(':')[1].strip()}" for ln in links.splitlines()
                 if ": veth" in ln]
        enf = self.enforcer.run("ip", "-o", "link", "show").stdout
        left += [f"enforcer link {ln.split(':')[1].strip()}" for ln in enf.splitlines()
                 if ": vex" in ln or ": vin" in ln]
        nat = self.host.run("iptables-save", "-t", "nat").stdout
        left += [f"nat rule {ln}" for ln in nat.splitlines()
                 if ln.startswith("-A") and ("EDGE-MESH" in ln or "CNI-DN-" in ln or "PYCNI-VX" in ln)]
        return left


def test_hosts(netns_factory, tmp: str, network_name: str = "rtnet"):
    """(chain, host, client): two vxlan test hosts on one underlay segment (tests/kit/vxlan_hosts.py),
    an enforcer netns, and the chain for the first host; the second is the outside client."""
    from tests.kit.vxlan_hosts import Cluster
    cluster = Cluster(netns_factory, tmp, segments=[0, 0], network_name=network_name)
    host, client = cluster.hosts
    return RuntimeChain(host, tmp, netns_factory("enf")), host, client


def node_subnet(host) -> str:
    """The node subnet the host leased (its local lease copy in stateDir)."""
    with open(os.path.join(host.conf["stateDir"], "lease.json")) as f:
        return json.load(f)["subnet"]


def _symlink(src: str, dst: str) -> None:
    if not os.path.lexists(dst):
        os.symlink(src, dst)


# ---- containerd --------------------------------------------------------------------------------------

CONTAINERD_TOML = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin_dir}"
    conf_dir = "{conf_dir}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
"""


class Containerd:
    """containerd (CRI plugin) in a sandbox in `chain.host`, driven over CRI v1 like kubelet."""

    def __init__(self, chain: RuntimeChain, tmp: str, cgroup_parent: str):
        self.chain, self.tmp, self.cgroup_parent = chain, os.path.join(tmp, "containerd"), cgroup_parent
        os.makedirs(self.tmp, exist_ok=True)
        self.sock = os.path.join(self.tmp, "c.sock")
        self.conf_dir = os.path.join(self.tmp, "net.d")
        chain.write(self.conf_dir)
        self.config = os.path.join(self.tmp, "config.toml")
        with open(self.config, "w") as f:
            f.write(CONTAINERD_TOML.format(root=os.path.join(self.tmp, "root"), state=os.path.join(self.tmp, "state"),
                                           sock=self.sock, opt=os.path.join(self.tmp, "opt"), pause=PAUSE_IMAGE,
                                           bin_dir=chain.bin_dir, conf_dir=self.conf_dir))
        self.sandbox: Sandbox | None = None
        self.channel = None

    @property
    def sb(self) -> Sandbox:
        """The running sandbox (start() or `with` first)."""
        if self.sandbox is None:
            raise RuntimeError("containerd is not started: call start() or use `with`")
        return self.sandbox

    @property
    def cni_cache(self) -> str:
        return os.path.join(self.sb.varlib, "cni")

    def start(self, timeout: float = 30) -> Containerd:
        from cri_api.v1 import api_pb2, api_pb2_grpc
        import grpc
        self.sandbox = Sandbox(self.chain.host, self.tmp, ["containerd", "--config", self.config],
                               os.path.join(self.tmp, "containerd.log"),
                               netns_binds={self.chain.enforcer_name: self.chain.enforcer.path})
        self.sb.wait_mounted()
        self.channel = grpc.insecure_channel(f"unix://{self.sock}")
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.images = api_pb2_grpc.ImageServiceStub(self.channel)
        self.api = api_pb2
        deadline = time.monotonic() + timeout
        while True:
            try:
                st = self.runtime.Status(api_pb2.StatusRequest(), timeout=2)
                if all(c.status for c in st.status.conditions):
                    return self
                last = str(st.status)
            except grpc.RpcError as e:
                last = str(e)
            if not self.sb.alive() or time.monotonic() > deadline:
                raise AssertionError(f"containerd not ready ({last}):\n{self.sb.log()[-4000:]}")
            time.sleep(0.1)

    def ctr(self, *args: str, timeout: float = 60) -> str:
        return self.sb.run("ctr", "--address", self.sock, "-n", "k8s.io", *args, timeout=timeout).stdout

    def load_images(self, images: dict[str, str]) -> None:
        for path in images.values():
            self.ctr("images", "import", "--snapshotter", "overlayfs", path)

    # kubelet-like calls
    def sandbox_config(self, name: str, uid: str, port_mappings=()):
        a = self.api
        return a.PodSandboxConfig(
            metadata=a.PodSandboxMetadata(name=name, uid=uid, namespace="default", attempt=0),
            hostname=name, log_directory=os.path.join(self.tmp, "logs", uid),
            labels={"app": name},
            port_mappings=[a.PortMapping(protocol=a.TCP, container_port=c, host_port=h) for c, h in port_mappings],
            linux=a.LinuxPodSandboxConfig(cgroup_parent=f"{self.cgroup_parent}/{uid}",
                                          security_context=a.LinuxSandboxSecurityContext(
                                              namespace_options=a.NamespaceOption(network=a.POD, pid=a.CONTAINER,
                                                                                  ipc=a.POD))))

    def run_pod(self, cfg) -> str:
        os.makedirs(cfg.log_directory, exist_ok=True)
        return self.runtime.RunPodSandbox(self.api.RunPodSandboxRequest(config=cfg), timeout=60).pod_sandbox_id

    def pod_ip(self, pod_id: str) -> str:
        st = self.runtime.PodSandboxStatus(self.api.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=10)
        return st.status.network.ip

    def start_container(self, pod_id: str, cfg, name: str, command: list[str]) -> str:
        a = self.api
        ccfg = a.ContainerConfig(metadata=a.ContainerMetadata(name=name, attempt=0),
                                 image=a.ImageSpec(image=BUSYBOX_IMAGE), command=command,
                                 log_path=f"{name}.log", linux=a.LinuxContainerConfig())
        cid = self.runtime.CreateContainer(a.CreateContainerRequest(pod_sandbox_id=pod_id, config=ccfg,
                                                                    sandbox_config=cfg), timeout=60).container_id
        self.runtime.StartContainer(a.StartContainerRequest(container_id=cid), timeout=60)
        return cid

    def exec(self, cid: str, *cmd: str, timeout: int = 10) -> str:
        r = self.runtime.ExecSync(self.api.ExecSyncRequest(container_id=cid, cmd=list(cmd), timeout=timeout),
                                  timeout=timeout + 5)
        if r.exit_code != 0:
            raise AssertionError(f"exec {cmd} in {cid}: {r.exit_code}\n{r.stdout.decode()}{r.stderr.decode()}")
        return r.stdout.decode()

    def stop_pod(self, pod_id: str) -> None:
        self.runtime.StopPodSandbox(self.api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)

    def remove_pod(self, pod_id: str) -> None:
        self.runtime.RemovePodSandbox(self.api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)

    def list_pods(self) -> list:
        return list(self.runtime.ListPodSandbox(self.api.ListPodSandboxRequest(), timeout=10).items)

    def close(self) -> None:
        if self.sandbox is None:
            return
        with contextlib.suppress(Exception):
            for p in self.list_pods():
                self.stop_pod(p.id)
                self.remove_pod(p.id)
        if self.channel is not None:
            self.channel.close()
        self.sandbox.stop()

    def __enter__(self) -> Containerd:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


# ---- podman ------------------------------------------------------------------------------------------

class Podman:
    """podman (network_backend cni, runc, cgroupfs, vfs storage) in a sandbox in `chain.host`."""

    def __init__(self, chain: RuntimeChain, tmp: str, cgroup_parent: str, ips: bool = True):
        self.chain, self.tmp, self.cgroup_parent = chain, os.path.join(tmp, "podman"), cgroup_parent
        os.makedirs(self.tmp, exist_ok=True)
        self.conf_dir = os.path.join(self.tmp, "net.d")
        chain.write(self.conf_dir, ips=ips)
        self.containers_conf = os.path.join(self.tmp, "containers.conf")
        with open(self.containers_conf, "w") as f:
            f.write(f'[network]\nnetwork_backend = "cni"\ncni_plugin_dirs = ["{chain.bin_dir}"]\n'
                    f'network_config_dir = "{self.conf_dir}"\n'
                    f'[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
                    f'runtime = "runc"\ntmp_dir = "/run/libpod"\n')
        self.storage_conf = os.path.join(self.tmp, "storage.conf")
        with open(self.storage_conf, "w") as f:
            f.write(f'[storage]\ndriver = "vfs"\nrunroot = "/run/containers/storage"\n'
                    f'graphroot = "{os.path.join(self.tmp, "root")}"\n')
        self.env = {**os.environ, "CONTAINERS_CONF": self.containers_conf,
                    "CONTAINERS_STORAGE_CONF": self.storage_conf,
                    "CONTAINERS_REGISTRIES_CONF": os.path.join(self.tmp, "registries.conf")}
        with open(self.env["CONTAINERS_REGISTRIES_CONF"], "w") as f:
            f.write("unqualified-search-registries = []\n")
        self.sandbox: Sandbox | None = None

    @property
    def sb(self) -> Sandbox:
        """The running sandbox (start() or `with` first)."""
        if self.sandbox is None:
            raise RuntimeError("podman's sandbox is not started: call start() or use `with`")
        return self.sandbox

    @property
    def cni_cache(self) -> str:
        return os.path.join(self.sb.varlib, "cni")

    def start(self) -> Podman:
        self.sandbox = Sandbox(self.chain.host, self.tmp, ["sleep", "2147483647"],
                               os.path.join(self.tmp, "sandbox.log"), env=self.env,
                               netns_binds={self.chain.enforcer_name: self.chain.enforcer.path})
        self.sb.wait_mounted()
        return self

    def podman(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.sb.run("podman", "--root", os.path.join(self.tmp, "root"),
                                "--runroot", "/run/containers/storage", "--storage-driver", "vfs",
                                "--cni-config-dir", self.conf_dir, "--network-config-dir", self.conf_dir,
                                "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                                "--runtime", "runc", "--tmpdir", "/run/libpod",
                                *args, check=check, timeout=timeout, env=self.env)

    def load_images(self, images: dict[str, str]) -> None:
        for name, path in images.items():
            out = self.podman("load", "-i", path).stdout
            if name not in out:
                # podman names an OCI archive's image by its ref annotation; tag it when it did not
                image_id = out.strip().split()[-1].split(":")[-1]
                self.podman("tag", image_id, name)

    def run(self, name: str, *args: str, command=("sleep", "600")) -> str:
        return self.podman("run", "-d", "--name", name, "--network", self.chain.name, *_ulimits(),
                           "--cgroup-parent", self.cgroup_parent, *args, BUSYBOX_IMAGE, *command).stdout.strip()

    def exec(self, name: str, *cmd: str, check: bool = True) -> str:
        p = self.podman("exec", name, *cmd, check=check)
        return p.stdout

    def http_get(self, name: str, ip: str, port: int = 80) -> str:
        """GET / from container `name` with busybox nc (busybox-static's wget segfaults on this kernel)."""
        return self.exec(name, "sh", "-c", 'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 5 "$1" "$2"', "sh",
                         ip, str(port))

    def ip(self, name: str) -> str:
        template = "{{(index .NetworkSettings.Networks \"" + self.chain.name + "\").IPAddress}}"
        return self.podman("inspect", "-f", template, name).stdout.strip()

    def close(self) -> None:
        if self.sandbox is None:
            return
        with contextlib.suppress(Exception):
            self.podman("rm", "-af", "-t", "0", timeout=60)
        self.sandbox.stop()

    def __enter__(self) -> Podman:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def _ulimits() -> list[str]:
    """podman sets RLIMIT_NOFILE and RLIMIT_NPROC of root's containers to its own (raised) limits, which
    runc cannot set without CAP_SYS_RESOURCE (this machine's root lacks it; even the caller's own limits
    fail for NPROC): ask for low ones, as containerd's default spec does (lowering needs no privilege)."""
    return ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "sandbox":
    _sandbox_main(sys.argv[2:])


def running(kind, netns_factory, tmp: str, tag: str):
    """A pytest fixture body: a runtime of `kind` (Containerd or Podman) started in a sandbox on a test
    host, with the test images loaded; yields (runtime, chain, host, client), always closed, and fails
    when it left cgroups behind (runc makes them in the machine's hierarchies)."""
    import pytest
    if os.geteuid() != 0:
        pytest.skip("needs root and network namespaces")
    missing = missing_binaries()
    if missing:
        pytest.fail(f"runtime binaries missing: {' '.join(missing)} (./build.sh test installs them)")
    chain, host, client = test_hosts(netns_factory, tmp)
    from tests.kit.netns import PREFIX
    cgroup_parent = f"/{PREFIX}{tag}"
    runtime = kind(chain, tmp, cgroup_parent)
    try:
        runtime.start()
        runtime.load_images(build_images(tmp))
        yield runtime, chain, host, client
    finally:
        runtime.close()
        left = remove_cgroups(cgroup_parent)
        assert not left, f"cgroups left: {left}"

