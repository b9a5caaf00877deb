"""Run pytest node IDs inside Debian's stock kernel under qemu (run.sh), fast enough for CI.

    reason = guest.not_ready()                # None when setup.sh has run
    status, output = guest.pytest(["tests/...::test_x"], timeout=300)

The guest reads this machine's files over 9p, and under software emulation every lookup
and read there is an expensive round trip; the bare 9p root caches none. So, before
booting, byte-compile the project (this environment sets PYTHONDONTWRITEBYTECODE, so its
.pyc files may be missing and the guest would compile them), and have the guest see the
project and the interpreter's prefix through overlays, whose lookups its kernel caches.
That took the dp-steering tc-pedit run from 4-7 min to ~45 s (README.md here).
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess

VM_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(VM_DIR)))
PYTHON = os.path.join(ROOT, ".venv", "bin", "python")
SKVM_DIR = os.environ.get("SKVM_DIR", "/var/tmp/stock-kernel-vm")


def not_ready() -> str | None:
    """Why run.sh cannot boot the stock kernel here, or None."""
    kernels = [k for k in os.listdir("/boot") if k.startswith("vmlinuz-6.1.0-")] if os.path.isdir("/boot") else []
    if not kernels:
        return "no Debian 6.1 stock kernel under /boot"
    if not os.access(os.path.join(SKVM_DIR, "venv", "bin", "vng"), os.X_OK):
        return f"no virtme-ng in {SKVM_DIR}/venv"
    return None


def compile_project() -> None:
    """Write the .pyc files the guest imports (a module compiled under emulation costs ~30x)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    # a file another change left half-written only misses its .pyc: the guest compiles it then
    subprocess.run([PYTHON, "-m", "compileall", "-q", "libcni_py", "plugins", "tests"], cwd=ROOT, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)


def overlay_dirs() -> list[str]:
    """The project and the prefix of the interpreter its venv runs on (vng overlays /usr itself)."""
    base = os.path.dirname(os.path.dirname(os.path.realpath(PYTHON)))
    return [ROOT] + ([base] if base not in ("/", "/usr") and not base.startswith(ROOT + os.sep) else [])


def pytest(node_ids: list[str], timeout: int = 300) -> tuple[int, str]:
    """Boot once, run pytest on node_ids as root in the guest: (exit status, output).

    Status 124 with run.sh's message when the guest ran out of `timeout` seconds; nothing
    it started is left running, even if run.sh itself has to be killed."""
    compile_project()
    inner = (f"cd {shlex.quote(ROOT)} && PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 {shlex.quote(PYTHON)} -m pytest"
             f" -q -p no:cacheprovider -rfEs {' '.join(shlex.quote(n) for n in node_ids)}")
    env = {**os.environ, "GUEST_TIMEOUT": str(timeout), "OVERLAY_DIRS": ":".join(overlay_dirs())}
    p = subprocess.Popen([os.path.join(VM_DIR, "run.sh"), inner], env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout + 60)          # run.sh's own limit comes first
    except subprocess.TimeoutExpired:
        _kill_session(p.pid)
        out, _ = p.communicate()
        return 124, out + f"\nrun.sh did not end {timeout + 60} s after the start: killed\n"
    return p.returncode, out


def _kill_session(sid: int) -> None:
    """Kill every process of run.sh's session (timeout(1) puts vng and qemu in a group of their own)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getsid(int(entry)) == sid:
                os.kill(int(entry), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
