"""The HTTP service over a store filled by the store's own writing code, called over real HTTP (urllib)."""

from __future__ import annotations

from tests.unit.support import MIN, TOKEN

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

from ajr_agent.views import models as api
from ajr_agent.surfaces.cli import main as cli
from ajr_agent.domain.settings import Settings
from ajr_agent.domain.model import Phase
from ajr_agent.domain.spec import ResumeMode
from ajr_agent.adapters.store import Store
from ajr_agent.surfaces.http_server import CockpitServer
from ajr_agent.surfaces.web import make_server
from ajr_agent.surfaces.web_routes import ROUTES

def serve(settings: Settings) -> CockpitServer:
    return make_server(settings, None, "127.0.0.1", 0).start()


@pytest.fixture
def server(state_db: Path) -> Iterator[CockpitServer]:
    running = serve(Settings(state_db=state_db, rules_dirs=(), operator_token=TOKEN))
    yield running
    running.close()


def call(server: CockpitServer, path: str, method: str = "GET",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    request = urllib.request.Request(server.url + path, method=method, headers=headers or {},
                                     data=b"" if method == "POST" else None)  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def get(server: CockpitServer, path: str) -> Any:
    status, headers, body = call(server, path)
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    return json.loads(body)


# ---- the job list ------------------------------------------------------------------------------


def test_jobs_lists_managed_jobs_newest_first_with_efficiency(server: CockpitServer) -> None:
    listed = api.JobList.model_validate(get(server, "/api/jobs"))
    assert [j.job_id for j in listed.jobs] == [1800, 1778] and listed.total == 2
    llama = listed.jobs[1]
    assert (llama.user, llama.mode, llama.slurm_state, llama.phase) == ("alice", ResumeMode.REQUEUE, "CANCELLED",
                                                                        Phase.FINISHED)  # fmt: skip
    assert (llama.requeues_used, llama.limit, llama.last_anomaly) == (2, 10, "segfault (segfault)")
    assert llama.efficiency == pytest.approx(178 / 240)
    assert [r.job_id for r in listed.refused] == [1801]


@pytest.mark.parametrize(("query", "expected"), [
    ("user=alice", [1778]),
    ("state=finished", [1778]),  # an AJR phase
    ("state=RUNNING", [1800]),  # a Slurm state
    ("state=running,finished", [1800, 1778]),  # either, case-insensitive
    ("state=running&state=finished", [1800, 1778]),
    ("mode=singleton_dependency", [1800]),
    ("include_gone=true", [1800, 1778, 1700]),
    ("include_gone=true&user=alice&state=gone", [1700]),
    ("limit=1", [1800]),
])  # fmt: skip
def test_jobs_filters(server: CockpitServer, query: str, expected: list[int]) -> None:
    assert [j["job_id"] for j in get(server, f"/api/jobs?{query}")["jobs"]] == expected


@pytest.mark.parametrize(("query", "reason"), [
    ("mode=sometimes", "mode: Input should be 'requeue' or 'singleton_dependency' (got 'sometimes')"),
    ("limit=0", "limit: Input should be greater than or equal to 1 (got '0')"),
    ("include_gone=perhaps", "include_gone: Input should be a valid boolean"),
    ("colour=blue", "unknown key 'colour'"),
])  # fmt: skip
def test_bad_query_parameters_are_400_with_the_reason(server: CockpitServer, query: str, reason: str) -> None:
    status, _, body = call(server, f"/api/jobs?{query}")
    assert status == 400
    assert json.loads(body)["error"].startswith(f"bad query parameter: {reason}")


# ---- one job -------------------------------------------------------------------------------------


def test_job_detail_has_attempts_checkpoints_anomalies_verdicts_throughput_and_efficiency(server: CockpitServer) -> None:
    detail = api.JobDetail.model_validate(get(server, "/api/jobs/1778"))
    assert [(a.label, a.outcome, len(a.checkpoints)) for a in detail.attempts] == [
        ("attempt 0", "failed", 3), ("attempt 1", "failed", 3), ("attempt 2", "cancelled", 0)]
    anomalies = [e for e in detail.events if e.category == "anomaly"]
    assert [e.attempt for e in anomalies] == [0, 1]
    assert anomalies[0].line == "Rank0: (1) segmentation fault: artificial segfault in attempt 0"
    assert anomalies[0].path == "/runs/llama_1778_date_26-01-01_time_00-00-00.log"
    assert {e.category for e in detail.events} >= {"attempt", "checkpoint", "anomaly", "verdict", "info"}
    assert [(v.attempt, v.fault) for v in detail.verdicts] == [(0, "application"), (1, "application")]
    assert [(a.kind, a.status, a.origin) for a in detail.actions][:2] == [("requeue_hold", "done", "agent"),
                                                                          ("release", "done", "agent")]  # fmt: skip
    assert len(detail.throughput) == 12 and detail.throughput[0].value == 400.0
    assert detail.efficiency.productive == pytest.approx(178 * MIN)
    assert detail.efficiency.lost_unsaved == pytest.approx(58 * MIN)
    assert detail.efficiency.efficiency == pytest.approx(178 / 240)
    assert detail.log_files[0].offset == 4096


def test_unknown_and_refused_jobs_are_404_with_the_reason(server: CockpitServer) -> None:
    status, _, body = call(server, "/api/jobs/999")
    assert status == 404 and "not known to AJR" in json.loads(body)["error"]
    status, _, body = call(server, "/api/jobs/1801")
    assert status == 404 and "max_requeue_times: Input should be a valid integer" in json.loads(body)["error"]


# ---- KPI -----------------------------------------------------------------------------------------


def test_kpi_matches_ajr_kpi(server: CockpitServer, state_db: Path, tmp_path: Path) -> None:
    config = tmp_path / "ajr.toml"
    config.write_text(f'state_db = "{state_db}"\nrules_dirs = []\n')
    for query, args in [("", []), ("?user=alice", ["--user", "alice"]), ("?since=1h", ["--since", "1h"])]:
        served = api.Kpi.model_validate(get(server, f"/api/kpi{query}"))
        printed = json.loads(CliRunner().invoke(cli, ["--config", str(config), "kpi", "--json", *args]).output)
        assert [r.job for r in served.jobs] == [r["job"] for r in printed["jobs"]]
        for key in ("productive", "lost_unsaved", "lost_restart", "efficiency"):
            assert getattr(served.total, key) == pytest.approx(printed["total"][key], abs=1.0), (query, key)


def test_the_cli_prints_the_apis_own_answers(server: CockpitServer, state_db: Path, tmp_path: Path) -> None:
    """`--json` is the API's model, field for field (alice's job 1778 is over: its figures hold still)."""
    config = tmp_path / "ajr.toml"
    config.write_text(f'state_db = "{state_db}"\nrules_dirs = []\n')

    def printed(*args: str) -> Any:
        return json.loads(CliRunner().invoke(cli, ["--config", str(config), *args, "--json"]).output)

    assert printed("show", "1778") == get(server, "/api/jobs/1778")
    assert printed("kpi", "--user", "alice") == get(server, "/api/kpi?user=alice")
    listed = printed("status", "--all")
    assert listed["agent"] == get(server, "/api/status")["agent"]
    served = get(server, "/api/jobs?include_gone=true")
    assert [j["job_id"] for j in listed["jobs"]["jobs"]] == [j["job_id"] for j in served["jobs"]] == [1800, 1778, 1700]
    assert listed["jobs"]["refused"] == served["refused"]
    assert printed("show", "1801") == {**served["refused"][0], "managed": False}
    # Without --all, the jobs whose story is over are left out, as `include_over=false` leaves them out.
    assert [j["job_id"] for j in printed("status")["jobs"]["jobs"]] == [1800]
    assert [j["job_id"] for j in get(server, "/api/jobs?include_over=false")["jobs"]] == [1800]


def test_kpi_of_the_worked_example_and_its_window(server: CockpitServer) -> None:
    everything = api.Kpi.model_validate(get(server, "/api/kpi?user=alice"))
    assert [(r.job, r.job_ids) for r in everything.jobs] == [("1778", [1778])]
    assert everything.total.efficiency == pytest.approx(178 / 240)
    recent = api.Kpi.model_validate(get(server, "/api/kpi?since=90m&user=alice"))
    assert recent.since is not None and recent.total.elapsed == pytest.approx(30 * MIN, abs=2)


def test_kpi_since_must_be_a_duration_or_a_date(server: CockpitServer) -> None:
    status, _, body = call(server, "/api/kpi?since=yesterday")
    assert status == 400 and "give a duration such as 24h" in json.loads(body)["error"]
    assert get(server, "/api/kpi?since=2020-01-01")["since"] == pytest.approx(1577833200, abs=86400)


def test_status_tells_the_agents_state_and_whether_actions_are_enabled(server: CockpitServer) -> None:
    status = api.Status.model_validate(get(server, "/api/status"))
    assert status.operator_actions and status.counters == "store"
    assert status.agent.backend == "commands" and status.agent.jobs_in_queue == 3


# ---- operator actions -----------------------------------------------------------------------------


def journal_and_forgotten(state_db: Path) -> tuple[list[tuple[str, str]], dict[int, str]]:
    store = Store(state_db)
    try:
        return [(e.action.kind.value, e.origin) for e in store.actions(1778)], store.forgotten()
    finally:
        store.close()


@pytest.mark.parametrize("verb", ["requeue", "release", "forget"])
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Basic {TOKEN}", "Bearer", f"Bearer {TOKEN}x"])
def test_operator_actions_without_the_right_token_are_401_and_nothing_is_journaled(
    server: CockpitServer, state_db: Path, verb: str, authorization: str | None
) -> None:
    before = journal_and_forgotten(state_db)
    status, headers, body = call(server, f"/api/jobs/1778/{verb}", "POST",
                                 {"Authorization": authorization} if authorization else {})  # fmt: skip
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert "operator token missing or wrong" in json.loads(body)["error"]
    assert journal_and_forgotten(state_db) == before


@pytest.mark.parametrize("verb", ["requeue", "release", "forget"])
def test_operator_actions_are_403_when_no_token_is_configured(state_db: Path, verb: str) -> None:
    server = serve(Settings(state_db=state_db, rules_dirs=()))
    try:
        before = journal_and_forgotten(state_db)
        status, _, body = call(server, f"/api/jobs/1778/{verb}", "POST", {"Authorization": "Bearer anything"})
        assert status == 403 and "no operator_token is configured" in json.loads(body)["error"]
        assert journal_and_forgotten(state_db) == before
        assert get(server, "/api/status")["operator_actions"] is False
    finally:
        server.close()


def test_forget_with_the_token_is_recorded_for_the_agent(server: CockpitServer, state_db: Path) -> None:
    status, _, body = call(server, "/api/jobs/1778/forget", "POST", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    assert api.ActionResult.model_validate_json(body).status == "requested"
    assert journal_and_forgotten(state_db)[1] == {1778: "operator:web"}


def test_operator_action_on_an_unknown_job_is_404(server: CockpitServer) -> None:
    status, _, _ = call(server, "/api/jobs/999/forget", "POST", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 404


def test_wrong_method_is_405_with_allow(server: CockpitServer) -> None:
    status, headers, _ = call(server, "/api/jobs/1778/requeue")
    assert status == 405 and headers["Allow"] == "POST"
    status, headers, _ = call(server, "/api/jobs", "POST")
    assert status == 405 and headers["Allow"] == "GET"


# ---- OpenAPI, docs and pages -------------------------------------------------------------------------


def resolve(document: dict[str, Any], node: Any) -> None:
    """Every $ref in the document points at a schema it defines."""
    if isinstance(node, dict):
        if "$ref" in node:
            name = node["$ref"].removeprefix("#/components/schemas/")
            assert name in document["components"]["schemas"], node["$ref"]
        for value in node.values():
            resolve(document, value)
    elif isinstance(node, list):
        for value in node:
            resolve(document, value)


def test_openapi_document_covers_every_route_from_the_models(server: CockpitServer) -> None:
    document = get(server, "/openapi.json")
    assert document["openapi"] == "3.1.0"
    assert {(path, method.upper()) for path, ops in document["paths"].items() for method in ops} == {
        (r.path, r.method) for r in ROUTES}
    resolve(document, document)
    schemas = document["components"]["schemas"]
    assert set(schemas["JobDetail"]["properties"]) == set(api.JobDetail.model_fields)
    jobs = document["paths"]["/api/jobs"]["get"]
    assert {p["name"] for p in jobs["parameters"]} == {"user", "state", "mode", "include_over", "include_gone", "limit"}
    assert jobs["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/JobList"}
    requeue = document["paths"]["/api/jobs/{job_id}/requeue"]["post"]
    assert requeue["security"] == [{"operatorToken": []}] and {"401", "403"} <= set(requeue["responses"])
    assert document["components"]["securitySchemes"]["operatorToken"]["scheme"] == "bearer"


def test_pages_are_self_contained_with_a_strict_policy(server: CockpitServer) -> None:
    for path, script in [("/", "/static/cockpit.js"), ("/jobs/1778", "/static/cockpit.js"), ("/docs", "/static/docs.js")]:
        status, headers, body = call(server, path)
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert script.encode() in body and b"http://" not in body and b"https://" not in body
        assert "script-src 'self'" in headers["Content-Security-Policy"] and headers["X-Frame-Options"] == "DENY"
    for name in ("cockpit.js", "cockpit.css", "docs.js"):
        status, headers, body = call(server, f"/static/{name}")
        assert status == 200 and b"http://" not in body.replace(b"http://www.w3.org/2000/svg", b"")
        assert b"https://" not in body


@pytest.mark.parametrize("path", ["/static/../web.py", "/static/..%2Fweb.py", "/static/index.htm", "/static/web.py",
                                  "/static/", "/jobs/abc", "/api/jobs/1778/delete"])  # fmt: skip
def test_nothing_outside_the_routes_and_the_static_folder_is_served(server: CockpitServer, path: str) -> None:
    assert call(server, path)[0] == 404


def test_a_missing_store_is_503_not_a_crash(tmp_path: Path) -> None:
    server = serve(Settings(state_db=tmp_path / "none.db", rules_dirs=()))
    try:
        status, _, body = call(server, "/api/jobs")
        assert status == 503 and "no state database" in json.loads(body)["error"]
        assert not (tmp_path / "none.db").exists()
    finally:
        server.close()
