"""Slurm's configuration as AJR reads it: `scontrol show config`, and slurm.conf with its includes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ajr_agent.adapters.slurm_config import listed, parse_show_config, parse_slurm_conf, plugin_names, slurm_user

# The shape of `scontrol show config` on Slurm 22.05: a header, `Key = value` lines padded to
# one column, sections whose keys may repeat, and the controllers' state at the end.
SHOW_CONFIG = """\
Configuration data as of 2026-12-02T07:08:38
AccountingStorageTRES   = cpu,mem,energy,node,billing,fs/disk,vmem,pages
EpilogSlurmctld         = /usr/local/lib/ajr/ajr-epilog
GpuFreqDef              = high,memory=high
JobSubmitPlugins        = lua
MinJobAge               = 300 sec
SchedulerParameters     = bf_window=4320,bf_resolution=600
SLURM_CONF              = /etc/slurm/slurm.conf
SlurmUser               = slurm(64030)
SlurmctldHost[0]        = ctl1(10.0.0.1)

MPI Plugins Configuration:
PMIxCliTmpDirBase       = (null)
MinJobAge               = 1 sec

Slurmctld(primary) at ctl1 is UP
"""


def test_show_config_reads_key_value_lines_and_nothing_else() -> None:
    config = parse_show_config(SHOW_CONFIG)
    assert config["EpilogSlurmctld"] == "/usr/local/lib/ajr/ajr-epilog"
    assert config["SlurmctldHost[0]"] == "ctl1(10.0.0.1)"
    assert config["PMIxCliTmpDirBase"] == "(null)"
    # The separator is ` = `: an `=` inside a value belongs to the value.
    assert config["SchedulerParameters"] == "bf_window=4320,bf_resolution=600"
    assert config["GpuFreqDef"] == "high,memory=high"
    # The header, the blank lines, the section titles and the controllers' state are no settings.
    assert not [key for key in config if " " in key or key.endswith(":")]
    # An indexed list (SlurmctldHost[0]) is also there under its plain key.
    assert config["SlurmctldHost"] == "ctl1(10.0.0.1)"
    assert len(config) == 11


def test_in_show_config_the_first_of_a_repeated_key_wins() -> None:
    # A section's own keys come after the main ones: the main one is slurmctld's.
    assert parse_show_config(SHOW_CONFIG)["MinJobAge"] == "300 sec"


@pytest.mark.parametrize(("value", "user"), [("slurm(64030)", "slurm"), ("root(0)", "root"), ("slurm", "slurm"),
                                             ("", None)])  # fmt: skip
def test_the_slurm_user_comes_without_its_uid(value: str, user: str | None) -> None:
    assert slurm_user({"SlurmUser": value}) == user


def test_no_slurm_user_is_none() -> None:
    assert slurm_user({}) is None
    assert slurm_user(parse_show_config(SHOW_CONFIG)) == "slurm"


@pytest.mark.parametrize(("value", "items"), [
    ("/a,/b", ["/a", "/b"]), (" /a , ", ["/a"]), ("(null)", []), ("", []), (None, []),
])  # fmt: skip
def test_listed_values_are_comma_separated_and_null_is_none(value: str | None, items: list[str]) -> None:
    assert listed(value) == items


def test_plugin_names_come_without_their_type() -> None:
    assert plugin_names("job_submit/lua,pbs") == ["lua", "pbs"]
    assert plugin_names("(null)") == []


def test_slurm_conf_is_read_case_insensitively_with_includes(tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "slurm" / "slurm.conf"
    conf.parent.mkdir(parents=True)
    (conf.parent / "hooks.conf").write_text("jobsubmitplugins=job_submit/lua # AJR\n")
    conf.write_text("# EpilogSlurmctld=/commented/out\nSlurmUser=slurm\nMinJobAge=60\nInclude hooks.conf\n"
                    "Include /etc/slurm/abs.conf\nNodeName=n1 CPUs=4\n")  # fmt: skip
    (conf.parent / "abs.conf").write_text("EpilogSlurmctld=/usr/local/lib/ajr/ajr-epilog\nMinJobAge=120\n")
    values = parse_slurm_conf(conf, root=tmp_path)
    assert values["slurmuser"] == "slurm" and values["jobsubmitplugins"] == "job_submit/lua"
    assert values["epilogslurmctld"] == "/usr/local/lib/ajr/ajr-epilog" and values["nodename"] == "n1"
    assert values["minjobage"] == "120", "the last setting wins, as in Slurm"


def test_a_missing_slurm_conf_reads_as_empty(tmp_path: Path) -> None:
    assert parse_slurm_conf(tmp_path / "slurm.conf") == {}


def test_includes_that_include_each_other_end(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text("Include b.conf\nSlurmUser=slurm\n")
    (tmp_path / "b.conf").write_text("Include a.conf\n")
    assert parse_slurm_conf(tmp_path / "a.conf", root=tmp_path) == {"slurmuser": "slurm"}


def test_slurm_conf_lists_every_controller_the_primary_first(tmp_path: Path) -> None:
    # Each SlurmctldHost line adds a controller; for other keys the last line wins.
    conf = tmp_path / "slurm.conf"
    conf.write_text("SlurmctldHost=ctl1(10.0.0.1)\nSlurmctldHost=ctl2(10.0.0.2)\nMinJobAge=10\nMinJobAge=300\n")
    values = parse_slurm_conf(conf)
    assert values["slurmctldhost"] == "ctl1(10.0.0.1),ctl2(10.0.0.2)" and values["minjobage"] == "300"
