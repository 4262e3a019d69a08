"""The Slurm gateway's parsing and its handling of failing, hung or hostile commands and output."""

from __future__ import annotations


import json
import os
import sys
import time
import types
from datetime import datetime
from pathlib import Path
from typing import Callable

import pytest

from ajr_agent.domain.settings import Settings, SlurmBackend
from ajr_agent.adapters.slurm.commands import CommandGateway
from ajr_agent.adapters.slurm.errors import CommandTooLong, SlurmError, SlurmOutputError
from ajr_agent.adapters.slurm.gateway import open_gateway
from ajr_agent.adapters.slurm.pyslurm_backend import PyslurmGateway, _snapshot_from_pyslurm
from ajr_agent.adapters.slurm.squeue import (
    SQUEUE_FIELDS,
    SQUEUE_SLURM_FIELDS,
    SQUEUE_TEXT_FIELDS,
    new_token,
    parse_squeue,
    parse_time,
)
from ajr_agent.adapters.slurm.sinfo import parse_node_states
from ajr_agent.domain.jobs import expand_stdout
from ajr_agent.domain.hostlist import HostlistError, HostlistTooLarge, compress_hostlist, expand_hostlist
from tests.conftest import LINE_BREAKS

DEFAULTS = {
    "JobID": "12", "State": "RUNNING", "UserId": "1000", "UserName": "alice", "RestartCnt": "2",
    "StartTime": "2026-01-02T03:04:05", "EndTime": "Unknown", "BatchFlag": "1", "Requeue": "1",
    "NodeList": "node-[1-2]", "Reason": "None", "Partition": "gpu", "NumTasks": "8", "WorkDir": "/runs/a b",
    "STDOUT": "/runs/out/%x-%j.out", "Name": "llama|70b", "Comment": '{"APS": {}}',
}  # fmt: skip
TOKEN = new_token()

# Everything Python's str.splitlines() breaks on, and the carriage return squeue users
# see as a line break in a terminal.


def record(token: str = TOKEN, **values: str) -> str:
    """One job as squeue prints it under the format AJR gives it: Slurm's fields ended by \\x1f, text by the token."""
    fields = {**DEFAULTS, **values}
    slurm = "".join(fields[f] + "\x1f" for f in SQUEUE_SLURM_FIELDS)
    return slurm + "".join(fields[f] + token for f in SQUEUE_TEXT_FIELDS) + "\n"


def old_format_line(**values: str) -> str:
    """A queue line in the format AJR used before the token (fields ended by \\x1f): what an attacker forges."""
    fields = {**DEFAULTS, **values}
    return "".join(fields[f] + "\x1f" for f in SQUEUE_FIELDS)


def test_token_cannot_be_read_as_a_field_width_and_changes_every_time() -> None:
    # squeue reads digits right after "Field:" as the field's width; a comma would end the field.
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(not t[0].isdigit() and t[0] not in " .+-" and "," not in t and t[0] not in t[1:] for t in tokens)


def test_parse_squeue_reads_every_field() -> None:
    [job] = parse_squeue(record(), TOKEN)
    assert job.job_id == 12 and job.state == "RUNNING" and job.user_id == 1000 and job.user == "alice"
    assert job.restart_count == 2 and job.batch and job.requeueable
    assert job.start_time == parse_time("2026-01-02T03:04:05") and job.end_time is None
    assert job.nodes == "node-[1-2]" and job.work_dir == "/runs/a b" and job.name == "llama|70b"
    assert job.comment == '{"APS": {}}' and job.running and not job.ended
    assert job.stdout_dir == "/runs/out"


def test_empty_queue_is_no_jobs() -> None:
    assert parse_squeue("", TOKEN) == []


@pytest.mark.parametrize("field", ["WorkDir", "STDOUT", "Name", "Comment", "Reason"])
@pytest.mark.parametrize("brk", LINE_BREAKS)
def test_user_text_with_line_breaks_and_separators_stays_in_its_field(field: str, brk: str) -> None:
    hostile = f"x{brk}{old_format_line(JobID='13', State='FAILED')}{brk}\x1f|,%"
    first, second = parse_squeue(record(**{field: hostile}) + record(JobID="13"), TOKEN)
    assert (first.job_id, second.job_id, second.state) == (12, 13, "RUNNING")
    shown = {"WorkDir": first.work_dir, "STDOUT": first.stdout, "Name": first.name, "Comment": first.comment,
             "Reason": first.reason}  # fmt: skip
    # A relative output file is where it is relative to the working directory (see below).
    assert shown[field] == (f"/runs/a b/{hostile}" if field == "STDOUT" else hostile)


