"""Build the Go libcni driver (main.go beside this file) once, cached by source hash.

The hash covers main.go and the libcni sources it links, so an updated package rebuilds.

GOPATH mode against Debian's golang-github-appc-cni-dev in /usr/share/gocode: the
driver links the real Go libcni, no network and no module download.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess

GOCODE = "/usr/share/gocode"
LIBCNI_SRC = os.path.join(GOCODE, "src/github.com/containernetworking/cni/libcni")
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "main.go")


class GoUnavailable(RuntimeError):
    """go or the Go libcni source is missing (./build.sh test installs both)."""


def driver_path(cache_root: str = "/tmp") -> str:
    """Path of the built driver, building it when its source hash is new."""
    if shutil.which("go") is None:
        raise GoUnavailable("go not found (apt-get install golang-go)")
    if not os.path.isdir(LIBCNI_SRC):
        raise GoUnavailable(f"{LIBCNI_SRC} missing (apt-get install golang-github-appc-cni-dev)")
    h = hashlib.sha256()
    for path in (SOURCE, os.path.join(LIBCNI_SRC, "api.go"), os.path.join(LIBCNI_SRC, "conf.go")):
        with open(path, "rb") as f:       # a new driver or a new Debian libcni: build again
            h.update(f.read())
    digest = h.hexdigest()[:16]
    outdir = os.path.join(cache_root, f"pycni-golibcni-{digest}")
    exe = os.path.join(outdir, "golibcni")
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)       # parallel sessions build it once
        if not os.access(exe, os.X_OK):
            _build(outdir, exe)
    return exe


def _build(outdir: str, exe: str) -> None:
    gopath = os.path.join(outdir, "gopath")
    os.makedirs(gopath, exist_ok=True)
    env = dict(os.environ, GO111MODULE="off", GOPATH=f"{GOCODE}:{gopath}",
               GOCACHE=os.path.join(outdir, "gocache"), CGO_ENABLED="0", GOFLAGS="")
    tmp = exe + ".tmp"
    proc = subprocess.run(["go", "build", "-o", tmp, SOURCE], env=env, cwd=outdir,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"go build failed:\n{proc.stderr}")
    os.replace(tmp, exe)


if __name__ == "__main__":
    print(driver_path())
