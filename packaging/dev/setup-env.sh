# Sourced by the demo and the test runner: make a fresh Debian machine ready for AJR.
# Installs the Debian packages AJR's Slurm side needs, creates .venv with AJR
# installed (editable) and starts the local one-node Slurm cluster. Safe to repeat.
# shellcheck shell=bash

AJR_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
AJR_VENV=${AJR_VENV:-$AJR_ROOT/.venv}

ajr_setup() {
    if [ "$(id -u)" != 0 ]; then
        echo "setup: run as root (it installs Debian packages and starts Slurm daemons)" >&2
        return 1
    fi
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
    if [ ${#need[@]} -gt 0 ]; then
        echo "setup: installing ${need[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    if [ ! -x "$AJR_VENV/bin/python" ]; then
        python3 -m venv "$AJR_VENV"
    fi
    "$AJR_VENV/bin/pip" install -q --disable-pip-version-check -e "$AJR_ROOT[test]"
    "$AJR_ROOT/packaging/local-slurm/local-slurm.sh" start
    export PATH="$AJR_VENV/bin:$PATH"
}
