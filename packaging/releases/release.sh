#!/usr/bin/env bash
# A Slurm release of Debian's, isolated on this machine: a debootstrap chroot of the Debian
# suite that packages it, run in namespaces of its own (network, processes, mounts, host
# name), so that packaging/local-slurm/local-slurm.sh starts a complete cluster in it with
# Slurm's default ports and /etc/slurm, /run, munge and state of its own, without touching
# this host's cluster or another release's.
#
#   release.sh list                   the releases, their Debian suite and pyslurm
#   release.sh prepare RELEASE        make the chroot (debootstrap, packages, config), copy the
#                                     project in, make its venv with AJR (and the matching pyslurm,
#                                     built from ../shared/vendor once and kept as a wheel)
#   release.sh up RELEASE             start its namespaces (no network but loopback)
#   release.sh sync RELEASE           copy the project's working tree in again (not .venv, .git)
#   release.sh exec RELEASE CMD...    run CMD inside, in the project's copy, AJR's venv first on PATH
#   release.sh down RELEASE           stop everything running inside and its namespaces
#   release.sh status [RELEASE]       whether each release is prepared and up
#
# RELEASE is a Slurm release (22.05, 24.11, 26.05) or its Debian suite (bookworm, trixie,
# sid). Chroots live under AJR_RELEASES_DIR (/var/lib/ajr-releases); `prepare` needs the
# network (the Debian archive, PyPI), nothing after it does.
set -euo pipefail

RELEASES_DIR=${AJR_RELEASES_DIR:-/var/lib/ajr-releases}
AJR_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENDOR=${AJR_VENDOR_DIR:-$(cd "$AJR_ROOT/.." && pwd)/shared/vendor}
# The venv inside each chroot: the chroot's own Python, never the host's .venv.
CHROOT_VENV=/opt/ajr-venv
# Inside each chroot: the wheels pip may install without network (PIP_FIND_LINKS, PIP_NO_INDEX).
WHEELHOUSE=/var/cache/ajr/wheelhouse
MIRROR=${AJR_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# What the project's setup and tests need inside (setup-env.sh would fetch them itself,
# but inside there is no network): Slurm and munge, Python with what builds pyslurm,
# the Lua interpreters, systemd-analyze and Chromium of the tests, and the tools
# local-slurm.sh uses (ss, pgrep, hostname).
PACKAGES=(
    slurmctld slurmd slurm-client munge
    python3 python3-venv python3-dev gcc libslurm-dev
    lua5.1 lua5.4 systemd chromium
    iproute2 procps hostname ca-certificates
)

say() { printf 'release: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it makes chroots and namespaces)"

# release -> "suite pyslurm-version" ("-" when no pyslurm release matches it).
release_row() {
    case "$1" in
        22.05|bookworm) echo "22.05 bookworm 22.5.3" ;;
        24.11|trixie) echo "24.11 trixie 24.11.0" ;;
        26.05|sid) echo "26.05 sid -" ;;
        *) die "unknown release '$1' (known: 22.05 bookworm, 24.11 trixie, 26.05 sid)" ;;
    esac
}

RELEASE="" SUITE="" PYSLURM="" ROOT="" NETNS="" HOLDER="" HOSTNAME_IN=""
select_release() {
    read -r RELEASE SUITE PYSLURM <<<"$(release_row "$1")"
    ROOT=$RELEASES_DIR/$RELEASE
    NETNS=ajr-rel-${RELEASE/./}
    HOLDER=$RELEASES_DIR/$RELEASE.holder.pid
    HOSTNAME_IN=ajr-$SUITE
}

holder_pid() {
    local pid
    pid=$(cat "$HOLDER" 2>/dev/null) || return 1
    # The holder is the chroot's init: alive, and rooted in this chroot.
    kill -0 "$pid" 2>/dev/null && [ "$(readlink "/proc/$pid/root")" = "$ROOT" ] && echo "$pid"
}

# Run a command in the chroot with this host's network (for apt and pip), in a mount
# namespace of its own so its /proc, /dev and /sys go away with it.
in_chroot_online() {
    unshare --mount --propagation private -- /bin/sh -c '
        root=$1; shift
        mount -t proc proc "$root/proc" && mount --rbind /dev "$root/dev" && mount --rbind /sys "$root/sys"
        exec chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            PIP_CERT=/etc/ssl/certs/ajr-host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
            DEBIAN_FRONTEND=noninteractive "$@"
    ' sh "$ROOT" "$@"
}

