"""The in-memory Slurm's answers to the node ledger's requests: a reboot asked, an exclusion taken back."""

from __future__ import annotations

from pathlib import Path

import pytest

from ajr_agent.adapters.slurm import SlurmError
from ajr_agent.adapters.slurm.memory import MemorySlurm
from tests.unit.support import called, running


@pytest.fixture
def slurm(tmp_path: Path) -> MemorySlurm:
    queue = MemorySlurm(partitions={"gpu": ["n1", "n2", "n3"]})
    queue.jobs[7] = running(tmp_path, state="PENDING", nodes="", start_time=None)
    return queue


def test_a_reboot_drains_the_node_until_it_has_rebooted(slurm: MemorySlurm) -> None:
    slurm.reboot("n3", "ajr: lemon: job 7")
    assert slurm.drained == {"n3": "ajr: lemon: job 7"} and "n3" in slurm.nodes_out_of_service()
    slurm.finish_reboot("n3")
    assert "n3" not in slurm.nodes_out_of_service()
    assert called(slurm) == ["reboot n3 reason=ajr: lemon: job 7"]
    with pytest.raises(SlurmError, match="Invalid node name specified"):
        slurm.reboot("n9", "r")


def test_an_exclusion_taken_back_keeps_the_rest_of_the_list(slurm: MemorySlurm, tmp_path: Path) -> None:
    slurm.excluded[7] = ["n1", "n3"]
    slurm.unexclude_nodes(7, ["n3"])
    assert slurm.excluded[7] == ["n1"]
    slurm.unexclude_nodes(7, ["n1"])
    assert slurm.excluded[7] == []
    slurm.jobs[7] = running(tmp_path, state="RUNNING")
    slurm.excluded[7] = ["n2"]
    with pytest.raises(SlurmError, match="no longer pending"):
        slurm.unexclude_nodes(7, ["n2"])
