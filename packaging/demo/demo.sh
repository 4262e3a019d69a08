#!/usr/bin/env bash
# AJR's demo on a fresh Debian machine (as root): install AJR and a local one-node
# Slurm, start the agent, submit the requeue verification job, and show as it happens
# that the failure is seen, the job requeued and restarted, then stopped at its limit.
#
# Environment: AJR_DEMO_DIR (default /tmp/ajr-demo), AJR_TEST_SLEEP_BEFORE and
# AJR_TEST_SLEEP_AFTER (seconds before and after the artificial segfault; 10 and 30).
set -euo pipefail
source "$(dirname "$0")/../dev/setup-env.sh"
ajr_setup

DEMO_DIR=${AJR_DEMO_DIR:-/tmp/ajr-demo}
rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR/rules.d"
cat >"$DEMO_DIR/ajr.toml" <<CONF
state_db = "$DEMO_DIR/ajr.db"
rules_dirs = ["$DEMO_DIR/rules.d"]
poll_interval = 1.0
CONF
export AJR_CONFIG="$DEMO_DIR/ajr.toml"

agent_pid=""
cleanup() {
    [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
    [ -n "${job_id:-}" ] && scancel "$job_id" 2>/dev/null
    true
}
trap cleanup EXIT

echo "== starting ajr-agent (log: $DEMO_DIR/agent.log)"
ajr-agent >"$DEMO_DIR/agent.log" 2>&1 &
agent_pid=$!
until grep -q "started" "$DEMO_DIR/agent.log"; do
    kill -0 "$agent_pid" 2>/dev/null || { cat "$DEMO_DIR/agent.log"; exit 1; }
    sleep 0.2
done
grep "started" "$DEMO_DIR/agent.log"

echo "== submitting the requeue verification job (max_requeue_times 1)"
cd "$DEMO_DIR"
export AJR_TEST_SLEEP_BEFORE=${AJR_TEST_SLEEP_BEFORE:-10} AJR_TEST_SLEEP_AFTER=${AJR_TEST_SLEEP_AFTER:-30}
job_id=$(sbatch --parsable -p defq -J AJR-verification-test "$AJR_ROOT/packaging/demo/requeue_test.sh")
echo "submitted job $job_id; the agent reports:"

# What the agent decides about this job, as it happens.
tail -n +1 -f "$DEMO_DIR/agent.log" | grep --line-buffered -E "job $job_id[ :]" &
tail_pid=$!

# The agent's own record: stopped at the limit, and the job's end seen.
recorded() { ajr show "$job_id" --json 2>/dev/null | python3 -c 'import json,sys; j=json.load(sys.stdin)["job"]; print(j["phase"], j["slurm_state"])' 2>/dev/null || true; }
deadline=$((SECONDS + 300))
until [ "$(recorded)" = "stopped FAILED" ]; do
    if [ $SECONDS -gt $deadline ]; then
        echo "demo: the job did not reach its limit within 5 minutes; see $DEMO_DIR/agent.log" >&2
        exit 1
    fi
    sleep 1
done
kill "$tail_pid" 2>/dev/null || true

echo
echo "== Slurm's view"
scontrol show job "$job_id" | grep -E "JobState|Restarts"
echo
echo "== ajr status"
ajr status
echo
echo "== ajr show $job_id"
ajr show "$job_id"
