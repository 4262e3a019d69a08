"""A job's log files: their names (naming), finding them (discovery), reading their new
lines (tail) and waking early when they are written (watch)."""

from ajr_agent.adapters.logs.discovery import LogFinder, find_job_logs
from ajr_agent.adapters.logs.naming import LogName, is_job_log_name, log_prefix, parse_log_name
from ajr_agent.adapters.logs.tail import FilePosition, LogLine, LogTailer, TailNotice, TailNoticeKind, TailResult
from ajr_agent.adapters.logs.watch import ChangeWatcher

__all__ = [
    "ChangeWatcher",
    "FilePosition",
    "LogFinder",
    "LogLine",
    "LogName",
    "LogTailer",
    "TailNotice",
    "TailNoticeKind",
    "TailResult",
    "find_job_logs",
    "is_job_log_name",
    "log_prefix",
    "parse_log_name",
]
