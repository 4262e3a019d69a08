"""The grep prefilter of large batches: GNU grep picks the lines that hold an anchor of the
prefiltered rules (``grep -E -i``), faster than Python can look at each line."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Iterable
from typing import BinaryIO

import regex

logger = logging.getLogger(__name__)

GREP_MIN_BATCH_CHARS = 1 << 20
"""Characters a `RuleSet.match_lines` batch needs before grep prefilters it.

Starting grep costs about 2 ms (it compiles the alternation each time).
Measured on one core with the shipped rules on the benchmark's logs
(bench/rules_throughput.py): with grep, a batch of 1 MiB of free text goes
3.4 times faster and one of a training log 1.1 times; at 512 KiB the training
log is 10% slower with grep, at 4 MiB 1.4 times faster.
"""

GREP_TIMEOUT = 10.0
"""Seconds grep may take on one batch before the batch is matched without it."""


class GrepPrefilter:
    """One grep run that picks a batch's candidate lines for the prefiltered rules.

    It is started before the throughput scan and collected after it, so that
    on a machine with a core to spare grep costs no wall time. A prefiltered
    rule's match contains an anchor, which grep finds (see `grep_args`). A
    line holding a line break would shift grep's line numbers, so grep also
    reads a last line that it always selects: the batch is matched without
    grep unless that line keeps its number. grep's output goes to an
    in-memory file, so that it never waits for this process to read.
    """

    def __init__(self, process: subprocess.Popen[bytes], output: BinaryIO, errors: BinaryIO) -> None:
        self._process = process
        self._output = output
        self._errors = errors

    @classmethod
    def start(cls, command: list[str | bytes], text: str) -> GrepPrefilter | None:
        """Start grep ``command`` on the lines of ``text``; None (logged) if it cannot start."""
        with contextlib.ExitStack() as cleanup:
            try:
                output = cleanup.enter_context(_memory_file())
                errors = cleanup.enter_context(_memory_file())
                with _memory_file(text.encode("utf-8", "surrogatepass"), _GREP_SENTINEL) as batch:
                    process = subprocess.Popen(command, stdin=batch, stdout=output, stderr=errors, env={"LC_ALL": "C"})
            except OSError as exc:  # no grep, or no memory file: the batch is matched without grep
                logger.debug("grep prefilter unavailable, matching without it: %s", exc)
                return None
            cleanup.pop_all()  # grep writes to them: picked() closes them
        return cls(process, output, errors)

    def picked(self, count: int) -> list[int] | None:
        """Wait for grep; return the indexes of the ``count`` lines it picked, or None (logged)."""
        # A timer rather than wait(timeout=...), which polls with growing sleeps.
        watchdog = threading.Timer(GREP_TIMEOUT, self._process.kill)
        watchdog.daemon = True
        watchdog.start()
        try:
            returncode = self._process.wait()
            self._output.seek(0)
            self._errors.seek(0)
            output, errors = self._output.read(), self._errors.read()
        finally:
            watchdog.cancel()
            self._output.close()
            self._errors.close()
        if returncode not in (0, 1):  # 1: no line selected
            reason = f"timed out after {GREP_TIMEOUT} s" if returncode == -signal.SIGKILL else f"exited with {returncode}"
            logger.debug("grep prefilter %s, matching without it: %s", reason, errors.decode("utf-8", "replace").strip())
            return None
        # Each output row is "<line number>:<line>"; split at "\n" only, since
        # bytes.splitlines would also split at a "\r" inside a line.
        picked = [int(row.partition(b":")[0]) - 1 for row in output.split(b"\n") if row]
        if not picked or picked.pop() != count:
            logger.debug("a line holds a line break, so grep's line numbers are not ours: matching without it")
            return None
        return picked


def _memory_file(*parts: bytes) -> BinaryIO:
    """Return an anonymous in-memory file holding ``parts``, positioned at its start.

    grep reads its batch from one and writes to another: feeding a pipe
    instead cost a poll and a write per 4 KiB in `subprocess.run`, as long as
    grep itself took.
    """
    fd = os.memfd_create("ajr-grep-batch", os.MFD_CLOEXEC)
    batch = open(fd, "w+b", buffering=0)  # the caller closes it
    try:
        for part in parts:
            view = memoryview(part)
            while view:
                view = view[batch.write(view) :]
        batch.seek(0)
    except OSError:
        batch.close()
        raise
    return batch


# Characters special in a POSIX extended regex; a backslash makes each literal.
_ERE_SPECIAL_RE = regex.compile(r"[\\.\[\](){}*+?|^$]")


# The three non-ASCII characters that IGNORECASE folds to ASCII letters (KELVIN
# SIGN ~ k, LONG S ~ s, CAPITAL I WITH DOT ABOVE ~ i); see `prefilter._key_table`.
_ASCII_FOLDING = ("\u212a", "\u017f", "\u0130")


# The last line of each batch grep reads, selected by every grep command (see
# `GrepPrefilter`); a log line that holds it is only picked needlessly.
_GREP_SENTINEL_TEXT = "ajr: end of batch"
_GREP_SENTINEL = b"\n" + _GREP_SENTINEL_TEXT.encode()


def grep_args(literals: Iterable[str]) -> tuple[str | bytes, ...] | None:
    """Return grep's arguments that select the lines holding any of ``literals``, for the C locale.

    There ``-i`` folds ASCII letters only, while a rule ignoring case matches
    e.g. KELVIN SIGN for "k": the alternation also selects every line holding
    one of the characters that fold to an ASCII letter (as UTF-8 bytes).

    The literals go in as one alternation (-E) rather than as fixed strings
    (-F): GNU grep then runs its DFA, which on training logs measured about
    twice as fast as its multi-string search over these short literals.
    ``None`` if a literal holds a NUL, which no argument can carry. A literal
    with a line break is fine: grep splits the pattern there, into parts that
    each a line holding the literal also holds.
    """
    if any("\0" in literal for literal in literals):
        return None
    escaped = [_ERE_SPECIAL_RE.sub(r"\\\g<0>", literal) for literal in sorted(literals)]
    alternation = "|".join([*escaped, *_ASCII_FOLDING, _GREP_SENTINEL_TEXT]).encode("utf-8")
    # -a: a NUL byte in a line must not make grep report "binary file matches".
    return ("-n", "-E", "-i", "-a", "-e", alternation)
