#!/usr/bin/env bash
# pycni build entry point.
#   ./build.sh              create .venv and install pycni editable, with the test, build and lint extras
#   ./build.sh launchers    write .venv/bin's per-pod plugin launchers again (after a pip install by hand)
#   ./build.sh bin          PyInstaller: one onedir bundle, one name per plugin, into dist/cni/bin
#   ./build.sh install [DIR] install the plugins into DIR (default /opt/cni/bin), the bundle beside it
#   ./build.sh test [ARGS]  install the system packages the tests need, then (without ARGS) ruff + mypy, pytest ARGS
#   ./build.sh demo         run every demo that exists (root: it builds network namespaces)
#   ./build.sh bench        build the binaries, then run every bench/*.py script
# Environment: PYTHON (interpreter for the venv, default python3), PYCNI_DIST (bundle output,
# default dist/cni), PYCNI_WORK (PyInstaller work dir, default build/pyinstaller).
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
cd "$ROOT"
VENV=$ROOT/.venv
PY=$VENV/bin/python
DIST=$(realpath -m "${PYCNI_DIST:-$ROOT/dist/cni}")      # absolute: the launchers name it
WORK=${PYCNI_WORK:-$ROOT/build/pyinstaller}

# Debian packages the test suite runs against (real plugins, real netfilter, real Go libcni).
TEST_DEBS=(containernetworking-plugins iproute2 iptables nftables golang-go
           golang-github-appc-cni-dev iperf3 etcd-server
           containerd runc podman busybox-static strace)
DEMOS=(plugins.meta.passthrough.demo plugins.main.vxlan.demo plugins.meta.dp_steering.demo
       plugins.meta.edgemesh.demo plugins.doctor.demo)      # doctor last: the demos end with it

usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$ROOT/build.sh"; }   # the header above
log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

# The plain .pth of editable_mode=compat costs nothing at interpreter start, where the
# default import-hook finder costs ~10 ms in every plugin exec (see bench/foundation.md).
install_project() {
    "$PY" -m pip install --quiet --disable-pip-version-check \
        --config-settings editable_mode=compat -e ".[test,build,lint]"
    touch "$VENV/.pycni-installed"
}

# Bytecode for our own modules: without it (PYTHONDONTWRITEBYTECODE, a read-only tree) every
# plugin exec compiles them again, 8-18 ms (bench/foundation.md). Only stale files are redone.
compile_project() {
    "$PY" -m compileall -q libcni_py plugins
}

cmd_venv() {
    [ -x "$PY" ] || { log "creating $VENV"; "${PYTHON:-python3}" -m venv "$VENV"; }
    log "installing pycni (editable) with test and build extras"
    install_project
    compile_project
    venv_launchers
}

# ---- launchers: the per-pod plugins start as a bare interpreter ----------------------------
# The plugins pycni-node serves (plugins/node/protocol.py SERVED) are exec'd once per pod and
# verb. pip's console script for them imports site (every .pth) and re (pip's wrapper), ~15 ms
# of a ~32 ms exec; PyInstaller's bootloader costs ~8-10 ms before Python starts. A launcher
# is a short Python script whose shebang is an absolute interpreter run with -I -S (isolated,
# no site): it puts our code on sys.path itself and does what plugins.entrypoints.run does, the
# thin client first (plugins/node/client.py), else the plugin in-process. README "Start-up".
served_names() { "$PY" -c 'from plugins.node.protocol import SERVED; print(" ".join(SERVED))'; }

# A path that may be written into a launcher (a shebang, a Python string literal) as it is.
plain_path() { local re='^/[A-Za-z0-9._/+@,-]*$'; [[ $1 =~ $re ]]; }

