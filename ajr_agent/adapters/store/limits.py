"""How much of a job's story the store keeps: excerpts of long lines, and caps per job and attempt."""

from __future__ import annotations

from dataclasses import dataclass

# A log line or a piece of evidence is stored as an excerpt of at most this many bytes of
# UTF-8: enough for any real error line, while a 64 KiB line of a runaway log is cut.
EXCERPT_BYTES = 1024

# Notes that come again and again while a job runs (a note per checkpoint, per log notice,
# per anomaly line after the failure was handled): capped per job, the oldest dropped first.
# Every other kind records a decision or its outcome and is bounded by the requeue limit.
BULK_NOTE_KINDS = frozenset({"checkpoint", "log", "ignored", "duplicate"})


@dataclass(frozen=True)
class Limits:
    """How much of a job's story the store keeps."""

    max_bulk_notes_per_job: int = 200  # notes of BULK_NOTE_KINDS
    max_notes_per_job: int = 1000  # all notes; bulk ones give way first
    max_readings_per_attempt: int = 10_000  # throughput readings, thinned evenly past it


def excerpt(text: str, limit: int = EXCERPT_BYTES) -> str:
    """`text` whole if its UTF-8 takes at most `limit` bytes; else its start, cut on a character
    boundary, and a marker saying how many bytes were cut, `limit` bytes in all."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    room = limit - len(f" [cut: {len(data)} more bytes]")
    kept = data[:room].decode("utf-8", "ignore")  # a character cut in two is left out whole
    return f"{kept} [cut: {len(data) - len(kept.encode('utf-8'))} more bytes]"
