"""The HTTP server of the cockpit, the API and /metrics, bounded against hostile clients.

Built on the standard library's `http.server`: one thread accepts connections and receives
request heads without blocking, each under a deadline, and checks them against `HttpLimits`;
a complete, acceptable head is answered by a thread of its own, which hands it to the service
(`Answers`: the routes, in `ajr_agent.surfaces.web`). Refusals are answered from the
listening thread, counted, and logged once a minute.
"""

from __future__ import annotations

import io
import logging
import selectors
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Protocol

from ajr_agent import __version__
from ajr_agent.surfaces.http_limits import HttpLimits, Refusal, check_head, head_end
from ajr_agent.surfaces.http_reply import COMMON_HEADERS, HTML, PAGE_HEADERS, Reply, error_reply

log = logging.getLogger(__name__)


class Answers(Protocol):
    """What the server hands each request to."""

    def handle(self, method: str, target: str, headers: dict[str, str], client: str) -> Reply:
        """The reply to one request; `headers` with lower-case names."""


def _raw_answer(status: HTTPStatus, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A whole error answer as bytes, for the listening thread to send without a handler."""
    reply = error_reply(status, message, headers)
    lines = [f"HTTP/1.0 {status.value} {status.phrase}", f"Server: ajr/{__version__}",
             f"Content-Type: {reply.content_type}", f"Content-Length: {len(reply.body)}", "Connection: close"]  # fmt: skip
    lines += [f"{key}: {value}" for key, value in {**COMMON_HEADERS, **reply.headers}.items()]
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
    """Hands each request to the service (`Answers`); nothing else happens here.

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
        for key, value in {**COMMON_HEADERS, **(PAGE_HEADERS if reply.content_type == HTML else {}),
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

    def __init__(self, address: tuple[str, int], service: Answers, limits: HttpLimits = HttpLimits()) -> None:
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
                log.warning("cockpit refused %d request(s) in the last %.0f s (%s); HttpLimits in "
                            "ajr_agent/surfaces/http_limits.py says why", self._refused.total(), self.SUMMARY_EVERY,
                            counts)  # fmt: skip
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
