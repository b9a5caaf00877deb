#!/bin/bash
# Idempotent, quiet when there is nothing to do: installs Debian's stock kernel (modules such as
# act_pedit and dummy that this machine's own kernel lacks), qemu, and into $SKVM_DIR a static
# busybox (virtme-ng builds its initramfs with it; unpacked from busybox-static's .deb, since that
# package conflicts with the busybox most Debian systems have) and virtme-ng in a venv of its own,
# so run.sh can boot that kernel over this filesystem. The running kernel is not changed.
# Root, Debian 12; a few minutes on a fresh machine.
# Nothing here touches the network configuration or leaves a process running: apt may not start
# services while it installs (udev's postinst would start udevd, which replays device events).
set -euo pipefail
D=${SKVM_DIR:-/var/tmp/stock-kernel-vm}
LOG=$D/setup.log

kernel() { ls /boot/vmlinuz-6.1.0-*-amd64 2>/dev/null | sort -V | tail -1; }
kernel_ready() { local k; k=$(kernel); [ -n "$k" ] && [ -d "/lib/modules/${k#/boot/vmlinuz-}/kernel" ]; }
installed() { dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q '^install ok installed$'; }

missing=()
kernel_ready || missing+=(linux-image-amd64)
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
[ -x "$D/venv/bin/vng" ] || /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
[ ${#missing[@]} -gt 0 ] || [ ! -x "$D/busybox" ] || [ ! -x "$D/venv/bin/vng" ] || exit 0

[ "$(id -u)" = 0 ] || { echo "setup.sh: needs root to set up the stock-kernel VM in $D" >&2; exit 1; }
mkdir -p "$D"
: >"$LOG"
fail() { echo "setup.sh: $1 failed (log: $LOG):" >&2; tail -20 "$LOG" >&2; exit 1; }
policy=/usr/sbin/policy-rc.d ours=() deb=
trap 'rm -rf "${ours[@]}" $deb' EXIT
export DEBIAN_FRONTEND=noninteractive
apt=(apt-get -q -o DPkg::Lock::Timeout=300)
if [ ${#missing[@]} -gt 0 ] || { [ ! -x "$D/busybox" ] && ! apt-cache show busybox-static >/dev/null 2>&1; }; then
  "${apt[@]}" update >>"$LOG" 2>&1 || fail "apt-get update"
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "stock-kernel VM: apt-get install ${missing[*]}" >&2
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && ours=("$policy")
  fi
  # the kernel pulls in udev: pin it to the installed systemd where the archive still has that
  # version, or apt upgrades systemd and friends along with it
  pin=()
  SDV=$(dpkg-query -W -f='${Version}' systemd 2>/dev/null || true)
  if [ -n "$SDV" ] && ! installed udev && apt-cache show "udev=$SDV" >/dev/null 2>&1; then
    pin=("udev=$SDV")
  fi
  "${apt[@]}" install -y --no-install-recommends --no-remove "${missing[@]}" "${pin[@]}" >>"$LOG" 2>&1 \
    || fail "apt-get install"
fi
if [ ! -x "$D/busybox" ]; then
  echo "stock-kernel VM: busybox-static into $D/busybox" >&2
  deb=$(mktemp -d)
  { (cd "$deb" && "${apt[@]}" -o APT::Sandbox::User=root download busybox-static) && dpkg-deb -x "$deb"/busybox-static_*.deb "$deb/root" \
    && install -m 755 "$deb/root/bin/busybox" "$D/busybox"; } >>"$LOG" 2>&1 || fail "busybox-static download"
fi
if [ ! -x "$D/venv/bin/vng" ]; then
  echo "stock-kernel VM: virtme-ng into $D/venv" >&2
  { rm -rf "$D/venv" && /usr/bin/python3 -m venv "$D/venv" \
    && "$D/venv/bin/pip" install -q --disable-pip-version-check 'virtme-ng==1.42'; } >>"$LOG" 2>&1 \
    || fail "virtme-ng install"
fi
kernel_ready || { echo "setup.sh: no stock kernel with modules under /boot and /lib/modules" >&2; exit 1; }
echo "stock-kernel VM ready: $(kernel)" >&2
