"""The in-memory Slurm: the whole gateway protocol, Slurm's answers to what AJR asks, scripted failures."""

from __future__ import annotations


import inspect
import logging
import os
import threading
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest

from ajr_agent.adapters.slurm.calls import Call, Operation, SlurmAnswer
from ajr_agent.adapters.slurm.commands import CommandGateway
from ajr_agent.adapters.slurm.errors import SlurmError
from ajr_agent.adapters.slurm.gateway import SlurmGateway
from ajr_agent.adapters.slurm.memory import REQUEUE_WAIT, MemorySlurm, MemorySlurmError
from ajr_agent.adapters.slurm.pyslurm_backend import PyslurmGateway
from ajr_agent.adapters.store import Store
from ajr_agent.domain.jobs import JobSnapshot
from ajr_agent.domain.settings import Settings
from ajr_agent.runtime.agent import Agent, load_rules
from ajr_agent.runtime.inline_pool import InlinePool

T0 = 1_000_000.0
HELD = "job requeued in held state"


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def job(job_id: int = 7, **changes: object) -> JobSnapshot:
    base = JobSnapshot(
        job_id=job_id, state="RUNNING", user_id=1000, user="alice", restart_count=0, start_time=T0 - 60,
        end_time=None, batch=True, requeueable=True, nodes="n1", reason="None", work_dir="/runs", stdout="",
        name="train", comment='{"APS": {}}', partition="gpu",
    )  # fmt: skip
    return replace(base, **changes)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def slurm(clock: Clock) -> MemorySlurm:
    return MemorySlurm(jobs={7: job()}, partitions={"gpu": ["n1", "n2", "n3"], "empty": []}, clock=clock)


def refusal(call: object) -> SlurmError:
    """The SlurmError a request raised."""
    with pytest.raises(SlurmError) as caught:
        call()  # type: ignore[operator]
    return caught.value


# ---- the protocol -------------------------------------------------------------------------------


def protocol_members() -> list[str]:
    # Protocol adds its own dunder methods; the protocol's members are the rest.
    methods = [name for name, value in vars(SlurmGateway).items() if inspect.isfunction(value) and name[0] != "_"]
    return sorted(methods + list(SlurmGateway.__annotations__))


def test_the_protocol_has_what_the_agent_uses() -> None:
    assert protocol_members() == sorted(["backend", *(op.value for op in Operation)])


@pytest.mark.parametrize("gateway", [MemorySlurm, CommandGateway, PyslurmGateway])
@pytest.mark.parametrize("name", protocol_members())
def test_every_gateway_has_every_protocol_member_with_its_signature(gateway: type, name: str) -> None:
    assert hasattr(gateway, name), f"{gateway.__name__} lacks {name}"
    if name == "backend":
        assert isinstance(getattr(gateway, name), str)
        return
    expected = inspect.signature(getattr(SlurmGateway, name), eval_str=True)
    assert inspect.signature(getattr(gateway, name), eval_str=True) == expected


def test_a_memory_slurm_is_a_slurm_gateway(slurm: MemorySlurm) -> None:
    gateway: SlurmGateway = slurm  # what mypy checks; the test above checks it at run time
    assert gateway.backend == "memory" and gateway.version() == "22.05.8"


# ---- requeue, hold and release ----------------------------------------------------------------------


def test_requeuehold_of_a_running_job_makes_it_pending_held_with_one_more_restart(slurm: MemorySlurm) -> None:
    slurm.requeue_hold(7)
    requeued = slurm.jobs[7]
    assert (requeued.state, requeued.reason, requeued.restart_count) == ("PENDING", HELD, 1)
    # squeue shows a pending job's StartTime: the requeue's wait, and no end or nodes.
    assert requeued.start_time == T0 + REQUEUE_WAIT and requeued.end_time is None and requeued.nodes == ""
    assert slurm.calls == [Call(Operation.REQUEUE_HOLD, 7, {})]


def test_requeuehold_of_a_pending_job_is_refused_with_slurms_words(slurm: MemorySlurm) -> None:
    slurm.requeue_hold(7)
    error = refusal(lambda: slurm.requeue_hold(7))
    assert error.reason == "Job is pending execution for job 7" and not error.transient
    assert error.command == ["scontrol", "requeuehold", "7"]
    assert slurm.jobs[7].restart_count == 1 and len(slurm.calls) == 2, "refused, but asked"