def test_a_relative_output_file_is_taken_in_the_working_directory() -> None:
    # Slurm 26.05's squeue prints the default output file as sbatch left it (slurm-%j.out);
    # 22.05 and 24.11 print it whole.
    [job] = parse_squeue(record(STDOUT="slurm-12.out"), TOKEN)
    assert job.stdout == "/runs/a b/slurm-12.out" and job.stdout_dir == "/runs/a b"
    [job] = parse_squeue(record(STDOUT="/runs/out/x-12.out"), TOKEN)
    assert job.stdout == "/runs/out/x-12.out"


@pytest.mark.parametrize(
    "text",
    [TOKEN[:-1], TOKEN[1:], TOKEN[:1], TOKEN[:17], "a" + TOKEN[:-1], TOKEN[:-1] + "\n", TOKEN[:5] + TOKEN[:5],
     "\x1f" * 3, "\x1f" + "0" * 22, TOKEN[1:] + TOKEN[:-1]],
    ids=["all-but-last", "all-but-first", "first", "first-17", "a-all-but-last", "all-but-last-newline",
         "first-5-twice", "three-x1f", "x1f-zeros", "tail-then-head"],
)  # fmt: skip
def test_part_of_the_token_in_user_text_is_data(text: str) -> None:
    """A field ending with a prefix of the token must not swallow the real token after it."""
    first, second = parse_squeue(record(Name=text, Comment=text) + record(JobID="13", Name=text), TOKEN)
    assert first.name == first.comment == second.name == text and second.job_id == 13


def test_long_user_fields_come_out_whole() -> None:
    name = ("n\n" * 512)[:1024]
    work_dir = "/" + "d" * 4094
    [job] = parse_squeue(record(Name=name, WorkDir=work_dir, Comment="c" * 1024, STDOUT=work_dir + "/o"), TOKEN)
    assert (job.name, job.work_dir, job.comment, job.stdout) == (name, work_dir, "c" * 1024, work_dir + "/o")


def test_default_stdout_that_slurm_2205_cut_at_1023_bytes_is_made_whole() -> None:
    # 22.05's squeue prints the default "WorkDir/slurm-N.out" through a 1024-byte buffer.
    work_dir = "/runs/" + "é" * 600
    full = f"{work_dir}/slurm-12.out"
    cut = full.encode()[:1023].decode("utf-8", "replace")  # squeue cuts bytes, not characters
    [job] = parse_squeue(record(WorkDir=work_dir, STDOUT=cut), TOKEN)
    assert job.stdout == full


def test_null_comment_and_nodes_are_empty() -> None:
    [job] = parse_squeue(record(Comment="(null)", NodeList="", State="PENDING"), TOKEN)
    assert job.comment == "" and job.nodes == "" and not job.running and not job.ended


def test_states_with_flags_keep_the_base_state() -> None:
    [job] = parse_squeue(record(State="CANCELLED by 0"), TOKEN)
    assert job.state == "CANCELLED" and job.ended


def test_array_and_heterogeneous_records_are_skipped() -> None:
    jobs = parse_squeue(record(JobID="13_4") + record(JobID="13_[5-9%2]") + record(JobID="15+1") + record(JobID="14"),
                        TOKEN)  # fmt: skip
    assert [j.job_id for j in jobs] == [14]


@pytest.mark.parametrize(
    "output",
    [
        record()[:-1],  # no newline after the last token
        record() + "tail",  # text after the last record
        record().replace(TOKEN, "", 1),  # a field short
        record() + record()[: -len(TOKEN) - 1] + "\n",  # second record a field short
        record()[:-1] + record(JobID="13"),  # no newline between records
        record(UserId="x1000"),
        record(RestartCnt="two"),
        record(JobID="abc"),
        record(UserName="a\x1fb"),  # a field short before Reason: admin text AJR cannot read
        record(JobID="\x1f12"),
        "garbage\n",
    ],
)  # fmt: skip
def test_output_not_in_the_format_asked_for_fails_the_whole_read(output: str) -> None:
    with pytest.raises(SlurmOutputError):
        parse_squeue(output, TOKEN)


def test_a_job_listed_twice_fails_the_read() -> None:
    with pytest.raises(SlurmOutputError, match="job 12 twice"):
        parse_squeue(record() + record(JobID="13") + record(State="FAILED"), TOKEN)


@pytest.mark.parametrize("value", ["N/A", "Unknown", "None", "", "garbage-1"])
def test_placeholder_times_are_none(value: str) -> None:
    assert parse_time(value) is None


