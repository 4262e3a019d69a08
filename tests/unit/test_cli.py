"""The `ajr` CLI over a store written by the store's own code, and the rule tools."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from ajr_agent.surfaces.cli import main
from ajr_agent.adapters.logs import FilePosition
from ajr_agent.domain.model import Action, ActionKind, ManagedJob, Note, Outcome, Phase, UnmanagedJob
from ajr_agent.domain.spec import ResumeMode
from ajr_agent.adapters.store import ActionStatus, FollowedFile, Store


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "ajr.toml"
    path.write_text(f'state_db = "{tmp_path / "ajr.db"}"\nrules_dirs = ["{tmp_path / "rules.d"}"]\n')
    return path


@pytest.fixture
def filled(config: Path, tmp_path: Path) -> Path:
    store = Store(tmp_path / "ajr.db")
    store.set_meta(backend="commands", dry_run=False, last_poll_at=1.0, jobs_in_queue=3, followed_files=1)
    stopped = ManagedJob(
        job_id=42, name="llama", user="alice", user_id=1000, mode=ResumeMode.REQUEUE, requested_limit=10, limit=1,
        phase=Phase.STOPPED, requeues_used=1, attempt=1, stop_reason="segfault; requeue limit reached (1/1)",
        slurm_state="FAILED", last_anomaly="segfault (segfault)", last_action="released", work_dir="/runs",
    )  # fmt: skip
    store.save_job(stopped)
    store.add_note(42, 0, 100.0, Note("failure", "attempt 0 failed: segfault"), "/runs/x.log", "Rank0: segfault")
    action = store.journal(Action(ActionKind.REQUEUE_HOLD, 42, 0, "segfault"), dry_run=False, now=100.0)
    store.update_action(action, ActionStatus.DONE, 100.1)
    store.save_files([FollowedFile(42, 0, FilePosition("/runs/llama_42_date_26-01-01_time_00-00-00.log", 1, 1, 10))])
    store.save_unmanaged(UnmanagedJob(43, "bad", "bob", '{"APS": {"max_requeue_times": "3"}}',
                                      "max_requeue_times: Input should be a valid integer", 100.0))  # fmt: skip
    store.close()
    return config


def run(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    return result.exit_code, result.output


def test_status_lists_jobs_with_requeues_used_and_limit(filled: Path) -> None:
    code, out = run(filled, "status")
    assert code == 0
    assert "backend commands, live" in out
    line = next(l for l in out.splitlines() if l.startswith("42"))
    for part in ("llama", "alice", "requeue", "FAILED", "stopped", "1/1", "segfault (segfault)", "released"):
        assert part in line


def test_status_json(filled: Path) -> None:
    code, out = run(filled, "status", "--json")
    data = json.loads(out)
    assert code == 0 and data["agent"]["backend"] == "commands"
    assert data["jobs"]["jobs"][0]["job_id"] == 42 and data["jobs"]["jobs"][0]["requeues_used"] == 1


def test_show_tells_the_story_and_both_limits(filled: Path) -> None:
    code, out = run(filled, "show", "42")
    assert code == 0
    assert "requeues 1 of 1" in out
    assert "not requeued: segfault; requeue limit reached (1/1)" in out
    assert "attempt 0 failed: segfault" in out and "> Rank0: segfault" in out
    assert "requeue_hold  done" in out
    assert "llama_42_date_26-01-01_time_00-00-00.log" in out


def test_show_json_has_events_actions_and_files(filled: Path) -> None:
    data = json.loads(run(filled, "show", "42", "--json")[1])
    assert data["managed"] and data["job"]["phase"] == "stopped"
    assert data["events"][0]["kind"] == "failure"
    assert data["actions"][0]["kind"] == "requeue_hold" and data["actions"][0]["status"] == "done"
    assert data["log_files"][0]["attempt"] == 0


def test_show_explains_an_unmanaged_job(filled: Path) -> None:
    code, out = run(filled, "show", "43")
    assert code == 0 and "NOT managed: max_requeue_times: Input should be a valid integer" in out
    assert json.loads(run(filled, "show", "43", "--json")[1])["managed"] is False


def test_show_unknown_job_says_why(filled: Path) -> None:
    code, out = run(filled, "show", "777")
    assert code == 1 and "job 777 is not known to AJR" in out


def test_status_without_a_database_says_the_agent_has_not_run(config: Path) -> None:
    code, out = run(config, "status")
    assert code == 1 and "no state database" in out


def test_bad_config_is_reported_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "ajr.toml"
    path.write_text("poll_interval = -1\n")
    code, out = run(path, "status")
    assert code == 1 and "poll_interval" in out and "Traceback" not in out


def test_rules_check_accepts_the_shipped_rules(config: Path) -> None:
    code, out = run(config, "rules", "check")
    assert code == 0 and out.startswith("ok: ") and "checkpoint" in out and "anomaly" in out


def test_rules_check_points_out_rules_that_slow_matching(config: Path, tmp_path: Path) -> None:
    site = tmp_path / "site.d"
    site.mkdir()
    (site / "10-site.toml").write_text(
        '[[rule]]\nname = "any_digit_run"\nkind = "anomaly"\ncategory = "x"\npattern = "\\\\d{6,}"\n\n'
        '[[rule]]\nname = "tokens"\nkind = "throughput"\npattern = "^tokens/s: (?P<value>\\\\d+)"\n\n'
        '[[rule]]\nname = "fine"\nkind = "throughput"\npattern = "tokens/s: (?P<value>\\\\d+)"\n'
    )
    code, out = run(config, "rules", "check", str(site))
    assert code == 0 and out.startswith("ok: 3 rules")
    slow = [line for line in out.splitlines() if line.startswith("slow: ")]
    assert len(slow) == 2
    assert "'any_digit_run'" in slow[0] and "10-site.toml" in slow[0] and "every line" in slow[0]
    assert "'tokens'" in slow[1] and "line by line" in slow[1]
    _, shipped = run(config, "rules", "check")
    assert "slow: " not in shipped  # the shipped rules are all on the fast paths


def test_rules_check_names_file_rule_and_error(config: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.d"
    bad.mkdir()
    (bad / "10-site.toml").write_text('[[rule]]\nname = "mine"\nkind = "anomaly"\ncategory = "x"\npattern = "(unclosed"\n')
    code, out = run(config, "rules", "check", str(bad))
    assert code == 1
    assert "10-site.toml" in out and "mine" in out and "pattern" in out


def test_rules_check_missing_directory(config: Path, tmp_path: Path) -> None:
    code, out = run(config, "rules", "check", str(tmp_path / "nope"))
    assert code == 1 and "no such directory" in out


def test_rules_test_shows_which_line_matches_which_rule(config: Path, tmp_path: Path) -> None:
    log = tmp_path / "train_1_date_26-01-01_time_00-00-00.log"
    log.write_text("step 1\nSaved checkpoint to /ckpt/step1\nRank0: (1) segmentation fault: artificial segfault\n")
    code, out = run(config, "rules", "test", str(log))
    assert code == 0
    assert f"{log.name}:2: " in out and "[checkpoint]" in out
    assert f"{log.name}:3: segfault [anomaly/segfault/application]" in out
    assert ":1:" not in out
    assert out.strip().endswith("2 match(es)")


def test_show_lists_attempts_and_efficiency(filled: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "ajr.db")
    job = store.job(42)
    assert job is not None
    store.save_job(replace(job, attempt=0, attempt_started=1000.0, attempt_ended=1600.0,
                           attempt_outcome=Outcome.FAILED, attempt_end_reason="segfault",
                           attempt_first_checkpoint=1200.0, attempt_last_checkpoint=1500.0))  # fmt: skip
    store.save_job(replace(job, attempt=1, attempt_started=1660.0, attempt_ended=1800.0,
                           attempt_outcome=Outcome.COMPLETED, attempt_end_reason="COMPLETED"))  # fmt: skip
    store.close()
    code, out = run(filled, "show", "42")
    assert code == 0
    assert "attempt 0" in out and "failed" in out and "segfault" in out and "attempt 1" in out
    # 500 s saved + 140 s completed of 800 s: 100 s unsaved and 60 s restart lost.
    assert "training efficiency 80.0%" in out
    data = json.loads(run(filled, "show", "42", "--json")[1])
    assert [a["outcome"] for a in data["attempts"]] == ["failed", "completed"]
    assert data["efficiency"]["efficiency"] == pytest.approx(0.8)


def test_kpi_per_job_and_total(filled: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "ajr.db")
    job = store.job(42)
    assert job is not None
    store.save_job(replace(job, attempt=0, attempt_started=1000.0, attempt_ended=2000.0,
                           attempt_outcome=Outcome.COMPLETED))  # fmt: skip
    other = replace(job, job_id=50, user="bob", attempt=0, attempt_started=1000.0, attempt_ended=2000.0,
                    attempt_outcome=Outcome.FAILED, attempt_last_checkpoint=1500.0)  # fmt: skip
    store.save_job(other)
    store.close()
    code, out = run(filled, "kpi")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "100.0%" in lines["42"] and "50.0%" in lines["50"] and "75.0%" in lines["TOTAL"]
    data = json.loads(run(filled, "kpi", "--user", "bob", "--json")[1])
    assert [j["job"] for j in data["jobs"]] == ["50"] and data["total"]["efficiency"] == 0.5
    assert "no training time recorded" in run(filled, "kpi", "--user", "nobody")[1]


def test_kpi_since_accepts_durations_and_dates_and_refuses_the_rest(filled: Path) -> None:
    assert run(filled, "kpi", "--since", "24h")[0] == 0
    assert run(filled, "kpi", "--since", "2026-11-01")[0] == 0
    code, out = run(filled, "kpi", "--since", "yesterday")
    assert code == 2 and "give a duration such as 24h" in out


@pytest.mark.parametrize("command", ["requeue", "release", "forget"])
def test_operator_commands_are_refused_to_other_users(filled: Path, command: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr("os.geteuid", lambda: 65534)
    monkeypatch.setattr("ajr_agent.surfaces.cli_operator.CommandGateway.slurm_user", lambda self: "slurm")
    code, out = run(filled, command, "42")
    assert code == 1 and "only root or the Slurm user (slurm) may" in out and "you are nobody" in out
    store = Store(filled.parent / "ajr.db")
    assert [e.origin for e in store.actions(42)] == ["agent"] and store.forgotten() == {}


def test_forget_is_recorded_for_the_agent(filled: Path, tmp_path: Path) -> None:
    code, out = run(filled, "forget", "42")
    assert code == 0 and "stops managing it" in out
    assert Store(tmp_path / "ajr.db").forgotten() == {42: "root"}


def test_every_command_is_documented_in_the_readme() -> None:
    """An operator finds every `ajr` command in the README, with its help text in the CLI."""
    import click

    from tests.conftest import ROOT

    def walk(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
        found = []
        for name, command in group.commands.items():
            found.append((f"{prefix}{name}", command))
            if isinstance(command, click.Group):
                found += walk(command, f"{prefix}{name} ")
        return found

    readme = (ROOT / "README.md").read_text()
    commands = walk(main)
    assert {name for name, _ in commands} >= {"status", "show", "kpi", "explain", "rules check", "install", "doctor"}
    assert [name for name, _ in commands if f"ajr {name}" not in readme] == []
    assert [name for name, command in commands if not (command.help or "").strip()] == []
