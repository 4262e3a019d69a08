#!/usr/bin/env bash
# A Slurm cluster with a primary and a backup slurmctld on this one machine, for AJR's
# failover tests and demos. Two network namespaces stand for the two controller hosts
# (ctl1 at 10.213.0.11, ctl2 at 10.213.0.12, joined by a veth pair); each slurmctld runs
# in its own UTS namespace with that host name, which is how slurmctld tells whether it
# is the primary or the backup. Both share one StateSaveLocation, as a real HA pair does
# on shared storage. Two slurmd (h1, h2) run in ctl2's namespace. Nothing touches the
# host's own cluster (packaging/local-slurm/local-slurm.sh): other ports' owners, another
# slurm.conf (SLURM_CONF), other state.
#
#   ha-slurm.sh start              write the config, start munged, both slurmctld and the slurmd
#   ha-slurm.sh stop               stop every daemon of this cluster and remove the namespaces
#   ha-slurm.sh status             scontrol ping and sinfo, as seen from ctl2
#   ha-slurm.sh stop-controller N  stop the slurmctld of ctlN (its host's other processes go on)
#   ha-slurm.sh start-controller N start it again
#   ha-slurm.sh run N CMD...       run CMD on host ctlN: its network, its host name, this cluster's SLURM_CONF
set -euo pipefail

BASE=${AJR_HA_DIR:-/var/lib/ajr-ha}
CONF="$BASE/etc/slurm.conf"
export SLURM_CONF="$CONF"

say() { printf 'ha-slurm: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
source "$(dirname "${BASH_SOURCE[0]}")/daemons.sh"

[ "$(id -u)" = 0 ] || die "run as root (it makes network namespaces and starts daemons)"

# `ip` in host N's network namespace. Not `ip -n`, which also makes / a slave mount: in a
# release's chroot / is no mount point and that fails.
ip_in() { # N ip-args...
    local n=$1
    shift
    nsenter --net="/run/netns/ajrha$n" ip "$@"
}

netns_up() {
    for n in 1 2; do
        ip netns list | grep -qw "ajrha$n" || ip netns add "ajrha$n"
        ip_in "$n" link set lo up
    done
    # A real interface with an address on each side: with only loopback, glibc's getaddrinfo
    # (AI_ADDRCONFIG) resolves no IPv4 address at all, not even "10.213.0.11".
    if ! ip_in 1 link show vha1 >/dev/null 2>&1; then
        ip link add vha1 netns ajrha1 type veth peer name vha2 netns ajrha2
        ip_in 1 addr add 10.213.0.11/24 dev vha1
        ip_in 2 addr add 10.213.0.12/24 dev vha2
        ip_in 1 link set vha1 up
        ip_in 2 link set vha2 up
    fi
}

write_conf() {
    mkdir -p "$BASE/etc" "$BASE/state" "$BASE/ctl1" "$BASE/ctl2" "$BASE/private" "$BASE/d/h1" "$BASE/d/h2"
    cat >"$CONF" <<CONF
# written by AJR ha-slurm.sh; safe to delete
ClusterName=ajrha
SlurmctldHost=ctl1(10.213.0.11)
SlurmctldHost=ctl2(10.213.0.12)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
ReturnToService=2
MinJobAge=600
KillWait=5
SlurmctldTimeout=5
SlurmdTimeout=30
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/d/%n
SlurmctldPidFile=$BASE/private/slurmctld.pid
SlurmdPidFile=$BASE/d/slurmd-%n.pid
SlurmctldLogFile=$BASE/private/slurmctld.log
SlurmdLogFile=$BASE/d/slurmd-%n.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SlurmdParameters=config_overrides
NodeName=h[1-2] NodeHostname=localhost NodeAddr=10.213.0.12 Port=[6821-6822] CPUs=4 State=UNKNOWN
PartitionName=defq Nodes=h[1-2] Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
}

start_munge() {
    pgrep -x munged >/dev/null && return
    [ -s /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_controller() {
    local n=$1
    alive "$BASE/ctl$n.pid" && return
    # Each controller host keeps its own pid and log file: the same paths in slurm.conf,
    # a different directory bound under them in that slurmctld's mount namespace.
    # In a release's chroot (packaging/releases) / is no mount point, so its propagation
    # cannot be changed: there the chroot's own mount namespace, private already, keeps
    # the bind below from reaching the host.
    local propagation=private
    mountpoint -q / || propagation=unchanged
    setsid nsenter --net="/run/netns/ajrha$n" unshare --uts --mount --propagation "$propagation" \
        bash -c "hostname ctl$n; mount --bind '$BASE/ctl$n' '$BASE/private'; exec /usr/sbin/slurmctld -D -i" \
        >>"$BASE/ctl$n/slurmctld.out" 2>&1 </dev/null &
    echo $! >"$BASE/ctl$n.pid"
    say "slurmctld of ctl$n started"
}

cmd_start() {
    command -v slurmctld >/dev/null || [ -x /usr/sbin/slurmctld ] || die "Slurm is not installed: run packaging/local-slurm/local-slurm.sh start once"
    netns_up
    write_conf
    start_munge
    start_controller 1
    sleep 1  # the primary first, so that the backup starts in standby
    start_controller 2
    for h in h1 h2; do
        alive "$BASE/d/$h.launcher" && continue
        setsid nsenter --net=/run/netns/ajrha2 /usr/sbin/slurmd -D -N "$h" >>"$BASE/d/$h.out" 2>&1 </dev/null &
        echo $! >"$BASE/d/$h.launcher"
    done
    for _ in $(seq 120); do
        if [ "$(nsenter --net=/run/netns/ajrha2 sinfo -h -o %T 2>/dev/null | sort -u | tr '\n' ' ')" = "idle " ]; then
            say "both controllers up, nodes idle"
            return 0
        fi
        sleep 0.5
    done
    die "the nodes did not become idle within 60 s; see $BASE/ctl1/slurmctld.log and $BASE/d/"
}

cmd_stop() {
    for h in h1 h2; do stop_daemon "$BASE/d/$h.launcher" "slurmd $h"; done
    for n in 1 2; do stop_daemon "$BASE/ctl$n.pid" "slurmctld of ctl$n"; done
    for n in 1 2; do ip netns del "ajrha$n" 2>/dev/null || true; done
}

cmd_run() {
    local n=$1
    shift
    exec nsenter --net="/run/netns/ajrha$n" unshare --uts bash -c "hostname ctl$n; exec \"\$@\"" ha-run "$@"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) nsenter --net=/run/netns/ajrha2 scontrol ping || true; nsenter --net=/run/netns/ajrha2 sinfo ;;
    stop-controller) stop_daemon "$BASE/ctl${2:?which controller, 1 or 2}.pid" "slurmctld of ctl$2" ;;
    start-controller) start_controller "${2:?which controller, 1 or 2}" ;;
    run) [ $# -ge 3 ] || die "usage: $0 run N CMD..."; shift; cmd_run "$@" ;;
    *) echo "usage: $0 start|stop|status|stop-controller N|start-controller N|run N CMD..." >&2; exit 2 ;;
esac