cmd_prepare() {
    mkdir -p "$RELEASES_DIR"
    if [ ! -e "$ROOT/.ajr-debootstrap-done" ]; then
        command -v debootstrap >/dev/null || { say "installing debootstrap"; apt-get install -y -qq debootstrap >/dev/null; }
        rm -rf "$ROOT"
        say "debootstrap $SUITE into $ROOT"
        debootstrap --variant=minbase --include=apt-utils "$SUITE" "$ROOT" "$MIRROR" >"$ROOT.debootstrap.log" 2>&1 \
            || die "debootstrap $SUITE failed; see $ROOT.debootstrap.log"
        touch "$ROOT/.ajr-debootstrap-done"
    fi
    # Daemons are started by local-slurm.sh, never by package scripts.
    printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
    chmod 755 "$ROOT/usr/sbin/policy-rc.d"
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
    # A mirror may serve a snapshot of the archive whose sid Release file is past its
    # Valid-Until date (apt then refuses it): the signatures are still checked.
    echo 'Acquire::Check-Valid-Until "false";' >"$ROOT/etc/apt/apt.conf.d/90ajr-snapshot"
    # pip reaches PyPI through whatever this host trusts.
    cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ajr-host-ca.crt" 2>/dev/null \
        || { mkdir -p "$ROOT/etc/ssl/certs" && cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ajr-host-ca.crt"; }
    if [ ! -e "$ROOT/.ajr-packages-done" ] || [ "$(cat "$ROOT/.ajr-packages-done")" != "${PACKAGES[*]}" ]; then
        say "installing ${PACKAGES[*]} in $SUITE"
        in_chroot_online apt-get update -qq >"$ROOT.apt.log" 2>&1 || die "apt-get update failed in $ROOT; see $ROOT.apt.log"
        in_chroot_online apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >>"$ROOT.apt.log" 2>&1 \
            || die "apt-get install failed in $ROOT; see $ROOT.apt.log"
        echo "${PACKAGES[*]}" >"$ROOT/.ajr-packages-done"
    fi
    write_config
    cmd_sync
    prepare_venv
    say "$RELEASE ($SUITE) prepared: Slurm $(chroot "$ROOT" /usr/sbin/slurmctld -V | awk '{print $2}'), $(chroot "$ROOT" python3 -V)"
}

write_config() {
    # The chroot's own host name (its UTS namespace) must resolve: 24.11 resolves the
    # client's name to answer it, and local-slurm.sh names the controller after it.
    printf '127.0.0.1\tlocalhost %s\n::1\tlocalhost ip6-localhost\n' "$HOSTNAME_IN" >"$ROOT/etc/hosts"
    echo "$HOSTNAME_IN" >"$ROOT/etc/hostname"
    mkdir -p "$ROOT/etc/slurm"
    # 24.11's slurmd will not start without a cgroup plugin, and the chroot has no cgroup
    # of its own; 22.05 knows no `disabled` (and refuses to start with it), and does without.
    if [ "$RELEASE" = 22.05 ]; then
        rm -f "$ROOT/etc/slurm/cgroup.conf"
    else
        echo "CgroupPlugin=disabled" >"$ROOT/etc/slurm/cgroup.conf"
    fi
    mkdir -p "$ROOT$AJR_ROOT" "$ROOT$VENDOR"
}

