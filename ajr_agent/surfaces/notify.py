"""Notifications: tell people when AJR recovered a job, refused to, drained a node, or a job stays held.

Two kinds of sink, both optional: a webhook (`notify_webhook_url`; a JSON body with the
event's fields and a Slack-compatible `text`) and a command (`notify_command`; the
event as JSON on stdin and as `AJR_EVENT_*` environment variables).

Job names, Slurm's messages and log text are the users' and hostile: every field is cut to
a bounded length and loses its control characters, and in `text` user text is escaped by
Slack's rules and its @-mentions lose their ping. The command gets it as data only (stdin,
environment), never in its command line, and runs without a shell unless the admin's
command starts one.

The agent only enqueues. One worker thread delivers, each sink on its own: a sink that
fails is tried again with exponential back-off while the others go on, every HTTP call
and command runs under `notify_timeout`, and a full queue drops its oldest entry with a
log line. A dead sink therefore never blocks nor slows a recovery.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import re
import shlex
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Iterable, Literal, Protocol

from pydantic import BaseModel, Field, field_validator

from ajr_agent import __version__
from ajr_agent.domain.errors import AjrError
from ajr_agent.domain.events import ActionDone, Event
from ajr_agent.domain.model import ActionKind, Decision, ManagedJob, Phase
from ajr_agent.domain.settings import Settings
from ajr_agent.domain.text import cut, visible
from ajr_agent.runtime.observers import Observer
from ajr_agent.views.decisions import recovered, refusal

log = logging.getLogger(__name__)

# Phases in which AJR has requeued a job held and not yet released it.
HELD_PHASES = frozenset({Phase.HOLDING, Phase.HELD, Phase.RELEASING})
# Back-off between tries of one delivery never grows beyond this.
MAX_RETRY_DELAY = 300.0
# Characters a notification passes on of one field of user text, and of its whole `text`.
FIELD_LIMIT = 200
TEXT_LIMIT = 1000

# What slack() puts after an @ to defuse a mention: invisible, so text.visible would mark it.
_ZERO_WIDTH_SPACE = "\u200b"
# Slack's markup: <!channel>, <@U123>, <url|label> and entities; these three escaped leave none.
_SLACK_MARKUP = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
# Bare @channel, @here, @everyone (and @name on Mattermost, Discord...): a zero-width space
# after the @ keeps the words and loses the ping.
_MENTION = re.compile(r"@(?=\w)")
_CUT_ENTITY = re.compile(r"&[a-z]{0,3}$")
# The agent's own settings (AJR_OPERATOR_TOKEN among them) are not the command's business.
_OWN_VARIABLES = "AJR_"


def plain(value: str, limit: int = FIELD_LIMIT) -> str:
    """User text made safe to pass on as data: each character that is not printed (line breaks and
    separators, terminal escapes, NUL, which no environment variable can hold, the marks that reorder
    text on screen) becomes a space, and it is cut to `limit` characters (the cut marked with an ellipsis)."""
    return cut(visible(value, " "), limit)


def slack(value: str) -> str:
    """User text for the inside of a Slack message: plain(), its markup escaped, its mentions defused."""
    return _MENTION.sub("@" + _ZERO_WIDTH_SPACE, plain(value).translate(_SLACK_MARKUP))


def cut_text(text: str, limit: int = TEXT_LIMIT) -> str:
    """A message cut to `limit` characters, never inside an entity (Slack would show the rest of it raw)."""
    return text if len(text) <= limit else _CUT_ENTITY.sub("", text[: limit - 1]) + "…"


class NotifyError(AjrError):
    """A sink could not deliver a notification (it may be tried again)."""


class Notification(BaseModel):
    """One event worth telling people about."""

    kind: Literal["recovered", "requeue_refused", "node_drained", "held_too_long"]
    job_id: int
    name: str
    user: str
    mode: str
    attempt: int
    requeues_used: int
    limit: int
    at: float = Field(description="when it happened (epoch seconds)")
    reason: str = ""
    nodes: str = ""
    dry_run: bool = False
    host: str = Field(default_factory=socket.gethostname, description="where the agent runs")
    text: str = Field(description="a one-line summary (Slack's `text`); user text in it escaped for Slack")

    @field_validator("name", "user", "mode", "reason", "nodes", "host")
    @classmethod
    def _plain(cls, value: str) -> str:
        return plain(value)

    @field_validator("text")
    @classmethod
    def _bounded(cls, value: str) -> str:
        return cut_text(visible(value, " ", keep=_ZERO_WIDTH_SPACE))

    def environment(self) -> dict[str, str]:
        """The fields as `AJR_EVENT_<FIELD>` variables for a command sink."""
        return {f"AJR_EVENT_{key.upper()}": str(value).lower() if isinstance(value, bool) else str(value)
                for key, value in self.model_dump().items()}  # fmt: skip


class Sink(Protocol):
    """Somewhere a notification goes."""

    name: str

    def deliver(self, note: Notification) -> None:
        """Deliver one notification; NotifyError when it did not arrive."""


class WebhookSink:
    """POSTs the notification as JSON; any 2xx answer is a delivery."""

    name = "webhook"

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout

    def deliver(self, note: Notification) -> None:
        """POST the JSON body under the timeout."""
        request = urllib.request.Request(
            self.url, data=note.model_dump_json().encode(), method="POST",
            headers={"Content-Type": "application/json", "User-Agent": f"ajr/{__version__}"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                answer.read(65536)
        except urllib.error.HTTPError as exc:
            raise NotifyError(f"webhook {self.url} answered {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise NotifyError(f"webhook {self.url} not reached: {getattr(exc, 'reason', exc)}") from exc


class CommandSink:
    """Runs a command per notification: the JSON on stdin, the fields as AJR_EVENT_* variables."""

    name = "command"

    def __init__(self, command: str, timeout: float) -> None:
        # The admin's words only: no notification text is ever put in the command line.
        self.argv = shlex.split(command)
        self.timeout = timeout

    def deliver(self, note: Notification) -> None:
        """Run the command under the timeout; a non-zero exit is a failed delivery."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_VARIABLES)}
        try:
            done = subprocess.run(self.argv, input=note.model_dump_json(), text=True, capture_output=True,
                                  env={**inherited, **note.environment()}, timeout=self.timeout, check=False)  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise NotifyError(f"{self.argv[0]}: no exit within {self.timeout:g} s") from exc
        except OSError as exc:
            raise NotifyError(f"{self.argv[0]}: cannot run: {exc.strerror}") from exc
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip()[-300:]
            raise NotifyError(f"{self.argv[0]} exited {done.returncode}: {tail}")


