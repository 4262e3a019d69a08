#!/usr/bin/env bash
# Run AJR's test suite, setting up everything it needs first (Debian packages, a venv
# with AJR, the local Slurm cluster). Other arguments go to pytest.
#
#   test.sh [pytest args]                 the whole suite on this machine and its Slurm
#   test.sh --release R [pytest args]     the same in the chroot of Slurm release R (22.05,
#                                         24.11, 26.05; see packaging/releases/release.sh),
#                                         isolated from this machine's cluster; R may be
#                                         a comma-separated list, or `all` (run side by side)
#   test.sh --unit [...]                  unit tests only: no cluster is started (quick)
#   test.sh --backend B [...]             the agents under test use slurm_backend = B
#
# Where a pyslurm matches the release's Slurm (../shared/vendor: 22.05, 24.11), a whole-suite
# run (no test paths given) runs the suite through the commands, then the pyslurm tests,
# the backend and the recovery tests again with slurm_backend = "pyslurm". On this
# machine that pass needs --pyslurm (it builds pyslurm into .venv).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/setup-env.sh"

# The tests run again through pyslurm: the backend's own, and the recovery tests.
PYSLURM_TESTS=(
    tests/integration/test_pyslurm.py tests/integration/test_requeue.py tests/integration/test_recovery_edges.py
    tests/integration/test_policy_on_slurm.py tests/integration/test_nodes.py tests/integration/test_epilog.py
)
RELEASES_ALL=(22.05 24.11 26.05)

releases="" unit=0 backend="" pyslurm=0 args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --release) [ $# -ge 2 ] || { echo "test.sh: --release needs a release" >&2; exit 2; }; releases=$2; shift 2 ;;
        --release=*) releases=${1#--release=}; shift ;;
        --unit) unit=1; shift ;;
        --backend) [ $# -ge 2 ] || { echo "test.sh: --backend needs commands|pyslurm|auto" >&2; exit 2; }; backend=$2; shift 2 ;;
        --pyslurm) pyslurm=1; shift ;;
        *) args+=("$1"); shift ;;
    esac
done

# Whether pytest's arguments name tests (paths, node ids) rather than options only.
names_tests() {
    local arg skip=0
    for arg in "$@"; do
        if [ $skip = 1 ]; then skip=0; continue; fi
        case "$arg" in
            -k|-m|-p|-o|-c|--deselect|--ignore|--rootdir|--basetemp|-W|--tb|-n|--durations) skip=1 ;;
            -*) ;;
            *) return 0 ;;
        esac
    done
    return 1
}

run_here() {
    _ajr_root || exit 1
    local pytest=("$AJR_VENV/bin/python" -m pytest)
    if [ $unit = 1 ]; then
        [ "${AJR_SKIP_INSTALL:-}" = 1 ] || { ajr_setup_packages && ajr_setup_venv; }
        cd "$AJR_ROOT"
        names_tests "${args[@]}" || args+=(tests/unit)
        exec "${pytest[@]}" "${args[@]}"
    fi
    local setup_args=()
    [ $pyslurm = 1 ] && setup_args=(--pyslurm)
    ajr_setup "${setup_args[@]}"
    cd "$AJR_ROOT"
    # What the pyslurm tests expect of this machine: the pyslurm installed, or none matching.
    AJR_TEST_PYSLURM=$("$AJR_VENV/bin/python" -c '
import importlib.metadata as m
try:
    print(m.version("pyslurm"))
except m.PackageNotFoundError:
    print("none")')
    export AJR_TEST_PYSLURM
    if [ -n "$backend" ] || names_tests "${args[@]}"; then
        AJR_TEST_SLURM_BACKEND=${backend:-commands} exec "${pytest[@]}" "${args[@]}"
    fi
    local status=0
    AJR_TEST_SLURM_BACKEND=commands "${pytest[@]}" "${args[@]}" || status=$?
    if [ "$AJR_TEST_PYSLURM" != none ]; then
        echo "== the pyslurm tests and the recovery tests through pyslurm $AJR_TEST_PYSLURM" >&2
        AJR_TEST_SLURM_BACKEND=pyslurm "${pytest[@]}" "${args[@]}" "${PYSLURM_TESTS[@]}" || status=$?
    fi
    exit $status
}

# One release, prepared (release.sh prepare), in its chroot: its namespaces up, the same
# script run inside on the project's copy.
run_release() { # release
    local release=$1 inner=()
    "$AJR_ROOT/packaging/releases/release.sh" up "$release"
    [ $unit = 1 ] && inner+=(--unit)
    [ -n "$backend" ] && inner+=(--backend "$backend")
    AJR_SKIP_INSTALL=1 "$AJR_ROOT/packaging/releases/release.sh" exec "$release" \
        packaging/dev/test.sh "${inner[@]}" "${args[@]}"
}

if [ -z "$releases" ]; then
    run_here
fi
[ "$releases" = all ] && releases=$(IFS=,; echo "${RELEASES_ALL[*]}")
IFS=, read -r -a wanted <<<"$releases"
if [ ${#wanted[@]} = 1 ]; then
    # Preparing needs the network (the Debian archive, PyPI); a prepared chroot takes seconds.
    "$AJR_ROOT/packaging/releases/release.sh" prepare "${wanted[0]}"
    run_release "${wanted[0]}"
    exit $?
fi

# Several releases: side by side (most of a run waits on Slurm), each into its own log.
logs=${AJR_TEST_LOGS:-/tmp/ajr-test-releases}
mkdir -p "$logs"
# Each chroot has its own apt: they are prepared side by side (downloads, and pyslurm's
# builds, overlap), once this host's apt has given them debootstrap.
command -v debootstrap >/dev/null || _ajr_apt_install debootstrap
declare -A preparing
for release in "${wanted[@]}"; do
    "$AJR_ROOT/packaging/releases/release.sh" prepare "$release" >"$logs/prepare-$release.log" 2>&1 &
    preparing[$release]=$!
done
for release in "${wanted[@]}"; do
    wait "${preparing[$release]}" \
        || { echo "test.sh: preparing $release failed; see $logs/prepare-$release.log" >&2; exit 1; }
done
declare -A pids started
for release in "${wanted[@]}"; do
    started[$release]=$(date +%s)
    run_release "$release" >"$logs/$release.log" 2>&1 &
    pids[$release]=$!
    echo "test.sh: $release running (log: $logs/$release.log)" >&2
done
status=0
for release in "${wanted[@]}"; do
    rc=0
    wait "${pids[$release]}" || rc=$?
    took=$(( $(date +%s) - ${started[$release]} ))
    summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error)|^=+ .*(passed|failed|error).* =+$' "$logs/$release.log" \
        | tr '\n' ' ' || true)  # a run that ended before pytest has no summary: that is no error here
    echo "test.sh: $release $([ $rc = 0 ] && echo passed || echo FAILED) in $((took / 60)) min $((took % 60)) s: ${summary:-no pytest summary}" >&2
    if [ $rc != 0 ]; then
        status=1
        # What failed, where CI shows it: pytest's failures and summary are at the log's end.
        echo "test.sh: the end of $logs/$release.log:" >&2
        tail -n 200 "$logs/$release.log" | sed "s/^/[$release] /" >&2
    fi
done
exit $status
