"""Log file names: a job's logs are named ``{job_name}_{job_id}_date_%y-%m-%d_time_%H-%M-%S.log``.

Every step of a job may write one; the whole name is checked, so that a job's id with a
digit more, a rotated ``.log.1`` or a file of another job is never taken for one of its logs.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import datetime


def log_prefix(job_name: str, job_id: int) -> str:
    """Return the fixed start of every log file name of a job: ``<job_name>_<job_id>_date``."""
    return f"{job_name}_{job_id}_date"


@functools.lru_cache(maxsize=4096)
def _log_name_pattern(job_name: str, job_id: int) -> re.Pattern[str]:
    # [0-9] rather than \d: \d would also accept non-ASCII digits.
    return re.compile(
        re.escape(log_prefix(job_name, job_id))
        + r"_[0-9]{2}-[0-9]{2}-[0-9]{2}_time_[0-9]{2}-[0-9]{2}-[0-9]{2}\.log"
    )


def is_job_log_name(file_name: str, job_name: str, job_id: int) -> bool:
    """Tell whether ``file_name`` is a log file name of job ``job_id`` named ``job_name``.

    The whole name is checked, date/time part and ``.log`` suffix included.
    """
    return _log_name_pattern(job_name, job_id).fullmatch(file_name) is not None


# Any job's log name; the job name is greedy, so "a_b_12_date_..." is job "a_b", id 12.
_ANY_LOG_NAME = re.compile(
    r"(?P<name>.+)_(?P<job_id>[0-9]+)_date_(?P<stamp>[0-9]{2}-[0-9]{2}-[0-9]{2}_time_[0-9]{2}-[0-9]{2}-[0-9]{2})\.log"
)


@dataclass(frozen=True)
class LogName:
    """What a log file's name says: the job, and when the step that writes it started (local time)."""

    job_name: str
    job_id: int
    started: float | None  # None when the name's date or time is not a real one (13th month, ...)


def parse_log_name(file_name: str) -> LogName | None:
    """The job and start time a log file name gives, or None when it does not follow the convention."""
    found = _ANY_LOG_NAME.fullmatch(file_name)
    if found is None:
        return None
    try:
        started: float | None = datetime.strptime(found["stamp"], "%y-%m-%d_time_%H-%M-%S").timestamp()
    except ValueError:
        started = None
    return LogName(found["name"], int(found["job_id"]), started)