@dataclass(order=True)
class _Delivery:
    due: float  # time.monotonic() at which to try
    seq: int  # arrival order: the oldest is dropped first
    note: Notification = field(compare=False)
    sink: Sink = field(compare=False)
    tries: int = field(default=0, compare=False)


class Notifier(Observer):
    """Turns the agent's decisions into notifications and delivers them from a worker thread."""

    def __init__(self, sinks: Iterable[Sink] = (), held_after: float = 600.0, queue_size: int = 1000,
                 max_tries: int = 8, retry_delay: float = 2.0) -> None:  # fmt: skip
        self.sinks = list(sinks)
        self.held_after = held_after
        self.queue_size = queue_size
        self.max_tries = max_tries
        self.retry_delay = retry_delay
        self._queue: list[_Delivery] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop_by: float | None = None
        # (job, attempt) -> when AJR's hold was first seen; and those already told about.
        self._held_since: dict[tuple[int, int], float] = {}
        self._held_told: set[tuple[int, int]] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> "Notifier":
        """The sinks the settings configure (none: a notifier that does nothing)."""
        sinks: list[Sink] = []
        if settings.notify_webhook_url:
            sinks.append(WebhookSink(settings.notify_webhook_url, settings.notify_timeout))
        if settings.notify_command:
            sinks.append(CommandSink(settings.notify_command, settings.notify_timeout))
        return cls(sinks, settings.notify_held_after, settings.notify_queue_size, settings.notify_max_tries,
                   settings.notify_retry_delay)  # fmt: skip

    # ---- the agent's hooks --------------------------------------------------------------

    def decided(self, before: ManagedJob, event: Event, decision: Decision) -> None:
        """Notify what a decision brings: a recovery done, a requeue refused, a node drained."""
        job = decision.job
        dry_run = bool(getattr(event, "dry_run", False))
        at = float(getattr(event, "at", time.time()))
        if recovered(before, event, decision):
            target = event.action.target if isinstance(event, ActionDone) else None
            what = f"released job {target}, the next of its chain" if target else f"released for attempt {job.attempt + 1}"
            cause = job.attempt_end_reason or job.last_anomaly or "a failure"
            self.publish(_note("recovered", job, at, cause, "{prefix}AJR recovered job {job_id} ({name}, {user}) after "
                               "{cause}: {what} ({used}/{limit})", dry_run=dry_run, cause=cause, what=what))  # fmt: skip
        stopped_by = refusal(before, decision)
        if stopped_by is not None:
            self.publish(_note("requeue_refused", job, at, job.stop_reason or stopped_by.value, "AJR will not requeue job "
                               "{job_id} ({name}, {user}) again: {why}", why=job.stop_reason or ""))  # fmt: skip
        if isinstance(event, ActionDone) and event.action.kind is ActionKind.DRAIN:
            action = event.action
            self.publish(_note("node_drained", job, at, action.reason, "{prefix}AJR drained {nodes} after job {job_id} "
                               "({name}): {why}", action.nodes, dry_run, why=action.reason))  # fmt: skip

    def check_held(self, jobs: Iterable[ManagedJob], now: float) -> None:
        """Notify once per attempt when a job AJR requeued held has stayed held longer than `held_after`."""
        if not self.sinks:
            return
        held = {(j.job_id, j.attempt): j for j in jobs if j.phase in HELD_PHASES}
        for key in [k for k in self._held_since if k not in held]:
            del self._held_since[key]
            self._held_told.discard(key)
        for key, job in held.items():
            since = self._held_since.setdefault(key, job.attempt_ended or now)
            if now - since >= self.held_after and key not in self._held_told:
                self._held_told.add(key)
                self.publish(_note("held_too_long", job, now, f"held {now - since:.0f} s", "job {job_id} ({name}, "
                                   "{user}) has been held by AJR for {minutes} min ({phase}): `scontrol release "
                                   "{job_id}` releases it", minutes=f"{(now - since) / 60:.0f}", phase=job.phase.value))  # fmt: skip

    # ---- the queue --------------------------------------------------------------------

    def publish(self, note: Notification) -> None:
        """Queue a notification for every sink; never blocks (a full queue loses its oldest entry)."""
        if not self.sinks:
            return
        with self._wake:
            for sink in self.sinks:
                heapq.heappush(self._queue, _Delivery(time.monotonic(), next(self._order), note, sink))
            while len(self._queue) > self.queue_size:
                oldest = min(self._queue, key=lambda d: d.seq)
                self._queue.remove(oldest)
                heapq.heapify(self._queue)
                log.warning("notification queue full (%d): dropped the oldest, %s of job %s to the %s",
                            self.queue_size, oldest.note.kind, oldest.note.job_id, oldest.sink.name)  # fmt: skip
            self._wake.notify()

    def pending(self) -> int:
        """Deliveries waiting (to be tried, or tried again)."""
        with self._wake:
            return len(self._queue)

    def start(self) -> None:
        """Start the worker thread (only when a sink is configured)."""
        if self.sinks and self._thread is None:
            self._thread = threading.Thread(target=self._work, name="ajr-notify", daemon=True)
            self._thread.start()

    def stop(self, grace: float) -> None:
        """Deliver what is due within `grace` seconds, then stop the worker; later retries are dropped."""
        if self._thread is None:
            return
        with self._wake:
            self._stop_by = time.monotonic() + grace
            self._wake.notify()
        # A delivery under way may need its whole timeout.
        self._thread.join(grace + max((getattr(s, "timeout", 0.0) for s in self.sinks), default=0.0))
        self._thread = None
        with self._wake:
            if self._queue:
                log.warning("%d notification(s) not delivered before the agent stopped", len(self._queue))

    def _next(self) -> _Delivery | None:
        """The next due delivery, waiting for it; None once stopping and nothing is due in time."""
        with self._wake:
            while True:
                now = time.monotonic()
                if self._queue and self._queue[0].due <= now:
                    if self._stop_by is not None and now > self._stop_by:
                        return None
                    return heapq.heappop(self._queue)
                if self._stop_by is not None and (not self._queue or self._queue[0].due > self._stop_by):
                    return None
                timeout = self._queue[0].due - now if self._queue else None
                self._wake.wait(timeout)

    def _work(self) -> None:
        while (delivery := self._next()) is not None:
            self._deliver(delivery)

    def _deliver(self, delivery: _Delivery) -> None:
        delivery.tries += 1
        note, sink = delivery.note, delivery.sink
        try:
            sink.deliver(note)
        except NotifyError as exc:
            failure = str(exc)
        except Exception as exc:  # a sink's surprise must not end notifications for good
            log.exception("%s: unexpected error delivering %s of job %s", sink.name, note.kind, note.job_id)
            failure = repr(exc)
        else:
            log.info("notified %s of job %s through the %s", note.kind, note.job_id, sink.name)
            return
        if delivery.tries >= self.max_tries:
            log.error("%s of job %s dropped after %d tries through the %s: %s", note.kind, note.job_id,
                      delivery.tries, sink.name, failure)  # fmt: skip
            return
        delay = min(self.retry_delay * 2 ** (delivery.tries - 1), MAX_RETRY_DELAY)
        log.warning("%s of job %s not delivered through the %s (try %d of %d, again in %.1f s): %s", note.kind,
                    note.job_id, sink.name, delivery.tries, self.max_tries, delay, failure)  # fmt: skip
        with self._wake:
            delivery.due = time.monotonic() + delay
            heapq.heappush(self._queue, delivery)
            self._wake.notify()


def _note(kind: str, job: ManagedJob, at: float, reason: str, template: str, nodes: str = "",
          dry_run: bool = False, **parts: str) -> Notification:  # fmt: skip
    """A notification whose text is `template` filled in; every text put into it is escaped for Slack,
    the job's own fields (job_id, name, user, used, limit, nodes, prefix) as well as `parts`."""
    nodes = nodes or job.nodes
    known = {"job_id": str(job.job_id), "name": job.name, "user": job.user, "used": str(job.requeues_used),
             "limit": str(job.limit), "nodes": nodes, "prefix": "(dry run) " if dry_run else ""}  # fmt: skip
    text = template.format(**{key: slack(value) for key, value in {**known, **parts}.items()})
    return Notification.model_validate({
        "kind": kind, "job_id": job.job_id, "name": job.name, "user": job.user, "mode": job.mode.value,
        "attempt": job.attempt, "requeues_used": job.requeues_used, "limit": job.limit, "at": at, "reason": reason,
        "nodes": nodes, "dry_run": dry_run, "text": text,
    })  # fmt: skip