def test_expand_stdout_patterns_slurm_2205_leaves() -> None:
    [job] = parse_squeue(record(), TOKEN)
    assert expand_stdout("/o/%x_%j_%u_%A_100%%.out", job) == "/o/llama|70b_12_alice_12_100%.out"


# --- host lists -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hostlist", "names"),
    [
        ("gpu-[01-03,7],login1", ["gpu-01", "gpu-02", "gpu-03", "gpu-7", "login1"]),
        ("n[9-11]", ["n9", "n10", "n11"]),
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("n[1-2]-ib,n7", ["n1-ib", "n2-ib", "n7"]),
        ("", []),
    ],
)
def test_expand_hostlist(hostlist: str, names: list[str]) -> None:
    assert expand_hostlist(hostlist) == names


def test_expand_hostlist_refuses_past_its_limit_without_expanding() -> None:
    started = time.monotonic()
    for hostlist in ("n[0-99999999]", "n[1-3],m[1-2]", "a[1-1000000]b[1-1000000]"):
        with pytest.raises(HostlistTooLarge, match="more than the 4"):
            expand_hostlist(hostlist, limit=4)
    assert time.monotonic() - started < 1
    assert expand_hostlist("n[1-4]", limit=4) == ["n1", "n2", "n3", "n4"]


@pytest.mark.parametrize("hostlist", ["n[1-x]", "n[1-2", "n]1[", "n[[1]]", "n[-3]", "n[]", "n[999999-0,0-999999]"])
def test_malformed_hostlist_is_a_hostlist_error(hostlist: str) -> None:
    with pytest.raises(HostlistError):
        expand_hostlist(hostlist)


@pytest.mark.parametrize(
    "names",
    [["n1", "n2", "n3", "n5"], ["gpu-01", "gpu-02", "gpu-10", "n9", "n10", "login"], ["n01", "n1", "n001", "n0"],
     ["a1b", "a2b", "x"], [f"node{i:04d}" for i in range(0, 10000, 3)]],
)  # fmt: skip
def test_compress_hostlist_round_trips(names: list[str]) -> None:
    compact = compress_hostlist(names)
    assert sorted(expand_hostlist(compact)) == sorted(names)
    assert len(compact) < 40 or len(names) > 100


def test_compress_hostlist_is_compact() -> None:
    assert compress_hostlist(["n3", "n1", "n2", "n7", "gpu01", "gpu02", "n2"]) == "n[1-3,7],gpu[01-02]"


# --- commands: the real subprocess path, with stand-in Slurm commands ----------------------


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory put first on PATH, where a test writes stand-in Slurm commands."""
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", f"{directory}:{os.environ['PATH']}")
    return directory


def write_command(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


# A stand-in squeue that prints like Slurm's (src/squeue/opts.c, print.c): `-O` and `-o`
# on the command line win over $SQUEUE_FORMAT, which wins over $SQUEUE_FORMAT2; in a
# long format "Field:WIDTHsuffix" (digits after the colon are the width, 0 prints the
# whole value), in a short one "%WIDTHxsuffix"; each value is followed by its suffix and
# each job by a newline. The jobs come from $AJR_FAKE_QUEUE; each run is logged.
FAKE_SQUEUE = r'''
import json, os, re, sys

args = sys.argv[1:]
squeue_env = {k: v for k, v in os.environ.items() if k.startswith("SQUEUE_")}
with open(os.environ["AJR_FAKE_LOG"], "a") as log:
    log.write(json.dumps({"argv": args, "env": squeue_env}) + "\n")
LETTERS = {"i": "JobID", "x": "ExcNodes", "j": "Name", "T": "State"}


def strtol(text):
    found = re.match(r"[ \t\n\v\f\r]*[+-]?[0-9]+", text)  # C's isspace(), which Python's \s is not
    return (int(found.group()), text[found.end():]) if found else (0, text)


def long_items(fmt):
    for token in filter(None, fmt.split(",")):
        name, colon, rest = token.partition(":")
        width, suffix = strtol(rest[1:] if rest.startswith(".") else rest) if colon else (20, "")
        yield name.lower(), width, suffix


def short_items(fmt):
    for token in filter(None, fmt.split("%")):
        found = re.match(r"\.?([0-9]*)(.)", token, re.S)
        yield LETTERS[found.group(2)].lower(), int(found.group(1) or 0), token[found.end():]


def option(flag):
    return args[args.index(flag) + 1] if flag in args else None


if option("-O"):
    items = list(long_items(option("-O")))
elif option("-o"):
    items = list(short_items(option("-o")))
elif "SQUEUE_FORMAT" in os.environ:
    items = list(short_items(os.environ["SQUEUE_FORMAT"]))
elif "SQUEUE_FORMAT2" in os.environ:
    items = list(long_items(os.environ["SQUEUE_FORMAT2"]))
else:
    items = [("jobid", 18, " "), ("name", 8, " "), ("state", 8, "")]
jobs = json.load(open(os.environ["AJR_FAKE_QUEUE"]))
if option("-j"):
    jobs = [j for j in jobs if j["JobID"] in option("-j").split(",")]
    if not jobs:
        sys.exit("slurm_load_jobs error: Invalid job id specified")
out = []
for job in jobs:
    values = {k.lower(): v for k, v in job.items()}
    for field, width, suffix in items:
        value = values.get(field, "")
        out.append((value[:width].ljust(width) if width else value) + suffix)
    out.append("\n")
sys.stdout.buffer.write("".join(out).encode("utf-8", "surrogateescape"))
'''


@pytest.fixture
def fake_queue(fake_slurm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Install the stand-in squeue; the returned function sets the queue it prints (and gives its log)."""
    script = fake_slurm / "squeue"
    script.write_text(f"#!{sys.executable}\n{FAKE_SQUEUE}")
    script.chmod(0o755)
    queue, log = tmp_path / "queue.json", tmp_path / "squeue.log"
    monkeypatch.setenv("AJR_FAKE_QUEUE", str(queue))
    monkeypatch.setenv("AJR_FAKE_LOG", str(log))

    def set_queue(*jobs: dict[str, str]) -> Path:
        queue.write_text(json.dumps([{**DEFAULTS, **job} for job in jobs]))
        return log

    return set_queue