@pytest.mark.parametrize(
    ("changes", "answer"),
    [({"requeueable": False}, SlurmAnswer.NOT_REQUEUEABLE), ({"batch": False}, SlurmAnswer.BATCH_ONLY),
     ({"state": "PENDING"}, SlurmAnswer.PENDING)],
)  # fmt: skip
@pytest.mark.parametrize("operation", [Operation.REQUEUE_HOLD, Operation.REQUEUE])
def test_a_job_slurm_may_not_requeue_is_left_as_it_is(slurm: MemorySlurm, changes: dict[str, object],
                                                      answer: SlurmAnswer, operation: Operation) -> None:  # fmt: skip
    slurm.jobs[7] = before = job(**changes)  # type: ignore[arg-type]
    error = refusal(lambda: getattr(slurm, operation.value)(7))
    assert error.reason == f"{answer} for job 7" and slurm.jobs[7] == before


def test_an_ended_job_can_be_requeued_and_keeps_its_reason_unless_held(slurm: MemorySlurm) -> None:
    slurm.jobs[8] = job(8, state="FAILED", reason="NonZeroExitCode", end_time=T0 - 1)
    slurm.jobs[9] = job(9, state="CANCELLED", end_time=T0 - 1)
    slurm.requeue(8)
    slurm.requeue_hold(9)
    assert (slurm.jobs[8].state, slurm.jobs[8].reason, slurm.jobs[8].restart_count) == ("PENDING", "NonZeroExitCode", 1)
    assert (slurm.jobs[9].state, slurm.jobs[9].reason, slurm.jobs[9].end_time) == ("PENDING", HELD, None)


@pytest.mark.parametrize("operation", [Operation.REQUEUE_HOLD, Operation.REQUEUE, Operation.UPDATE])
def test_an_unknown_job_is_an_invalid_job_id(slurm: MemorySlurm, operation: Operation) -> None:
    error = refusal(lambda: getattr(slurm, operation.value)(99))
    assert error.reason == "Invalid job id specified for job 99" and not error.transient


def test_release_answers_through_slurm_suspend_too(slurm: MemorySlurm) -> None:
    assert refusal(lambda: slurm.release(99)).reason == (
        "Invalid job id specified for job 99\nslurm_suspend error: Invalid job id specified"
    )
    slurm.jobs[8] = job(8, state="COMPLETED", end_time=T0)
    assert refusal(lambda: slurm.release(8)).reason == (
        "Job has already finished for job 8\nslurm_suspend error: Job has already finished"
    )


@pytest.mark.parametrize(("version", "separator"), [("22.05.8", ": "), ("24.11.5", ": "), ("25.05.0", ":"),
                                                    ("26.05.5", ":")])  # fmt: skip
def test_scontrol_from_25_05_puts_no_space_after_an_errors_context(version: str, separator: str) -> None:
    slurm = MemorySlurm(jobs={}, slurm_version=version)
    assert refusal(lambda: slurm.release(99)).reason.endswith(f"slurm_suspend error{separator}Invalid job id specified")


def test_release_lifts_the_hold_and_the_scheduler_shows_the_wait(slurm: MemorySlurm, clock: Clock) -> None:
    slurm.requeue_hold(7)
    slurm.jobs[8] = job(8, state="PENDING", reason="JobHeldUser", start_time=None)
    for job_id in (7, 8):
        slurm.release(job_id)
    assert [(j.state, j.reason) for j in slurm.list_jobs()] == [("PENDING", "None")] * 2
    slurm.schedule()
    assert slurm.jobs[7].reason == "BeginTime", "the requeue's wait"
    assert slurm.jobs[8].reason == "None", "a user hold without a wait: only resources to wait for"
    slurm.schedule(at=T0 + REQUEUE_WAIT)
    assert slurm.jobs[7].reason == "None", "the wait is over"


def test_release_of_a_running_or_unheld_job_is_no_error_and_changes_nothing(slurm: MemorySlurm) -> None:
    running = slurm.jobs[7]
    slurm.release(7)
    slurm.jobs[8] = pending = job(8, state="PENDING", reason="Resources", start_time=None)
    slurm.release(8)
    assert slurm.jobs[7] == running and slurm.jobs[8] == pending


