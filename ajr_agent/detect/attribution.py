"""Where a failure's fault lies: the node, the application, the shared infrastructure, or unknown.

The verdict rests on Slurm's states of the job's nodes (a node it lost), the failed
attempt's own anomaly lines (the root cause among them, not the cascade; which node
printed them, detect.origins) and, where the site keeps them on shared storage, the
kernel and system logs of the job's nodes in a window around the failure (`NVRM: Xid`
lines, for example). Everything here is pure: adapters.node_logs reads the node logs, and
runtime.verdicts does both off the decision loop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Sequence

from ajr_agent.detect.origins import Layout
from ajr_agent.detect.rules import RuleKind, RuleMatch, RuleSet, root_cause
from ajr_agent.detect.timestamps import parse_line_time
from ajr_agent.domain.jobs import NodeLogLine
from ajr_agent.domain.model import Basis, Fault, Verdict
from ajr_agent.domain.node_states import NodeState


@dataclass(frozen=True)
class Evidence:
    """One matched line: the rule match, the line, and where it came from."""

    match: RuleMatch
    line: str
    source: str  # a job log path, or "node <name>: <file>"
    node: str = ""  # the node whose own log it is, for node log lines


# Rules whose lines a healthy node prints about another one: `*** STEP 12.0 ON n1 CANCELLED AT ...
# DUE TO NODE FAILURE ***` comes from n1's slurmstepd when Slurm lost some other node of the job.
REPORTS_ANOTHER_NODE = frozenset({"slurm_node_failure"})
# Failures of the ranks' communication: when the other ranks' errors all name one peer, the
# fault is that peer's node. Not for other causes: a full file system names no peer's fault.
PEER_CATEGORIES = frozenset({"nccl", "fabric", "c10d"})


def verdict(job_evidence: Sequence[Evidence], node_evidence: Sequence[Evidence], layout: Layout,
            ended_state: str = "", slurm: Sequence[NodeState] = ()) -> Verdict:  # fmt: skip
    """Decide where the fault lies.

    Slurm's word comes first: a node of the job that Slurm has lost (DOWN, or its slurmd not
    answering) is the one at fault, since Slurm ends or requeues every job on a node it marks
    DOWN. A node's own log blaming that node is as good. Otherwise the root cause among the
    job's anomaly lines decides, and a node fault is pinned on the nodes that printed its lines
    (their prefixes, through the job's layout), else on the peer the other ranks' errors name,
    else on the only node of a one-node job. The cascade (the healthy ranks' timeouts) blames
    no one. When nothing singles out a node, the verdict names none.
    """
    lost = [s for s in slurm if s.lost and s.name in layout.nodes]
    blamed = [e for e in node_evidence if e.match.rule.fault is Fault.NODE]
    if lost or blamed:
        nodes = _in_order(layout, {s.name for s in lost} | {e.node for e in blamed})
        facts = tuple(f"slurm: {s.describe()}" for s in lost)
        if not blamed:
            return Verdict(Fault.NODE, nodes, f"node lost (Slurm: {lost[0].reason or lost[0].state})", facts,
                           Basis.SLURM)  # fmt: skip
        cause = root_cause([e.match for e in blamed])
        return Verdict(Fault.NODE, nodes, _describe(cause), (_evidence_lines(blamed) + facts)[:10], Basis.NODE_LOG)
    cause = root_cause([e.match for e in job_evidence])
    only = layout.nodes if len(layout.nodes) == 1 else ()
    if cause is None:
        if ended_state == "NODE_FAIL":
            return Verdict(Fault.NODE, only, "Slurm: NODE_FAIL", (), Basis.SLURM)
        return Verdict(Fault.UNKNOWN, (), "no anomaly line", ())
    layout = layout.learn(e.line for e in job_evidence)
    chosen = [e for e in job_evidence if e.match is cause]
    lines = _evidence_lines(chosen + [e for e in job_evidence if e not in chosen][:4])
    if cause.rule.fault is Fault.APPLICATION:
        return Verdict(cause.rule.fault, (), _describe(cause), lines)
    peers = {node for e in job_evidence for node in layout.peers(e.line)}
    if cause.rule.fault is Fault.NODE:
        printed = {origin for e in job_evidence if _own_node_fault(e) and (origin := layout.origin(e.line))}
        nodes = _in_order(layout, printed) or (_in_order(layout, peers) if len(peers) == 1 else only)
        return Verdict(Fault.NODE, nodes, _describe(cause), lines)
    if len(peers) == 1 and (cause.rule.category in PEER_CATEGORIES or cause.rule.cascade):
        # The ranks' collectives failed against one peer and nothing else is wrong: that peer's node.
        [peer] = peers
        return Verdict(Fault.NODE, (peer,), f"{_describe(cause)}; the peer named is {peer}", lines)
    return Verdict(cause.rule.fault, (), _describe(cause), lines)


def _own_node_fault(evidence: Evidence) -> bool:
    """The line reports a fault of the node that printed it (not the cascade, not a report on another node)."""
    rule = evidence.match.rule
    return rule.fault is Fault.NODE and not rule.cascade and rule.category not in REPORTS_ANOTHER_NODE


def _in_order(layout: Layout, nodes: set[str]) -> tuple[str, ...]:
    return tuple(n for n in layout.nodes if n in nodes)


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
