#!/usr/bin/env bash
# A Slurm cluster on this machine, for AJR's demo and integration tests: one node named
# after the host, or several nodes n1..nN that are all this host (one slurmd each, on
# its own port of the loopback address).
#
#   local-slurm.sh start [--nodes N]   install Debian's packages if missing, write the config,
#                                      start munged, slurmctld and the slurmd of every node,
#                                      wait until every node takes jobs (N: 5, the default;
#                                      1 gives the one-node cluster named after the host)
#   local-slurm.sh stop                stop every daemon
#   local-slurm.sh status              print whether the cluster answers, and its nodes
#   local-slurm.sh node-stop NODE      the node fails: its slurmd and the job steps it runs
#                                      are killed; Slurm marks it DOWN after SlurmdTimeout
#   local-slurm.sh node-start NODE     start the node's slurmd again, wait until it takes jobs
#
# Safe to run twice: a running daemon is left alone, and the config is rewritten
# only when it is ours (it carries the marker line below). A slurm.conf written by
# someone else is never touched: start refuses and says so.
#
# Extra slurm.conf lines (hooks under test, say) come from AJR_SLURM_EXTRA_CONF, a
# file whose content is appended; changing it restarts slurmctld, because
# EpilogSlurmctld and JobSubmitPlugins are only read at start.
set -euo pipefail

MARKER="# written by AJR local-slurm.sh; safe to delete"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
STATE=/var/lib/ajr-local-slurm
LOGS=/var/log/ajr-local-slurm
HOST=$(hostname -s)
CTLD_PID=/run/ajr-slurmctld.pid
# The one-node cluster's pid file before nodes had one each; stopped when met.
OLD_SLURMD_PID=/run/ajr-slurmd.pid
DEFAULT_NODES=5
# slurmd of node nI listens on FIRST_PORT + I - 1.
FIRST_PORT=6821
# A node whose slurmd stops answering is DOWN after this many seconds (Slurm's default
# is 300): the tests make nodes fail and must not wait five minutes each time.
SLURMD_TIMEOUT=10

