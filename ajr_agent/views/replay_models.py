"""The models of `ajr replay --json`: per log file, what AJR would have done; and the totals.

Built from ops.replay's results as they are (`from_attributes`), so the JSON says what the
text says. `ajr replay --json` streams a `ReplayOut`: one file per line as each is read.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ajr_agent.domain.model import Better, Fault


class _Read(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ReplayLineOut(_Read):
    """A line of the log."""

    number: int = Field(description="its line number, from 1")
    at: float | None = Field(description="its own timestamp (epoch seconds), null when it has none")
    text: str = Field(description="the line, its first 500 characters")


class ReplayFailureOut(_Read):
    """The first failure line, where AJR would have acted, with the root cause it would have named."""

    line: ReplayLineOut
    rule: str = Field(description="the root cause's rule, among the failure line and those within a second after it")
    category: str
    fault: Fault
    cause_line: ReplayLineOut


class ReplaySavesOut(_Read):
    """The log's checkpoint saves."""

    completed: int
    started: int = Field(description="saves begun (rules of stage started)")
    first_completed: ReplayLineOut | None
    last_completed: ReplayLineOut | None
    failed: ReplayLineOut | None = Field(description="the save begun that the failure came before: nothing saved")
    unfinished: ReplayLineOut | None = Field(description="a save begun, never completed, no failure: the log ends")


class ReplayPointOut(_Read):
    """One reading of a series."""

    line: int
    at: float | None
    value: float


class ReplayStragglerOut(_Read):
    """The drop the agent would have recorded."""

    line: ReplayLineOut = Field(description="the last of the reports below the baseline")
    baseline: float
    recent: list[float]


class ReplaySeriesOut(_Read):
    """One throughput rule's readings."""

    rule: str
    unit: str
    better: Better = Field(description="higher (a rate) or lower (a time per iteration)")
    charted: bool = Field(description="the first rule to report: the readings the agent stores and charts")
    reports: int
    first: float
    last: float
    low: float
    high: float
    mean: float
    points: list[ReplayPointOut] = Field(description="at most 200 readings, thinned evenly")
    straggler: ReplayStragglerOut | None


class ReplayHangOut(_Read):
    """A silence before any failure long enough for a hang to fire."""

    fires_at: float = Field(description="when the hang would have fired (epoch seconds)")
    silence: float = Field(description="seconds from the last line before it to the next line")
    after: ReplayLineOut
    timeout: float = Field(description="the heartbeat timeout it was judged by")


class ReplayFileOut(_Read):
    """What AJR would have made of one file."""

    path: str
    job_name: str | None = Field(description="from a name `{job_name}_{job_id}_date_..._time_....log`")
    job_id: int | None
    started: float | None = Field(description="when the job step began, by the file's name")
    size: int = Field(description="bytes on disk")
    lines: int
    error: str = Field(description="why it was not read, or not to its end; empty when it was")
    acted: bool = Field(description="AJR would have recovered the job: at a failure line, a hang before one, or "
                                    "a straggler when straggler_recovery is on")
    failure: ReplayFailureOut | None
    anomaly_lines: int
    saves: ReplaySavesOut | None
    series: list[ReplaySeriesOut]
    hang: ReplayHangOut | None
    rule_lines: dict[str, int] = Field(description="lines each rule matched")
    timeouts: int = Field(description="lines on which a rule hit the match timeout")


class ReplayTotalsOut(_Read):
    """All the files together."""

    files: int
    unreadable: int = Field(description="files with an error")
    bytes: int
    lines: int
    seconds: float
    mb_per_second: float
    acted: int = Field(description="files where AJR would have recovered the job")
    failures: int = Field(description="files with a failure line")
    hangs: int
    stragglers: int
    saves_completed: int
    saves_failed: int
    rule_lines: dict[str, int]


class ReplayOut(BaseModel):
    """`ajr replay --json`."""

    rules_dirs: list[str] = Field(description="the rule directories used, in order")
    heartbeat_timeout: float
    files: list[ReplayFileOut]
    totals: ReplayTotalsOut
