#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for AJR's demo and integration tests.
#
#   local-slurm.sh start    install Debian's packages if missing, write the config,
#                           start munged, slurmctld and slurmd, wait for an idle node
#   local-slurm.sh stop     stop the three daemons
#   local-slurm.sh status   print whether the cluster answers
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

say() { printf 'local-slurm: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

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

write_conf() {
    if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script; refusing to overwrite a real cluster's config"
    fi
    mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d" "$LOGS"
    local extra=""
    if [ -n "${AJR_SLURM_EXTRA_CONF:-}" ]; then
        [ -r "$AJR_SLURM_EXTRA_CONF" ] || die "AJR_SLURM_EXTRA_CONF=$AJR_SLURM_EXTRA_CONF is not readable"
        extra=$(cat "$AJR_SLURM_EXTRA_CONF")
    fi
    local new
    new=$(cat <<CONF
$MARKER
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
MaxJobCount=50000
MinJobAge=600
KillWait=5
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=/run/ajr-slurmctld.pid
SlurmdPidFile=/run/ajr-slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
NodeName=$HOST CPUs=$(nproc) State=UNKNOWN
PartitionName=defq Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
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

stop_daemon() { # pidfile name
    local pid
    # The daemon removes its pid file as it exits: read it once.
    pid=$(cat "$1" 2>/dev/null) || pid=""
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        say "$2 stopped"
    fi
    rm -f "$1"
}

wait_idle() {
    for _ in $(seq 120); do
        if state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null) && [[ "$state" =~ ^(idle|mixed|allocated) ]]; then
            say "node $HOST is $state"
            return 0
        fi
        sleep 0.5
    done
    die "node $HOST did not become idle within 60 s; see $LOGS/slurmctld.log and $LOGS/slurmd.log"
}

cmd_start() {
    install_packages
    local changed=0
    write_conf && changed=1
    start_munge
    if [ $changed = 1 ]; then
        stop_daemon /run/ajr-slurmd.pid slurmd
        stop_daemon /run/ajr-slurmctld.pid slurmctld
    fi
    if ! pid_alive /run/ajr-slurmctld.pid; then
        /usr/sbin/slurmctld -i
        say "slurmctld started"
    fi
    if ! pid_alive /run/ajr-slurmd.pid; then
        /usr/sbin/slurmd
        say "slurmd started"
    fi
    wait_idle
    # A node that went down while slurmd was away comes back without waiting.
    scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
}

cmd_stop() {
    stop_daemon /run/ajr-slurmd.pid slurmd
    stop_daemon /run/ajr-slurmctld.pid slurmctld
}

cmd_status() {
    if scontrol ping >/dev/null 2>&1; then
        sinfo -h -o '%P %T %N'
    else
        say "slurmctld does not answer"
        exit 3
    fi
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
