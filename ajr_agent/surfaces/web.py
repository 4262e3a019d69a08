"""The HTTP service: the cockpit page, the JSON API with its OpenAPI document, and /metrics.

`Service` routes each request (`web_routes.ROUTES`) to its handler, which answers with the
read model's queries (`ajr_agent.views.queries`) or, for the operator actions, through
`ajr_agent.surfaces.operator` as the CLI does. The server under it (`http_server`) bounds
hostile clients (`HttpLimits`: request size, deadlines, threads, connections); it runs as
a thread of `ajr-agent` (`http_port`, 0 for none) or alone under `ajr serve`, on the same store.

Security: the service binds to 127.0.0.1 by default (reach it through an SSH tunnel
or a reverse proxy). Reading needs no credentials; the operator actions need
`operator_token`, sent as `Authorization: Bearer ...` and compared in constant time.
They are not exposed to CSRF: the token travels in a header the page's own script
sets from sessionStorage, never in a cookie, so a foreign page cannot make the
browser send it (and no CORS header lets a foreign origin add it).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from contextlib import closing
from importlib import resources
from typing import Callable, Literal, get_origin
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ValidationError

from ajr_agent.domain.errors import AjrError
from ajr_agent.domain.model import ManagedJob
from ajr_agent.domain.settings import Settings
from ajr_agent.domain.validation import describe_validation_error
from ajr_agent.adapters.store import Store
from ajr_agent.surfaces import operator
from ajr_agent.surfaces.http_limits import HttpLimits
from ajr_agent.surfaces.http_reply import HTML, JSON, Reply, error_reply
from ajr_agent.surfaces.http_server import CockpitServer
from ajr_agent.surfaces.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ajr_agent.surfaces.metrics import Metrics, exposition
from ajr_agent.surfaces.web_nodes import NodeHandlers
from ajr_agent.surfaces.web_routes import ROUTES, Route, openapi_document
from ajr_agent.views import queries
from ajr_agent.views.models import JobsQuery, KpiQuery

log = logging.getLogger(__name__)

_STATIC_TYPES = {".html": HTML, ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".svg": "image/svg+xml"}  # fmt: skip
# The journal's origin of the cockpit's operator actions.
WEB_ORIGIN = "operator:web"


class WebError(AjrError):
    """The HTTP service cannot start (address in use, no state database...)."""


class Unauthorized(queries.ApiError):
    """An operator action without the right token."""

    status = 401


class Forbidden(queries.ApiError):
    """Operator actions are disabled here (no operator_token configured)."""

    status = 403


class Service(NodeHandlers):
    """Answers requests from the store (opened per request: SQLite connections stay in their thread)."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.static = resources.files("ajr_agent.surfaces") / "static"
        self.openapi = json.dumps(openapi_document()).encode()
        self.origin = WEB_ORIGIN

    def handle(self, method: str, target: str, headers: dict[str, str], client: str) -> Reply:
        """Route one request and turn AJR's errors into JSON error answers."""
        url = urlsplit(target)
        try:
            if url.path.startswith("/static/"):
                return self.static_file(url.path.removeprefix("/static/"), method)
            matched = [(route, route.regex.match(url.path)) for route in ROUTES]
            matched = [(route, match) for route, match in matched if match]
            if not matched:
                raise queries.NotFound(f"no such page or endpoint: {url.path}")
            route, match = next(((r, m) for r, m in matched if r.method == method), (None, None))
            if route is None or match is None:
                allowed = ", ".join(sorted({r.method for r, _ in matched}))
                return error_reply(405, f"{method} is not allowed on {url.path} (allowed: {allowed})", {"Allow": allowed})
            query = self._query(route, url.query)
            if route.operator:
                self._authorize(headers)
            handler: Callable[..., Reply] = getattr(self, route.handler)
            return handler(query=query, client=client, **{k: int(v) for k, v in match.groupdict().items()})
        except queries.ApiError as exc:
            extra = {"WWW-Authenticate": 'Bearer realm="ajr"'} if isinstance(exc, Unauthorized) else {}
            return error_reply(exc.status, str(exc), extra)
        except AjrError as exc:
            log.error("%s %s: %s", method, url.path, exc)
            return error_reply(503, str(exc))

    @staticmethod
    def _query(route: Route, raw: str) -> BaseModel | None:
        params = parse_qs(raw, keep_blank_values=False)
        if route.query is None:
            # The pages read their own parameters (the list's filters) in the browser.
            if params and route.media != HTML:
                raise queries.BadRequest(f"{route.path} takes no query parameters (got {', '.join(sorted(params))})")
            return None
        lists = {name for name, f in route.query.model_fields.items() if get_origin(f.annotation) is list}
        values = {name: value if name in lists else value[-1] for name, value in params.items()}
        try:
            return route.query.model_validate(values)
        except ValidationError as exc:
            raise queries.BadRequest(describe_validation_error(exc, "bad query parameter")) from exc

    def _authorize(self, headers: dict[str, str]) -> None:
        token = self.settings.operator_token
        if not token:
            raise Forbidden("operator actions are disabled on this service: no operator_token is configured")
        scheme, _, given = headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken must not tell how much of a guess was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Unauthorized("operator token missing or wrong: send Authorization: Bearer <operator_token>")

    def _store(self) -> Store:
        if not self.settings.state_db.exists():
            raise WebError(f"no state database at {self.settings.state_db}: the agent has not run with it yet")
        return Store(self.settings.state_db, wal=self.settings.state_db_wal)

    # ---- pages -----------------------------------------------------------------------

    def static_file(self, name: str, method: str) -> Reply:
        """A file of the cockpit (ajr_agent/surfaces/static), by plain name only: no path can leave the folder."""
        suffix = "." + name.rpartition(".")[2]
        if method != "GET" or not re.fullmatch(r"[a-z0-9_-]+\.[a-z]+", name) or suffix not in _STATIC_TYPES:
            raise queries.NotFound(f"no such file: /static/{name}")
        resource = self.static / name
        if not resource.is_file():
            raise queries.NotFound(f"no such file: /static/{name}")
        return Reply(200, resource.read_bytes(), _STATIC_TYPES[suffix], {"Cache-Control": "no-cache"})

    def list_page(self, query: None, client: str) -> Reply:
        """The cockpit's single page; its script shows the job list for `/`."""
        return self.static_file("index.html", "GET")

    def job_page(self, query: None, client: str, job_id: int) -> Reply:
        """The same page; its script shows the job named by the path."""
        return self.static_file("index.html", "GET")

    def docs_page(self, query: None, client: str) -> Reply:
        """The API documentation page."""
        return self.static_file("docs.html", "GET")

    # ---- the JSON API --------------------------------------------------------------------

    def get_status(self, query: None, client: str) -> Reply:
        """GET /api/status."""
        with closing(self._store()) as store:
            counters: Literal["agent", "store"] = "agent" if self.metrics is not None else "store"
            return Reply.json(queries.status(store, bool(self.settings.operator_token), counters, time.time(),
                                             queries.control_record(self.settings)))  # fmt: skip

    def get_jobs(self, query: JobsQuery, client: str) -> Reply:
        """GET /api/jobs."""
        with closing(self._store()) as store:
            return Reply.json(queries.list_jobs(store, query, time.time()))

    def get_job(self, query: None, client: str, job_id: int) -> Reply:
        """GET /api/jobs/{job_id}."""
        with closing(self._store()) as store:
            return Reply.json(queries.job_detail(store, job_id, time.time()))

    def get_kpi(self, query: KpiQuery, client: str) -> Reply:
        """GET /api/kpi."""
        with closing(self._store()) as store:
            return Reply.json(queries.kpi(store, query, time.time()))

    def get_metrics(self, query: None, client: str) -> Reply:
        """GET /metrics: the agent's counters (when it runs in this process) and the store's gauges."""
        with closing(self._store()) as store:
            return Reply(200, exposition(store, self.metrics, time.time()).encode(), METRICS_CONTENT_TYPE)

    def get_openapi(self, query: None, client: str) -> Reply:
        """GET /openapi.json."""
        return Reply(200, self.openapi, JSON)

    # ---- operator actions ------------------------------------------------------------------

    def post_requeue(self, query: None, client: str, job_id: int) -> Reply:
        """POST /api/jobs/{job_id}/requeue."""
        return self._slurm_action("requeue", job_id, client)

    def post_release(self, query: None, client: str, job_id: int) -> Reply:
        """POST /api/jobs/{job_id}/release."""
        return self._slurm_action("release", job_id, client)

    def post_forget(self, query: None, client: str, job_id: int) -> Reply:
        """POST /api/jobs/{job_id}/forget."""
        with closing(self._store()) as store:
            self._known(store, job_id)
            result = operator.forget(store, job_id, WEB_ORIGIN, time.time())
        log.warning("job %s: operator (cockpit, %s) asked AJR to stop managing it", job_id, client)
        return Reply.json(result)

    @staticmethod
    def _known(store: Store, job_id: int) -> ManagedJob:
        job = store.job(job_id)
        if job is None:
            raise queries.NotFound(f"job {job_id} is not managed by AJR")
        return job

    def _slurm_action(self, verb: operator.SlurmVerb, job_id: int, client: str) -> Reply:
        """The CLI's path: journaled with the operator as origin, run once."""
        with closing(self._store()) as store:
            job = self._known(store, job_id)
            log.warning("job %s: operator (cockpit, %s) asked for %s", job_id, client, verb)
            result = operator.slurm_action(store, self.settings, verb, job_id, job.attempt, WEB_ORIGIN,
                                           f"operator request from the cockpit ({client})", time.time())  # fmt: skip
        return Reply.json(result, 200 if result.status == "done" else 502)


def make_server(settings: Settings, metrics: Metrics | None, bind: str, port: int,
                limits: HttpLimits = HttpLimits()) -> CockpitServer:  # fmt: skip
    """A server on bind:port (0: any free port); WebError when the address cannot be taken."""
    try:
        return CockpitServer((bind, port), Service(settings, metrics), limits)
    except OSError as exc:
        raise WebError(f"cannot listen on {bind}:{port}: {exc.strerror or exc}") from exc


def start_for_agent(settings: Settings, metrics: Metrics) -> CockpitServer | None:
    """The agent's server thread, if `http_port` asks for one; a failure to listen is logged, not fatal."""
    if settings.http_port == 0:
        return None
    try:
        server = make_server(settings, metrics, settings.http_bind, settings.http_port).start()
    except WebError as exc:
        # Recoveries come first: the agent runs on without its cockpit.
        log.error("cockpit, API and /metrics not served: %s", exc)
        return None
    log.info("cockpit, API and /metrics on %s", server.url)
    return server
