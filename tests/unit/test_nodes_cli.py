"""Operators see the node ledger: `ajr nodes` (table and --json), `ajr node forgive`, `ajr show`'s budgets,
`GET /api/nodes`, `POST /api/nodes/forgive` and the node gauges of /metrics, over a store the agent's
own code wrote."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ajr_agent.adapters.store import ActionStatus, Store
from ajr_agent.domain.ledger import Blame, NodeRecord
from ajr_agent.domain.model import Action, ActionKind, Basis, Budget, ManagedJob
from ajr_agent.domain.settings import Settings
from ajr_agent.domain.spec import ResumeMode
from ajr_agent.runtime.node_ledger import RECORDED
from ajr_agent.surfaces.cli import main
from ajr_agent.surfaces.metrics import exposition
from ajr_agent.surfaces.web import Service
from ajr_agent.views.nodes import NodeList
from tests.unit.support import TOKEN

NOW = time.time()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A store with a ledger: n3 a lemon (three users' jobs, its own log), n5 named in five of mallory's job
    logs only, n2 trusted again by an operator; a job with requeues by cause."""
    store = Store(tmp_path / "ajr.db")
    settings = Settings(node_requeue_cap=5)
    store.set_meta(**{key: getattr(settings, key) for key in RECORDED})
    store.nodes.add_blames([Blame("n3", job, 0, user, NOW - 60 * job, Basis.NODE_LOG, "gpu_hardware (gpu_xid_hardware)")
                            for job, user in ((1, "alice"), (2, "bob"), (3, "carol"))])  # fmt: skip
    store.nodes.add_blames([Blame("n5", job, 0, "mallory", NOW - 60 * job, Basis.JOB_LOG, "gpu_hardware (gpu_ecc_error)")
                            for job in range(10, 15)])  # fmt: skip
    store.nodes.save_records([NodeRecord("n3", lemon_since=NOW - 60, in_service=False),
                              NodeRecord("n5", in_service_since=NOW - 3600),
                              NodeRecord("n2", trusted_at=NOW - 30, trusted_by="operator:root", counted_since=NOW - 30)])
    store.nodes.excluded(["n3"], 40, NOW - 50)
    drain = store.journal(Action(ActionKind.DRAIN, 3, 0, "ajr: lemon: job 3 gpu_hardware", nodes="n3"), False, NOW - 59)
    store.update_action(drain, ActionStatus.DONE, NOW - 58)
    store.save_job(ManagedJob(7, "train", "alice", 1000, ResumeMode.REQUEUE, 10, 10, requeues_used=3, app_requeues=1,
                              node_requeues=2, charged=Budget.NODE, keep_out="n3"))  # fmt: skip
    store.close()
    path = tmp_path / "ajr.toml"
    path.write_text(f'state_db = "{tmp_path / "ajr.db"}"\noperator_token = "{TOKEN}"\n')
    return path


def run(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    return result.exit_code, result.output


def test_ajr_nodes_json_is_the_api_s_node_list(config: Path) -> None:
    code, out = run(config, "nodes", "--json")
    assert code == 0
    answer = NodeList.model_validate_json(out)
    assert [n.node for n in answer.nodes][:1] == ["n3"] and answer.lemons == 1
    n3, n5 = answer.nodes[0], next(n for n in answer.nodes if n.node == "n5")
    assert (n3.witnesses, n3.trusted_evidence, n3.excluded_from, n3.drains, n3.in_service) == (3, True, [40], 1, False)
    # Five of one user's job logs: one witness, no lemon, nothing to drain on.
    assert (n5.lemon, n5.witnesses, n5.blames_total, n5.trusted_evidence) == (False, 1, 5, False)
    assert {b.basis for b in n5.blames} == {Basis.JOB_LOG}


def test_ajr_nodes_table(config: Path) -> None:
    code, out = run(config, "nodes")
    assert code == 0
    assert "a node is a lemon at 3 witnesses or 3 blames within" in out
    n3 = next(line for line in out.splitlines() if line.startswith("n3 "))
    for part in ("LEMON since", "out", "3 recent / 3", "yes", "40"):
        assert part in n3
    assert "n2 " not in out  # never blamed: only with --all
    assert any(line.startswith("n2 ") and "trusted again" in line and "operator:root" in line
               for line in run(config, "nodes", "--all")[1].splitlines())  # fmt: skip


def test_ajr_node_forgive_is_left_for_the_agent(config: Path, tmp_path: Path) -> None:
    code, out = run(config, "node", "forgive", "n3")
    assert code == 0 and "trusts it again at its next poll" in out
    store = Store(tmp_path / "ajr.db")
    assert [(f.node, f.by) for f in store.nodes.forgiveness()] == [("n3", "operator:root")]
    code, out = run(config, "node", "forgive", "n9")
    assert code != 0 and "AJR has no record of node n9" in out
    code, out = run(config, "node", "forgive", "n3;rm -rf")
    assert code != 0 and "is not a node name" in out


def test_ajr_show_prints_the_budgets_by_cause(config: Path) -> None:
    code, out = run(config, "show", "7")
    assert code == 0
    assert "requeues by cause: own failures 1/10, node 2/5, infrastructure 0/10; max_requeue_times bounds the total" in out
    assert "lemon nodes kept out n3" in out
    detail = json.loads(run(config, "show", "7", "--json")[1])
    assert detail["budgets"]["by_cause"][1] == {"budget": "node", "used": 2, "cap": 5}
    assert detail["job"]["node_requeues"] == 2


def test_the_cockpit_api_answers_the_same(config: Path) -> None:
    from ajr_agent.adapters.config_file import load_settings

    service = Service(load_settings(config, environ={}))
    listed = service.handle("GET", "/api/nodes", {}, "test")
    assert listed.status == 200 and json.loads(listed.body)["nodes"][0]["node"] == "n3"
    assert service.handle("POST", "/api/nodes/forgive?node=n3", {}, "test").status == 401
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert service.handle("POST", "/api/nodes/forgive?node=n9", auth, "test").status == 404
    assert service.handle("POST", "/api/nodes/forgive?node=..%2F", auth, "test").status == 400
    done = service.handle("POST", "/api/nodes/forgive?node=n3", auth, "test")
    assert done.status == 200 and json.loads(done.body)["status"] == "requested"
    document = json.loads(service.handle("GET", "/openapi.json", {}, "test").body)
    assert {"/api/nodes", "/api/nodes/forgive"} <= set(document["paths"])


def test_the_node_gauges(config: Path, tmp_path: Path) -> None:
    page = exposition(Store(tmp_path / "ajr.db"), None, NOW)
    for line in ('ajr_lemon_nodes 1', 'ajr_node_lemon{node="n3"} 1', 'ajr_node_lemon{node="n5"} 0',
                 'ajr_node_witnesses{node="n5"} 1', 'ajr_node_blames{node="n5",basis="job_log"} 5',
                 'ajr_node_exclusions{node="n3"} 1', 'ajr_node_actions{node="n3",kind="drain"} 1',
                 'ajr_requeues_by_cause{budget="node"} 2'):  # fmt: skip
        assert line in page.splitlines(), line