def runs(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.parametrize("brk", LINE_BREAKS)
@pytest.mark.parametrize("separator", ["\x1f", new_token()], ids=["old-separator", "token-of-another-read"])
def test_forged_record_in_a_job_name_does_not_become_a_job(fake_queue: Callable[..., Path], brk: str,
                                                           separator: str) -> None:  # fmt: skip
    """The attack of issue 10: Bob's job name ends his record and forges one that says Alice's job failed."""
    victim = {"JobID": "40", "State": "RUNNING", "UserName": "alice", "UserId": "1000", "Name": "train"}
    forged = "".join({**DEFAULTS, **victim, "State": "FAILED"}[f] + separator for f in SQUEUE_FIELDS)
    name = f"x{brk}{forged}{brk}"
    # Alice's job first: a parser where the last record of an id wins would take the forged one.
    fake_queue(victim, {"JobID": "41", "UserName": "bob", "UserId": "1001", "Name": name, "State": "PENDING"})
    jobs = {j.job_id: j for j in CommandGateway(timeout=10).list_jobs()}
    assert jobs[40].state == "RUNNING" and jobs[40].user == "alice" and jobs[40].name == "train"
    assert sorted(jobs) == [40, 41]
    assert jobs[41].name == name and jobs[41].user == "bob"


def test_format_travels_in_the_environment_with_a_fresh_token(fake_queue: Callable[..., Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    # The agent's own squeue settings must not change what it reads: SQUEUE_FORMAT would win
    # over SQUEUE_FORMAT2, SQUEUE_USERS would hide jobs (taken for vanished).
    monkeypatch.setenv("SQUEUE_FORMAT", "%i")
    monkeypatch.setenv("SQUEUE_USERS", "nobody")
    log = fake_queue({"JobID": "12"})
    gateway = CommandGateway(timeout=10)
    assert [j.job_id for j in gateway.list_jobs()] == [12]
    assert gateway.job(12) is not None
    first, second = runs(log)
    for run in (first, second):
        assert list(run["env"]) == ["SQUEUE_FORMAT2"]  # type: ignore[arg-type]
        # Every user can read a root process's argv in /proc; not its environment.
        assert all("\x1f" not in arg and arg != "-O" for arg in run["argv"])  # type: ignore[attr-defined]
    assert first["env"] != second["env"]


def test_a_job_listed_twice_by_squeue_fails_the_poll(fake_queue: Callable[..., Path]) -> None:
    fake_queue({"JobID": "12"}, {"JobID": "13"}, {"JobID": "12", "State": "FAILED"})
    with pytest.raises(SlurmError, match="job 12 twice"):
        CommandGateway(timeout=10).list_jobs()


def test_bytes_that_are_not_utf8_become_replacement_characters(fake_queue: Callable[..., Path]) -> None:
    fake_queue({"JobID": "12", "Name": "bad\udcffname", "WorkDir": "/runs/\udcfe"}, {"JobID": "13"})
    first, second = CommandGateway(timeout=10).list_jobs()
    assert (first.name, first.work_dir) == ("bad\ufffdname", "/runs/\ufffd")
    first.name.encode()  # what SQLite and JSON will do with it
    assert second.job_id == 13


def test_job_reads_one_job_through_the_same_parser(fake_queue: Callable[..., Path]) -> None:
    name = "x\n" + old_format_line(JobID="12", State="FAILED")
    log = fake_queue({"JobID": "12", "Name": name}, {"JobID": "13"})
    gateway = CommandGateway(timeout=10)
    job = gateway.job(12)
    assert job is not None and job.name == name and job.state == "RUNNING"
    assert gateway.job(99) is None
    assert runs(log)[0]["argv"] == ["-h", "-t", "all", "-j", "12"]


def partitions(**members: str) -> str:
    """`scontrol -o show partition` lines, a partition each, with its Nodes= list."""
    return "".join(f"PartitionName={name} AllowGroups=ALL Default=NO Nodes={nodes} State=UP\\n"
                   for name, nodes in members.items())  # fmt: skip


def fake_scontrol(directory: Path, record_to: Path, show_job: str = "", show_partition: str = "") -> None:
    """A scontrol that logs every call's arguments, one per line, and answers `show job` with
    `show_job`, `show partition` with `show_partition`."""
    write_command(
        directory, "scontrol",
        f'[ "$1 $2 $3" = "-o show partition" ] && {{ printf "{show_partition}"; exit 0; }}\n'
        f'for a in "$@"; do echo "$a" >> {record_to}; done\n'
        f'[ "$1 $2 $3" = "-o show job" ] && printf "%s\\n" "{show_job}"\nexit 0',
    )  # fmt: skip


def test_exclude_nodes_keeps_slurms_exclusions_and_ignores_the_job_name(
    fake_queue: Callable[..., Path], fake_slurm: Path, tmp_path: Path
) -> None:
    """A job name that looks like an ExcNodeList is data: the exclusions come from squeue's ExcNodes alone."""
    name = "x ExcNodeList=n[0-999999]"
    fake_queue({"JobID": "5", "Name": name, "ExcNodes": "n[1-2]"})
    calls = tmp_path / "scontrol.args"
    fake_scontrol(fake_slurm, calls, show_job=f"JobId=5 JobName={name} UserId=bob(1001) ExcNodeList=n[1-2]",
                  show_partition=partitions(gpu="n[1-4]", big="n3"))  # fmt: skip
    CommandGateway(timeout=10).exclude_nodes(5, ["n3"])
    assert calls.read_text().splitlines()[-3:] == ["update", "JobId=5", "ExcNodeList=n[1-3]"]


def test_exclude_nodes_leaves_out_nodes_the_cluster_does_not_have(
    fake_queue: Callable[..., Path], fake_slurm: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake_queue({"JobID": "5", "ExcNodes": "(null)"})
    calls = tmp_path / "scontrol.args"
    fake_scontrol(fake_slurm, calls, show_partition=partitions(gpu="n[1-2]"))
    gateway = CommandGateway(timeout=10)
    gateway.exclude_nodes(5, ["gone7", "n2"])
    assert calls.read_text().splitlines() == ["update", "JobId=5", "ExcNodeList=n2"]
    assert "gone7" in caplog.text
    calls.unlink()
    fake_queue({"JobID": "5", "ExcNodes": "n2"})
    gateway.exclude_nodes(5, ["n2", "gone7"])
    assert not calls.exists()  # nothing new to exclude: no update


def test_exclude_nodes_refuses_an_exclusion_list_bigger_than_the_cluster(
    fake_queue: Callable[..., Path], fake_slurm: Path, tmp_path: Path
) -> None:
    fake_queue({"JobID": "5", "ExcNodes": "n[0-99999999]"})
    fake_scontrol(fake_slurm, tmp_path / "scontrol.args", show_partition=partitions(gpu="n1,n2"))
    with pytest.raises(SlurmOutputError, match="more than the 2"):
        CommandGateway(timeout=10).exclude_nodes(5, ["n1"])


def test_partition_nodes_come_from_the_partitions_own_lists(fake_slurm: Path, tmp_path: Path) -> None:
    fake_scontrol(fake_slurm, tmp_path / "calls",
                  show_partition=partitions(gpu="n[1-2]", debug="n2", empty="(null)", every="ALL"))  # fmt: skip
    write_command(fake_slurm, "sinfo", "printf 'n1\\nn2\\nlogin\\n'")
    assert CommandGateway(timeout=10).partition_nodes() == {"gpu": ["n1", "n2"], "debug": ["n2"],
                                                            "every": ["n1", "n2", "login"]}  # fmt: skip


def test_a_partition_list_past_the_hostlist_limit_is_an_output_error(fake_slurm: Path, tmp_path: Path) -> None:
    fake_scontrol(fake_slurm, tmp_path / "calls", show_partition=partitions(huge="n[0-99999999]"))
    with pytest.raises(SlurmOutputError, match="partition huge"):
        CommandGateway(timeout=10).partition_nodes()


def test_hung_command_is_a_transient_error_within_the_timeout(fake_slurm: Path) -> None:
    write_command(fake_slurm, "scontrol", "sleep 30")
    gateway = CommandGateway(timeout=0.5)
    started = time.monotonic()
    with pytest.raises(SlurmError) as caught:
        gateway.release(5)
    assert caught.value.transient and "no answer within 0.5 s" in str(caught.value)
    assert time.monotonic() - started < 10


def test_unreachable_controller_is_transient(fake_slurm: Path) -> None:
    write_command(fake_slurm, "scontrol", "echo 'slurm_requeue error: Unable to contact slurm controller (connect failure)' >&2; exit 1")
    with pytest.raises(SlurmError) as caught:
        CommandGateway(timeout=5).requeue_hold(5)
    assert caught.value.transient and "requeuehold 5" in str(caught.value)


def test_refusal_is_permanent_and_keeps_slurms_words(fake_slurm: Path) -> None:
    write_command(fake_slurm, "scontrol", "echo 'Requested operation is presently disabled for job 5' >&2; exit 1")
    with pytest.raises(SlurmError) as caught:
        CommandGateway(timeout=5).requeue_hold(5)
    assert not caught.value.transient
    assert caught.value.reason == "Requested operation is presently disabled for job 5"


def test_missing_command_is_permanent(fake_slurm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(fake_slurm))
    with pytest.raises(SlurmError, match="not installed or not on PATH"):
        CommandGateway(timeout=5).list_jobs()


def test_command_that_cannot_be_executed_is_a_slurm_error(fake_slurm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_command(fake_slurm, "scontrol", "exit 0")
    (fake_slurm / "scontrol").chmod(0o644)
    monkeypatch.setenv("PATH", str(fake_slurm))
    with pytest.raises(SlurmError, match="EACCES") as caught:
        CommandGateway(timeout=5).release(5)
    assert not caught.value.transient and str(fake_slurm / "scontrol") in str(caught.value)


def test_environment_the_kernel_refuses_is_a_slurm_error(fake_slurm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real E2BIG from execve: one environment string over the kernel's 128 KiB limit."""
    write_command(fake_slurm, "scontrol", "exit 0")
    monkeypatch.setenv("AJR_TEST_HUGE", "x" * 200_000)
    with pytest.raises(SlurmError, match="E2BIG") as caught:
        CommandGateway(timeout=5).release(5)
    assert "AJR_TEST_HUGE" in str(caught.value) and not caught.value.transient


def test_argument_too_long_is_refused_before_the_command_runs(fake_slurm: Path, tmp_path: Path) -> None:
    record_to = tmp_path / "args"
    fake_scontrol(fake_slurm, record_to)
    with pytest.raises(CommandTooLong, match="argument 3 .* 200013 bytes") as caught:
        CommandGateway(timeout=5).update(7, AdminComment="x" * 200_000)
    assert not record_to.exists() and not caught.value.transient
    assert len(str(caught.value)) < 1000


def test_argument_list_too_long_is_refused_before_the_command_runs(fake_slurm: Path, tmp_path: Path) -> None:
    record_to = tmp_path / "args"
    fake_scontrol(fake_slurm, record_to)
    many = [f"{'x' * 100_000}{i}" for i in range(os.sysconf("SC_ARG_MAX") // 100_000 + 1)]
    with pytest.raises(CommandTooLong, match="arguments and environment"):
        CommandGateway(timeout=5).run(["scontrol", *many])
    assert not record_to.exists()


def test_update_passes_values_with_spaces_as_one_argument(fake_slurm: Path, tmp_path: Path) -> None:
    record_to = tmp_path / "args"
    fake_scontrol(fake_slurm, record_to)
    CommandGateway(timeout=5).update(7, AdminComment="ajr: requeued after segfault (1/3)", StartTime="now")
    assert record_to.read_text().splitlines() == [
        "update", "JobId=7", "AdminComment=ajr: requeued after segfault (1/3)", "StartTime=now"
    ]  # fmt: skip


def test_commands_go_to_the_cluster_slurm_conf_names(fake_slurm: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    record_to = tmp_path / "conf"
    write_command(fake_slurm, "squeue", f'echo "$SLURM_CONF" > {record_to}')
    monkeypatch.setenv("SLURM_CONF", "/etc/slurm/other-cluster.conf")
    assert CommandGateway(timeout=5).list_jobs() == []
    assert record_to.read_text().strip() == "/etc/slurm/other-cluster.conf"


def test_pyslurm_job_becomes_a_snapshot() -> None:
    job = types.SimpleNamespace(
        id=9, state="RUNNING", user_id=1000, user_name="alice", requeue_count=3, start_time=1700000000,
        end_time=None, is_batch_job=True, is_requeueable=False, allocated_nodes="gpu-[1-4]", state_reason="None",
        working_directory="/runs", standard_output="/runs/slurm-9.out", name="train", comment='{"APS": {}}',
    )  # fmt: skip
    snapshot = _snapshot_from_pyslurm(job)
    assert snapshot.job_id == 9 and snapshot.restart_count == 3 and snapshot.end_time is None
    assert snapshot.nodes == "gpu-[1-4]" and not snapshot.requeueable and snapshot.stdout_dir == "/runs"


def fake_pyslurm(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    module = types.ModuleType("pyslurm")
    module.__version__ = version  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pyslurm", module)


def test_auto_uses_commands_without_pyslurm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyslurm", None)
    assert open_gateway(Settings()).backend == "commands"


def test_explicit_pyslurm_without_pyslurm_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyslurm", None)
    with pytest.raises(SlurmError, match="pyslurm is not importable"):
        open_gateway(Settings(slurm_backend=SlurmBackend.PYSLURM))


def test_pyslurm_is_used_only_when_it_matches_slurm(fake_slurm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_command(fake_slurm, "scontrol", "echo 'slurm 25.11.2'")
    fake_pyslurm(monkeypatch, "25.11.0")
    assert isinstance(open_gateway(Settings()), PyslurmGateway)
    fake_pyslurm(monkeypatch, "24.5.0")
    assert open_gateway(Settings()).backend == "commands"
    with pytest.raises(SlurmError, match="does not match Slurm 25.11.2"):
        open_gateway(Settings(slurm_backend=SlurmBackend.PYSLURM))


@pytest.mark.parametrize(
    ("slurm", "pyslurm"),
    [("22.05.8", "22.5.3"), ("23.02.7", "23.2.2"), ("24.05.4", "24.5.0"), ("25.05.1", "25.5.0"),
     ("23.11.10", "23.11.0"), ("24.11.5-1", "24.11.0.post1")],
)  # fmt: skip
def test_pyslurm_matches_slurm_by_number_not_by_text(fake_slurm: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture, slurm: str,
                                                     pyslurm: str) -> None:  # fmt: skip
    """pyslurm numbers its releases 22.5, 23.2, 24.5, 25.5 for Slurm's 22.05, 23.02, 24.05, 25.05."""
    write_command(fake_slurm, "scontrol", f"echo 'slurm {slurm}'")
    fake_pyslurm(monkeypatch, pyslurm)
    caplog.set_level("INFO", logger="ajr_agent.adapters.slurm.gateway")
    assert isinstance(open_gateway(Settings()), PyslurmGateway)
    assert f"Slurm backend: pyslurm ({pyslurm} matches Slurm {slurm})" in caplog.text
    assert isinstance(open_gateway(Settings(slurm_backend=SlurmBackend.PYSLURM)), PyslurmGateway)


@pytest.mark.parametrize(("slurm", "pyslurm"), [("24.11.1", "24.1.0"), ("23.02.7", "23.20.0"), ("22.05.8", "23.2.0"),
                                                 ("22.05.8", "unknown"), ("unreadable", "22.5.0")])  # fmt: skip
def test_pyslurm_of_another_release_is_not_used(fake_slurm: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture, slurm: str, pyslurm: str) -> None:
    write_command(fake_slurm, "scontrol", f"echo 'slurm {slurm}'")
    fake_pyslurm(monkeypatch, pyslurm)
    caplog.set_level("INFO", logger="ajr_agent.adapters.slurm.gateway")
    assert open_gateway(Settings()).backend == "commands"
    assert "Slurm backend: commands" in caplog.text and f"pyslurm {pyslurm} does not match Slurm" in caplog.text
    with pytest.raises(SlurmError, match=f"pyslurm {pyslurm} does not match Slurm"):
        open_gateway(Settings(slurm_backend=SlurmBackend.PYSLURM))


def test_the_choice_of_backend_is_logged_with_its_reason(monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    caplog.set_level("INFO", logger="ajr_agent.adapters.slurm.gateway")
    open_gateway(Settings(slurm_backend=SlurmBackend.COMMANDS))
    assert "Slurm backend: commands (slurm_backend = commands)" in caplog.text
    monkeypatch.setitem(sys.modules, "pyslurm", None)
    open_gateway(Settings())
    assert "Slurm backend: commands (pyslurm is not importable:" in caplog.text


SHOW_CONFIG = """Configuration data as of 2026-01-01T00:00:00
AccountingStorageBackupHost = (null)
SchedulerParameters     = bf_interval=30,SlurmUser=mallory
SlurmUser               = slurm(64030)
SlurmctldHost[0]        = vm
"""


@pytest.mark.parametrize(("config", "user"), [(SHOW_CONFIG, "slurm"), ("ClusterName             = c\n", "root")])
def test_slurm_user_is_read_from_the_live_config(fake_slurm: Path, config: str, user: str) -> None:
    write_command(fake_slurm, "scontrol", f"[ \"$1 $2\" = 'show config' ] && cat <<'END'\n{config}END")
    assert CommandGateway(timeout=5).slurm_user() == user


# ---- the nodes' states (sinfo) ----------------------------------------------------------------------


def test_node_states_read_sinfos_states_flags_reasons_and_times() -> None:
    text = ("n1|127.0.0.1|allocated|Unknown|none\n"
            "n3|10.0.0.3|down*|2026-12-03T07:12:08|Not responding\n"
            "n3|10.0.0.3|down*|2026-12-03T07:12:08|Not responding\n"  # a second partition
            "n4|n4|drained|2026-12-03T07:13:00|ajr: job 12 gpu_hardware (xid) | evidence\n"
            "n5|n5|idle~|Unknown|none\n")  # fmt: skip
    states = {s.name: s for s in parse_node_states(text)}
    assert list(states) == ["n1", "n3", "n4", "n5"]
    assert (states["n1"].state, states["n1"].responding, states["n1"].reason, states["n1"].lost) == (
        "allocated", True, "", False)  # fmt: skip
    lost = states["n3"]
    assert (lost.state, lost.responding, lost.lost, lost.address) == ("down", False, True, "10.0.0.3")
    assert lost.reason_at == datetime(2026, 12, 3, 7, 12, 8).timestamp()
    assert lost.describe() == "n3 down, not responding: Not responding (since 2026-12-03T07:12:08)"
    assert states["n4"].reason == "ajr: job 12 gpu_hardware (xid) | evidence" and not states["n4"].lost
    assert (states["n5"].state, states["n5"].lost) == ("idle", False)


def test_a_line_break_in_an_admins_reason_stays_in_the_reason() -> None:
    text = "n2|n2|drained|2026-12-03T07:13:00|bad | line\nn1|idle|x\nn1|n1|idle|Unknown|none\n"
    states = {s.name: s for s in parse_node_states(text)}
    assert states["n2"].reason == "bad | line\nn1|idle|x"
    assert states["n1"].state == "idle"


@pytest.mark.parametrize(("shown", "tasks"), [("8", 8), ("N/A", 0), ("", 0), ("\u0663", 0)])
def test_the_task_count_is_slurms_number_or_not_known(shown: str, tasks: int) -> None:
    [job] = parse_squeue(record(NumTasks=shown), TOKEN)
    assert job.tasks == tasks


def test_unexclude_nodes_takes_out_only_the_nodes_asked(fake_queue: Callable[..., Path], fake_slurm: Path,
                                                        tmp_path: Path) -> None:  # fmt: skip
    fake_queue({"JobID": "5", "ExcNodes": "n[1-3]"})
    calls = tmp_path / "scontrol.args"
    fake_scontrol(fake_slurm, calls, show_partition=partitions(gpu="n[1-4]"))
    gateway = CommandGateway(timeout=10)
    gateway.unexclude_nodes(5, ["n9"])  # not in the list: nothing to change, no update
    assert not calls.exists()
    gateway.unexclude_nodes(5, ["n3"])
    assert calls.read_text().splitlines() == ["update", "JobId=5", "ExcNodeList=n[1-2]"]


def test_reboot_asks_slurm_to_reboot_the_node_once_idle_and_resume_it(fake_slurm: Path, tmp_path: Path) -> None:
    calls = tmp_path / "scontrol.args"
    fake_scontrol(fake_slurm, calls)
    CommandGateway(timeout=10).reboot("n3", "ajr: lemon: job 7 gpu_hardware (xid_79)")
    assert calls.read_text().splitlines() == ["reboot", "ASAP", "nextstate=RESUME",
                                              "reason=ajr: lemon: job 7 gpu_hardware (xid_79)", "n3"]
