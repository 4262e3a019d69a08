"""`ajr replay`: what AJR would have done on finished jobs' logs, offline, through the agent's own
rules and detection; bounded and robust on whatever a log directory holds."""

from __future__ import annotations

import gzip
import json
import os
import random
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from ajr_agent.adapters.slurm.memory import MemorySlurm
from ajr_agent.adapters.store import Store
from ajr_agent.detect.rules import Rule, RuleSet, default_rules_dir
from ajr_agent.domain.model import Better, Fault
from ajr_agent.domain.settings import Settings
from ajr_agent.ops import replay as replay_module
from ajr_agent.ops.replay import ReplayTotals, replay, replay_file
from ajr_agent.ops.replay_file import SHOWN_CHARS
from ajr_agent.runtime.agent import Agent, load_rules
from ajr_agent.runtime.inline_pool import InlinePool
from ajr_agent.surfaces.cli import main
from ajr_agent.views.replay_models import ReplayOut
from tests.unit.support import running

RULES = RuleSet.from_rules([
    Rule(name="boom", kind="anomaly", category="crash", fault=Fault.APPLICATION, priority=80,
         pattern=r"fatal: boom"),
    Rule(name="peer_gone", kind="anomaly", category="network", cascade=True, priority=70,
         pattern=r"peer \S+ went away"),
    Rule(name="gpu_dead", kind="anomaly", category="gpu_hardware", fault=Fault.NODE, priority=90,
         pattern=r"gpu \d+ is dead"),
    Rule(name="save_begin", kind="checkpoint", stage="started", pattern=r"begin save step \d+"),
    Rule(name="save_done", kind="checkpoint", pattern=r"save step \d+ done"),
    Rule(name="step_ms", kind="throughput", better="lower", unit="ms/iter", pattern=r"step_ms=(?P<value>[0-9.]+)"),
    Rule(name="tok_rate", kind="throughput", unit="tokens/s", pattern=r"tok/s=(?P<value>[0-9.]+)"),
])  # fmt: skip
SETTINGS = Settings(heartbeat_timeout=120, hang_startup_grace=300, straggler_fraction=0.7, straggler_reports=3)
T0 = datetime(2026, 3, 1, 12, 0, 0).timestamp()
NAME = "llama_4242_date_26-03-01_time_12-00-00.log"


def stamp(seconds: float) -> str:
    return datetime.fromtimestamp(T0 + seconds).strftime("%Y-%m-%d %H:%M:%S")


def training(steps: int, every: float = 10.0, start: float = 0.0, ms: float = 1000.0) -> list[str]:
    return [f"{stamp(start + i * every)} iter {i} step_ms={ms + i % 3} tok/s={8000 - i % 3}" for i in range(steps)]


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_a_log_as_the_agent_would_have_seen_it(tmp_path: Path) -> None:
    lines = [*training(40), f"{stamp(400)} begin save step 40", f"{stamp(405)} save step 40 done",
             *training(10, start=410), f"{stamp(520)} rank 3: fatal: boom", f"{stamp(521)} after it"]  # fmt: skip
    seen = replay_file(write(tmp_path / NAME, lines), RULES, SETTINGS)
    assert (seen.job_name, seen.job_id, seen.started, seen.lines, seen.error) == ("llama", 4242, T0, 54, "")
    assert seen.failure is not None and seen.failure.line.number == 53 and seen.failure.line.at == T0 + 520
    assert (seen.failure.rule, seen.failure.category, seen.failure.fault) == ("boom", "crash", Fault.APPLICATION)
    assert seen.anomaly_lines == 1 and seen.acted and seen.hang is None
    saves = seen.saves
    assert saves is not None and (saves.completed, saves.started, saves.failed, saves.unfinished) == (1, 1, None, None)
    assert saves.last_completed is not None and saves.last_completed.number == 42
    step, tokens = seen.series
    assert (step.rule, step.unit, step.better, step.charted, step.reports) == ("step_ms", "ms/iter", Better.LOWER,
                                                                               True, 50)  # fmt: skip
    assert (tokens.rule, tokens.better, tokens.charted, tokens.low, tokens.high) == ("tok_rate", Better.HIGHER, False,
                                                                                     7998.0, 8000.0)  # fmt: skip
    assert step.straggler is None and tokens.straggler is None
    assert seen.rule_lines == {"step_ms": 50, "tok_rate": 50, "save_begin": 1, "save_done": 1, "boom": 1}


