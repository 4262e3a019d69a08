"""Where a failure's fault lies: the node, the application, the shared infrastructure, or unknown.

The verdict rests on the failed attempt's own anomaly lines (the root cause among them,
not the cascade) and, where the site keeps them on shared storage, the kernel and
system logs of the job's nodes in a window around the failure (`NVRM: Xid` lines, for
example). Everything here is pure: adapters.node_logs reads the node logs, and
runtime.verdicts does both off the decision loop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Sequence

from ajr_agent.detect.rules import RuleKind, RuleMatch, RuleSet, root_cause
from ajr_agent.detect.timestamps import parse_line_time
from ajr_agent.domain.jobs import NodeLogLine
from ajr_agent.domain.model import Basis, Fault, Verdict


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
        return Verdict(Fault.NODE, nodes, _describe(cause), lines, Basis.NODE_LOG)
    cause = root_cause([e.match for e in job_evidence])
    if cause is None:
        if ended_state == "NODE_FAIL":
            return Verdict(Fault.NODE, tuple(job_nodes) if len(job_nodes) == 1 else (), "Slurm: NODE_FAIL", (),
                           Basis.SLURM)  # fmt: skip
        return Verdict(Fault.UNKNOWN, (), "no anomaly line", ())
    chosen = [e for e in job_evidence if e.match is cause]
    fault = cause.rule.fault
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


def node_evidence(lines: Sequence[NodeLogLine], rules: RuleSet, around: float, window: float) -> list[Evidence]:
    """The anomaly lines of the nodes' own logs written within `window` seconds of `around`."""
    found: list[Evidence] = []
    for line in lines:
        when = node_line_time(line.text, around)
        if when is None or abs(when - around) > window:
            continue
        for match in rules.match(line.text):
            if match.rule.kind is RuleKind.ANOMALY:
                found.append(Evidence(match, line.text, f"node {line.node}: {line.file}", line.node))
    return found


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
