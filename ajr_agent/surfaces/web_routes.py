"""The HTTP service's routes and the OpenAPI 3.1 document generated from them.

Each route names the read model's answer it returns (`ajr_agent.views.models`) and its query
parameters' model; the document takes its schemas from the same models, so the API and its
documentation cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from http import HTTPStatus
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ajr_agent import __version__
from ajr_agent.surfaces.http_reply import HTML, JSON
from ajr_agent.surfaces.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ajr_agent.views import models as api
from ajr_agent.views import nodes


@dataclass(frozen=True)
class Route:
    """One endpoint: how it is matched, what it answers, and how the OpenAPI document describes it."""

    method: Literal["GET", "POST"]
    path: str  # OpenAPI template, e.g. /api/jobs/{job_id}
    handler: str  # the Service method that answers
    summary: str
    tag: str
    response: type[BaseModel] | None = None  # None: not JSON (page, metrics, the document itself)
    media: str = JSON
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    operator: bool = False

    @cached_property
    def regex(self) -> re.Pattern[str]:
        """The path as a regex; {job_id} takes digits only."""
        return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>\\d+)", self.path) + "$")


# The node ledger's (handlers in web_nodes).
NODE_ROUTES: tuple[Route, ...] = (
    Route("GET", "/api/nodes", "get_nodes", "The node ledger: each node's blames, standing (lemon, trusted again), "
          "exclusions, drains and reboots, as `ajr nodes`", "api", nodes.NodeList, errors=(503,)),  # fmt: skip
    Route("POST", "/api/nodes/forgive", "post_forgive",
          "Trust the node again (`ajr node forgive`): the agent applies it at its next poll", "operator",
          nodes.ForgiveResult, query=nodes.ForgiveQuery, errors=(400, 401, 403, 404), operator=True),  # fmt: skip
)

ROUTES: tuple[Route, ...] = (
    Route("GET", "/", "list_page", "The cockpit: managed jobs with filters", "pages", media=HTML),
    Route("GET", "/jobs/{job_id}", "job_page", "The cockpit: one job's timeline, chart and efficiency", "pages",
          media=HTML),  # fmt: skip
    Route("GET", "/docs", "docs_page", "This API's documentation, rendered from /openapi.json", "pages", media=HTML),
    Route("GET", "/api/status", "get_status", "The service and what the agent recorded about itself", "api",
          api.Status, errors=(503,)),  # fmt: skip
    Route("GET", "/api/jobs", "get_jobs", "Managed jobs, newest first, filtered by user, state and mode", "api",
          api.JobList, query=api.JobsQuery, errors=(400, 503)),  # fmt: skip
    Route("GET", "/api/jobs/{job_id}", "get_job",
          "One job: attempts with checkpoints, events with anomaly lines, actions, verdicts, throughput, efficiency",
          "api", api.JobDetail, errors=(404, 503)),  # fmt: skip
    Route("GET", "/api/kpi", "get_kpi", "Training-time efficiency per job (per chain) and in total, as `ajr kpi`",
          "api", api.Kpi, query=api.KpiQuery, errors=(400, 503)),  # fmt: skip
    Route("POST", "/api/jobs/{job_id}/requeue", "post_requeue", "Requeue the job now (scontrol requeue), journaled",
          "operator", api.ActionResult, errors=(401, 403, 404, 502), operator=True),  # fmt: skip
    Route("POST", "/api/jobs/{job_id}/release", "post_release",
          "Release the held job now (scontrol release, StartTime=now+2), journaled", "operator", api.ActionResult,
          errors=(401, 403, 404, 502), operator=True),  # fmt: skip
    Route("POST", "/api/jobs/{job_id}/forget", "post_forget",
          "Stop managing the job: the agent leaves it alone from its next poll", "operator", api.ActionResult,
          errors=(401, 403, 404), operator=True),  # fmt: skip
    Route("GET", "/metrics", "get_metrics", "Prometheus metrics (text exposition format 0.0.4)", "metrics",
          media=METRICS_CONTENT_TYPE),  # fmt: skip
    Route("GET", "/openapi.json", "get_openapi", "This OpenAPI 3.1 document", "api", media=JSON),
    *NODE_ROUTES,
)


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of ROUTES, with the pydantic models' JSON schemas as components."""
    responses = {r.response for r in ROUTES if r.response is not None} | {api.ErrorOut}
    queries = {r.query for r in ROUTES if r.query is not None}
    keyed = [(m, "serialization") for m in sorted(responses, key=lambda m: m.__name__)]
    keyed += [(m, "validation") for m in sorted(queries, key=lambda m: m.__name__)]
    schemas, defs = models_json_schema(keyed, ref_template="#/components/schemas/{model}")  # type: ignore[arg-type]
    components = defs.get("$defs", {})
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        operation: dict[str, Any] = {
            "operationId": route.handler,
            "summary": route.summary,
            "tags": [route.tag],
            "parameters": _parameters(route, components),
            "responses": {"200": _response_doc(route)},
        }
        for status in route.errors:
            operation["responses"][str(status)] = {
                "description": HTTPStatus(status).phrase,
                "content": {JSON: {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
            }
        if route.operator:
            operation["security"] = [{"operatorToken": []}]
            operation["description"] = (
                "Needs `Authorization: Bearer <operator_token>`: 401 without it or with a wrong one, 403 when the "
                "service has no operator_token configured. The action is journaled with origin `operator:web`."
            )
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "AJR: automatic job recovery for Slurm",
            "version": __version__,
            "description": "Read the managed jobs, their recoveries and training-time efficiency; act as an operator.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"operatorToken": {"type": "http", "scheme": "bearer",
                                                  "description": "the service's operator_token setting"}},
        },
    }  # fmt: skip


def _parameters(route: Route, components: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "integer"}, "description": "Slurm job id"}
        for name in re.findall(r"\{(\w+)\}", route.path)
    ]  # fmt: skip
    if route.query is not None:
        schema = components[route.query.__name__]
        for name, prop in schema["properties"].items():
            prop = dict(prop)
            description = prop.pop("description", "")
            prop.pop("title", None)
            parameter = {"name": name, "in": "query", "required": name in schema.get("required", []),
                         "description": description, "schema": prop}  # fmt: skip
            if prop.get("type") == "array":
                parameter |= {"style": "form", "explode": False}
            found.append(parameter)
    return found


def _response_doc(route: Route) -> dict[str, Any]:
    if route.response is not None:
        schema = {"$ref": f"#/components/schemas/{route.response.__name__}"}
        return {"description": route.response.__doc__.strip().splitlines()[0] if route.response.__doc__ else "OK",
                "content": {route.media: {"schema": schema}}}  # fmt: skip
    media = route.media.split(";")[0]
    return {"description": route.summary, "content": {media: {"schema": {"type": "object" if media == JSON else "string"}}}}