def test_the_root_cause_is_picked_among_the_failure_lines_burst(tmp_path: Path) -> None:
    lines = [*training(5), f"{stamp(60)} rank 1: peer node-2 went away", f"{stamp(60.5)} rank 2: gpu 3 is dead",
             f"{stamp(90)} rank 4: fatal: boom"]  # fmt: skip
    seen = replay_file(write(tmp_path / NAME, lines), RULES, SETTINGS)
    assert seen.failure is not None and seen.failure.line.number == 6  # where AJR acts: the first line
    assert (seen.failure.rule, seen.failure.fault, seen.failure.cause_line.number) == ("gpu_dead", Fault.NODE, 7)
    assert seen.anomaly_lines == 3  # the boom 30 s later is not part of it


def test_without_timestamps_the_failure_line_alone_names_the_cause(tmp_path: Path) -> None:
    seen = replay_file(write(tmp_path / "x.log", ["peer a went away", "gpu 0 is dead"]), RULES, SETTINGS)
    assert seen.failure is not None and seen.failure.rule == "peer_gone" and seen.job_name is None


def test_a_hang_fires_after_the_heartbeat_timeout_past_the_start_up_grace(tmp_path: Path) -> None:
    quiet_start = [f"{stamp(0)} starting", f"{stamp(250)} loaded"]  # 250 s of silence within the grace
    lines = [*quiet_start, *training(20, start=300), f"{stamp(300 + 190 + 500)} resumed", *training(3, start=1000)]
    seen = replay_file(write(tmp_path / NAME, lines), RULES, SETTINGS)
    assert seen.hang is not None and seen.acted and seen.failure is None
    assert seen.hang.after.number == 22 and seen.hang.fires_at == T0 + 490 + 120 and seen.hang.silence == 500


def test_a_silence_after_the_failure_is_no_hang(tmp_path: Path) -> None:
    lines = [*training(40), f"{stamp(400)} fatal: boom", f"{stamp(4000)} much later"]
    assert replay_file(write(tmp_path / NAME, lines), RULES, SETTINGS).hang is None


def test_a_hang_in_a_long_batch_is_found_where_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Thousands of timed lines a second apart, one silence of 200 s somewhere in the middle.
    lines = [*training(3000, every=1.0, start=400), *training(3000, every=1.0, start=3600)]
    seen = replay_file(write(tmp_path / NAME, lines), RULES, SETTINGS)
    assert seen.hang is not None and seen.hang.after.number == 3000 and seen.hang.fires_at == T0 + 3399 + 120
    monkeypatch.setattr(replay_module, "READ_BYTES", 4096)  # many batches: the silence falls between two of them
    assert replay_file(tmp_path / NAME, RULES, SETTINGS).hang == seen.hang


def test_a_save_begun_then_a_failure_is_a_failed_save(tmp_path: Path) -> None:
    lines = [*training(5), f"{stamp(60)} begin save step 5", f"{stamp(70)} gpu 1 is dead"]
    saves = replay_file(write(tmp_path / NAME, lines), RULES, SETTINGS).saves
    assert saves is not None and (saves.completed, saves.started) == (0, 1)
    assert saves.failed is not None and saves.failed.number == 6 and saves.unfinished is None
    ended = replay_file(write(tmp_path / "b.log", [*training(5), f"{stamp(60)} begin save step 5"]), RULES, SETTINGS)
    assert ended.saves is not None and ended.saves.failed is None and ended.saves.unfinished is not None


def test_a_time_per_iteration_that_rises_is_the_straggler(tmp_path: Path) -> None:
    lines = [*training(10, start=400), *training(4, start=500, ms=1600)]
    seen = replay_file(write(tmp_path / NAME, lines), RULES, SETTINGS)
    step, tokens = seen.series
    assert step.straggler is not None and step.straggler.line.number == 13 and tokens.straggler is None
    assert step.straggler.recent == (1600.0, 1601.0, 1602.0) and not seen.acted  # recorded, not recovered
    recovering = SETTINGS.model_copy(update={"straggler_recovery": True})
    assert replay_file(tmp_path / NAME, RULES, recovering).acted


def test_points_are_thinned_evenly_and_keep_the_first(tmp_path: Path) -> None:
    (step, _) = replay_file(write(tmp_path / NAME, training(1000, every=1.0, start=400)), RULES, SETTINGS).series
    assert step.reports == 1000 and 100 <= len(step.points) <= 200 and step.points[0].line == 1
    gaps = {b.line - a.line for a, b in zip(step.points, step.points[1:])}
    assert len(gaps) == 1


