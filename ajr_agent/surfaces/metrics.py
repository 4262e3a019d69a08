"""Prometheus metrics: counters the agent keeps as things happen, gauges read from the store when scraped.

The agent holds one `Metrics` and feeds it from one-line hooks (a decision, a poll,
lines read, a failed Slurm command); the HTTP service renders it with the gauges it
reads from the store at scrape time. `ajr serve` without an agent has no `Metrics`
and serves the store's gauges only. The text exposition format (version 0.0.4) is
written here: it is a few lines of `name{label="value"} number`.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Iterable

from ajr_agent.adapters.logs import LogLine
from ajr_agent.adapters.slurm import SlurmError
from ajr_agent.adapters.store import Store, StoreCorruptError, StoreError, StoreFullError, StoreLockedError
from ajr_agent.detect.timestamps import line_time
from ajr_agent.domain.control import Control
from ajr_agent.domain.events import ActionDone, ActionFailed, AnomalyFound, Attributed, Event
from ajr_agent.domain.model import Decision, ManagedJob, Phase
from ajr_agent.runtime.observers import Observer
from ajr_agent.views import queries
from ajr_agent.views.decisions import recovered, refusal
from ajr_agent.views.models import KpiQuery
from ajr_agent.views.nodes import node_list

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The overall efficiency gauge covers the same window as `ajr kpi --since 24h`.
EFFICIENCY_WINDOW = "24h"


@dataclass(frozen=True)
class Family:
    """One metric: its name, type, help text, labels and (histograms) bucket bounds."""

    name: str
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


ANOMALIES = Family("ajr_anomalies_total", "counter", "Anomaly log lines matched, by rule category and fault attribution.",
                   ("category", "fault"))  # fmt: skip
VERDICTS = Family("ajr_verdicts_total", "counter", "Failed attempts attributed, by where the fault lies.", ("fault",))
ACTIONS = Family("ajr_actions_total", "counter",
                 "Slurm actions finished, by kind and outcome; dry_run=\"true\" ones were only recorded.",
                 ("kind", "outcome", "dry_run"))  # fmt: skip
RECOVERIES = Family("ajr_recoveries_total", "counter",
                    "Recoveries done: a requeued job released, or the next job of a chain released.", ("mode",))  # fmt: skip
REFUSED = Family("ajr_requeues_refused_total", "counter",
                 "Failures AJR did not recover, by reason: limit, crash_loop, slurm_refused (or release_failed, "
                 "cancel_failed, successor_release_failed).", ("reason",))  # fmt: skip
DETECTION = Family(
    "ajr_detection_latency_seconds", "histogram",
    "Seconds from when the failing log line was written (its own timestamp, else the file's mtime) to the "
    "recovery decision.", (), (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0),
)  # fmt: skip
POLL = Family("ajr_poll_duration_seconds", "histogram", "Seconds one poll of the Slurm queue took, decisions included.",
              (), (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))  # fmt: skip
FILES = Family("ajr_log_files_tailed", "gauge", "Log files the agent follows.")
BYTES = Family("ajr_log_read_bytes_total", "counter", "Bytes of log lines the agent has read.")
SLURM_ERRORS = Family("ajr_slurm_command_errors_total", "counter", "Slurm commands that failed or timed out, by command.",
                      ("command",))  # fmt: skip

MANAGED = Family("ajr_managed_jobs", "gauge", "Managed jobs still in Slurm, by AJR phase and Slurm state.",
                 ("phase", "slurm_state"))  # fmt: skip
REFUSED_SPECS = Family("ajr_refused_specs", "gauge", "Jobs not managed because their APS spec is broken.")
EFFICIENCY = Family(
    "ajr_training_efficiency_ratio", "gauge",
    "Training-time efficiency (productive / settled time): scope=\"job\" per job still in Slurm (its chain's in "
    "singleton mode), scope=\"all\" for every job over the last 24 h (as `ajr kpi --since 24h`).",
    ("scope", "job_id", "name", "user"),
)  # fmt: skip
ROLE = Family("ajr_agent_role", "gauge",
              "1 for this agent's role under failover (active or standby) and the controller host in control.",
              ("role", "in_control"))  # fmt: skip
LAST_POLL = Family("ajr_agent_last_poll_timestamp_seconds", "gauge", "When the agent last read the Slurm queue.")
LEMONS = Family("ajr_lemon_nodes", "gauge", "Nodes the ledger holds for lemons: kept out of every managed job.")
NODE_LEMON = Family("ajr_node_lemon", "gauge", "1 for a lemon node, 0 for a node the ledger trusts.", ("node",))
NODE_WITNESSES = Family("ajr_node_witnesses", "gauge",
                        "Witnesses of a node's record: jobs on trusted evidence, plus each user whose job logs alone "
                        "blame it.", ("node",))  # fmt: skip
NODE_BLAMES = Family("ajr_node_blames", "gauge", "Failed attempts verdicts put on the node, by what they rested on.",
                     ("node", "basis"))  # fmt: skip
NODE_EXCLUSIONS = Family("ajr_node_exclusions", "gauge", "Jobs whose ExcNodeList AJR put the node in and kept it.",
                         ("node",))  # fmt: skip
NODE_ACTIONS = Family("ajr_node_actions", "gauge", "AJR's drains and reboots of the node (kept in the journal).",
                      ("node", "kind"))  # fmt: skip
REQUEUES_BY_CAUSE = Family("ajr_requeues_by_cause", "gauge",
                           "Requeues of the managed jobs still in Slurm, by the budget they were counted against.",
                           ("budget",))  # fmt: skip

STORE_ERRORS = Family("ajr_state_db_errors_total", "counter",
                      "Writes to the state database that failed, by cause (full, locked, corrupt, other).", ("cause",))
AGENT_FAMILIES = (ANOMALIES, VERDICTS, ACTIONS, RECOVERIES, REFUSED, DETECTION, POLL, FILES, BYTES, SLURM_ERRORS,
                  STORE_ERRORS, ROLE)  # fmt: skip
STORE_FAMILIES = (MANAGED, REFUSED_SPECS, EFFICIENCY, LAST_POLL, LEMONS, NODE_LEMON, NODE_WITNESSES, NODE_BLAMES,
                  NODE_EXCLUSIONS, NODE_ACTIONS, REQUEUES_BY_CAUSE)


def _recovery_decided(before: ManagedJob, decision: Decision) -> bool:
    started = (Phase.HOLDING, Phase.HANDING_OVER)
    return decision.job.phase in started and before.phase not in started


def _written_at(event: AnomalyFound) -> float:
    """When the failing line was written: its own timestamp, else the file's modification time."""
    try:
        modified = os.stat(event.path).st_mtime
    except OSError:
        return event.at
    return line_time(event.line, modified)


