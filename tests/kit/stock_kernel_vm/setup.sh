#!/bin/bash
# One-time, idempotent: installs Debian's stock kernel (modules such as act_pedit and dummy that this
# machine's own kernel lacks), qemu and virtme-ng, so run.sh can boot that kernel over this filesystem.
# The running kernel is not changed. Root, Debian 12. ~45 s on a fresh machine.
set -euo pipefail
D=${SKVM_DIR:-/var/tmp/stock-kernel-vm}
mkdir -p "$D"
if ! ls /boot/vmlinuz-6.1.0-*-amd64 >/dev/null 2>&1 || ! command -v qemu-system-x86_64 >/dev/null \
   || ! command -v busybox >/dev/null; then
  apt-get update -qq
  # pin udev to the installed systemd, or apt upgrades systemd and friends along with it
  SDV=$(dpkg-query -W -f='${Version}' systemd 2>/dev/null || true)
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    linux-image-amd64 qemu-system-x86 busybox-static ${SDV:+udev=$SDV} >/dev/null
fi
[ -x "$D/venv/bin/vng" ] || { /usr/bin/python3 -m venv "$D/venv"; "$D/venv/bin/pip" install -q 'virtme-ng==1.42'; }
echo "ready: $(ls /boot/vmlinuz-6.1.0-*-amd64 | sort -V | tail -1)"
