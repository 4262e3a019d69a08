"""`ajr replay DIR|FILE...`: what AJR would have done on logs of jobs that are over, file by file
and in total, as text or as the JSON of views.replay_models (streamed, a file per line)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import click

from ajr_agent.detect.rules import RuleSet, default_rules_dir
from ajr_agent.ops.replay import FileReplay, ReplayTotals, replay, replay_in_processes, timed
from ajr_agent.ops.replay_file import LineSeen, SeriesSeen
from ajr_agent.surfaces.cli_context import Context, fail_on_ajr_errors
from ajr_agent.surfaces.cli_render import LINE_SHOWN
from ajr_agent.views.replay_models import ReplayFileOut, ReplayTotalsOut


@click.command("replay")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--rules", "rules_dirs", multiple=True, type=click.Path(path_type=Path),
              help="site rule directories to try, read after the shipped rules (default: the configured rules_dirs)")
@click.option("--jobs", type=click.IntRange(1, 512), default=1, show_default=True,
              help="processes to spread the files over (a core each)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output, a file per line")
@click.pass_obj
@fail_on_ajr_errors
def replay_command(ctx: Context, paths: tuple[Path, ...], rules_dirs: tuple[Path, ...], jobs: int,
                   as_json: bool) -> None:  # fmt: skip
    """What AJR would have done on the logs of PATHS (files, or directories of them), offline.

    Exits 1 when a file could not be read (each has its error; the others are replayed)."""
    missing = [d for d in rules_dirs if not d.is_dir()]
    if missing:
        raise click.ClickException(f"no such rule directory: {', '.join(map(str, missing))}")
    settings = ctx.settings
    dirs = [default_rules_dir(), *(rules_dirs or settings.rules_dirs)]
    rules = RuleSet.load(dirs)  # in this process too: a broken rule file stops here, with its error
    totals = ReplayTotals()
    found = replay(paths, rules, settings) if jobs == 1 else replay_in_processes(paths, dirs, settings, jobs)
    results = timed(found, totals)
    if as_json:
        _stream_json(results, totals, dirs, settings.heartbeat_timeout)
    else:
        for result in results:
            for line in file_lines(result):
                click.echo(line)
        for line in total_lines(totals):
            click.echo(line)
    sys.exit(1 if totals.unreadable else 0)


def _stream_json(results: Iterable[FileReplay], totals: ReplayTotals, dirs: list[Path], timeout: float) -> None:
    """A views.replay_models.ReplayOut, written as each file is read: memory stays that of one file."""
    click.echo(f'{{"rules_dirs": {json.dumps([str(d) for d in dirs])}, "heartbeat_timeout": {json.dumps(timeout)}, '
               '"files": [')  # fmt: skip
    for index, result in enumerate(results):
        click.echo(("," if index else "") + ReplayFileOut.model_validate(result).model_dump_json())
    click.echo(f'], "totals": {ReplayTotalsOut.model_validate(totals).model_dump_json()}}}')


def _when(at: float | None) -> str:
    return f" ({datetime.fromtimestamp(at):%Y-%m-%d %H:%M:%S})" if at is not None else ""


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}" if n == 1 else f"{n:,} {what}s"


def _size(size: float) -> str:
    return f"{size / 1e6:,.1f} MB" if size >= 1e5 else f"{size / 1e3:,.1f} kB"


def _quoted(line: LineSeen) -> str:
    return f"    > {line.text[:LINE_SHOWN]}"


def file_lines(seen: FileReplay) -> list[str]:
    """One file's part of the report."""
    if seen.error and not seen.lines:
        return [f"{seen.path}: not replayed: {seen.error}"]
    job = f"job {seen.job_name} ({seen.job_id}), " if seen.job_name is not None else ""
    out = [f"{seen.path}: {job}{_size(seen.size)}, {_count(seen.lines, 'line')}"]
    if seen.error:
        out.append(f"  stopped: {seen.error}")
    if seen.failure is not None:
        failure = seen.failure
        cause = "" if failure.cause_line == failure.line else f"; root cause at line {failure.cause_line.number:,}"
        out += [f"  failure at line {failure.line.number:,}{_when(failure.line.at)}: {failure.category} "
                f"({failure.rule}), fault {failure.fault.value}{cause}", _quoted(failure.line)]  # fmt: skip
        if failure.cause_line != failure.line:
            out.append(_quoted(failure.cause_line))
    if seen.hang is not None:
        hang = seen.hang
        out += [f"  hang would have fired{_when(hang.fires_at)} after line {hang.after.number:,}: "
                f"{hang.silence:.0f} s of silence, heartbeat timeout {hang.timeout:g} s",
                _quoted(hang.after)]  # fmt: skip
    saves = seen.saves
    if saves is not None and (saves.completed or saves.started):
        last = f" (last at line {saves.last_completed.number:,})" if saves.last_completed else ""
        begun = f", {saves.started:,} begun" if saves.started else ""
        text = f"  checkpoints: {saves.completed:,} completed{last}{begun}"
        if saves.failed is not None:
            text += f"; the save begun at line {saves.failed.number:,} failed: the failure came before it completed"
        elif saves.unfinished is not None:
            text += f"; the save begun at line {saves.unfinished.number:,} never completed (the log ends)"
        out.append(text)
    out += [_series_line(series) for series in seen.series]
    if not seen.acted and not seen.error:
        out.append("  nothing AJR would have acted on")
    return out


def _series_line(series: SeriesSeen) -> str:
    unit = f"{series.unit}, " if series.unit else ""
    charted = ", charted" if series.charted else ""
    text = (f"  throughput {series.rule} ({unit}{series.better.value} is better{charted}): "
            f"{_count(series.reports, 'report')}, {series.low:g}-{series.high:g}, mean {series.mean:.4g}")  # fmt: skip
    if series.straggler is not None:
        straggler = series.straggler
        recent = ", ".join(f"{v:g}" for v in straggler.recent)
        text += f"; straggler at line {straggler.line.number:,}: {recent} against a baseline of {straggler.baseline:g}"
    return text


def total_lines(totals: ReplayTotals) -> list[str]:
    """The report's last lines: all the files together."""
    unreadable = f"; {totals.unreadable:,} could not be read (or not to their end)" if totals.unreadable else ""
    rules = ", ".join(f"{name} {n:,}" for name, n in totals.rule_lines.most_common())
    return [
        f"{_count(totals.files, 'file')} ({_size(totals.bytes)}, {_count(totals.lines, 'line')}) in "
        f"{totals.seconds:.1f} s ({totals.mb_per_second:.0f} MB/s){unreadable}",
        f"AJR would have acted on {totals.acted:,}: {_count(totals.failures, 'failure line')}, "
        f"{_count(totals.hangs, 'hang')}; {_count(totals.stragglers, 'straggler')} recorded; "
        f"{_count(totals.saves_completed, 'checkpoint save')} completed, {totals.saves_failed:,} failed",
        f"lines matched per rule: {rules or 'none'}",
    ]


COMMANDS = (replay_command,)
