"""The HTTP service: the cockpit page, the JSON API with its OpenAPI document, and /metrics.

Built on the standard library's `http.server`, with bounds of its own against hostile
clients (`HttpLimits`: request size, deadlines, threads, connections); started as a thread of
`ajr-agent` (`http_port`, 0 for none) or alone by `ajr serve`, reading the same store.
Every JSON answer is a pydantic model from `ajr_agent.views.queries`, and the OpenAPI 3.1
document is generated from the same models and the route table below, so the two
cannot drift apart.

Security: the service binds to 127.0.0.1 by default (reach it through an SSH tunnel
or a reverse proxy). Reading needs no credentials; the operator actions need
`operator_token`, sent as `Authorization: Bearer ...` and compared in constant time.
They are not exposed to CSRF: the token travels in a header the page's own script
sets from sessionStorage, never in a cookie, so a foreign page cannot make the
browser send it (and no CORS header lets a foreign origin add it).
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import re
import selectors
import socket
import threading
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from functools import cached_property
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib import resources
from typing import Any, Callable, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from ajr_agent import __version__
from ajr_agent.views import queries as api
from ajr_agent.domain.settings import Settings
from ajr_agent.domain.errors import AjrError
from ajr_agent.runtime.executor import run_operator_action
from ajr_agent.surfaces.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ajr_agent.surfaces.metrics import Metrics, exposition
from ajr_agent.domain.model import Action, ActionKind, ManagedJob
from ajr_agent.adapters.store import ActionStatus, Store

log = logging.getLogger(__name__)

JSON = "application/json"
HTML = "text/html; charset=utf-8"
_STATIC_TYPES = {".html": HTML, ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".svg": "image/svg+xml"}  # fmt: skip
# The pages load only their own scripts and styles; frames are refused so that the
# operator buttons cannot be overlaid by another site (clickjacking).
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "DENY",
}
_COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


class WebError(AjrError):
    """The HTTP service cannot start (address in use, no state database...)."""


class Unauthorized(api.ApiError):
    """An operator action without the right token."""

    status = 401


class Forbidden(api.ApiError):
    """Operator actions are disabled here (no operator_token configured)."""

    status = 403


@dataclass
class Reply:
    """What a route answers: status, body and its type, extra headers."""

    status: int
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, model: BaseModel, status: int = 200) -> "Reply":
        """A pydantic model as JSON."""
        return cls(status, model.model_dump_json().encode(), JSON, {"Cache-Control": "no-store"})


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


def error_reply(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    """An error as JSON (`{"error": ...}`)."""
    reply = Reply.json(api.ErrorOut(error=message), status)
    reply.headers.update(headers or {})
    return reply


class Service:
    """Answers requests from the store (opened per request: SQLite connections stay in their thread)."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.static = resources.files("ajr_agent.surfaces") / "static"
        self.openapi = json.dumps(openapi_document()).encode()

    def handle(self, method: str, target: str, headers: dict[str, str], client: str) -> Reply:
        """Route one request and turn AJR's errors into JSON error answers."""
        url = urlsplit(target)
        try:
            if url.path.startswith("/static/"):
                return self.static_file(url.path.removeprefix("/static/"), method)
            matched = [(route, route.regex.match(url.path)) for route in ROUTES]
            matched = [(route, match) for route, match in matched if match]
            if not matched:
                raise api.NotFound(f"no such page or endpoint: {url.path}")
            route, match = next(((r, m) for r, m in matched if r.method == method), (None, None))
            if route is None or match is None:
                allowed = ", ".join(sorted({r.method for r, _ in matched}))
                return error_reply(405, f"{method} is not allowed on {url.path} (allowed: {allowed})", {"Allow": allowed})
            query = self._query(route, url.query)
            if route.operator:
                self._authorize(headers)
            handler: Callable[..., Reply] = getattr(self, route.handler)
            return handler(query=query, client=client, **{k: int(v) for k, v in match.groupdict().items()})
        except api.ApiError as exc:
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
                raise api.BadRequest(f"{route.path} takes no query parameters (got {', '.join(sorted(params))})")
            return None
        lists = {name for name, f in route.query.model_fields.items() if "list" in str(f.annotation)}
        values = {name: value if name in lists else value[-1] for name, value in params.items()}
        try:
            return route.query.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise api.BadRequest(f"bad query parameter: {problems}") from exc

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
        return Store(self.settings.state_db)

    # ---- pages -----------------------------------------------------------------------

    def static_file(self, name: str, method: str) -> Reply:
        """A file of the cockpit (ajr_agent/static), by plain name only: no path can leave the folder."""
        suffix = "." + name.rpartition(".")[2]
        if method != "GET" or not re.fullmatch(r"[a-z0-9_-]+\.[a-z]+", name) or suffix not in _STATIC_TYPES:
            raise api.NotFound(f"no such file: /static/{name}")
        resource = self.static / name
        if not resource.is_file():
            raise api.NotFound(f"no such file: /static/{name}")
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
            return Reply.json(api.status(store, bool(self.settings.operator_token), counters, time.time()))

    def get_jobs(self, query: api.JobsQuery, client: str) -> Reply:
        """GET /api/jobs."""
        with closing(self._store()) as store:
            return Reply.json(api.list_jobs(store, query, time.time()))

    def get_job(self, query: None, client: str, job_id: int) -> Reply:
        """GET /api/jobs/{job_id}."""
        with closing(self._store()) as store:
            return Reply.json(api.job_detail(store, job_id, time.time()))

    def get_kpi(self, query: api.KpiQuery, client: str) -> Reply:
        """GET /api/kpi."""
        with closing(self._store()) as store:
            return Reply.json(api.kpi(store, query, time.time()))

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
        return self._slurm_action(ActionKind.REQUEUE, "requeue", job_id, client)

    def post_release(self, query: None, client: str, job_id: int) -> Reply:
        """POST /api/jobs/{job_id}/release."""
        return self._slurm_action(ActionKind.RELEASE, "release", job_id, client)

    def post_forget(self, query: None, client: str, job_id: int) -> Reply:
        """POST /api/jobs/{job_id}/forget."""
        with closing(self._store()) as store:
            self._known(store, job_id)
            store.forget(job_id, "operator:web", time.time())
        log.warning("job %s: operator (cockpit, %s) asked AJR to stop managing it", job_id, client)
        return Reply.json(api.ActionResult(job_id=job_id, action="forget", status="requested", journal_id=None,
                                           message="the agent stops managing the job at its next poll"))  # fmt: skip

    @staticmethod
    def _known(store: Store, job_id: int) -> ManagedJob:
        job = store.job(job_id)
        if job is None:
            raise api.NotFound(f"job {job_id} is not managed by AJR")
        return job

    def _slurm_action(self, kind: ActionKind, verb: Literal["requeue", "release"], job_id: int, client: str) -> Reply:
        """The CLI's path: journaled with the operator as origin, run once."""
        with closing(self._store()) as store:
            job = self._known(store, job_id)
            log.warning("job %s: operator (cockpit, %s) asked for %s", job_id, client, verb)
            action = Action(kind, job_id, job.attempt, f"operator request from the cockpit ({client})")
            entry = run_operator_action(store, self.settings, action, "operator:web", time.time())
        if entry.status == ActionStatus.DONE:
            result = api.ActionResult(job_id=job_id, action=verb, status="done", journal_id=entry.id,
                                      message=f"{verb} of job {job_id} done")  # fmt: skip
            return Reply.json(result)
        result = api.ActionResult(job_id=job_id, action=verb, status="failed", journal_id=entry.id,
                                  message=f"{verb} of job {job_id} failed: {entry.error}")  # fmt: skip
        return Reply.json(result, 502)