def command_label(command: list[str]) -> str:
    """A bounded label for a Slurm command: `scontrol requeuehold`, `squeue`, `pyslurm.Job.requeue`."""
    if not command:
        return "unknown"
    head = re.sub(r"\(\d*\)", "", os.path.basename(command[0]))
    verb = command[1] if len(command) > 1 and re.fullmatch(r"[a-z]+", command[1]) else ""
    return f"{head} {verb}".strip()


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for index, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[index] += 1
        self.total += value
        self.count += 1


class Metrics(Observer):
    """The agent's counters, histograms and gauges; thread-safe (the agent writes, the HTTP thread reads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[tuple[str, ...], float]] = {f.name: {} for f in AGENT_FAMILIES}
        self._histograms: dict[str, _Histogram] = {f.name: _Histogram(f.buckets) for f in AGENT_FAMILIES if f.buckets}

    def _add(self, family: Family, labels: tuple[str, ...] = (), amount: float = 1.0) -> None:
        with self._lock:
            values = self._values[family.name]
            values[labels] = values.get(labels, 0.0) + amount

    def _set(self, family: Family, value: float) -> None:
        with self._lock:
            self._values[family.name][()] = value

    def _observe(self, family: Family, value: float) -> None:
        with self._lock:
            self._histograms[family.name].observe(value)

    # ---- the agent's hooks --------------------------------------------------------------

    def decided(self, before: ManagedJob, event: Event, decision: Decision) -> None:
        """Count what one policy decision shows: anomalies, verdicts, action outcomes, recoveries, refusals."""
        if isinstance(event, AnomalyFound):
            self._add(ANOMALIES, (event.category, event.fault))
            if _recovery_decided(before, decision) and event.path:
                self._observe(DETECTION, max(0.0, time.time() - _written_at(event)))
        elif isinstance(event, Attributed):
            self._add(VERDICTS, (event.verdict.fault,))
        elif isinstance(event, ActionDone):
            self._add(ACTIONS, (event.action.kind.value, "done", str(event.dry_run).lower()))
        elif isinstance(event, ActionFailed):
            self._add(ACTIONS, (event.action.kind.value, "failed", "false"))
        if recovered(before, event, decision) and not getattr(event, "dry_run", False):
            self._add(RECOVERIES, (before.mode.value,))
        cause = refusal(before, decision)
        if cause is not None:
            self._add(REFUSED, (cause.value,))

    def polled(self, seconds: float, files_tailed: int) -> None:
        """One poll of the queue is done."""
        self._observe(POLL, seconds)
        self._set(FILES, files_tailed)

    def lines_read(self, lines: Iterable[LogLine]) -> None:
        """Log lines read from followed files (each with its newline)."""
        self._add(BYTES, (), float(sum(len(line.text.encode("utf-8", "replace")) + 1 for line in lines)))

    def slurm_error(self, exc: SlurmError) -> None:
        """A Slurm command failed."""
        self._add(SLURM_ERRORS, (command_label(exc.command),))

    def controlled(self, control: Control) -> None:
        """This agent's role under failover changed."""
        with self._lock:
            self._values[ROLE.name] = {(control.role.value, control.in_control): 1.0}

    def store_error(self, exc: StoreError) -> None:
        """A write to the state database failed."""
        causes = ((StoreFullError, "full"), (StoreLockedError, "locked"), (StoreCorruptError, "corrupt"))
        self._add(STORE_ERRORS, (next((cause for kind, cause in causes if isinstance(exc, kind)), "other"),))

    # ---- reading ------------------------------------------------------------------------

    def render(self) -> list[str]:
        """The exposition lines of every agent family."""
        with self._lock:
            lines: list[str] = []
            for family in AGENT_FAMILIES:
                lines += _header(family)
                if family.kind == "histogram":
                    lines += _histogram_lines(family, self._histograms[family.name])
                else:
                    for labels, value in sorted(self._values[family.name].items()):
                        lines.append(_sample(family.name, dict(zip(family.labels, labels, strict=True)), value))
            return lines


