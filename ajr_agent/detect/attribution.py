"""Where a failure's fault lies: the node, the application, the shared infrastructure, or unknown.

The verdict rests on the failed attempt's own anomaly lines (the root cause among them,
not the cascade) and, where the site keeps them on shared storage, the kernel and
system logs of the job's nodes in a window around the failure (`NVRM: Xid` lines, for
example). The decision is a pure function; reading node logs is a thin, bounded adapter
with a deadline, so a slow file system delays a release by seconds, never strands it.
"""

from __future__ import annotations

import logging
import os
import re
import time
from datetime import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ajr_agent.domain.settings import Settings
from ajr_agent.detect.timestamps import parse_line_time
from ajr_agent.domain.model import Attributed, ManagedJob, Verdict
from ajr_agent.detect.rules import Fault, RuleKind, RuleMatch, RuleSet, root_cause
from ajr_agent.adapters.slurm import SlurmError, SlurmGateway
from ajr_agent.domain.hostlist import expand_hostlist

log = logging.getLogger(__name__)

# How much of each node log file is read, from its end: enough for minutes of kernel
# messages, bounded whatever the file's size.
TAIL_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Evidence:
    """One matched line: the rule match, the line, and where it came from."""

    match: RuleMatch
    line: str
    source: str  # a job log path, or "node <name>: <file>"
    node: str = ""  # the node whose own log it is, for node log lines


def verdict(job_evidence: Sequence[Evidence], node_evidence: Sequence[Evidence], job_nodes: Sequence[str],
            ended_state: str = "") -> Verdict:  # fmt: skip
    """Decide where the fault lies.

    A node's own log blaming that node wins: it names the node. Otherwise the root cause
    among the job's anomaly lines decides; a node fault is pinned on the node named in
    the line, or on the only node of a one-node job. A job Slurm ended NODE_FAIL with no
    line to go on is a node fault of unknown node.
    """
    blamed = [e for e in node_evidence if e.match.rule.fault is Fault.NODE]
    if blamed:
        cause = root_cause([e.match for e in blamed])
        nodes = tuple(sorted({e.node for e in blamed}))
        lines = _evidence_lines(blamed)
        return Verdict("node", nodes, _describe(cause), lines)
    cause = root_cause([e.match for e in job_evidence])
    if cause is None:
        if ended_state == "NODE_FAIL":
            return Verdict("node", tuple(job_nodes) if len(job_nodes) == 1 else (), "Slurm: NODE_FAIL", ())
        return Verdict("unknown", (), "no anomaly line", ())
    chosen = [e for e in job_evidence if e.match is cause]
    fault = cause.rule.fault.value
    nodes: tuple[str, ...] = ()
    if cause.rule.fault is Fault.NODE:
        named = tuple(n for n in job_nodes if any(_names(e.line, n) for e in chosen))
        nodes = named or (tuple(job_nodes) if len(job_nodes) == 1 else ())
    return Verdict(fault, nodes, _describe(cause), _evidence_lines(chosen + [e for e in job_evidence if e not in chosen][:4]))


def _names(line: str, node: str) -> bool:
    """The line names the node as a word of its own (node-1 is not node-10)."""
    start = line.find(node)
    while start != -1:
        end = start + len(node)
        before = line[start - 1] if start else " "
        after = line[end] if end < len(line) else " "
        if not (before.isalnum() or before in "-_") and not (after.isalnum() or after in "-_"):
            return True
        start = line.find(node, start + 1)
    return False


def _describe(match: RuleMatch | None) -> str:
    if match is None:
        return "unknown"
    return f"{match.rule.category or match.rule.kind.value} ({match.rule.name})"


def _evidence_lines(evidence: Iterable[Evidence]) -> tuple[str, ...]:
    return tuple(f"{e.source}: {e.line[:500]}" for e in evidence)[:10]


def excludable(nodes: Sequence[str], already: Sequence[str], partition_nodes: Sequence[str]) -> tuple[tuple[str, ...], str]:
    """The verdict's nodes AJR may exclude, and why some are not.

    Excluding every node of the job's partition would leave it unable to run at all: then
    nothing is excluded and the note says so.
    """
    new = tuple(n for n in nodes if n not in already)
    if partition_nodes and set(partition_nodes) <= set(already) | set(new):
        return (), "not excluded: they are the last nodes of the job's partition"
    return new, ""


