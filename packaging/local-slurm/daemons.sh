# Sourced by local-slurm.sh and ha-slurm.sh, which define `say` first.

stop_daemon() { # pidfile name
    local pid
    # The daemon removes its pid file as it exits: read it once.
    pid=$(cat "$1" 2>/dev/null) || pid=""
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        # slurmctld saves its state as it stops: give it ten seconds before SIGKILL.
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        say "$2 stopped"
    fi
    rm -f "$1"
}
