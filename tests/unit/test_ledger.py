"""The node ledger's rules over plain data: when a node becomes a lemon, on whose word, and when it is
trusted again; which lemons a job is kept away from; what AJR does to a lemon."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ajr_agent.domain import drains, ledger
from ajr_agent.domain.events import Attributed, NodeFacts
from ajr_agent.domain.ledger import Blame, NodeRecord
from ajr_agent.domain.model import ActionKind, Basis, Fault, ManagedJob, Verdict
from ajr_agent.domain.settings import LemonAction, Settings
from ajr_agent.domain.spec import ResumeMode

HOUR = 3600.0
DAY = 24 * HOUR
NOW = 1_800_000_000.0
RULES = Settings(lemon_jobs=3, lemon_blames=3, lemon_window=DAY, trust_after=DAY)


def blame(job_id: int, user: str = "alice", basis: Basis = Basis.NODE_LOG, at: float = NOW, attempt: int = 0,
          node: str = "gpu-7") -> Blame:  # fmt: skip
    return Blame(node, job_id, attempt, user, at, basis, "gpu_hardware (xid_79)")


def judged(blames: list[Blame], settings: Settings = RULES, state: NodeRecord | None = None) -> NodeRecord:
    return ledger.judge(state or NodeRecord("gpu-7"), blames, NOW, settings)


# ---- becoming a lemon ---------------------------------------------------------------------------


def test_a_node_blamed_by_its_own_log_in_three_jobs_becomes_a_lemon() -> None:
    assert judged([blame(1), blame(2, "bob")]).lemon_since is None
    assert judged([blame(1), blame(2, "bob"), blame(3, "bob")]).lemon_since == NOW


def test_slurm_s_own_word_counts_like_the_node_s_log() -> None:
    found = [blame(1, basis=Basis.SLURM), blame(2, basis=Basis.SLURM), blame(3, basis=Basis.NODE_LOG)]
    assert judged(found).lemon_since == NOW
    assert ledger.standing(NodeRecord("gpu-7"), found, NOW, RULES).trusted_evidence


def test_one_user_naming_a_node_in_his_own_job_logs_is_one_witness_however_many_jobs() -> None:
    # Anybody can write any node's name in his own log: his jobs together are one witness, so he
    # cannot get a node kept out of everybody's jobs.
    found = [blame(job, "mallory", Basis.JOB_LOG, at=NOW - job) for job in range(1, 20)]
    standing = ledger.standing(NodeRecord("gpu-7"), found, NOW, RULES)
    assert standing.witnesses == 1 and standing.recent == 1 and not standing.trusted_evidence
    assert judged(found).lemon_since is None


def test_job_logs_of_three_users_make_a_lemon_that_is_only_kept_out() -> None:
    found = [blame(1, "alice", Basis.JOB_LOG), blame(2, "bob", Basis.JOB_LOG), blame(3, "carol", Basis.JOB_LOG)]
    assert judged(found).lemon_since == NOW
    assert not ledger.standing(NodeRecord("gpu-7"), found, NOW, RULES).trusted_evidence


def test_a_user_s_job_logs_add_one_witness_to_the_trusted_blames() -> None:
    found = [blame(1, "bob"), *[blame(job, "mallory", Basis.JOB_LOG) for job in range(2, 9)]]
    assert ledger.standing(NodeRecord("gpu-7"), found, NOW, RULES).witnesses == 2
    assert judged(found).lemon_since is None
    assert judged([*found, blame(10, "carol")]).lemon_since == NOW


def test_three_blames_within_the_window_make_a_lemon_even_from_one_job() -> None:
    often = [blame(1, attempt=n, at=NOW - n * HOUR) for n in range(3)]
    assert judged(often, RULES.with_overrides(lemon_jobs=0)).lemon_since == NOW
    spread = [blame(1, attempt=n, at=NOW - n * 0.6 * DAY) for n in range(3)]
    assert judged(spread, RULES.with_overrides(lemon_jobs=0)).lemon_since is None


def test_the_rules_can_be_turned_off() -> None:
    found = [blame(job, f"user{job}") for job in range(1, 6)]
    assert judged(found, RULES.with_overrides(lemon_jobs=0, lemon_blames=0)).lemon_since is None


def test_old_blames_do_not_count_once_the_node_went_trust_after_without_one() -> None:
    old = [blame(1, at=NOW - 10 * DAY), blame(2, at=NOW - 9 * DAY)]
    assert judged([*old, blame(3)]).lemon_since is None
    # Blames that follow each other within trust_after do make a record together.
    chain = [blame(1, at=NOW - 1.5 * DAY), blame(2, at=NOW - 0.7 * DAY), blame(3)]
    assert judged(chain).lemon_since == NOW


def test_blames_before_the_node_was_last_trusted_do_not_count() -> None:
    state = NodeRecord("gpu-7", counted_since=NOW - HOUR, trusted_at=NOW - HOUR)
    found = [blame(1, at=NOW - 2 * HOUR), blame(2, at=NOW - 2 * HOUR), blame(3)]
    assert judged(found, state=state).lemon_since is None


def test_a_lemon_stays_one_until_trusted_again() -> None:
    state = NodeRecord("gpu-7", lemon_since=NOW - HOUR)
    assert judged([], state=state).lemon_since == NOW - HOUR


# ---- trusted again --------------------------------------------------------------------------------


def test_a_lemon_back_in_service_for_trust_after_without_blame_is_trusted_again() -> None:
    lemon = NodeRecord("gpu-7", lemon_since=NOW - 3 * DAY, in_service=True, in_service_since=NOW - 2 * DAY)
    last = [blame(1, at=NOW - 3 * DAY)]
    assert ledger.trust_due(lemon, last, NOW, RULES)
    # Not while it is out of service (drained, down, rebooting), nor soon after it came back.
    assert not ledger.trust_due(replace(lemon, in_service=False, in_service_since=None), last, NOW, RULES)
    assert not ledger.trust_due(replace(lemon, in_service_since=NOW - HOUR), last, NOW, RULES)
    # A new blame starts the wait again.
    assert not ledger.trust_due(lemon, [*last, blame(2, at=NOW - HOUR)], NOW, RULES)
    # A node that is no lemon has nothing to be trusted again for.
    assert not ledger.trust_due(replace(lemon, lemon_since=None), last, NOW, RULES)


def test_trusting_again_clears_the_record() -> None:
    lemon = NodeRecord("gpu-7", lemon_since=NOW - 3 * DAY, acted_at=NOW - 3 * DAY)
    trusted = ledger.restore(lemon, NOW, "operator:root")
    assert trusted.lemon_since is None and trusted.acted_at is None
    assert trusted.counted_since == NOW and trusted.trusted_at == NOW and trusted.trusted_by == "operator:root"
    assert judged([blame(1, at=NOW - 1), blame(2, at=NOW - 1), blame(3, at=NOW - 1)], state=trusted).lemon_since is None


def test_coming_back_into_service_is_when_the_wait_starts() -> None:
    out = ledger.observe_service(NodeRecord("gpu-7"), False, NOW - DAY)
    assert not out.in_service and out.in_service_since is None
    back = ledger.observe_service(out, True, NOW)
    assert back.in_service and back.in_service_since == NOW
    assert ledger.observe_service(back, True, NOW + HOUR) == back


# ---- which lemons a job is kept away from ---------------------------------------------------------------


def test_lemons_are_kept_out_only_where_the_partition_keeps_enough_nodes() -> None:
    members = ("n1", "n2", "n3", "n4")
    assert ledger.keep_out(["n2", "x9"], members, set(), set(), 1) == ("n2",)
    assert ledger.keep_out(["n1", "n2", "n3"], members, set(), set(), 2) == ("n1", "n2")
    # Nodes out of service and nodes already excluded are not there to be kept.
    assert ledger.keep_out(["n1", "n2"], members, {"n3"}, {"n4"}, 1) == ("n1",)
    # A lemon already out of service costs the job nothing: kept out all the same.
    assert ledger.keep_out(["n3"], members, {"n3"}, {"n1", "n2"}, 1) == ("n3",)
    assert ledger.keep_out(["n1"], (), set(), set(), 1) == ()


# ---- what AJR does to a lemon ------------------------------------------------------------------------------


def job() -> ManagedJob:
    return ManagedJob(7, "train", "alice", 1000, ResumeMode.REQUEUE, 3, 3, partition="gpu", nodes="gpu-7")


def verdict_on(basis: Basis, act_on: tuple[str, ...] = ()) -> Attributed:
    found = Verdict(Fault.NODE, ("gpu-7",), "gpu_hardware (xid_79)", ("node gpu-7: kern.log: NVRM: Xid 79",), basis)
    facts = NodeFacts((("gpu", ("gpu-1", "gpu-2", "gpu-7")),), frozenset())
    return Attributed(7, 0, NOW, found, ("gpu-7",), facts, act_on=act_on)


@pytest.mark.parametrize(("action", "kind"), [(LemonAction.DRAIN, ActionKind.DRAIN),
                                              (LemonAction.REBOOT, ActionKind.REBOOT)])  # fmt: skip
def test_a_lemon_on_trusted_evidence_is_drained_or_rebooted_as_the_site_asks(action: LemonAction,
                                                                             kind: ActionKind) -> None:  # fmt: skip
    acts, notes = drains.drain_actions(job(), verdict_on(Basis.NODE_LOG, ("gpu-7",)), Settings(lemon_action=action))
    assert [(a.kind, a.nodes) for a in acts] == [(kind, "gpu-7")]
    assert acts[0].reason.startswith("ajr: lemon: job 7 gpu_hardware (xid_79)")


def test_a_lemon_is_only_kept_out_unless_the_site_asks() -> None:
    assert drains.drain_actions(job(), verdict_on(Basis.NODE_LOG, ("gpu-7",)), Settings()) == ((), ())


def test_a_lemon_action_keeps_the_partition_s_last_nodes_and_the_hourly_budget() -> None:
    settings = Settings(lemon_action=LemonAction.REBOOT, drain_keep_nodes=3)
    acts, notes = drains.drain_actions(job(), verdict_on(Basis.NODE_LOG, ("gpu-7",)), settings)
    assert acts == () and "one of the last nodes in service" in notes[0].text
    over = replace(verdict_on(Basis.NODE_LOG, ("gpu-7",)), drains_last_hour=2)
    acts, notes = drains.drain_actions(job(), over, Settings(lemon_action=LemonAction.DRAIN))
    assert acts == () and "already 2 drains" in notes[0].text


def test_a_job_log_alone_never_drains() -> None:
    settings = Settings(drain_faulty_nodes=True)
    acts, notes = drains.drain_actions(job(), verdict_on(Basis.JOB_LOG), settings)
    assert acts == () and "rests on the job's own log" in notes[0].text
    trusted, _ = drains.drain_actions(job(), verdict_on(Basis.SLURM), settings)
    assert [(a.kind, a.nodes) for a in trusted] == [(ActionKind.DRAIN, "gpu-7")]


def test_only_exclusions_made_before_the_node_was_trusted_again_are_taken_back() -> None:
    records = {"gpu-7": NodeRecord("gpu-7", trusted_at=NOW), "gpu-8": NodeRecord("gpu-8", lemon_since=NOW - DAY)}
    exclusions = [ledger.Exclusion("gpu-7", 1, NOW - HOUR), ledger.Exclusion("gpu-7", 2, NOW + 1),
                  ledger.Exclusion("gpu-7", 3, NOW - HOUR, taken_back_at=NOW), ledger.Exclusion("gpu-8", 1, NOW - HOUR)]
    assert ledger.to_take_back(exclusions, records) == {1: ("gpu-7",)}
