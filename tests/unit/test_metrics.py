"""Prometheus metrics: the agent's counters fed by a real agent loop, the store's gauges, the exposition
format (checked with prometheus_client's own parser), and the Grafana dashboard against the exporter."""

from __future__ import annotations

from ajr_agent.adapters.slurm.calls import Operation
from ajr_agent.adapters.slurm.memory import MemorySlurm
from tests.unit.support import LOG_NAME, fill, running

import json
import os
import re
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
import pytest

from ajr_agent.adapters.slurm import SlurmError
from ajr_agent.adapters.store import Store
from ajr_agent.domain import policy
from ajr_agent.domain.events import ActionFailed, AnomalyFound
from ajr_agent.domain.model import Action, ActionKind, Decision, ManagedJob, Phase, StopCause
from ajr_agent.domain.settings import Settings
from ajr_agent.domain.spec import ResumeMode
from ajr_agent.runtime.agent import Agent, load_rules
from ajr_agent.runtime.inline_pool import InlinePool
from ajr_agent.surfaces import metrics as m
from ajr_agent.views.decisions import refusal

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "packaging" / "grafana" / "ajr-dashboard.json"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, parsed by prometheus_client (which rejects a malformed one)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def value(text: str, metric: str, **labels: str) -> float:
    return samples(text).get((metric, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    settings = Settings(state_db=tmp_path / "ajr.db", rules_dirs=(), clear_begin_time=True)
    store = Store(settings.state_db)
    store.set_meta(watching_since=1.0)
    return Agent(settings, store, MemorySlurm(), load_rules(settings), observer=m.Metrics(), pool=InlinePool())


def test_a_real_agent_loop_feeds_the_counters(agent: Agent, tmp_path: Path) -> None:
    queue: MemorySlurm = agent.gateway  # type: ignore[assignment]
    queue.jobs[7] = running(tmp_path)
    log = tmp_path / LOG_NAME
    log.write_text("step 1\n")
    now = time.time()
    agent.poll(now)
    stamp = datetime.fromtimestamp(now - 2.5).strftime("%Y-%m-%d %H:%M:%S")
    with log.open("a") as handle:
        handle.write(f"{stamp} Rank0: (1) segmentation fault: artificial segfault\n")
    agent.read_logs(now)
    agent.poll(now + 1)  # Slurm shows the job pending: released
    queue.fail(Operation.LIST_JOBS)
    agent.poll(now + 2)

    text = m.exposition(agent.store, agent.observer, time.time())
    assert value(text, "ajr_anomalies_total", category="segfault", fault="application") == 1
    assert value(text, "ajr_actions_total", kind="requeue_hold", outcome="done", dry_run="false") == 1
    assert value(text, "ajr_actions_total", kind="release", outcome="done", dry_run="false") == 1
    assert value(text, "ajr_recoveries_total", mode="requeue") == 1
    assert value(text, "ajr_verdicts_total", fault="application") == 1
    # The line's own timestamp (2.5 s before the read, second resolution) starts the clock.
    assert value(text, "ajr_detection_latency_seconds_count") == 1
    assert 2.4 <= value(text, "ajr_detection_latency_seconds_sum") <= 4.0
    assert value(text, "ajr_detection_latency_seconds_bucket", le="5.0") == 1
    assert value(text, "ajr_detection_latency_seconds_bucket", le="2.0") == 0
    assert value(text, "ajr_poll_duration_seconds_count") == 2  # the failed poll is not timed
    assert value(text, "ajr_log_files_tailed") == 1
    assert value(text, "ajr_log_read_bytes_total") == log.stat().st_size
    assert value(text, "ajr_slurm_command_errors_total", command="squeue") == 1
    assert value(text, "ajr_managed_jobs", phase="restarting", slurm_state="PENDING") == 1


def test_a_line_without_a_timestamp_is_timed_from_the_files_mtime(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("Rank0: segfault\n")
    written = time.time() - 7
    os.utime(log, (written, written))
    job = ManagedJob(job_id=7, name="t", user="u", user_id=0, mode=ResumeMode.REQUEUE, requested_limit=None, limit=3,
                     attempt_started=1.0)  # fmt: skip
    event = AnomalyFound(7, 0, time.time(), "segfault", "segfault", "application", str(log), "Rank0: segfault")
    metrics = m.Metrics()
    metrics.decided(job, event, policy.decide(job, event, Settings(rules_dirs=())))
    text = "\n".join(metrics.render()) + "\n"
    assert 6.9 <= value(text, "ajr_detection_latency_seconds_sum") < 9


@pytest.mark.parametrize(("streak", "used", "reason"), [(0, 3, "limit"), (2, 0, "crash_loop")])
def test_refusals_are_counted_by_reason(streak: int, used: int, reason: str) -> None:
    job = ManagedJob(job_id=7, name="t", user="u", user_id=0, mode=ResumeMode.REQUEUE, requested_limit=None, limit=3,
                     requeues_used=used, failure_streak=streak, attempt_started=1.0)  # fmt: skip
    event = AnomalyFound(7, 0, 2.0, "segfault", "segfault", "application", "", "Rank0: segfault")
    decision = policy.decide(job, event, Settings(rules_dirs=(), crashloop_threshold=3))
    assert refusal(job, decision) == reason
    metrics = m.Metrics()
    metrics.decided(job, event, decision)
    assert value("\n".join(metrics.render()) + "\n", "ajr_requeues_refused_total", reason=reason) == 1


def test_slurm_refusing_the_requeue_is_counted_apart() -> None:
    job = ManagedJob(job_id=7, name="t", user="u", user_id=0, mode=ResumeMode.REQUEUE, requested_limit=None, limit=3,
                     phase=Phase.HOLDING, requeues_used=1)  # fmt: skip
    event = ActionFailed(Action(ActionKind.REQUEUE_HOLD, 7, 0, "segfault"), 3.0, "Job is not requeueable")
    metrics = m.Metrics()
    metrics.decided(job, event, policy.decide(job, event, Settings(rules_dirs=())))
    text = "\n".join(metrics.render()) + "\n"
    assert value(text, "ajr_requeues_refused_total", reason="slurm_refused") == 1
    assert value(text, "ajr_actions_total", kind="requeue_hold", outcome="failed", dry_run="false") == 1


@pytest.mark.parametrize(("command", "label"), [
    (["squeue", "-h", "-t", "all"], "squeue"), (["scontrol", "requeuehold", "7"], "scontrol requeuehold"),
    (["/usr/bin/scontrol", "update", "JobId=7"], "scontrol update"), (["pyslurm.Job(7).requeue"], "pyslurm.Job.requeue"),
    (["scontrol", "-o", "show", "job"], "scontrol"),
])  # fmt: skip
def test_slurm_errors_are_labelled_by_command_not_by_job(command: list[str], label: str) -> None:
    metrics = m.Metrics()
    metrics.slurm_error(SlurmError(command, "boom", transient=True))
    assert value("\n".join(metrics.render()) + "\n", "ajr_slurm_command_errors_total", command=label) == 1


def test_store_gauges_efficiency_per_job_and_overall(tmp_path: Path) -> None:
    store = Store(tmp_path / "ajr.db")
    fill(store, time.time())
    text = m.exposition(store, None, time.time())
    assert value(text, "ajr_managed_jobs", phase="finished", slurm_state="CANCELLED") == 1
    assert value(text, "ajr_managed_jobs", phase="watching", slurm_state="RUNNING") == 1
    assert value(text, "ajr_refused_specs") == 1
    ratio = value(text, "ajr_training_efficiency_ratio", scope="job", job_id="1778", name="llama", user="alice")
    assert ratio == pytest.approx(178 / 240)
    overall = value(text, "ajr_training_efficiency_ratio", scope="all", job_id="", name="", user="")
    assert 0 < overall < 1
    assert value(text, "ajr_agent_last_poll_timestamp_seconds") > 0
    # `ajr serve` without an agent: the store's gauges only.
    assert "ajr_anomalies_total" not in text


def test_exposition_follows_the_conventions() -> None:
    families = m.AGENT_FAMILIES + m.STORE_FAMILIES
    assert len({f.name for f in families}) == len(families)
    for family in families:
        assert re.fullmatch(r"ajr_[a-z_]+", family.name)
        assert family.name.endswith("_total") == (family.kind == "counter"), family.name
        if family.kind == "histogram":
            assert family.name.endswith("_seconds") and list(family.buckets) == sorted(family.buckets)


def test_label_values_are_escaped() -> None:
    line = m._sample("ajr_x", {"name": 'a "quoted"\\ job\nname'}, 1.0)
    assert line == 'ajr_x{name="a \\"quoted\\"\\\\ job\\nname"} 1'
    parsed = samples(f"# TYPE ajr_x gauge\n{line}\n")
    assert parsed[("ajr_x", (("name", 'a "quoted"\\ job\nname'),))] == 1


# ---- the Grafana dashboard ------------------------------------------------------------------------


def exposed_names() -> set[str]:
    names = set()
    for family in m.AGENT_FAMILIES + m.STORE_FAMILIES:
        names.add(family.name)
        if family.kind == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
    return names


def expressions(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for v in node.values() for e in expressions(v)]
    if isinstance(node, list):
        return [e for v in node for e in expressions(v)]
    return []


def test_dashboard_parses_and_queries_only_exposed_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = expressions(dashboard)
    assert len(exprs) >= 15
    used = {name for expr in exprs for name in re.findall(r"\bajr_[a-z_]+", expr)}
    assert used <= exposed_names(), used - exposed_names()
    # The headline figures are there: efficiency, recoveries, anomalies by category, detection latency.
    for name in ("ajr_training_efficiency_ratio", "ajr_recoveries_total", "ajr_anomalies_total",
                 "ajr_detection_latency_seconds_bucket"):  # fmt: skip
        assert name in used


def test_dashboard_takes_its_datasource_from_a_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"

    def sources(node: object) -> list[object]:
        if isinstance(node, dict):
            return ([node["datasource"]] if "datasource" in node else []) + [s for v in node.values() for s in sources(v)]
        if isinstance(node, list):
            return [s for v in node for s in sources(v)]
        return []

    assert all(s == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"} for s in sources(dashboard["panels"]))
    provisioning = (DASHBOARD.parent / "provisioning.yaml").read_text()
    assert "apiVersion: 1" in provisioning and "type: file" in provisioning


def test_dashboard_queries_match_samples_a_real_exposition_has(agent: Agent, tmp_path: Path) -> None:
    """Every metric the dashboard uses appears in a real /metrics page once the agent has done some work."""
    queue: MemorySlurm = agent.gateway  # type: ignore[assignment]
    queue.jobs[7] = replace(running(tmp_path), comment='{"APS": {"max_requeue_times": 1}}')
    log = tmp_path / LOG_NAME
    log.write_text("step 1\n")
    agent.poll(time.time())
    with log.open("a") as handle:
        handle.write("Rank0: (1) segmentation fault: artificial segfault\n")
    agent.read_logs(time.time())
    agent.poll(time.time())
    queue.fail(Operation.LIST_JOBS)
    agent.poll(time.time())
    text = m.exposition(agent.store, agent.observer, time.time())
    present = {name for name, _ in samples(text)}
    used = {name for expr in expressions(json.loads(DASHBOARD.read_text())) for name in re.findall(r"\bajr_[a-z_]+", expr)}
    # Refusals and per-job efficiency need more history than this one failure gives.
    assert used - present <= {"ajr_requeues_refused_total", "ajr_training_efficiency_ratio", "ajr_refused_specs"}


@pytest.mark.parametrize("cause", list(StopCause))
def test_a_refusal_is_counted_by_its_cause_whatever_its_words(cause: StopCause) -> None:
    before = ManagedJob(job_id=7, name="t", user="u", user_id=0, mode=ResumeMode.REQUEUE, requested_limit=None,
                        limit=3)  # fmt: skip
    after = replace(before, phase=Phase.STOPPED, stop_cause=cause, stop_reason="words reworded for people")
    event = AnomalyFound(7, 0, 2.0, "segfault", "segfault", "application", "", "Rank0: segfault")
    assert refusal(before, Decision(after)) is cause
    metrics = m.Metrics()
    metrics.decided(before, event, Decision(after))
    assert value("\n".join(metrics.render()) + "\n", "ajr_requeues_refused_total", reason=cause.value) == 1
