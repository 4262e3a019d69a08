"""Notifications: real local HTTP servers receive the webhook (one fails first, to show the retry), a
command sink writes to a file, and a dead sink never holds up the agent."""

from __future__ import annotations

from ajr_agent.adapters.slurm.memory import MemorySlurm
from tests.unit.support import append, followed_job

import json
import logging
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
from tests.conftest import wait_for

from ajr_agent.adapters.store import Store
from ajr_agent.domain import policy
from ajr_agent.domain.events import ActionDone, AnomalyFound
from ajr_agent.domain.model import Action, ActionKind, ManagedJob, Phase
from ajr_agent.domain.settings import Settings
from ajr_agent.domain.spec import ResumeMode
from ajr_agent.runtime.agent import Agent, load_rules
from ajr_agent.runtime.inline_pool import InlinePool
from ajr_agent.surfaces.notify import CommandSink, Notification, Notifier, NotifyError, WebhookSink, plain

JOB = ManagedJob(job_id=7, name="llama", user="alice", user_id=1000, mode=ResumeMode.REQUEUE, requested_limit=None,
                 limit=3, attempt_started=1.0, nodes="gpu-1")  # fmt: skip


@dataclass
class Receiver:
    """A local webhook endpoint: answers the scripted statuses in turn (then 200) and keeps every body."""

    statuses: list[int] = field(default_factory=list)
    delay: float = 0.0
    bodies: list[dict] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            time.sleep(state.delay)
            status = state.statuses.pop(0) if state.statuses else 200
            if status == 200:
                state.bodies.append(body)
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    state.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.server.daemon_threads = True
    threading.Thread(target=state.server.serve_forever, args=(0.05,), daemon=True).start()
    yield state
    state.server.shutdown()
    state.server.server_close()


def note(kind: str = "recovered", job_id: int = 7) -> Notification:
    return Notification(kind=kind, job_id=job_id, name="llama", user="alice", mode="requeue", attempt=0,  # type: ignore[arg-type]
                        requeues_used=1, limit=3, at=time.time(), reason="segfault", text=f"job {job_id} {kind}")  # fmt: skip


def started(*sinks: object, **options: float) -> Notifier:
    notifier = Notifier(sinks, retry_delay=options.pop("retry_delay", 0.05), **options)  # type: ignore[arg-type]
    notifier.start()
    return notifier


def test_webhook_receives_the_event_fields_and_a_slack_text(receiver: Receiver) -> None:
    notifier = started(WebhookSink(receiver.url, timeout=5))
    notifier.publish(note())
    wait_for(lambda: receiver.bodies, 10, "the webhook call")
    notifier.stop(grace=1)
    body = receiver.bodies[0]
    assert body["kind"] == "recovered" and body["job_id"] == 7 and body["user"] == "alice"
    assert body["text"] == "job 7 recovered"  # what Slack's incoming webhooks show


