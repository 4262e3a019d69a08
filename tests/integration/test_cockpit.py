"""The cockpit, API, metrics and notifications over a store a real agent filled on the real Slurm,
used as a person would: urllib for the API, headless Chromium for the pages (a screenshot is kept)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from ajr_agent.surfaces.http_limits import HttpLimits
from tests.conftest import wait_for
from tests.integration.support import AgentProcess, sbatch

pytestmark = pytest.mark.slurm

TOKEN = "cockpit-test-token"
# A small training job: throughput reports with timestamps, a checkpoint, then in its first
# attempt a segfault (an untimestamped line, timed by the file's mtime); the second attempt completes.
TRAINING_JOB = """#!/bin/bash
#SBATCH -t 00:05:00
#SBATCH --comment='{"APS": {"auto_resume_mode": "requeue", "max_requeue_times": 2}}'
log="$PWD/${SLURM_JOB_NAME}_${SLURM_JOB_ID}_$(date +date_%y-%m-%d_time_%H-%M-%S).log"
restart=${SLURM_RESTART_COUNT:-0}
for i in 1 2 3 4 5 6; do
  echo "$(date '+%Y-%m-%d %H:%M:%S') iteration $i | throughput per GPU (TFLOP/s/GPU): $((390 + i * 3 - restart * 7)).$i" >> "$log"
  if [ "$i" = 3 ]; then echo "$(date '+%Y-%m-%d %H:%M:%S') Saved checkpoint to /ckpt/iter_300" >> "$log"; fi
  sleep 1
done
if [ "$restart" = 0 ]; then
  echo "Rank0: (1) segmentation fault: artificial segfault" >> "$log"
  sleep 30
  exit 1