say() { printf 'local-slurm: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
source "$(dirname "${BASH_SOURCE[0]}")/daemons.sh"

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"

install_packages() {
    local missing=()
    for bin in munged:munge slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client; do
        command -v "${bin%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${bin%%:*}" ] || missing+=("${bin##*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The node names of a cluster of $1 nodes, one a line.
node_names() {
    if [ "$1" = 1 ]; then echo "$HOST"; else seq -f 'n%g' 1 "$1"; fi
}

# The nodes of the running config (ours), one a line; none when there is no config of ours.
configured_nodes() {
    [ -f "$CONF" ] && grep -qF "$MARKER" "$CONF" || return 0
    sed -n 's/^# nodes: //p' "$CONF" | tr ' ' '\n'
}

node_lines() { # count
    if [ "$1" = 1 ]; then
        echo "NodeName=$HOST CPUs=$(nproc) State=UNKNOWN"
        echo "PartitionName=defq Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4"
    else
        # Every node is this host: slurmd -N picks which one a daemon is, NodeAddr where
        # slurmctld reaches it, Port tells them apart.
        echo "NodeName=n[1-$1] NodeHostname=localhost NodeAddr=127.0.0.1 Port=[$FIRST_PORT-$((FIRST_PORT + $1 - 1))] CPUs=$(nproc) State=UNKNOWN"
        echo "PartitionName=defq Nodes=n[1-$1] Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4"
    fi
}

write_conf() { # count
    if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script; refusing to overwrite a real cluster's config"
    fi
    mkdir -p "$CONF_DIR" "$STATE/ctld" "$LOGS"
    local extra=""
    if [ -n "${AJR_SLURM_EXTRA_CONF:-}" ]; then
        [ -r "$AJR_SLURM_EXTRA_CONF" ] || die "AJR_SLURM_EXTRA_CONF=$AJR_SLURM_EXTRA_CONF is not readable"
        extra=$(cat "$AJR_SLURM_EXTRA_CONF")
    fi
    local new
    new=$(cat <<CONF
$MARKER
# nodes: $(node_names "$1" | tr '\n' ' ' | sed 's/ $//')
ClusterName=ajrlocal
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobRequeue=1
ReturnToService=2
SlurmdTimeout=$SLURMD_TIMEOUT
MaxJobCount=50000
MinJobAge=600
KillWait=5
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d/%n
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=/run/ajr-slurmd-%n.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd-%n.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
$(node_lines "$1")
$extra
CONF
)
    if [ -f "$CONF" ] && [ "$(cat "$CONF")" = "$new" ]; then
        return 1
    fi
    printf '%s\n' "$new" >"$CONF"
    say "wrote $CONF"
    return 0
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

slurmd_pid_file() { echo "/run/ajr-slurmd-$1.pid"; }

start_munge() {
    if pgrep -x munged >/dev/null; then return; fi
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    # munged drops to the munge user itself only via the init system; run it as munge.
    runuser -u munge -- /usr/sbin/munged
    say "munged started"
}

stop_all_slurmd() {
    local file
    for file in /run/ajr-slurmd-*.pid "$OLD_SLURMD_PID"; do
        [ -e "$file" ] || continue
        stop_daemon "$file" "slurmd $(basename "$file" .pid | sed 's/^ajr-slurmd-//')"
    done
}

start_slurmd() { # node
    mkdir -p "$STATE/d/$1"
    pid_alive "$(slurmd_pid_file "$1")" && return 0
    /usr/sbin/slurmd -N "$1"
    say "slurmd of $1 started"
}

# The processes of a node's job steps and their tasks: every slurmstepd listening on a
# socket in the node's spool directory, and their descendants.
step_processes() { # node
    local stepds pid
    stepds=$(ss -xlpH 2>/dev/null | grep -F " $STATE/d/$1/" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u) || true
    for pid in $stepds; do
        descendants "$pid"
        echo "$pid"
    done
}

descendants() { # pid
    local child
    for child in $(pgrep -P "$1" || true); do
        descendants "$child"
        echo "$child"
    done
}

node_state() { sinfo -h -N -n "$1" -o %T 2>/dev/null | head -n1; }

node_takes_jobs() { [[ "$(node_state "$1")" =~ ^(idle|mixed|allocated)$ ]]; }

wait_nodes() { # node...
    local node waiting=()
    for _ in $(seq 120); do
        waiting=()
        for node in "$@"; do node_takes_jobs "$node" || waiting+=("$node"); done
        if [ ${#waiting[@]} -eq 0 ]; then
            say "$(echo "$@" | tr ' ' ',') $([ $# = 1 ] && echo takes || echo take) jobs"
            return 0
        fi
        sleep 0.5
    done
    for node in "${waiting[@]}"; do say "node $node is $(node_state "$node")"; done
    die "not every node takes jobs after 60 s; see $LOGS/slurmctld.log and $LOGS/slurmd-${waiting[0]}.log"
}

resume() { # node...
    # A node that went down while its slurmd was away comes back without waiting.
    local node
    for node in "$@"; do
        [[ "$(node_state "$node")" =~ ^(down|drain|fail) ]] || continue
        scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true
    done
}

known_node() { # node
    configured_nodes | grep -qxF "$1" || die "no node $1 in $CONF (nodes: $(configured_nodes | tr '\n' ' '))"
}

cmd_start() { # count
    [[ "$1" =~ ^[1-9][0-9]*$ ]] && [ "$1" -le 64 ] || die "--nodes takes a number from 1 to 64, not '$1'"
    install_packages
    local changed=0 nodes
    write_conf "$1" && changed=1
    mapfile -t nodes < <(node_names "$1")
    start_munge
    if [ $changed = 1 ]; then
        stop_all_slurmd
        stop_daemon "$CTLD_PID" slurmctld
    fi
    if ! pid_alive "$CTLD_PID"; then
        /usr/sbin/slurmctld -i
        say "slurmctld started"
    fi
    local node
    for node in "${nodes[@]}"; do start_slurmd "$node"; done
    for _ in $(seq 120); do scontrol ping >/dev/null 2>&1 && break; sleep 0.5; done
    resume "${nodes[@]}"
    wait_nodes "${nodes[@]}"
}

cmd_stop() {
    stop_all_slurmd
    stop_daemon "$CTLD_PID" slurmctld
}

cmd_status() {
    if scontrol ping >/dev/null 2>&1; then
        sinfo -h -N -o '%P %N %T %E'
    else
        say "slurmctld does not answer"
        exit 3
    fi
}

cmd_node_stop() { # node
    known_node "$1"
    local pids
    pids=$(step_processes "$1")
    # A node that fails takes its job steps with it, all at once: stopped first, none of them
    # sees another die (a task's shell would print "Killed" for its child, which no lost node
    # does), nor goes on writing into the job's logs after Slurm has ended the job.
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill -STOP $pids 2>/dev/null || true
    stop_daemon "$(slurmd_pid_file "$1")" "slurmd of $1"
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        kill -9 $pids 2>/dev/null || true
        say "killed the job steps of $1 (pids $(echo $pids))"
    fi
}

cmd_node_start() { # node
    known_node "$1"
    start_slurmd "$1"
    for _ in $(seq 20); do [[ "$(node_state "$1")" == *"*"* ]] || break; sleep 0.5; done
    resume "$1"
    wait_nodes "$1"
}

nodes=$DEFAULT_NODES
case "${1:-}" in
    start)
        shift
        while [ $# -gt 0 ]; do
            case "$1" in
                --nodes) [ $# -ge 2 ] || die "--nodes needs a number"; nodes=$2; shift 2 ;;
                --nodes=*) nodes=${1#--nodes=}; shift ;;
                *) die "start takes --nodes N, not '$1'" ;;
            esac
        done
        cmd_start "$nodes"
        ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    node-stop|node-start)
        [ $# = 2 ] || die "usage: $0 $1 NODE"
        "cmd_${1/-/_}" "$2"
        ;;
    *) echo "usage: $0 start [--nodes N] | stop | status | node-stop NODE | node-start NODE" >&2; exit 2 ;;
esac