@dataclass(frozen=True)
class HttpLimits:
    """What one client may take of the service. Past a limit it is answered with an error at once,
    from the listening thread, before any of its request is handed to the service."""

    # Seconds for a client to send its whole request head: a deadline, not a per-recv timeout,
    # so that a client trickling a byte at a time cannot hold a connection for ever.
    request_timeout: float = 10.0
    # Seconds for a client to take the whole answer (it may stop reading).
    response_timeout: float = 30.0
    # Requests answered at once, a thread each; one more is answered 503 without a thread.
    max_workers: int = 16
    # Connections still sending their request head; they hold a file descriptor, no thread. A new
    # connection beyond this pushes out the one that has waited longest, so that a flood of idle
    # connections churns itself and a real client, which sends its request at once, gets in.
    max_pending: int = 64
    max_request_line: int = 8192
    max_header_bytes: int = 16384  # the request line and every header line
    max_headers: int = 64
    # The POST endpoints take no body; a client that sends a little anyway is not refused for it.
    max_body: int = 1024


@dataclass(frozen=True)
class Refusal:
    """Why a request is answered with an error before it reaches the service."""

    status: HTTPStatus
    message: str


def head_end(data: bytes) -> int | None:
    """Where the request head (request line and headers, up to the blank line) ends; None while incomplete."""
    ends = [i + len(mark) for mark in (b"\n\r\n", b"\n\n") if (i := data.find(mark)) >= 0]
    return min(ends) if ends else None