# write_launcher FILE INTERPRETER NAME SETUP: SETUP is one line of Python run before the import
# (its paths checked by the caller with plain_path). Fails (nothing written) when the
# interpreter's path is not plain or the shebang is longer than the kernel reads (255 bytes).
write_launcher() {
    local file=$1 interp=$2 name=$3 setup=$4 shebang
    shebang="#!$interp -IS"
    plain_path "$interp" && [ ${#shebang} -le 250 ] || return 1
    printf '%s\n' "$shebang" \
        "# pycni launcher for $name (build.sh): a bare interpreter (-I -S: no site, no .pth), our code on" \
        "# sys.path, then plugins.entrypoints.run inlined: the thin client, else the plugin in-process." \
        "import os, sys" \
        "# -I drops PYTHON* variables; the import trace (PYTHONPROFILEIMPORTTIME) is kept: run again with -X importtime" \
        "if os.environ.get('PYTHONPROFILEIMPORTTIME') and 'importtime' not in sys._xoptions:" \
        "    os.execv(sys.executable, [sys.executable, '-IS', '-X', 'importtime', *sys.argv])" \
        "$setup" \
        "from plugins.node.client import delegate" "delegate('$name')" \
        "from plugins.entrypoints import dispatch" "dispatch('$name')" >"$file.new" \
        && chmod 755 "$file.new" && mv -f "$file.new" "$file" \
        || { rm -f "$file.new"; return 1; }     # (set -e does not reach in here: always called in a test)
}

# .venv/bin/<served name>: replaces pip's console script (rewritten at every pip install of the
# project, so this runs after each). The interpreter is the venv's python; with -S no .pth is
# read, so the checkout (the editable install's source) and site-packages go on sys.path here.
venv_launchers() {
    local site name
    site=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    for name in $(served_names); do
        plain_path "$ROOT" && plain_path "$site" \
            && write_launcher "$VENV/bin/$name" "$PY" "$name" "sys.path += ['$ROOT', '$site']" \
            || die "cannot write the launcher $VENV/bin/$name (paths $ROOT, $site)"
    done
}

# The bundle's launchers run on pycni/bin/python3, a copy of an interpreter that has libpython
# linked in (nothing to find at run time; the bundle's libpython3.x.so is for the bootloader),
# with a ._pth beside it naming the bundle's module dirs: sys.path is exactly those, isolated,
# no site, the environment ignored. This is the build's base interpreter when it is such a
# python, else /usr/bin/python<same minor> (Debian's is; a pyenv build with --enable-shared is
# not), else nothing: the bundle keeps the bootloader for every name.
bundle_python_source() {
    local minor base cand
    minor=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    base=$("$PY" -c 'import os, sys; print(os.path.realpath(sys._base_executable))')
    for cand in "$base" "/usr/bin/python$minor"; do
        [ -x "$cand" ] || continue
        case $(ldd "$cand" 2>/dev/null) in *libpython*) continue ;; esac
        [ "$("$cand" -I -S -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$minor" ] || continue
        echo "$cand"
        return 0
    done
    return 1
}

# What the in-process plugins need from that interpreter and the host: our served plugins'
# modules, ctypes (libffi), json, and what they import late: etcd3gw (vxlan's etcd registry:
# requests, ssl, libssl), jsonschema (a config the quick schema checker refuses; rpds) and
# pyroute2.conntrack (edgemesh's original destination). The extension modules' libraries come
# from the host's loader path here, not from the bundle's copies (those are on the bootloader's
# LD_LIBRARY_PATH only): a host without them fails this probe.
BUNDLE_PROBE='import ctypes, importlib, json, ssl, etcd3gw, jsonschema, pyroute2.conntrack
from plugins.entrypoints import ENTRYPOINTS
from plugins.node.protocol import SERVED
for name in SERVED:
    importlib.import_module(ENTRYPOINTS[name])'

probe_bundle_python() {
    (cd / && env -i "$1/bin/python3" -c "$BUNDLE_PROBE")
}

# add_bundle_python BUNDLE: pycni/bin/python3 and its ._pth, probed; fails (and leaves no
# bin/) when no interpreter fits or the probe fails.
add_bundle_python() {
    local bundle=$1 src dynload
    src=$(bundle_python_source) || {
        log "no python$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])') with libpython linked in (the build's is shared, no /usr/bin one): the per-pod plugins keep the bootloader"
        return 1
    }
    dynload=$(cd "$bundle/_internal" && find . -maxdepth 3 -type d -name lib-dynload | head -n1)
    [ -n "$dynload" ] || { log "no lib-dynload in the bundle: the per-pod plugins keep the bootloader"; return 1; }
    mkdir -p "$bundle/bin"
    cp "$src" "$bundle/bin/python3"
    # Another patch release than the build's (Debian's 3.11.2 for a pyenv 3.11.7 build): the
    # stdlib's extension modules are built against one release's C API (3.11.7's _ssl needs
    # _PyModule_Add, which 3.11.2 lacks), so the interpreter's own lib-dynload goes first.
    local own=() version
    version=$("$PY" -c 'import sys; print(sys.version.split()[0])')
    if [ "$("$src" -I -S -c 'import sys; print(sys.version.split()[0])')" != "$version" ]; then
        mkdir "$bundle/bin/lib-dynload"
        find "$("$src" -I -S -c 'import sysconfig; print(sysconfig.get_config_var("DESTSHARED"))')" -maxdepth 1 \
            -name '*.so' ! -name '_test*' ! -name 'xx*' -exec cp -t "$bundle/bin/lib-dynload" {} +
        own=(lib-dynload)
        log "the bundle's python is $src ($("$src" -I -S -c 'import sys; print(sys.version.split()[0])'), the build's $version): its own lib-dynload goes with it"
    fi
    printf '%s\n' "# sys.path of this interpreter (build.sh): the bundle's modules, .pyc on disk (pycni.spec)" \
        "${own[@]}" "../_internal" "../_internal/${dynload#./}" >"$bundle/bin/python3._pth"
    if ! probe_bundle_python "$bundle"; then
        log "the bundle's python ($src) cannot load the plugins (above): the per-pod plugins keep the bootloader"
        rm -rf "$bundle/bin"
        return 1
    fi
    log "per-pod plugins: launchers on pycni/bin/python3 (a copy of $src)"
}

# bundle_launcher FILE BUNDLE NAME. sys.frozen and sys.executable as the bootloader sets them:
# pycni-node (frozen) names the bundle's executable as its identity (plugins/node/protocol.py),
# and the client's hello must carry the same; vxlan's self-delegation check reads them too.
bundle_launcher() {
    local file=$1 bundle=$2 name=$3
    plain_path "$bundle" && write_launcher "$file" "$bundle/bin/python3" "$name" \
        "sys.frozen = True; sys.executable = '$bundle/pycni'"
}

# For the other commands: (re)install only when missing or pyproject.toml changed.
ensure_venv() {
    if [ ! -x "$PY" ] || [ ! -f "$VENV/.pycni-installed" ] || [ pyproject.toml -nt "$VENV/.pycni-installed" ]; then
        cmd_venv
    else
        compile_project      # sources changed since the install: only those are redone
        venv_launchers       # a `pip install -e .` by hand writes pip's scripts again
    fi
}

cmd_bin() {
    ensure_venv
    log "PyInstaller: one bundle into $DIST"
    rm -rf "$DIST"
    "$PY" -m PyInstaller --noconfirm --log-level WARN --distpath "$DIST" --workpath "$WORK" pycni.spec
    mkdir "$DIST/bin"
    local name names served=" " launchers=0
    names=$("$DIST/pycni/pycni" --list)      # the plugin names this build carries
    ! add_bundle_python "$DIST/pycni" || { launchers=1; served=" $(served_names) "; }
    for name in $names; do
        if [ $launchers = 1 ] && [[ $served == *" $name "* ]] && bundle_launcher "$DIST/bin/$name" "$DIST/pycni" "$name"; then
            continue
        fi
        ln -s ../pycni/pycni "$DIST/bin/$name"
    done
    log "built: $(echo $names)"
}

cmd_install() {
    local dir=${1:-/opt/cni/bin}
    [ -x "$DIST/pycni/pycni" ] && [ -d "$DIST/bin" ] || cmd_bin
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd -P)
    local bundle
    bundle=$(dirname "$dir")/pycni
    [ "$bundle" != "$dir" ] || die "cannot install into $dir: the bundle goes to its parent's pycni/"
    log "installing the bundle into $bundle and the plugin names into $dir"
    rm -rf "$bundle.new"
    cp -a "$DIST/pycni" "$bundle.new"
    rm -rf "$bundle"
    mv "$bundle.new" "$bundle"
    # The launchers name their interpreter by absolute path: written again for this place,
    # when the bundle's python still loads the plugins here.
    local path name launchers=0
    [ ! -x "$bundle/bin/python3" ] || ! probe_bundle_python "$bundle" || launchers=1
    for path in "$DIST"/bin/*; do
        name=$(basename "$path")
        if [ $launchers = 1 ] && [ -f "$path" ] && [ ! -L "$path" ] && bundle_launcher "$dir/$name" "$bundle" "$name"; then
            continue
        fi
        ln -sfn ../pycni/pycni "$dir/$name"
    done
}

missing_debs() {
    local pkg
    for pkg in "${TEST_DEBS[@]}"; do
        dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || echo "$pkg"
    done
}

system_packages() {
    local missing
    missing=$(missing_debs)
    [ -n "$missing" ] || return 0
    [ "$(id -u)" = 0 ] || die "missing Debian packages (run as root to install): $(echo $missing)"
    log "apt-get install $(echo $missing)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # Servers among them (etcd-server, containerd) would be started and enabled by their
    # maintainer scripts: a policy-rc.d answering 101 keeps them from starting, and the units
    # they enabled are disabled again. The tests start their own etcd and containerd in
    # test namespaces; nothing stays running or enabled on the machine.
    local policy=/usr/sbin/policy-rc.d placed=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# placed by pycni build.sh during apt-get install\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        placed=1
    fi
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing || { [ $placed = 0 ] || rm -f "$policy"; return 1; }
    [ $placed = 0 ] || rm -f "$policy"
    # shellcheck disable=SC2086
    disable_services $missing
}

# Stop and disable the systemd units that packages installed by this run enabled.
disable_services() {
    local pkg unit
    for pkg in "$@"; do
        for unit in $(dpkg-query -L "$pkg" 2>/dev/null | grep -E '^(/usr)?/lib/systemd/system/[^/@]+\.(service|socket|timer)$'); do
            unit=$(basename "$unit")
            if systemctl is-enabled --quiet "$unit" 2>/dev/null; then
                log "disabling $unit (installed by $pkg; the tests run their own)"
                systemctl disable --now --quiet "$unit" 2>/dev/null || systemctl disable --quiet "$unit" || true
            fi
        done
    done
}

# The tc-pedit tests boot Debian's stock kernel under qemu (tests/kit/stock_kernel_vm: this
# kernel may lack act_pedit). Set that up on Debian (quiet when done already) and ask for them,
# unless the caller set PYCNI_STOCK_KERNEL_VM=0.
stock_kernel_vm() {
    [ "${PYCNI_STOCK_KERNEL_VM:-}" != 0 ] || return 0
    if [ -f /etc/debian_version ] && [ "$(id -u)" = 0 ]; then
        "$ROOT/tests/kit/stock_kernel_vm/setup.sh"
    fi
    export PYCNI_STOCK_KERNEL_VM=1
}

cmd_test() {
    system_packages
    ensure_venv
    stock_kernel_vm
    if [ $# -eq 0 ]; then      # the whole suite (CI): the code is checked first
        log "ruff check; mypy (pyproject.toml)"
        "$VENV/bin/ruff" check --quiet . || die "ruff found problems (above)"
        "$VENV/bin/mypy" || die "mypy found problems (above)"
    fi
    log "pytest $*"
    if [ $# -gt 0 ]; then
        exec "$PY" -m pytest -q "$@" </dev/null
    fi
    local rc=0
    "$PY" -m pytest -q --durations=40 </dev/null || rc=1
    # The second pass: the plugin tests again, every plugin exec served by one pycni-node
    # (tests/conftest.py, PYCNI_TEST_DAEMON=1); the results must be the same in both modes.
    log "pytest, daemon mode: PYCNI_TEST_DAEMON=1 over the plugin tests"
    PYCNI_TEST_DAEMON=1 "$PY" -m pytest -q --durations=20 "${DAEMON_PASS[@]/#/tests/integration/}" </dev/null || rc=1
    return $rc
}

# The daemon-mode pass: the results of plugin execs must be byte for byte the same when pycni-node
# serves them. Each file (or test) here adds something the others do not: between them every
# (plugin, verb, success or error) the suite's daemon-mode runs produced (per file: the daemon's
# "served" log lines), and what only a daemon does differently: its own test (test_daemon_mode),
# bad env bytes and a FIFO netns through the exec (the two exec'd tests of test_bad_input; its ~600
# other cases run forked in-process, the same in both modes), CHECK's doctor findings, CHECK and
# STATUS while a dp dies and returns (fail-open), concurrent ADDs, a real runtime (containerd),
# libcni and the Go plugins, hostile state dirs, IPv6 results, the agent beside the plugin. Left
# out, as their execs add no such case: the IPv6 variants of dp-steering and edgemesh, edgemesh
# traffic and sync, the scale test, podman, vxlan's standard keys, cluster, etcd and IPv6 agents,
# the demos (all in the first pass). Never here: files with no plugin exec (or one in a VM), the
# crash tests (their kills pin the exec in-process), the fuzz (forked, in-process), doctor, bench,
# packaging. 19 files and 2 tests of a 20th: ~2 min alone (the 31 files before: ~4.6).
DAEMON_PASS=(
    test_daemon_mode.py test_check_runs_doctor.py
    test_bad_input.py::test_non_utf8_ifname_through_exec test_bad_input.py::test_fifo_netns_through_exec_never_hangs
    test_dp_steering_lifecycle.py test_dp_steering_errors.py test_dp_steering_modes.py test_dp_steering_traffic.py
    test_dp_steering_failopen_runtime.py
    test_edgemesh_plugin.py test_edgemesh_networks.py test_edgemesh_concurrency.py
    test_libcni_golibcni.py test_libcni_goplugins.py test_runtime_containerd.py
    test_vxlan_pod_failures.py test_vxlan_hostile.py test_vxlan_ipv6_pods.py test_vxlan_node_lifecycle.py
    test_vxlan_pod_agent.py
)

# The Go reference plugins the demos run beside ours (bridge, host-local, portmap, tuning), and
# the tools they call. Installed on Debian when missing; elsewhere one line says what to install.
DEMO_DEBS=(containernetworking-plugins iproute2 iptables nftables)
GO_CNI_DIR=${PYCNI_GO_CNI_DIR:-/usr/lib/cni}

demo_packages() {
    local plugin missing=()
    for plugin in bridge host-local portmap tuning; do
        [ -x "$GO_CNI_DIR/$plugin" ] || missing+=("$plugin")
    done
    command -v ip >/dev/null && command -v iptables >/dev/null && command -v nft >/dev/null || missing+=(tools)
    [ ${#missing[@]} -gt 0 ] || return 0
    if [ -f /etc/debian_version ] && [ "${PYCNI_NO_APT:-}" != 1 ] && [ "$GO_CNI_DIR" = /usr/lib/cni ]; then
        log "the demos need the Go reference plugins: apt-get install ${DEMO_DEBS[*]}"
        export DEBIAN_FRONTEND=noninteractive
        { apt-get update -q && apt-get install -y -q --no-install-recommends "${DEMO_DEBS[@]}"; } >&2 \
            || die "could not install ${DEMO_DEBS[*]}: install them (Debian/Ubuntu: apt-get install ${DEMO_DEBS[*]})"
        return 0
    fi
    die "the demos need the Go reference CNI plugins (${missing[*]}) in $GO_CNI_DIR and ip, iptables, nft: install containernetworking-plugins iproute2 iptables nftables (Debian/Ubuntu package names)"
}

cmd_demo() {
    [ "$(id -u)" = 0 ] || die "the demos need root (they build network namespaces)"
    demo_packages
    ensure_venv
    local module ran=0 failed=()
    for module in "${DEMOS[@]}"; do
        [ -f "${module//.//}.py" ] || continue
        log "demo: .venv/bin/python -m $module"
        "$PY" -m "$module" || failed+=("$module")
        ran=$((ran + 1))
    done
    log "$ran demo(s) ran"
    [ ${#failed[@]} -eq 0 ] || die "demos failed: ${failed[*]}"
}

cmd_bench() {
    cmd_bin
    local script failed=()
    for script in bench/*_*.py; do
        [ -f "$script" ] || continue
        log "bench: $script"
        "$PY" "$script" || failed+=("$script")
    done
    [ ${#failed[@]} -eq 0 ] || die "bench scripts failed: ${failed[*]}"
}

main() {
    local cmd=${1:-venv}
    [ $# -eq 0 ] || shift
    case $cmd in
        venv) cmd_venv ;;
        launchers) [ -x "$PY" ] || die "no $VENV: run ./build.sh first"; venv_launchers ;;
        bin) cmd_bin ;;
        install) cmd_install "$@" ;;
        test) cmd_test "$@" ;;
        demo) cmd_demo ;;
        bench) cmd_bench ;;
        -h|--help|help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"