def test_a_job_that_is_slow_to_stop_shows_completing_until_its_requeue_finishes(slurm: MemorySlurm,
                                                                                clock: Clock) -> None:  # fmt: skip
    slurm.slow_to_stop.add(7)
    slurm.requeue_hold(7)
    completing = slurm.jobs[7]
    # The new restart count with the old start time: not a new attempt.
    assert (completing.state, completing.restart_count, completing.start_time) == ("COMPLETING", 1, T0 - 60)
    assert not completing.running and not completing.ended
    assert refusal(lambda: slurm.requeue_hold(7)).reason == "Job is pending execution for job 7"
    clock.now += 3
    pending = slurm.finish_requeue(7)
    assert (pending.state, pending.reason, pending.start_time, pending.nodes) == ("PENDING", HELD,
                                                                                  T0 + 3 + REQUEUE_WAIT, "")  # fmt: skip
    with pytest.raises(MemorySlurmError, match="not COMPLETING"):
        slurm.finish_requeue(7)


# ---- update ----------------------------------------------------------------------------------------


def test_start_time_clears_the_requeue_wait(slurm: MemorySlurm, clock: Clock) -> None:
    slurm.requeue_hold(7)
    slurm.update(7, StartTime="now+2")
    assert slurm.jobs[7].start_time == T0 + 2 and slurm.jobs[7].reason == HELD, "still held"
    slurm.release(7)
    slurm.schedule()
    assert slurm.jobs[7].reason == "BeginTime"
    slurm.update(7, StartTime="now+2")
    assert slurm.jobs[7].reason == "None"
    slurm.update(7, StartTime="now+3minutes")
    assert slurm.jobs[7].start_time == T0 + 180
    slurm.update(7, StartTime="2026-01-02T03:04:05")
    assert slurm.jobs[7].start_time == datetime(2026, 1, 2, 3, 4, 5).timestamp()
    assert slurm.calls[-1] == ("update", 7, {"StartTime": "2026-01-02T03:04:05"})


def test_a_start_time_scontrol_cannot_read_is_refused(slurm: MemorySlurm) -> None:
    slurm.requeue_hold(7)
    error = refusal(lambda: slurm.update(7, StartTime="soon"))
    assert error.reason == "Invalid time specification (pos=0): soon\nNo changes specified"
    assert error.command == ["scontrol", "update", "JobId=7"]


@pytest.mark.parametrize("fields", [{"StartTime": "now"}, {"ExcNodeList": "n1"}])
def test_start_time_and_exclusions_change_only_while_pending(slurm: MemorySlurm, fields: dict[str, str]) -> None:
    assert refusal(lambda: slurm.update(7, **fields)).reason == "Job is no longer pending execution for job 7"
    slurm.jobs[7] = job(state="FAILED", end_time=T0)
    assert refusal(lambda: slurm.update(7, **fields)).reason == "Job has already finished for job 7"


def test_exclusions_name_the_clusters_nodes_and_an_empty_list_clears_them(slurm: MemorySlurm) -> None:
    slurm.requeue_hold(7)
    slurm.update(7, ExcNodeList="n[1-2]")
    assert slurm.excluded[7] == ["n1", "n2"]
    assert refusal(lambda: slurm.update(7, ExcNodeList="n[1-9]")).reason == "Invalid node name specified for job 7"
    assert slurm.excluded[7] == ["n1", "n2"]
    slurm.update(7, ExcNodeList="")
    assert slurm.excluded[7] == []


def test_an_update_with_one_refused_field_changes_nothing(slurm: MemorySlurm) -> None:
    slurm.requeue_hold(7)
    before = slurm.jobs[7]
    with pytest.raises(SlurmError):
        slurm.update(7, StartTime="now+2", AdminComment="ajr: requeued", ExcNodeList="nosuch")
    assert slurm.jobs[7] == before and 7 not in slurm.admin_comments and 7 not in slurm.excluded


def test_comments_can_be_written_until_the_job_is_over(slurm: MemorySlurm) -> None:
    slurm.update(7, AdminComment="ajr: watching", Comment='{"APS": {"max_requeue_times": 1}}')
    assert slurm.admin_comments[7] == "ajr: watching"
    assert slurm.jobs[7].comment == '{"APS": {"max_requeue_times": 1}}'
    slurm.end(7, "FAILED", "NonZeroExitCode")
    assert refusal(lambda: slurm.update(7, AdminComment="ajr: left failed")).reason == (
        "Job has already finished for job 7"
    )
    assert slurm.admin_comments[7] == "ajr: watching"


def test_a_field_the_memory_slurm_does_not_model_is_said_so(slurm: MemorySlurm) -> None:
    with pytest.raises(MemorySlurmError, match="not TimeLimit"):
        slurm.update(7, TimeLimit="10")


# ---- exclusions, drains, partitions ---------------------------------------------------------------