def check_head(head: bytes, complete: bool, limits: HttpLimits) -> Refusal | None:
    """The refusal a request head earns under `limits`, None while it is acceptable so far.

    `head` is what has arrived of it, the whole head when `complete`. Only sizes and the body's
    framing are checked here; the request itself is the service's business.
    """
    line_end = head.find(b"\n")
    if (line_end if line_end >= 0 else len(head)) > limits.max_request_line:
        return Refusal(HTTPStatus.REQUEST_URI_TOO_LONG, f"the request line is longer than {limits.max_request_line} bytes")
    if len(head) > limits.max_header_bytes:
        return Refusal(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                       f"the request head is larger than {limits.max_header_bytes} bytes")  # fmt: skip
    if not complete:
        return None
    lines = [line.strip() for line in head[line_end + 1 :].split(b"\n")]
    fields = [line.partition(b":") for line in lines if line]
    if len(fields) > limits.max_headers:
        return Refusal(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"more than {limits.max_headers} header fields")
    names = [name.strip().lower() for name, _, _ in fields]
    if b"transfer-encoding" in names:
        return Refusal(HTTPStatus.LENGTH_REQUIRED, "Transfer-Encoding is not accepted: these endpoints take no "
                       "body; send none, or Content-Length: 0")  # fmt: skip
    lengths = [value.strip() for name, (_, _, value) in zip(names, fields) if name == b"content-length"]
    if len(lengths) > 1:
        return Refusal(HTTPStatus.BAD_REQUEST, "more than one Content-Length header")
    if lengths and not lengths[0].isdigit():  # bytes.isdigit(): ASCII digits only, so no sign, no space
        return Refusal(HTTPStatus.BAD_REQUEST, "Content-Length must be a non-negative integer")
    # The digits are counted first: the value is the client's, and int() of it is work of its choosing.
    digits = lengths[0].lstrip(b"0") if lengths else b""
    if len(digits) > len(str(limits.max_body)) or int(digits or 0) > limits.max_body:
        return Refusal(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a body of at most {limits.max_body} bytes is accepted")
    return None


def _raw_answer(status: HTTPStatus, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A whole error answer as bytes, for the listening thread to send without a handler."""
    reply = error_reply(status, message, headers)
    lines = [f"HTTP/1.0 {status.value} {status.phrase}", f"Server: ajr/{__version__}",
             f"Content-Type: {reply.content_type}", f"Content-Length: {len(reply.body)}", "Connection: close"]  # fmt: skip
    lines += [f"{key}: {value}" for key, value in {**_COMMON_HEADERS, **reply.headers}.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + reply.body


def _close(sock: socket.socket) -> None:
    """Close a client's connection without resetting it: what it sent and nobody read is dropped first,
    or the kernel answers it with a reset that can destroy our answer before the client reads it."""
    try:
        sock.shutdown(socket.SHUT_WR)
        for _ in range(4):  # what has already arrived, never waiting for more
            if not sock.recv(65536, socket.MSG_DONTWAIT):
                break
    except OSError:
        pass
    sock.close()


@dataclass
class _Pending:
    """A connection whose request head is still arriving."""

    sock: socket.socket
    client: tuple[str, int]
    deadline: float  # time.monotonic()
    data: bytearray = field(default_factory=bytearray)


@dataclass(frozen=True)
class _Received:
    """A whole request head (and what came of a small body with it), handed to a handler thread."""

    sock: socket.socket
    data: bytes


class _DeadlineWriter(io.BufferedIOBase):
    """The handler's wfile: every write to the client within one deadline, started at the first write."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        super().__init__()
        self.sock = sock
        self.timeout = timeout
        self.deadline: float | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override] - the stdlib's name is `buffer`
        """Send all of `data`, or raise TimeoutError once the answer's deadline has passed."""
        now = time.monotonic()
        self.deadline = self.deadline or now + self.timeout
        if now >= self.deadline:
            raise TimeoutError(f"the client took more than {self.timeout:g} s to read the answer")
        # Since Python 3.5 a socket timeout bounds the whole sendall, not each send.
        self.sock.settimeout(self.deadline - now)
        self.sock.sendall(data)
        return len(data)


class _Handler(BaseHTTPRequestHandler):
    """Hands each request to the Service; nothing else happens here.

    It gets the request head already received and checked by the CockpitServer (HTTP/1.0: one
    request per connection) and never reads from the client itself.
    """

    server: "CockpitServer"
    request: _Received
    server_version = f"ajr/{__version__}"

    def setup(self) -> None:
        self.connection = self.request.sock
        self.rfile = io.BytesIO(self.request.data)
        self.wfile = _DeadlineWriter(self.request.sock, self.server.limits.response_timeout)

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        self._answer("GET")

    def do_POST(self) -> None:  # noqa: N802
        # No body is read: the operator actions take none, and the token is checked first anyway.
        self._answer("POST")

    def _answer(self, method: str) -> None:
        try:
            headers = {k.lower(): v for k, v in self.headers.items()}
            reply = self.server.service.handle(method, self.path, headers, self.client_address[0])
        except Exception:  # the service must answer, and live on, whatever one request hits
            log.exception("%s %s failed", method, self.path)
            reply = error_reply(500, "internal error; the service's log has the details")
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for key, value in {**_COMMON_HEADERS, **(_PAGE_HEADERS if reply.content_type == HTML else {}),
                           **reply.headers}.items():  # fmt: skip
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("%s %s", self.client_address[0], format % args)


class CockpitServer(HTTPServer):
    """The HTTP server, bounded against hostile clients (see HttpLimits).

    One thread (serve_forever) accepts connections and receives their request heads without
    blocking, each under the request deadline; a complete, acceptable head is answered by a
    thread of its own, at most `max_workers` at once. Refusals are answered from the listening
    thread and counted, and logged once a minute so that a flood cannot flood the log.
    """

    request_queue_size = 128  # the listen() backlog: a burst of connections waits in the kernel
    SUMMARY_EVERY = 60.0

    def __init__(self, address: tuple[str, int], service: Service, limits: HttpLimits = HttpLimits()) -> None:
        super().__init__(address, _Handler)
        self.service = service
        self.limits = limits
        self.thread: threading.Thread | None = None
        self._workers = threading.BoundedSemaphore(limits.max_workers)
        # In arrival order, which is also deadline order: every connection gets the same time.
        self._pending: dict[socket.socket, _Pending] = {}
        self._stop = threading.Event()
        self._serving = threading.Lock()  # held by serve_forever while it runs
        self._refused: Counter[HTTPStatus] = Counter()
        self._summary_at = time.monotonic() + self.SUMMARY_EVERY
        self._accept_failed_at = -self.SUMMARY_EVERY

    @property
    def url(self) -> str:
        """Where it listens, as a URL."""
        host, port = str(self.server_address[0]), self.server_address[1]
        return f"http://{host if ':' not in host else f'[{host}]'}:{port}"

    def start(self) -> "CockpitServer":
        """Serve from a daemon thread."""
        # A short poll interval: shutdown() waits up to one of them.
        self.thread = threading.Thread(target=self.serve_forever, args=(0.1,), name="ajr-http", daemon=True)
        self.thread.start()
        return self

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept, receive and dispatch until shutdown(); `poll_interval` bounds how long that takes."""
        self.socket.setblocking(False)
        with self._serving, selectors.DefaultSelector() as selector:
            try:
                selector.register(self.socket, selectors.EVENT_READ)
                while not self._stop.is_set():
                    now = time.monotonic()
                    oldest = next(iter(self._pending.values()), None)
                    wait = poll_interval if oldest is None else min(poll_interval, max(0.0, oldest.deadline - now))
                    for key, _ in selector.select(wait):
                        if key.fileobj is self.socket:
                            self._accept(selector)
                        # A connection pushed out by this round's accept may still be in its events.
                        elif self._pending.get(key.fileobj) is key.data:
                            self._receive_guarded(selector, key.data)
                    self._expire(selector, time.monotonic())
            finally:
                for pending in self._pending.values():
                    _close(pending.sock)
                self._pending.clear()

    def shutdown(self) -> None:
        """Stop serve_forever for good and wait until it has; requests being answered finish on their own."""
        self._stop.set()
        with self._serving:
            pass

    def close(self) -> None:
        """Stop serving and release the socket."""
        self.shutdown()
        self.server_close()

    # ---- the listening thread -------------------------------------------------------------------------

    def _accept(self, selector: selectors.BaseSelector) -> None:
        for _ in range(self.limits.max_pending):
            try:
                sock, client = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Out of file descriptors (or memory): the connections wait in the backlog meanwhile.
                now = time.monotonic()
                if now - self._accept_failed_at >= self.SUMMARY_EVERY:
                    self._accept_failed_at = now
                    log.warning("cockpit cannot accept connections: %s; trying again every 0.1 s (said once a "
                                "minute at most)", exc)  # fmt: skip
                self._stop.wait(0.1)
                return
            if len(self._pending) >= self.limits.max_pending:
                self._refuse(selector, next(iter(self._pending.values())), Refusal(
                    HTTPStatus.SERVICE_UNAVAILABLE, "too many connections are waiting to send their request"))  # fmt: skip
            sock.setblocking(False)
            pending = _Pending(sock, client, time.monotonic() + self.limits.request_timeout)
            self._pending[sock] = pending
            selector.register(sock, selectors.EVENT_READ, pending)

    def _receive_guarded(self, selector: selectors.BaseSelector, pending: _Pending) -> None:
        try:
            self._receive(selector, pending)
        except Exception:  # one connection's surprise must not end the cockpit's only listening thread
            log.exception("cockpit: request from %s could not be received", pending.client[0])
            if self._pending.get(pending.sock) is pending:
                self._forget(selector, pending)
            _close(pending.sock)

    def _receive(self, selector: selectors.BaseSelector, pending: _Pending) -> None:
        try:
            chunk = pending.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:  # the client went away
            self._forget(selector, pending)
            _close(pending.sock)
            return
        pending.data += chunk
        end = head_end(pending.data)
        refusal = check_head(bytes(pending.data[:end]) if end else bytes(pending.data), end is not None, self.limits)
        if refusal is not None:
            self._refuse(selector, pending, refusal)
        elif end is not None:
            self._dispatch(selector, pending)

    def _dispatch(self, selector: selectors.BaseSelector, pending: _Pending) -> None:
        if not self._workers.acquire(blocking=False):
            self._refuse(selector, pending, Refusal(HTTPStatus.SERVICE_UNAVAILABLE,
                                                    f"all {self.limits.max_workers} request threads are busy"))  # fmt: skip
            return
        self._forget(selector, pending)
        worker = threading.Thread(target=self._work, args=(_Received(pending.sock, bytes(pending.data)), pending.client),
                                  name="ajr-http-request", daemon=True)  # fmt: skip
        try:
            worker.start()
        except RuntimeError:  # no thread to be had
            self._workers.release()
            self._send_refusal(pending.sock, Refusal(HTTPStatus.SERVICE_UNAVAILABLE, "no thread to answer with"))

    def _expire(self, selector: selectors.BaseSelector, now: float) -> None:
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if oldest.deadline > now:
                break
            self._refuse(selector, oldest, Refusal(HTTPStatus.REQUEST_TIMEOUT,
                                                   f"the request did not arrive within {self.limits.request_timeout:g} s"))  # fmt: skip
        if now >= self._summary_at:
            self._summary_at = now + self.SUMMARY_EVERY
            if self._refused:
                counts = ", ".join(f"{n} × {status.value} {status.phrase}" for status, n in self._refused.most_common())
                log.warning("cockpit refused %d request(s) in the last %.0f s (%s); HttpLimits in ajr_agent/web.py "
                            "says why", self._refused.total(), self.SUMMARY_EVERY, counts)  # fmt: skip
                self._refused.clear()

    def _forget(self, selector: selectors.BaseSelector, pending: _Pending) -> None:
        selector.unregister(pending.sock)
        del self._pending[pending.sock]

    def _refuse(self, selector: selectors.BaseSelector, pending: _Pending, refusal: Refusal) -> None:
        self._forget(selector, pending)
        self._send_refusal(pending.sock, refusal)
        log.debug("cockpit: %s refused with %d: %s", pending.client[0], refusal.status.value, refusal.message)

    def _send_refusal(self, sock: socket.socket, refusal: Refusal) -> None:
        self._refused[refusal.status] += 1
        retry = {"Retry-After": "1"} if refusal.status is HTTPStatus.SERVICE_UNAVAILABLE else {}
        try:
            # A fresh connection's send buffer takes this small answer whole, without blocking.
            sock.send(_raw_answer(refusal.status, refusal.message, retry), socket.MSG_DONTWAIT)
        except OSError:
            pass
        _close(sock)

    # ---- a request thread ---------------------------------------------------------------------------------

    def _work(self, received: _Received, client: tuple[str, int]) -> None:
        try:
            _Handler(received, client, self)
        except OSError as exc:  # the client went away or stopped reading: its loss
            log.debug("cockpit: answer to %s not delivered: %s", client[0], exc)
        except Exception:
            log.exception("cockpit: request from %s failed", client[0])
        finally:
            _close(received.sock)
            self._workers.release()


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
