"""The node ledger's rules: when the failures blamed on a node make it a lemon, and when it is trusted again.

A lemon is kept out of every managed job's next attempts, and may be drained or rebooted
(drains.drain_actions). Who may make a node a lemon is the point of these rules:

- A node's own log under node_log_dir and Slurm's own word (NODE_FAIL, a node it lost) are
  evidence AJR trusts: users cannot write them. Each job blamed on such evidence is a
  witness, each such failure a blame.
- A job's log is its user's: he can name any node in it, his own or another user's. So one
  user's job-log blames are ONE witness and one blame, however many of his jobs name the
  node: nobody gets a node kept out of everybody's jobs by writing its name. Job logs of
  several users (or a user's logs beside trusted evidence) add up, each user once.
  A job-log verdict still keeps the node out of the job whose log it is (the verdict's own
  exclusion); and nothing is drained or rebooted on job logs alone.

A node is a lemon once its record has `lemon_jobs` witnesses, or `lemon_blames` blames within
`lemon_window` seconds. Its record is the blames since it was last trusted, and only those
that follow each other within `trust_after`: a node that went that long without blame starts
afresh. A lemon back in service for `trust_after` seconds without new blame is trusted again
(or at once, when an operator forgives it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Collection, Iterable, Sequence

from ajr_agent.domain.model import Basis
from ajr_agent.domain.settings import Settings

# What users cannot write: evidence on which AJR may act beyond the user's own job.
TRUSTED_BASES = frozenset({Basis.NODE_LOG, Basis.SLURM})


@dataclass(frozen=True)
class Blame:
    """One failed attempt a verdict put on a node, and what the verdict rested on."""

    node: str
    job_id: int
    attempt: int
    user: str
    at: float
    basis: Basis
    cause: str

    @property
    def trusted(self) -> bool:
        """Resting on evidence no user wrote."""
        return self.basis in TRUSTED_BASES


@dataclass(frozen=True)
class NodeRecord:
    """What the ledger holds of a node besides its blames."""

    node: str
    lemon_since: float | None = None  # None: no lemon
    counted_since: float = 0.0  # blames before it do not count: the node was trusted again then
    in_service: bool = True  # as AJR last saw it (not down, drained or rebooting)
    in_service_since: float | None = None  # when AJR saw it come (back) into service; None: out, or not yet seen
    trusted_at: float | None = None  # when it was last trusted again
    trusted_by: str = ""  # "ajr" after trust_after in service without blame, else the operator who forgave it
    acted_at: float | None = None  # when AJR drained or rebooted it as a lemon (since it last became one)


@dataclass(frozen=True)
class Standing:
    """A node's record as the rules count it."""

    node: str
    blames: tuple[Blame, ...]  # the record: what counts now
    witnesses: int  # jobs on trusted evidence, plus each user whose job logs alone blame it
    recent: int  # blames within lemon_window, one user's job-log blames counted once
    trusted_evidence: bool  # some blame of the record rests on evidence AJR trusts


def record(state: NodeRecord, blames: Iterable[Blame], now: float, settings: Settings) -> tuple[Blame, ...]:
    """The blames that count: since the node was last trusted, back to its last gap of trust_after without one."""
    counted = sorted((b for b in blames if b.at >= state.counted_since), key=lambda b: b.at)
    start, later = len(counted), now
    while start and later - counted[start - 1].at < settings.trust_after:
        start -= 1
        later = counted[start].at
    return tuple(counted[start:])


def _witnesses(blames: Sequence[Blame], per_failure: bool) -> int:
    """Trusted blames by job (or by failure), job-log blames by user, each user once."""
    trusted = {(b.job_id, b.attempt if per_failure else 0) for b in blames if b.trusted}
    trusted_jobs = {job for job, _ in trusted}
    users = {b.user for b in blames if not b.trusted and b.job_id not in trusted_jobs}
    return len(trusted) + len(users)


def standing(state: NodeRecord, blames: Iterable[Blame], now: float, settings: Settings) -> Standing:
    """The node's record, its witnesses and recent blames."""
    counted = record(state, blames, now, settings)
    recent = [b for b in counted if b.at > now - settings.lemon_window]
    return Standing(state.node, counted, _witnesses(counted, False), _witnesses(recent, True),
                    any(b.trusted for b in counted))  # fmt: skip


def judge(state: NodeRecord, blames: Iterable[Blame], now: float, settings: Settings) -> NodeRecord:
    """The node's state after its record is counted: a lemon from now on, when the record makes one."""
    if state.lemon_since is not None:
        return state
    found = standing(state, blames, now, settings)
    by_jobs = 0 < settings.lemon_jobs <= found.witnesses
    by_blames = 0 < settings.lemon_blames <= found.recent
    return replace(state, lemon_since=now) if by_jobs or by_blames else state


def trust_due(state: NodeRecord, blames: Iterable[Blame], now: float, settings: Settings) -> bool:
    """A lemon back in service for trust_after seconds without new blame is to be trusted again."""
    if state.lemon_since is None or not state.in_service or state.in_service_since is None:
        return False
    last = max((b.at for b in blames if b.at >= state.counted_since), default=0.0)
    return now - max(state.in_service_since, state.lemon_since, last) >= settings.trust_after


def restore(state: NodeRecord, now: float, by: str) -> NodeRecord:
    """Trusted again (by AJR, or forgiven by an operator): no lemon, and its record starts afresh."""
    return replace(state, lemon_since=None, counted_since=now, trusted_at=now, trusted_by=by, acted_at=None)


def observe_service(state: NodeRecord, in_service: bool, now: float) -> NodeRecord:
    """The node as Slurm shows it now: the wait for trust starts when it comes back into service."""
    if in_service == state.in_service and (state.in_service_since is not None or not in_service):
        return state
    return replace(state, in_service=in_service, in_service_since=now if in_service else None)


@dataclass(frozen=True)
class Exclusion:
    """A node AJR put in a job's ExcNodeList (for a verdict or as a lemon), and when AJR took it back."""

    node: str
    job_id: int
    at: float
    taken_back_at: float | None = None


@dataclass(frozen=True)
class Forgiveness:
    """An operator's `ajr node forgive NODE`, for the agent to apply."""

    id: int
    node: str
    by: str
    at: float


def to_take_back(exclusions: Iterable[Exclusion], records: dict[str, NodeRecord]) -> dict[int, tuple[str, ...]]:
    """By job, the nodes whose exclusion AJR made before the node was trusted again, not yet taken back."""
    found: dict[int, list[str]] = {}
    for excluded in exclusions:
        trusted = records.get(excluded.node, NodeRecord(excluded.node)).trusted_at
        if excluded.taken_back_at is None and trusted is not None and excluded.at < trusted:
            found.setdefault(excluded.job_id, []).append(excluded.node)
    return {job: tuple(sorted(nodes)) for job, nodes in found.items()}


def keep_out(lemons: Iterable[str], members: Collection[str], out_of_service: Collection[str],
             excluded: Collection[str], keep: int) -> tuple[str, ...]:  # fmt: skip
    """The lemons of a job's partition to keep out of its next attempt, never leaving fewer than
    `keep` of the partition's nodes in service and not excluded (a lemon out of service or already
    excluded costs the job nothing)."""
    free = [m for m in members if m not in out_of_service and m not in excluded]
    chosen: list[str] = []
    for node in sorted(set(lemons)):
        if node not in members:
            continue
        if node in free:
            if len(free) - 1 < keep:
                continue
            free.remove(node)
        chosen.append(node)
    return tuple(chosen)
