"""When a log line says it was written: the timestamp frameworks print at its start."""

from __future__ import annotations

import re
from datetime import datetime, timezone


# A timestamp at the start of a line, as Python logging, loguru, Megatron and ISO-8601
# writers print it: "2025-06-07 00:35:03.012 | ...", "[2024-07-31 18:15:55] ...",
# "2024-07-31T18:15:55Z ...".
_LINE_TIME = re.compile(
    r"^\W{0,2}(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?\s*(Z|[+-]\d{2}:?\d{2})?"
)


# A line's own time is trusted only near the agent's clock: a replayed old log or a
# node with a wrong clock must not move events by days.
_LINE_TIME_TOLERANCE = 24 * 3600.0


def parse_line_time(text: str) -> float | None:
    """The timestamp a line starts with (local time unless it names a zone), or None."""
    found = _LINE_TIME.match(text)
    if found is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = found.groups()
    try:
        stamp = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                         int((fraction or "0")[:6].ljust(6, "0")))  # fmt: skip
    except ValueError:
        return None
    if zone:
        offset = timezone.utc if zone == "Z" else datetime.strptime(zone.replace(":", ""), "%z").tzinfo
        stamp = stamp.replace(tzinfo=offset)
    return stamp.timestamp()


def line_time(text: str, read_at: float) -> float:
    """When a log line says it was written, if that is near the agent's clock; else when it was read."""
    when = parse_line_time(text)
    return when if when is not None and abs(when - read_at) <= _LINE_TIME_TOLERANCE else read_at