def test_batches_do_not_change_what_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [*training(300), f"{stamp(3000)} begin save step 1", "x" * 5000, f"{stamp(3010)} peer q went away",
             "\u00e9t\u00e9 \udcff", f"{stamp(3010.2)} gpu 2 is dead", *training(50, start=3020)]  # fmt: skip
    log = tmp_path / NAME
    log.write_bytes("".join(f"{line}\r\n" for line in lines).encode("utf-8", "surrogateescape"))
    whole = replay_file(log, RULES, SETTINGS)
    for size in (64, 1000, 7777):
        monkeypatch.setattr(replay_module, "READ_BYTES", size)
        assert replay_file(log, RULES, SETTINGS) == whole
    assert whole.lines == len(lines) and whole.failure is not None and whole.failure.rule == "gpu_dead"


def test_long_lines_are_cut_as_the_agent_cuts_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(max_line_bytes=1024)
    log = tmp_path / "long.log"
    log.write_bytes(b"fatal: boom " + b"y" * 10_000_000 + b" gpu 1 is dead\nsave step 3 done\nlast line, no newline")
    monkeypatch.setattr(replay_module, "READ_BYTES", 65536)
    seen = replay_file(log, RULES, settings)
    assert seen.lines == 3 and seen.rule_lines == {"boom": 1, "save_done": 1}  # the dead gpu was cut away
    assert seen.failure is not None and len(seen.failure.line.text) == SHOWN_CHARS


def test_compressed_logs_are_read_as_they_are(tmp_path: Path) -> None:
    lines = [*training(30), f"{stamp(400)} fatal: boom"]
    plain = replay_file(write(tmp_path / NAME, lines), RULES, SETTINGS)
    packed = tmp_path / f"{NAME}.gz"
    packed.write_bytes(gzip.compress((tmp_path / NAME).read_bytes()))
    seen = replay_file(packed, RULES, SETTINGS)
    assert replace(seen, path=plain.path, size=plain.size) == plain and seen.job_id == 4242
    broken = tmp_path / "broken.log.gz"
    broken.write_bytes(gzip.compress((tmp_path / NAME).read_bytes() * 50)[:600])
    assert replay_file(broken, RULES, SETTINGS).error.startswith("broken gzip archive: ")