def test_a_failing_webhook_is_retried_with_back_off(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    receiver.statuses = [500, 500]
    caplog.set_level(logging.INFO, logger="ajr_agent.surfaces.notify")
    notifier = started(WebhookSink(receiver.url, timeout=5), retry_delay=0.2)
    begun = time.monotonic()
    notifier.publish(note())
    wait_for(lambda: receiver.bodies, 10, "the webhook to accept it at last")
    took = time.monotonic() - begun
    notifier.stop(grace=1)
    assert len(receiver.bodies) == 1
    assert took >= 0.2 + 0.4  # the waits double: 0.2 s, then 0.4 s
    retries = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert len(retries) == 2 and "answered 500" in retries[0] and "again in 0.2 s" in retries[0]
    assert "again in 0.4 s" in retries[1]


def test_a_delivery_is_given_up_after_its_tries(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    receiver.statuses = [500] * 10
    notifier = started(WebhookSink(receiver.url, timeout=5), max_tries=3, retry_delay=0.01)
    notifier.publish(note())
    wait_for(lambda: any("dropped after 3 tries" in r.getMessage() for r in caplog.records), 10, "the give-up")
    notifier.stop(grace=1)
    assert receiver.bodies == [] and receiver.statuses == [500] * 7


def test_command_sink_gets_json_on_stdin_and_the_fields_in_its_environment(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    script = tmp_path / "sink.py"
    script.write_text(
        "import json, os, sys\n"
        f"with open({str(out)!r}, 'a') as f:\n"
        "    f.write(json.dumps({'stdin': json.load(sys.stdin), 'env': os.environ['AJR_EVENT_KIND'] + ' '"
        " + os.environ['AJR_EVENT_JOB_ID'] + ' ' + os.environ['AJR_EVENT_DRY_RUN']}) + '\\n')\n"
    )
    notifier = started(CommandSink(f"{sys.executable} {script}", timeout=10))
    notifier.publish(note("requeue_refused", 8))
    wait_for(lambda: out.exists() and out.read_text(), 10, "the command to write")
    notifier.stop(grace=1)
    written = json.loads(out.read_text())
    assert written["stdin"]["kind"] == "requeue_refused" and written["stdin"]["job_id"] == 8
    assert written["env"] == "requeue_refused 8 false"


def test_sinks_time_out(receiver: Receiver, tmp_path: Path) -> None:
    receiver.delay = 2
    begun = time.monotonic()
    with pytest.raises(NotifyError, match="not reached"):
        WebhookSink(receiver.url, timeout=0.3).deliver(note())
    with pytest.raises(NotifyError, match="no exit within 0.3 s"):
        CommandSink("sleep 5", timeout=0.3).deliver(note())
    with pytest.raises(NotifyError, match="exited 3"):
        CommandSink("sh -c 'echo broken >&2; exit 3'", timeout=5).deliver(note())
    assert time.monotonic() - begun < 2


def test_publishing_never_waits_for_a_hanging_sink(receiver: Receiver) -> None:
    receiver.delay = 1.5
    notifier = started(WebhookSink(receiver.url, timeout=5))
    begun = time.monotonic()
    for n in range(20):
        notifier.publish(note(job_id=n))
    assert time.monotonic() - begun < 0.1
    notifier.stop(grace=0)


def test_a_full_queue_drops_the_oldest_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier([CommandSink("true", timeout=1)], queue_size=3)  # not started: nothing leaves the queue
    for n in range(5):
        notifier.publish(note(job_id=n))
    assert notifier.pending() == 3
    dropped = [r.getMessage() for r in caplog.records if "queue full" in r.getMessage()]
    assert len(dropped) == 2 and "of job 0 to the command" in dropped[0] and "of job 1" in dropped[1]


def test_no_sink_configured_means_no_thread_and_nothing_queued() -> None:
    notifier = Notifier.from_settings(Settings(rules_dirs=()))
    notifier.start()
    notifier.publish(note())
    assert notifier.pending() == 0 and notifier.sinks == []


# ---- which decisions notify ----------------------------------------------------------------------


def collected() -> tuple[Notifier, list[Notification]]:
    notifier = Notifier([CommandSink("true", timeout=1)])
    seen: list[Notification] = []
    notifier.publish = seen.append  # type: ignore[method-assign]
    return notifier, seen


def test_a_release_after_requeue_is_a_recovery() -> None:
    notifier, seen = collected()
    releasing = ManagedJob(**{**vars(JOB), "phase": Phase.RELEASING, "requeues_used": 1,
                              "attempt_end_reason": "segfault (segfault)"})  # fmt: skip
    event = ActionDone(Action(ActionKind.RELEASE, 7, 0, "release after requeue"), 5.0)
    notifier.decided(releasing, event, policy.decide(releasing, event, Settings(rules_dirs=())))
    assert [n.kind for n in seen] == ["recovered"]
    assert seen[0].text == "AJR recovered job 7 (llama, alice) after segfault (segfault): released for attempt 1 (1/3)"


def test_the_limit_and_a_crash_loop_are_requeues_refused() -> None:
    for changes, reason in [({"requeues_used": 3}, "requeue limit reached (3/3)"),
                            ({"failure_streak": 2}, "crash-looping")]:  # fmt: skip
        notifier, seen = collected()
        job = ManagedJob(**{**vars(JOB), **changes})
        event = AnomalyFound(7, 0, 2.0, "segfault", "segfault", "application", "", "Rank0: segfault")
        notifier.decided(job, event, policy.decide(job, event, Settings(rules_dirs=(), crashloop_threshold=3)))
        assert [n.kind for n in seen] == ["requeue_refused"] and reason in seen[0].text


def test_a_drain_notifies_with_the_node() -> None:
    notifier, seen = collected()
    event = ActionDone(Action(ActionKind.DRAIN, 7, 0, "ajr: job 7 gpu_hardware (xid_79)", nodes="gpu-1"), 5.0)
    notifier.decided(JOB, event, policy.decide(JOB, event, Settings(rules_dirs=())))
    assert [(n.kind, n.nodes) for n in seen] == [("node_drained", "gpu-1")]


def test_a_job_held_too_long_notifies_once_per_attempt() -> None:
    notifier, seen = collected()
    notifier.held_after = 600
    held = ManagedJob(**{**vars(JOB), "phase": Phase.HELD, "attempt_ended": 1000.0})
    notifier.check_held([held], 1500.0)
    assert seen == []
    notifier.check_held([held], 1601.0)
    notifier.check_held([held], 1700.0)
    assert [n.kind for n in seen] == ["held_too_long"] and "scontrol release 7" in seen[0].text
    notifier.check_held([ManagedJob(**{**vars(held), "phase": Phase.RESTARTING})], 1800.0)
    notifier.check_held([ManagedJob(**{**vars(held), "attempt": 1, "attempt_ended": 2000.0})], 2700.0)
    assert len(seen) == 2


def test_the_agent_notifies_a_recovery_through_a_real_sink(tmp_path: Path, receiver: Receiver) -> None:
    settings = Settings(state_db=tmp_path / "ajr.db", rules_dirs=(), notify_webhook_url=receiver.url)
    store = Store(settings.state_db)
    store.set_meta(watching_since=1.0)
    queue = MemorySlurm()
    notifier = Notifier.from_settings(settings)
    notifier.start()
    agent = Agent(settings, store, queue, load_rules(settings), observer=notifier, pool=InlinePool())
    append(followed_job(agent, queue, tmp_path), "Rank0: (1) segmentation fault: artificial segfault\n")
    agent.read_logs(201.0)
    agent.poll(202.0)
    wait_for(lambda: receiver.bodies, 10, "the recovery's notification")
    notifier.stop(grace=1)
    assert [(b["kind"], b["job_id"], b["requeues_used"]) for b in receiver.bodies] == [("recovered", 7, 1)]
    assert "after segfault (segfault)" in receiver.bodies[0]["text"]


# ---- user text is hostile ------------------------------------------------------------------------

HOSTILE_NAME = "<!channel> @here @everyone <@U024BE7LH> <https://evil.example|click here> & x\njob_id=9\x1b[31m\x00"


def recovered_note(name: str) -> Notification:
    notifier, seen = collected()
    releasing = ManagedJob(**{**vars(JOB), "name": name, "phase": Phase.RELEASING, "requeues_used": 1,
                              "attempt_end_reason": "segfault <b>&</b> @channel"})  # fmt: skip
    event = ActionDone(Action(ActionKind.RELEASE, 7, 0, "release after requeue"), 5.0)
    notifier.decided(releasing, event, policy.decide(releasing, event, Settings(rules_dirs=())))
    [recovered] = seen
    return recovered


def test_a_hostile_job_name_reaches_slack_as_text_not_as_markup_or_a_mention(receiver: Receiver) -> None:
    notifier = started(WebhookSink(receiver.url, timeout=5))
    notifier.publish(recovered_note(HOSTILE_NAME))
    wait_for(lambda: receiver.bodies, 10, "the webhook call")
    notifier.stop(grace=1)
    text = receiver.bodies[0]["text"]
    # Slack's markup is <...> and &: user text keeps none of it, only the entities.
    assert "<" not in text and ">" not in text
    assert "&lt;!channel&gt;" in text and "&lt;https://evil.example|click here&gt;" in text and "&amp; x" in text
    assert "&lt;b&gt;&amp;&lt;/b&gt;" in text  # the cause is escaped too
    # Bare mentions (Slack with link_names, Mattermost, Discord) lose their ping, keep their words.
    for mention in ("@here", "@everyone", "@channel", "@U024BE7LH"):
        assert mention not in text and mention.replace("@", "@\u200b") in text
    assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in text), repr(text)
    assert "x job_id=9" in text  # the line break is gone, its words stay on the one line
    assert not any(ord(c) < 32 for c in receiver.bodies[0]["name"])


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\u202e", "\ufeff"])
def test_no_character_that_breaks_or_hides_a_line_reaches_a_field_or_the_text(separator: str) -> None:
    """Unicode's line and paragraph separators end a line in many readers as \\n does; bidi overrides
    and other invisible marks hide or reorder what follows. None survives, in a field or in `text`."""
    note = recovered_note(f"llama{separator}job_id=9")
    for value in (note.name, note.text, *note.environment().values()):
        assert separator not in value and len(value.splitlines()) <= 1, repr(value)
    assert "llama job_id=9" in note.text


def test_user_text_is_bounded_in_length() -> None:
    note = recovered_note("n" * 100_000)
    assert len(note.name) <= 200 and note.name.endswith("…")
    assert len(note.text) <= 1000


def test_an_escape_is_never_cut_in_half() -> None:
    note = recovered_note("&" * 5000)
    assert len(note.text) <= 1000
    assert "&" not in re.sub(r"&(amp|lt|gt);", "", note.text), "an entity was cut: Slack would show it raw"


def test_a_command_sink_gets_user_text_as_data_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AJR_OPERATOR_TOKEN", "do-not-leak")
    pwned = tmp_path / "pwned"
    name = f"$(touch {pwned}) `touch {pwned}`; touch {pwned} ' \" \\ *\n{HOSTILE_NAME}"
    out = tmp_path / "seen.json"
    script = tmp_path / "sink.py"
    script.write_text(
        "import json, os, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'stdin': json.load(sys.stdin)['name'], 'env': os.environ['AJR_EVENT_NAME'],"
        " 'token': os.environ.get('AJR_OPERATOR_TOKEN')}, open(sys.argv[1], 'w'))\n"
    )
    # A shell in the command, as admins write them: the name must reach it as a variable's value only.
    CommandSink(f"{sys.executable} {script} {out}", timeout=10).deliver(recovered_note(name))
    CommandSink(f"sh -c 'printf %s \"$AJR_EVENT_NAME\" > {tmp_path}/by-sh'", timeout=10).deliver(recovered_note(name))
    seen = json.loads(out.read_text())
    assert seen["argv"] == [str(out)]
    assert seen["stdin"] == seen["env"] == (tmp_path / "by-sh").read_text()
    assert seen["env"] == plain(name) and seen["env"].startswith(f"$(touch {pwned}) `touch {pwned}`;")
    assert not pwned.exists()
    assert seen["token"] is None, "the agent's AJR_* settings (its operator token) leaked to the command"
