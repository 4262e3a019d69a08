# Sourced by the demo and the test runner: make a fresh Debian machine ready for AJR.
# Installs the Debian packages AJR's Slurm side needs, creates .venv with AJR
# installed (editable) and starts the local Slurm cluster. Safe to repeat.
#
#   ajr_setup [--pyslurm]         all of it (the packages, the venv, the cluster)
#   ajr_setup_packages            the Debian packages only
#   ajr_setup_venv [--pyslurm]    the venv only; --pyslurm also installs the pyslurm that
#                                 matches this machine's Slurm (ajr_setup_pyslurm)
#   ajr_setup_pyslurm             build (once; the wheel is kept) and install that pyslurm
#   ajr_setup_cluster             start the local cluster
#
# AJR_SKIP_INSTALL=1 leaves packages and venv as they are (a release chroot has no
# network once prepared: packaging/releases/release.sh prepared them).
# shellcheck shell=bash

AJR_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
AJR_VENV=${AJR_VENV:-$AJR_ROOT/.venv}
# pyslurm's sources for each Slurm release Debian packages (see their README).
AJR_VENDOR_DIR=${AJR_VENDOR_DIR:-$(cd "$AJR_ROOT/.." && pwd)/shared/vendor}
# Built pyslurm wheels, by the Slurm version they were built against.
AJR_PYSLURM_CACHE=${AJR_PYSLURM_CACHE:-/var/cache/ajr/pyslurm}

_ajr_say() { printf 'setup: %s\n' "$*" >&2; }

_ajr_apt_install() {
    [ $# -gt 0 ] || return 0
    _ajr_say "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "$@" >/dev/null
}

_ajr_root() {
    if [ "$(id -u)" != 0 ]; then
        _ajr_say "run as root (it installs Debian packages and starts Slurm daemons)"
        return 1
    fi
}

ajr_setup() {
    _ajr_root || return 1
    if [ "${AJR_SKIP_INSTALL:-}" != 1 ]; then
        ajr_setup_packages || return 1
        ajr_setup_venv "$@" || return 1
    fi
    ajr_setup_cluster
}

ajr_setup_packages() {
    local need=()
    command -v python3 >/dev/null || need+=(python3)
    python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
    # job_submit.lua is tested under Slurm's Lua (5.1) and a newer one.
    command -v lua5.1 >/dev/null || need+=(lua5.1)
    command -v lua5.4 >/dev/null || need+=(lua5.4)
    # The shipped unit is checked with systemd-analyze verify.
    command -v systemd-analyze >/dev/null || need+=(systemd)
    # The cockpit's tests drive the page in headless Chromium (tests/integration/test_cockpit.py).
    command -v chromium >/dev/null || need+=(chromium)
    _ajr_apt_install "${need[@]}"
}

ajr_setup_venv() {
    if [ ! -x "$AJR_VENV/bin/python" ]; then
        python3 -m venv "$AJR_VENV" || return 1
    fi
    "$AJR_VENV/bin/pip" install -q --disable-pip-version-check -e "$AJR_ROOT[test]" || return 1
    if [ "${1:-}" = --pyslurm ]; then
        ajr_setup_pyslurm || return 1
    fi
    export PATH="$AJR_VENV/bin:$PATH"
}

ajr_setup_cluster() {
    "$AJR_ROOT/packaging/local-slurm/local-slurm.sh" start || return 1
    export PATH="$AJR_VENV/bin:$PATH"
}

# The installed Slurm's version, e.g. 22.05.8 (`slurmctld -V` prints `slurm-wlm 22.05.8`
# on Debian; no daemon needs to run).
_ajr_slurm_version() {
    local version
    version=$(slurmctld -V 2>/dev/null || /usr/sbin/slurmctld -V 2>/dev/null) || return 1
    version=${version##* }
    echo "${version%%-*}"
}

# The vendored pyslurm source for a Slurm version: pyslurm numbers Slurm 22.05 as 22.5.
_ajr_pyslurm_source() { # slurm-version
    local major minor
    IFS=. read -r major minor _ <<<"$1"
    compgen -G "$AJR_VENDOR_DIR/pyslurm-$major.$((10#$minor)).*.tar.gz" | sort -V | tail -n1
}

ajr_setup_pyslurm() {
    local slurm source
    slurm=$(_ajr_slurm_version) || { _ajr_say "no Slurm installed (slurmctld -V): no pyslurm to match"; return 1; }
    source=$(_ajr_pyslurm_source "$slurm") || true
    if [ -z "$source" ]; then
        _ajr_say "no pyslurm source for Slurm $slurm under $AJR_VENDOR_DIR: AJR uses Slurm's commands"
        return 1
    fi
    local need=() cache=$AJR_PYSLURM_CACHE/$slurm
    [ -e /usr/include/slurm/slurm.h ] || need+=(libslurm-dev)
    command -v gcc >/dev/null || need+=(gcc)
    local include
    include=$("$AJR_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("include"))')
    [ -e "$include/Python.h" ] || need+=(python3-dev)
    _ajr_apt_install "${need[@]}" || return 1
    local name tag wheel
    name=$(basename "$source" .tar.gz)
    tag=$("$AJR_VENV/bin/python" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
    wheel=$(compgen -G "$cache/$name-$tag-*.whl" | head -n1) || true
    if [ -z "$wheel" ]; then
        _ajr_say "building $name against Slurm $slurm's libslurm-dev (a few minutes; kept in $cache)"
        mkdir -p "$cache"
        # pyslurm's Cython code does not build with Cython 3.1; its setup.py finds
        # libslurm only where it is told (Debian puts it under the multiarch directory).
        "$AJR_VENV/bin/pip" install -q "cython<3.1" setuptools wheel || return 1
        SLURM_LIB_DIR=/usr/lib/$(gcc -dumpmachine) SLURM_INCLUDE_DIR=/usr/include \
            "$AJR_VENV/bin/pip" wheel -q --no-build-isolation --no-deps -w "$cache" "$source" || return 1
        wheel=$(compgen -G "$cache/$name-$tag-*.whl" | head -n1) || true
        [ -n "$wheel" ] || { _ajr_say "pip built no $name-$tag wheel into $cache"; return 1; }
    fi
    "$AJR_VENV/bin/pip" install -q --no-deps --force-reinstall "$wheel" || return 1
    # Not `import pyslurm`: it reads slurm.conf at import, and there may be none yet.
    _ajr_say "pyslurm $("$AJR_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("pyslurm"))') installed for Slurm $slurm"
}