class Attributor:
    """Gathers what a verdict needs (node logs, partition members) and returns the Attributed event."""

    def __init__(self, settings: Settings, rules: RuleSet, gateway: SlurmGateway) -> None:
        self.settings = settings
        self.rules = rules
        self.gateway = gateway

    def attribute(self, job: ManagedJob, attempt: int, evidence: Sequence[Evidence], ended_state: str,
                  failed_at: float, now: float) -> tuple[Attributed, list[str]]:  # fmt: skip
        """The verdict on `attempt` of `job` and notes on what limited it."""
        notes: list[str] = []
        nodes = expand_hostlist(job.nodes) if job.nodes else []
        node_evidence: list[Evidence] = []
        if self.settings.node_log_dir and nodes:
            deadline = time.monotonic() + self.settings.attribution_timeout
            node_evidence, cut = read_node_logs(self.settings.node_log_dir, nodes, self.rules, failed_at,
                                                self.settings.attribution_window, deadline)  # fmt: skip
            if cut:
                notes.append(f"attribution cut short after {self.settings.attribution_timeout:g} s of reading node logs")
        found = verdict(evidence, node_evidence, nodes, ended_state)
        exclude: tuple[str, ...] = ()
        if found.fault == "node" and found.nodes and self.settings.exclude_faulty_nodes:
            try:
                members = self.gateway.partition_nodes().get(job.partition, [])
            except SlurmError as exc:
                members = []
                notes.append(f"partition {job.partition} unknown ({exc}); excluding without the last-node check")
            exclude, why = excludable(found.nodes, job.excluded_nodes.split(","), members)
            if why:
                notes.append(f"{', '.join(found.nodes)} {why}")
        return Attributed(job.job_id, attempt, now, found, exclude), notes


def read_node_logs(template: str, nodes: Sequence[str], rules: RuleSet, around: float, window: float,
                   deadline: float) -> tuple[list[Evidence], bool]:  # fmt: skip
    """Anomaly lines of the nodes' own logs within `window` seconds of `around`.

    `template` names a node's log directory, e.g. `/shared/syslog/{node}`; every regular
    file in it is read from its last TAIL_BYTES. Returns the evidence and whether the
    deadline cut the reading short.
    """
    found: list[Evidence] = []
    for node in nodes:
        directory = Path(template.format(node=node))
        try:
            files = sorted(e.path for e in os.scandir(directory) if e.is_file(follow_symlinks=False))
        except OSError as exc:
            log.debug("node log directory %s unreadable: %s", directory, exc)
            continue
        for path in files:
            if time.monotonic() > deadline:
                return found, True
            for line in _tail_lines(path):
                when = node_line_time(line, around)
                if when is None or abs(when - around) > window:
                    continue
                for match in rules.match(line):
                    if match.rule.kind is RuleKind.ANOMALY:
                        found.append(Evidence(match, line, f"node {node}: {Path(path).name}", node))
    return found, False


def _tail_lines(path: str) -> list[str]:
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - TAIL_BYTES))
            data = handle.read(TAIL_BYTES)
    except OSError as exc:
        log.debug("node log %s unreadable: %s", path, exc)
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    # The first line of a tail is most likely cut in the middle.
    return lines[1:] if size > TAIL_BYTES else lines


_SYSLOG_TIME = re.compile(r"^([A-Z][a-z]{2}) +(\d{1,2}) (\d{2}):(\d{2}):(\d{2})\b")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def node_line_time(line: str, around: float) -> float | None:
    """When a node log line was written: an ISO-8601 stamp (journald, RFC 3339 rsyslog) or a
    classic syslog one (`Nov 27 01:00:00`, its year taken from the failure's). A line with
    neither (dmesg's seconds since boot) cannot be placed, so it is no evidence: an old Xid
    must not blame a node that has since been repaired.
    """
    stamped = parse_line_time(line)
    if stamped is not None:
        return stamped
    found = _SYSLOG_TIME.match(line)
    if found is None or found.group(1) not in _MONTHS:
        return None
    month, day, hour, minute, second = _MONTHS.index(found.group(1)) + 1, *map(int, found.groups()[1:])
    year = datetime.fromtimestamp(around).year
    try:
        when = datetime(year, month, day, hour, minute, second).timestamp()
    except ValueError:
        return None
    # A December line read in January belongs to the year before.
    return datetime(year - 1, month, day, hour, minute, second).timestamp() if when > around + 86400 else when