def test_exclude_nodes_keeps_the_users_exclusions_and_skips_unknown_nodes(slurm: MemorySlurm,
                                                                          caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    slurm.requeue_hold(7)
    slurm.excluded[7] = ["n3", "gone"]
    with caplog.at_level(logging.WARNING):
        slurm.exclude_nodes(7, ["n1", "elsewhere", "n1"])
    assert slurm.excluded[7] == ["n1", "n3"] and "elsewhere" in caplog.text
    assert slurm.calls[-1] == Call(Operation.EXCLUDE_NODES, 7, {"nodes": "n1,elsewhere,n1"})


def test_exclude_nodes_of_a_running_job_is_refused_only_when_it_would_change_something(slurm: MemorySlurm) -> None:
    slurm.excluded[7] = ["n1"]
    slurm.exclude_nodes(7, ["n1"])  # nothing to add: no update, no refusal
    assert refusal(lambda: slurm.exclude_nodes(7, ["n2"])).reason == "Job is no longer pending execution for job 7"
    assert refusal(lambda: slurm.exclude_nodes(99, ["n2"])).reason == "slurm_load_jobs error: Invalid job id specified"


def test_drain_takes_nodes_out_of_service(slurm: MemorySlurm) -> None:
    slurm.down.add("n3")
    slurm.drain("n1", "ajr: job 7 segfault on n1")
    slurm.drain("n[2-3]", "ajr: job 8")
    assert slurm.drained == {"n1": "ajr: job 7 segfault on n1", "n2": "ajr: job 8", "n3": "ajr: job 8"}
    assert slurm.nodes_out_of_service() == {"n1", "n2", "n3"}
    assert slurm.calls[0] == ("drain", "n1", {"reason": "ajr: job 7 segfault on n1"})


@pytest.mark.parametrize("node", ["nosuch", "n[1-9]", "n[1-", ""])
def test_drain_of_a_node_slurm_does_not_have_is_refused_whole(slurm: MemorySlurm, node: str) -> None:
    error = refusal(lambda: slurm.drain(node, "r"))
    assert error.reason == "slurm_update error: Invalid node name specified" and slurm.drained == {}
    assert error.command[:2] == ["scontrol", "update"] and "State=DRAIN" in error.command


def test_partitions_without_nodes_are_left_out_and_answers_are_copies(slurm: MemorySlurm) -> None:
    partitions = slurm.partition_nodes()
    assert partitions == {"gpu": ["n1", "n2", "n3"]}
    partitions["gpu"].append("mine")
    slurm.nodes_out_of_service().add("mine")
    assert slurm.partitions["gpu"] == ["n1", "n2", "n3"] and slurm.nodes_out_of_service() == set()


# ---- cancel, and Slurm's own part ---------------------------------------------------------------------


def test_cancel_ends_a_job_and_is_no_error_for_one_over_or_unknown(slurm: MemorySlurm, clock: Clock) -> None:
    slurm.jobs[8] = job(8, state="PENDING", start_time=None, reason="Priority")
    slurm.jobs[9] = done = job(9, state="COMPLETED", end_time=T0 - 5)
    for job_id in (7, 8, 9, 99):
        slurm.cancel(job_id)
    assert (slurm.jobs[7].state, slurm.jobs[7].start_time, slurm.jobs[7].end_time) == ("CANCELLED", T0 - 60, T0)
    assert (slurm.jobs[8].state, slurm.jobs[8].start_time, slurm.jobs[8].end_time) == ("CANCELLED", T0, T0)
    assert slurm.jobs[9] == done and 99 not in slurm.jobs


def test_a_requeued_job_starts_again_only_once_released_and_past_its_start_time(slurm: MemorySlurm,
                                                                                clock: Clock) -> None:  # fmt: skip
    slurm.requeue_hold(7)
    with pytest.raises(MemorySlurmError, match="cannot start"):
        slurm.start(7)
    slurm.release(7)
    with pytest.raises(MemorySlurmError, match="cannot start"):
        slurm.start(7)
    slurm.update(7, StartTime="now+2")
    clock.now += 2
    again = slurm.start(7, nodes="n2")
    assert (again.state, again.restart_count, again.start_time, again.nodes) == ("RUNNING", 1, T0 + 2, "n2")
    ended = slurm.end(7, "FAILED", "NonZeroExitCode", at=T0 + 10)
    assert ended.ended and ended.end_time == T0 + 10 and ended.reason == "NonZeroExitCode"


def test_slurms_own_part_refuses_what_slurm_would_not_do(slurm: MemorySlurm) -> None:
    with pytest.raises(MemorySlurmError, match="job 99 is not in"):
        slurm.start(99)
    with pytest.raises(MemorySlurmError, match="cannot end RUNNING"):
        slurm.end(7, "RUNNING")
    slurm.jobs[8] = job(8, state="PENDING", start_time=None)
    with pytest.raises(MemorySlurmError, match="cannot end FAILED"):
        slurm.end(8, "FAILED")
    assert slurm.end(8, "CANCELLED", at=T0).start_time == T0


# ---- scripted failures -------------------------------------------------------------------------------


def test_a_poll_that_fails_once_is_transient_and_the_next_one_answers(slurm: MemorySlurm) -> None:
    slurm.fail(Operation.LIST_JOBS)
    error = refusal(slurm.list_jobs)
    assert error.transient and error.reason == "Unable to contact slurm controller (connect failure)"
    assert error.command == ["squeue", "-h", "-t", "all"]
    assert [j.job_id for j in slurm.list_jobs()] == [7] and slurm.reads[Operation.LIST_JOBS] == 2


def test_an_action_refused_with_slurms_words_for_one_job_only(slurm: MemorySlurm) -> None:
    slurm.jobs[8] = job(8)
    slurm.fail(Operation.REQUEUE_HOLD, "Requested operation is presently disabled for job 7", target=7, times=2)
    slurm.requeue_hold(8)
    for _ in range(2):
        error = refusal(lambda: slurm.requeue_hold(7))
        assert not error.transient and error.reason == "Requested operation is presently disabled for job 7"
    slurm.requeue_hold(7)
    assert slurm.jobs[7].restart_count == 1 and [str(c) for c in slurm.calls] == ["requeue_hold 8"] + ["requeue_hold 7"] * 3


def test_a_scripted_answer_may_be_declared_transient(slurm: MemorySlurm) -> None:
    slurm.fail(Operation.RELEASE, "Job can not be altered now, try again later", transient=True)
    assert refusal(lambda: slurm.release(7)).transient
    slurm.fail(Operation.PARTITION_NODES, "Socket timed out on send/recv operation")
    assert refusal(slurm.partition_nodes).transient, "judged as the commands backend judges it"


def test_a_stalled_request_waits_until_released_and_others_do_not(slurm: MemorySlurm) -> None:
    answer = threading.Event()
    slurm.stall(Operation.PARTITION_NODES, answer)
    got: list[dict[str, list[str]]] = []
    waiting = threading.Thread(target=lambda: got.append(slurm.partition_nodes()))
    waiting.start()
    waiting.join(0.2)
    assert waiting.is_alive() and not got
    slurm.requeue_hold(7)  # the controller's other answers are not held up
    assert [j.state for j in slurm.list_jobs()] == ["PENDING"]
    answer.set()
    waiting.join(5)
    assert got == [{"gpu": ["n1", "n2", "n3"]}]


def test_a_stall_for_one_job_holds_up_that_job_alone(slurm: MemorySlurm) -> None:
    slurm.jobs[8] = job(8)
    answer = threading.Event()
    slurm.stall(Operation.REQUEUE_HOLD, answer, target=7)
    waiting = threading.Thread(target=slurm.requeue_hold, args=(7,))
    waiting.start()
    slurm.requeue_hold(8)
    assert slurm.jobs[8].state == "PENDING" and slurm.jobs[7].state == "RUNNING"
    assert Call(Operation.REQUEUE_HOLD, 7, {}) in slurm.calls, "asked, not yet answered"
    answer.set()
    waiting.join(5)
    assert slurm.jobs[7].state == "PENDING"


def test_calls_read_as_tuples_and_as_text() -> None:
    call = Call(Operation.UPDATE, 7, {"AdminComment": "ajr: requeued (1/3)", "StartTime": "now+2"})
    assert call == ("update", 7, {"AdminComment": "ajr: requeued (1/3)", "StartTime": "now+2"})
    assert str(call) == "update 7 AdminComment=ajr: requeued (1/3) StartTime=now+2"


# ---- the agent over it -----------------------------------------------------------------------------


def test_the_agent_recovers_a_job_over_the_memory_slurm(tmp_path: Path, clock: Clock) -> None:
    """The agent's whole recovery of a segfault, over the in-memory Slurm."""
    settings = Settings(state_db=tmp_path / "ajr.db", rules_dirs=(), clear_begin_time=True)
    store = Store(settings.state_db)
    store.set_meta(watching_since=1.0)
    slurm = MemorySlurm(jobs={7: job(user_id=os.getuid(), work_dir=str(tmp_path), start_time=100.0)},
                        partitions={"gpu": ["n1", "n2"]}, clock=clock)  # fmt: skip
    agent = Agent(settings, store, slurm, load_rules(settings), pool=InlinePool())
    log = tmp_path / "train_7_date_26-01-01_time_00-00-00.log"
    log.write_text("step 1\n")
    agent.poll(200.0)
    with log.open("a") as handle:
        handle.write("Rank0: (1) segmentation fault: artificial segfault\n")
    agent.read_logs(201.0)
    assert [c.operation for c in slurm.calls] == [Operation.REQUEUE_HOLD, Operation.UPDATE]
    assert slurm.jobs[7].reason == HELD and slurm.jobs[7].restart_count == 1
    agent.poll(202.0)
    assert slurm.calls[2:] == [("release", 7, {}), ("update", 7, {"StartTime": "now+2"})]
    clock.now += 2
    slurm.start(7, nodes="n2")
    agent.poll(clock.now)
    assert agent.store.job(7).attempt == 1  # type: ignore[union-attr]
    assert "requeued after segfault" in slurm.admin_comments[7]
    store.close()


# ---- nodes Slurm loses ------------------------------------------------------------------------------


def test_a_lost_node_is_down_not_responding_and_its_jobs_requeued_or_ended_node_fail(slurm: MemorySlurm,
                                                                                     clock: Clock) -> None:  # fmt: skip
    slurm.jobs[8] = job(8, nodes="n[2-3]", requeueable=False)
    slurm.jobs[9] = job(9, nodes="n[1-2]", restart_count=2)
    slurm.jobs[10] = job(10, nodes="n3")
    slurm.lose("n2")
    assert slurm.jobs[7] == job()  # not on n2
    assert (slurm.jobs[8].state, slurm.jobs[8].reason, slurm.jobs[8].end_time, slurm.jobs[8].nodes) == (
        "NODE_FAIL", "NodeDown", T0, "n[2-3]")  # fmt: skip
    requeued = slurm.jobs[9]
    assert (requeued.state, requeued.restart_count, requeued.reason, requeued.nodes) == ("PENDING", 3, "BeginTime", "")
    assert requeued.start_time == T0 + REQUEUE_WAIT and requeued.end_time is None
    assert slurm.jobs[10].running
    [lost] = slurm.node_states(["n2"])
    assert (lost.state, lost.responding, lost.reason, lost.reason_at, lost.lost) == ("down", False, "Not responding",
                                                                                     T0, True)  # fmt: skip
    assert "n2" in slurm.nodes_out_of_service()
    assert slurm.calls == []  # Slurm's own doing, not a request


def test_node_states_name_the_nodes_asked_for_that_slurm_has(slurm: MemorySlurm) -> None:
    slurm.drain("n3", "ajr: job 7")
    states = {s.name: s for s in slurm.node_states(["n1", "n2", "n3", "nosuch"])}
    assert sorted(states) == ["n1", "n2", "n3"]
    assert (states["n1"].state, states["n1"].lost) == ("allocated", False)  # job 7 runs there
    assert (states["n2"].state, states["n2"].reason) == ("idle", "")
    assert (states["n3"].state, states["n3"].reason, states["n3"].lost) == ("drained", "ajr: job 7", False)
    assert slurm.node_states([]) == [] and slurm.reads[Operation.NODE_STATES] == 2


def test_a_node_revived_answers_again_and_its_requeued_job_may_start_elsewhere(slurm: MemorySlurm,
                                                                              clock: Clock) -> None:  # fmt: skip
    slurm.lose("n1")
    slurm.revive("n1")
    [back] = slurm.node_states(["n1"])
    assert (back.state, back.lost, back.reason) == ("idle", False, "")
    slurm.update(7, StartTime="now")
    slurm.schedule()
    assert slurm.start(7, "n2").nodes == "n2"


def test_a_job_slow_to_stop_on_a_lost_node_completes_first(slurm: MemorySlurm) -> None:
    slurm.slow_to_stop.add(7)
    slurm.lose("n1")
    assert (slurm.jobs[7].state, slurm.jobs[7].restart_count) == ("COMPLETING", 1)
    assert slurm.finish_requeue(7).state == "PENDING"


def test_losing_a_node_slurm_does_not_have_is_said_so(slurm: MemorySlurm) -> None:
    with pytest.raises(MemorySlurmError):
        slurm.lose("nosuch")