fi
echo "$(date '+%Y-%m-%d %H:%M:%S') Saved checkpoint to /ckpt/final" >> "$log"
"""
NOTIFY_SINK = """import json, sys
with open(sys.argv[1], "a") as out:
    out.write(json.dumps(json.load(sys.stdin)) + "\\n")
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def call(url: str, method: str = "GET", token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, method=method, headers=headers, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def get(url: str) -> Any:
    status, body = call(url)
    assert status == 200, body
    return json.loads(body)


def metric(text: str, prefix: str) -> float:
    """The value of the one sample whose line starts with `prefix` (name and labels)."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)]
    assert len(values) == 1, (prefix, values)
    return values[0]


def chromium(url: str, *flags: str) -> str:
    """Load a page in headless Chromium, let its script run, and return what it printed (--dump-dom)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("chromium is not installed: packaging/dev/setup-env.sh installs it (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--hide-scrollbars", "--virtual-time-budget=5000", *flags, url],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("AJR_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def served(agent_factory: Callable[..., AgentProcess], tmp_path: Path) -> Iterator[tuple[AgentProcess, str, int, Path]]:
    """An agent serving its cockpit with an operator token and a command notification sink, and the
    training job it recovered: (agent, base URL, job id, notifications file)."""
    port = free_port()
    sink = tmp_path / "sink.py"
    sink.write_text(NOTIFY_SINK)
    notes = tmp_path / "notifications.jsonl"
    agent = agent_factory(extra_config=f'http_port = {port}\noperator_token = "{TOKEN}"\n'
                                       f'notify_command = "{sys.executable} {sink} {notes}"\n')  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    assert f"cockpit, API and /metrics on {base}" in agent.log.read_text()
    script = tmp_path / "train.sh"
    script.write_text(TRAINING_JOB)
    job_id = sbatch(script, tmp_path, "-p", "defq", "-J", "ajr-cockpit-train")
    agent.submitted.append(job_id)
    wait_for(lambda: get(f"{base}/api/jobs/{job_id}")["job"]["requeues_used"] == 1 if call(f"{base}/api/jobs/{job_id}")[0] == 200
             else False, 90, "the requeue after the segfault")  # fmt: skip
    wait_for(lambda: get(f"{base}/api/jobs/{job_id}")["job"]["phase"] == "finished", 90, "the second attempt to complete")
    yield agent, base, job_id, notes


def test_a_person_follows_a_recovery_in_the_api_metrics_pages_and_notifications(
    served: tuple[AgentProcess, str, int, Path], tmp_path: Path
) -> None:
    agent, base, job_id, notes = served

    # The list, with the filters an operator uses.
    listed = get(f"{base}/api/jobs?state=finished&user=root")
    row = next(j for j in listed["jobs"] if j["job_id"] == job_id)
    assert (row["name"], row["mode"], row["slurm_state"], row["requeues_used"], row["limit"]) == (
        "ajr-cockpit-train", "requeue", "COMPLETED", 1, 2)
    assert row["last_anomaly"] == "segfault (segfault)" and 0 < row["efficiency"] < 1
    assert job_id not in [j["job_id"] for j in get(f"{base}/api/jobs?state=stopped")["jobs"]]

    # The job's story: two attempts with their checkpoints, the anomaly line and its file, the throughput.
    detail = get(f"{base}/api/jobs/{job_id}")
    assert [(a["attempt"], a["outcome"]) for a in detail["attempts"]] == [(0, "failed"), (1, "completed")]
    assert [len(a["checkpoints"]) for a in detail["attempts"]] == [1, 2]
    anomaly = next(e for e in detail["events"] if e["category"] == "anomaly")
    assert anomaly["line"] == "Rank0: (1) segmentation fault: artificial segfault"
    assert anomaly["path"].startswith(str(tmp_path)) and f"ajr-cockpit-train_{job_id}_date_" in anomaly["path"]
    assert [v["fault"] for v in detail["verdicts"]] == ["application"]
    assert len(detail["throughput"]) == 12 and {p["attempt"] for p in detail["throughput"]} == {0, 1}
    assert 0 < detail["efficiency"]["efficiency"] < 1 and detail["efficiency"]["lost_unsaved"] > 0
    kinds = [(a["kind"], a["status"]) for a in detail["actions"] if a["kind"] != "annotate"]
    assert kinds == [("requeue_hold", "done"), ("release", "done")]
    kpi = get(f"{base}/api/kpi?since=1h&user=root")
    assert str(job_id) in [r["job"] for r in kpi["jobs"]]

    # The agent's counters and the store's gauges.
    status, body = call(f"{base}/metrics")
    text = body.decode()
    assert status == 200
    assert metric(text, 'ajr_anomalies_total{category="segfault",fault="application"}') >= 1
    assert metric(text, 'ajr_recoveries_total{mode="requeue"}') == 1
    assert metric(text, 'ajr_actions_total{kind="requeue_hold",outcome="done",dry_run="false"}') == 1
    latency = metric(text, "ajr_detection_latency_seconds_sum")
    assert metric(text, "ajr_detection_latency_seconds_count") == 1 and 0 <= latency < 5
    assert metric(text, "ajr_poll_duration_seconds_count") > 10 and metric(text, "ajr_log_read_bytes_total") > 500
    assert f'ajr_training_efficiency_ratio{{scope="job",job_id="{job_id}",name="ajr-cockpit-train",user="root"}}' in text

    # The notification of the recovery reached the command sink.
    wait_for(lambda: notes.exists() and notes.read_text(), 20, "the recovery's notification")
    told = [json.loads(line) for line in notes.read_text().splitlines()]
    assert [(n["kind"], n["job_id"]) for n in told] == [("recovered", job_id)]

    # The pages, after their script ran, in a real browser.
    dom = chromium(f"{base}/jobs/{job_id}", "--dump-dom")
    for shown in ("Attempt 0", "Attempt 1", "Rank0: (1) segmentation fault: artificial segfault", anomaly["path"],
                  "Saved checkpoint to /ckpt/iter_300", 'class="chart timeline"', 'class="chart throughput"',
                  "<polyline", "Training efficiency", "requeue_hold", "Unlock actions"):  # fmt: skip
        assert shown in dom, shown
    assert dom.count('class="badge tone-bad">anomaly</span>') >= 1
    listing = chromium(f"{base}/?user=root", "--dump-dom")
    assert f'href="/jobs/{job_id}"' in listing and "ajr-cockpit-train" in listing
    docs = chromium(f"{base}/docs", "--dump-dom")
    assert "/api/jobs/{job_id}/requeue" in docs and "JobDetail" in docs
    shot = artifacts(tmp_path) / f"cockpit-job-{job_id}.png"
    chromium(f"{base}/jobs/{job_id}", f"--screenshot={shot}", "--window-size=1400,2300")
    assert shot.stat().st_size > 20_000
    print(f"cockpit screenshot: {shot}")


def test_operator_actions_need_the_token_and_are_journaled_as_the_agents(
    served: tuple[AgentProcess, str, int, Path], tmp_path: Path
) -> None:
    agent, base, job_id, _ = served
    journal = get(f"{base}/api/jobs/{job_id}")["actions"]
    for token in (None, "wrong", TOKEN + "x", TOKEN[:-1]):
        for verb in ("requeue", "release", "forget"):
            status, body = call(f"{base}/api/jobs/{job_id}/{verb}", "POST", token)
            assert status == 401, (token, verb, body)
    assert get(f"{base}/api/jobs/{job_id}")["actions"] == journal
    assert get(f"{base}/api/jobs/{job_id}")["job"]["phase"] == "finished"

    # `ajr serve` beside the agent, on the same store, with no operator token: actions are off,
    # and /metrics has the store's gauges but not the agent's counters.
    port = free_port()
    config = tmp_path / "serve.toml"
    config.write_text(f'state_db = "{agent.workdir / "ajr.db"}"\nrules_dirs = []\n')
    serve = subprocess.Popen([sys.executable, "-m", "ajr_agent.surfaces.cli", "--config", str(config), "serve", "--port", str(port)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        other = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(other), 30, "ajr serve to listen")
        assert any(j["job_id"] == job_id for j in get(f"{other}/api/jobs")["jobs"])
        status, body = call(f"{other}/api/jobs/{job_id}/requeue", "POST", TOKEN)
        assert status == 403 and b"no operator_token is configured" in body
        text = call(f"{other}/metrics")[1].decode()
        assert "ajr_managed_jobs{" in text and "ajr_anomalies_total" not in text
        assert get(f"{other}/api/status")["counters"] == "store"
    finally:
        serve.terminate()
        serve.wait(timeout=10)
    assert get(f"{base}/api/jobs/{job_id}")["actions"] == journal

    # With the token, the request goes the CLI's way: journaled as operator:web, run by the Executor.
    status, body = call(f"{base}/api/jobs/{job_id}/requeue", "POST", TOKEN)
    assert status == 200, body
    result = json.loads(body)
    assert result["status"] == "done"
    entry = next(a for a in get(f"{base}/api/jobs/{job_id}")["actions"] if a["id"] == result["journal_id"])
    assert (entry["kind"], entry["status"], entry["origin"], entry["dry_run"]) == ("requeue", "done", "operator:web", False)


def _answers(url: str) -> bool:
    try:
        return call(f"{url}/api/status")[0] == 200
    except OSError:
        time.sleep(0.2)
        return False


def test_500_idle_connections_leave_the_agent_its_threads_fds_and_polls(
    agent_factory: Callable[..., AgentProcess],
) -> None:
    port = free_port()
    agent = agent_factory(extra_config=f"http_port = {port}\n")
    assert agent.process is not None
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(base), 30, "the cockpit")

    def threads_and_fds() -> tuple[int, int]:
        return len(os.listdir(f"/proc/{agent.process.pid}/task")), len(os.listdir(f"/proc/{agent.process.pid}/fd"))

    before = threads_and_fds()
    idle = []
    try:
        for _ in range(500):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(1)  # the agent accepts them meanwhile
        during = threads_and_fds()
        limits = HttpLimits()
        assert during[0] <= before[0] + limits.max_workers, f"threads {before[0]} -> {during[0]}"
        assert during[1] <= before[1] + limits.max_pending + limits.max_workers, f"fds {before[1]} -> {during[1]}"
        # The cockpit still answers, and the agent still reads the queue (squeue, SQLite: fds of its own).
        polled = get(f"{base}/api/status")["agent"]["last_poll_at"]
        wait_for(lambda: get(f"{base}/api/status")["agent"]["last_poll_at"] > polled, 10, "the agent's next poll")
    finally:
        for sock in idle:
            sock.close()
    assert "Too many open files" not in agent.log.read_text()
    print(f"agent under 500 idle connections: threads {before[0]} -> {during[0]}, fds {before[1]} -> {during[1]}")