def test_what_is_no_log_gets_an_error_and_the_rest_goes_on(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    write(logs / NAME, [f"{stamp(1)} fatal: boom"])
    (logs / "core.log").write_bytes(random.Random(1).randbytes(100_000))
    (logs / "holes.log").write_bytes(b"fatal: boom\n" + b"\0" * 50_000)  # a crash cut its last writes
    os.mkfifo(logs / "pipe.log")
    (logs / "link.log").symlink_to(logs / NAME)
    (logs / "model.pt").write_bytes(b"\0" * 100)  # not a log name: not even looked at
    (logs / "sub").mkdir()
    write(logs / "sub" / "slurm-9.out", ["gpu 1 is dead"])
    (logs / "elsewhere").symlink_to(logs / "sub", target_is_directory=True)
    totals = ReplayTotals()
    seen = {Path(r.path).name: r for r in replay_module.timed(replay([logs, tmp_path / "missing.log"], RULES,
                                                                     SETTINGS), totals)}  # fmt: skip
    assert list(seen) == ["core.log", "holes.log", "link.log", NAME, "pipe.log", "slurm-9.out", "missing.log"]
    assert "binary" in seen["core.log"].error and "not a log" in seen["core.log"].error
    assert "symbolic link" in seen["link.log"].error and "not a regular file" in seen["pipe.log"].error
    assert "No such file" in seen["missing.log"].error
    assert all(seen[name].failure is not None for name in (NAME, "holes.log", "slurm-9.out"))
    assert (totals.files, totals.unreadable, totals.acted, totals.failures) == (7, 4, 3, 3)
    assert totals.rule_lines == {"boom": 2, "gpu_dead": 1}


def test_replay_agrees_with_the_agent_on_the_same_log(tmp_path: Path) -> None:
    """The replay's failure and root cause are the agent's own, on the shipped rules."""
    lines = ["[rank3]: NCCL watchdog thread terminated with exception: CUDA error: uncorrectable ECC error "
             "encountered", "RuntimeError: CUDA error: out of memory"]  # fmt: skip
    settings = Settings(state_db=tmp_path / "ajr.db", rules_dirs=(), annotate_jobs=False)
    agent = Agent(settings, Store(settings.state_db), MemorySlurm(), load_rules(settings), pool=InlinePool())
    queue = agent.gateway
    assert isinstance(queue, MemorySlurm)
    queue.jobs[7] = running(tmp_path)
    log = tmp_path / "train_7_date_26-01-01_time_00-00-00.log"
    log.write_text("step 1\n")
    agent.poll(200.0)
    write(log, ["step 1", *lines])
    agent.read_logs(201.0)
    ((_, _, _, verdict),) = agent.store.verdicts([7])
    seen = replay_file(log, RuleSet.load([default_rules_dir()]), settings)
    assert seen.failure is not None and verdict.cause == f"{seen.failure.category} ({seen.failure.rule})"
    assert verdict.fault == seen.failure.fault and seen.failure.line.number == 2


# ---- the command --------------------------------------------------------------------------------

SITE_RULES = """
[[rule]]
name = "site_boom"
kind = "anomaly"
category = "crash"
fault = "application"
priority = 60
pattern = 'frobnicator exploded'
"""


def test_the_command_prints_each_file_and_the_totals(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    write(logs / NAME, [f"{stamp(1)} loading", f"{stamp(2)} Rank0: (1) segmentation fault: artificial segfault"])
    write(logs / "quiet_5_date_26-03-01_time_12-00-00.log", [f"{stamp(1)} all well"])
    (logs / "bad.log").write_bytes(b"\0\1\2\3" * 100)
    config = tmp_path / "ajr.toml"
    config.write_text(f'state_db = "{tmp_path / "ajr.db"}"\nrules_dirs = []\n')
    done = CliRunner().invoke(main, ["--config", str(config), "replay", str(logs)])
    assert done.exit_code == 1, done.output  # a file could not be read
    assert f"{logs / NAME}: job llama (4242)" in done.output
    assert "failure at line 2" in done.output and "segfault (segfault), fault application" in done.output
    assert "bad.log: not replayed: binary" in done.output
    assert "3 files" in done.output and "AJR would have acted on 1: 1 failure line, 0 hangs" in done.output
    assert "segfault 1" in done.output


def test_the_command_takes_a_sites_rules_and_prints_json(tmp_path: Path) -> None:
    site = tmp_path / "rules.d"
    site.mkdir()
    (site / "50-site.toml").write_text(SITE_RULES)
    log = write(tmp_path / NAME, [f"{stamp(1)} the frobnicator exploded", f"{stamp(2)} bye"])
    config = tmp_path / "ajr.toml"
    config.write_text(f'state_db = "{tmp_path / "ajr.db"}"\nheartbeat_timeout = 600\n')
    done = CliRunner().invoke(main, ["--config", str(config), "replay", "--rules", str(site), "--json", str(log)])
    assert done.exit_code == 0, done.output
    answer = ReplayOut.model_validate(json.loads(done.output))
    (seen,) = answer.files
    assert seen.failure is not None and seen.failure.rule == "site_boom" and seen.job_id == 4242
    assert answer.heartbeat_timeout == 600 and answer.rules_dirs[-1] == str(site)
    assert answer.totals.files == 1 and answer.totals.rule_lines == {"site_boom": 1}
    spread = CliRunner().invoke(main, ["--config", str(config), "replay", "--rules", str(site), "--json", "--jobs",
                                       "2", str(log), str(log)])  # fmt: skip
    assert [f.failure for f in ReplayOut.model_validate(json.loads(spread.output)).files] == [seen.failure] * 2
    missing = CliRunner().invoke(main, ["--config", str(config), "replay", "--rules", str(tmp_path / "no"), str(log)])
    assert missing.exit_code != 0 and "no such rule directory" in missing.output


def test_several_processes_give_the_same_results_in_the_same_order(tmp_path: Path) -> None:
    site = tmp_path / "rules.d"
    site.mkdir()
    (site / "50-site.toml").write_text(SITE_RULES)
    logs = tmp_path / "logs"
    logs.mkdir()
    for n in range(12):
        events = [f"{stamp(900)} the frobnicator exploded"] if n % 3 == 0 else []
        write(logs / f"job_{n}_date_26-03-01_time_12-00-00.log", [*training(30 + n), *events])
    (logs / "junk.log").write_bytes(random.Random(2).randbytes(5000))
    dirs = [default_rules_dir(), site]
    alone = list(replay([logs], RuleSet.load(dirs), SETTINGS))
    together = list(replay_module.replay_in_processes([logs], dirs, SETTINGS, jobs=2))
    assert together == alone and len(alone) == 13
    assert [Path(r.path).name for r in together] == sorted(p.name for p in logs.iterdir())
    assert [r.failure is not None for r in together[:-1]] == [r.job_id is not None and r.job_id % 3 == 0
                                                              for r in together[:-1]]  # fmt: skip
    assert together[-1].error and sum(r.failure is not None for r in together) == 4