# The project's working tree, as it is now, at the same path inside: the copy under test.
cmd_sync() {
    [ -d "$ROOT/usr" ] || die "$RELEASE is not prepared: release.sh prepare $RELEASE"
    case "$AJR_ROOT/" in
        /tmp/*|/run/*) die "the project's copy would be at $AJR_ROOT inside the chroot, under /tmp or /run, which 'release.sh up' empties: use a checkout outside /tmp and /run" ;;
    esac
    mkdir -p "$ROOT$AJR_ROOT"
    find "$ROOT$AJR_ROOT" -mindepth 1 -maxdepth 1 ! -name ajr.egg-info -exec rm -rf {} +
    tar -C "$AJR_ROOT" --exclude=./.venv --exclude=./.git --exclude=__pycache__ --exclude=./ajr.egg-info \
        --exclude=.pytest_cache -cf - . | tar -C "$ROOT$AJR_ROOT" -xf -
}

prepare_venv() {
    local pyslurm_arg=()
    [ "$PYSLURM" != - ] && pyslurm_arg=(--pyslurm)
    mount_vendor_and_run /bin/bash -c \
        "cd '$AJR_ROOT' && export AJR_VENV=$CHROOT_VENV AJR_VENDOR_DIR='$VENDOR' && source packaging/dev/setup-env.sh && ajr_setup_venv ${pyslurm_arg[*]}" \
        || die "the venv in $ROOT could not be made; see the lines above"
    # What pip fetches from PyPI during the tests (the distribution tests build AJR and
    # install its wheel into a fresh venv) comes from here inside, where there is no network.
    in_chroot_online "$CHROOT_VENV/bin/pip" wheel -q -w "$WHEELHOUSE" "$AJR_ROOT[test]" setuptools wheel \
        >"$ROOT.wheelhouse.log" 2>&1 || die "the wheels for the tests could not be fetched; see $ROOT.wheelhouse.log"
    # AJR itself comes from the tests' own build, never from here.
    rm -f "$ROOT$WHEELHOUSE"/ajr-*.whl
}

mount_vendor_and_run() {
    unshare --mount --propagation private -- /bin/sh -c '
        root=$1 vendor=$2; shift 2
        mount --bind -o ro "$vendor" "$root$vendor"
        exec "$@"
    ' sh "$ROOT" "$VENDOR" "$0" __online "$RELEASE" "$@"
}

cmd_up() {
    [ -e "$ROOT/.ajr-packages-done" ] || die "$RELEASE is not prepared: release.sh prepare $RELEASE"
    if holder_pid >/dev/null; then return 0; fi
    ip netns list | grep -qx "$NETNS\( .*\)\?" || ip netns add "$NETNS"
    ip netns exec "$NETNS" ip link set lo up
    # getaddrinfo's AI_ADDRCONFIG (26.05's slurmctld opens its ports with it) counts no
    # 127.x address: with loopback alone it finds none. One more on lo is enough.
    ip netns exec "$NETNS" ip addr replace 10.253.0.1/32 dev lo
    rm -rf "$ROOT/run" "$ROOT/tmp"
    mkdir -p "$ROOT/run" "$ROOT/tmp"
    chmod 1777 "$ROOT/tmp"
    # The chroot's init: PID 1 of its own PID namespace, reaping the daemons that
    # daemonize under it (a zombie slurmctld would pass for a running one). Killing it
    # ends every process inside.
    # nsenter, not `ip netns exec`: that mounts a sysfs of its own on /sys, without /sys/fs/cgroup.
    nsenter --net="/run/netns/$NETNS" unshare --pid --fork --mount --uts --propagation private -- /bin/sh -c '
        root=$1 hostname_in=$2 vendor=$3
        hostname "$hostname_in"
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        mount --rbind /sys "$root/sys"
        mount --bind -o ro "$vendor" "$root$vendor"
        exec chroot "$root" /usr/bin/python3 -c "
import os, signal, time
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.5)
"
    ' sh "$ROOT" "$HOSTNAME_IN" "$VENDOR" </dev/null >/dev/null 2>&1 &
    local unshare_pid=$! pid=""
    for _ in $(seq 50); do
        pid=$(pgrep -P "$unshare_pid" 2>/dev/null | head -n1) || true
        [ -n "$pid" ] && [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$ROOT" ] && break
        pid=""
        sleep 0.1
    done
    [ -n "$pid" ] || die "the namespaces of $RELEASE did not start"
    echo "$pid" >"$HOLDER"
    say "$RELEASE up (network namespace $NETNS, host name $HOSTNAME_IN)"
}

cmd_exec() {
    local pid
    pid=$(holder_pid) || die "$RELEASE is not up: release.sh up $RELEASE"
    local vars=(HOME=/root TERM="${TERM:-dumb}" LANG=C.UTF-8 AJR_VENV=$CHROOT_VENV AJR_RELEASE="$RELEASE"
                PIP_FIND_LINKS=$WHEELHOUSE PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
                PATH="$CHROOT_VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    local name
    # What the caller sets for AJR's tests and benchmarks goes in; nothing else of this host's environment.
    for name in $(compgen -e | grep -E '^(AJR_TEST_|AJR_BENCH_|AJR_SKIP_INSTALL$|AJR_PYSLURM$)' || true); do
        vars+=("$name=${!name}")
    done
    nsenter --target "$pid" --net --pid --mount --uts --root --wd="$ROOT$AJR_ROOT" \
        /usr/bin/env -i "${vars[@]}" "$@"
}

cmd_down() {
    local pid
    if pid=$(holder_pid); then
        kill -9 "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        say "$RELEASE down"
    fi
    rm -f "$HOLDER"
    ip netns list | grep -q "^$NETNS\b" && ip netns delete "$NETNS"
    return 0
}

cmd_status() {
    local release
    for release in ${1:-22.05 24.11 26.05}; do
        select_release "$release"
        local state="not prepared"
        [ -e "$ROOT/.ajr-packages-done" ] && state=prepared
        holder_pid >/dev/null && state=up
        printf '%s\t%s\t%s\n' "$RELEASE" "$SUITE" "$state"
    done
}

case "${1:-}" in
    list)
        for release in 22.05 24.11 26.05; do
            read -r rel suite pyslurm <<<"$(release_row "$release")"
            printf '%s\t%s\tpyslurm %s\n' "$rel" "$suite" "$([ "$pyslurm" = - ] && echo none || echo "$pyslurm")"
        done
        ;;
    prepare|up|sync|down)
        [ $# = 2 ] || die "usage: $0 $1 RELEASE"
        select_release "$2"
        "cmd_$1"
        ;;
    exec)
        [ $# -ge 3 ] || die "usage: $0 exec RELEASE CMD..."
        select_release "$2"
        shift 2
        cmd_exec "$@"
        ;;
    __online)  # internal: run a command in a prepared chroot with this host's network
        select_release "$2"
        shift 2
        in_chroot_online "$@"
        ;;
    status) select_release 22.05; cmd_status "${2:-}" ;;
    *) echo "usage: $0 list | prepare|up|sync|down RELEASE | exec RELEASE CMD... | status [RELEASE]" >&2; exit 2 ;;
esac