def store_lines(store: Store, now: float) -> list[str]:
    """The gauges read from the store at scrape time, with the read model's queries: jobs by state,
    refused specs, efficiency (per job, and over the window of `ajr kpi --since 24h`), last poll."""
    jobs = queries.job_summaries(store, now)
    counts: dict[tuple[str, str], int] = {}
    for job in jobs:
        key = (job.phase.value, job.slurm_state or "UNKNOWN")
        counts[key] = counts.get(key, 0) + 1
    lines = _header(MANAGED)
    lines += [_sample(MANAGED.name, {"phase": p, "slurm_state": s}, n) for (p, s), n in sorted(counts.items())]
    lines += _header(REFUSED_SPECS) + [_sample(REFUSED_SPECS.name, {}, len(queries.refused_jobs(store)))]
    lines += _header(EFFICIENCY)
    for job in sorted(jobs, key=lambda j: j.job_id):
        if job.efficiency is not None:
            labels = {"scope": "job", "job_id": str(job.job_id), "name": job.name, "user": job.user}
            lines.append(_sample(EFFICIENCY.name, labels, job.efficiency))
    overall = queries.kpi(store, KpiQuery(since=EFFICIENCY_WINDOW), now).total.efficiency
    if overall is not None:
        lines.append(_sample(EFFICIENCY.name, {"scope": "all", "job_id": "", "name": "", "user": ""}, overall))
    last_poll = queries.agent_status(store).last_poll_at
    lines += _header(LAST_POLL)
    if last_poll is not None:
        lines.append(_sample(LAST_POLL.name, {}, last_poll))
    by_cause = {"application": sum(j.app_requeues for j in jobs), "node": sum(j.node_requeues for j in jobs),
                "infrastructure": sum(j.infra_requeues for j in jobs)}  # fmt: skip
    lines += _header(REQUEUES_BY_CAUSE) + [_sample(REQUEUES_BY_CAUSE.name, {"budget": b}, n) for b, n in by_cause.items()]
    return lines + node_lines(store, now)


def node_lines(store: Store, now: float) -> list[str]:
    """The node ledger's gauges, from the read model of `ajr nodes`."""
    ledger = node_list(store, now, with_blames=False)
    lines = _header(LEMONS) + [_sample(LEMONS.name, {}, ledger.lemons)]
    for family, value in ((NODE_LEMON, lambda n: float(n.lemon)), (NODE_WITNESSES, lambda n: n.witnesses),
                          (NODE_EXCLUSIONS, lambda n: len(n.excluded_from))):  # fmt: skip
        lines += _header(family) + [_sample(family.name, {"node": n.node}, value(n)) for n in ledger.nodes]
    lines += _header(NODE_BLAMES)
    for node, basis, count in store.nodes.blame_counts():
        lines.append(_sample(NODE_BLAMES.name, {"node": node, "basis": basis}, count))
    lines += _header(NODE_ACTIONS)
    for n in ledger.nodes:
        lines += [_sample(NODE_ACTIONS.name, {"node": n.node, "kind": kind}, count)
                  for kind, count in (("drain", n.drains), ("reboot", n.reboots)) if count]
    return lines


def exposition(store: Store, metrics: Metrics | None, now: float) -> str:
    """The whole /metrics page: the agent's families (when it runs in this process) and the store's."""
    lines = (metrics.render() if metrics is not None else []) + store_lines(store, now)
    return "\n".join(lines) + "\n"


def _header(family: Family) -> list[str]:
    text = family.help.replace("\\", "\\\\").replace("\n", "\\n")
    return [f"# HELP {family.name} {text}", f"# TYPE {family.name} {family.kind}"]


def _histogram_lines(family: Family, histogram: _Histogram) -> list[str]:
    # Bounds as floats ("5.0"), as the official clients write them: queries match le by string.
    lines = [_sample(f"{family.name}_bucket", {"le": repr(float(bound))}, count)
             for bound, count in zip(histogram.bounds, histogram.counts, strict=True)]  # fmt: skip
    lines.append(_sample(f"{family.name}_bucket", {"le": "+Inf"}, histogram.count))
    lines.append(_sample(f"{family.name}_sum", {}, histogram.total))
    lines.append(_sample(f"{family.name}_count", {}, histogram.count))
    return lines


def _sample(name: str, labels: dict[str, str], value: float) -> str:
    if not labels:
        return f"{name} {_number(value)}"
    inner = ",".join(f'{key}="{_escape(val)}"' for key, val in labels.items())
    return f"{name}{{{inner}}} {_number(value)}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(int(value)) if float(value).is_integer() else repr(float(value))
