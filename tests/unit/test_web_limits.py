"""The cockpit's HTTP service under hostile clients: real sockets against a real CockpitServer on 127.0.0.1.

The server runs in a process of its own where the test needs to count its threads and file
descriptors (as the agent's would be counted), in this process otherwise. Every loop here is
bounded and stops by itself.
"""

from __future__ import annotations

from tests.unit.support import TOKEN

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from ajr_agent.domain.settings import Settings
from ajr_agent.surfaces.http_limits import HttpLimits
from ajr_agent.surfaces.http_reply import Reply
from ajr_agent.surfaces.http_server import CockpitServer
from ajr_agent.surfaces.web import make_server
from tests.conftest import wait_for

# The server of the process-level tests; it prints its port, serves until its stdin closes.
SERVER = """
import json, sys
from pathlib import Path
from ajr_agent.domain.settings import Settings
from ajr_agent.surfaces import web
from ajr_agent.surfaces.http_limits import HttpLimits
settings = Settings(state_db=Path(sys.argv[1]), rules_dirs=(), operator_token=sys.argv[2])
overrides = json.loads(sys.argv[3])
extra = {"limits": HttpLimits(**overrides)} if overrides else {}
server = web.make_server(settings, None, "127.0.0.1", 0, **extra).start()
print(server.server_address[1], flush=True)
sys.stdin.read()
server.close()
"""


class ServerProcess:
    """A CockpitServer in a child process, as the agent's would be: its threads and fds are its own."""

    def __init__(self, state_db: Path, **limits: Any) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", SERVER, str(state_db), TOKEN, json.dumps(limits)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/task"))

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(10)


@pytest.fixture
def server_process(state_db: Path) -> Iterator[ServerProcess]:
    child = ServerProcess(state_db)
    yield child
    child.stop()


@pytest.fixture
def server(state_db: Path) -> Iterator[CockpitServer]:
    running = make_server(Settings(state_db=state_db, rules_dirs=(), operator_token=TOKEN), None, "127.0.0.1", 0,
                          limits=HttpLimits(request_timeout=1.0, max_workers=2, max_pending=8)).start()  # fmt: skip
    yield running
    running.close()


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return sock


def answer_of(sock: socket.socket, within: float) -> bytes:
    """Everything the server sends until it closes, or what came within `within` seconds."""
    sock.settimeout(0.1)
    received = b""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received


def status_of(raw: bytes) -> int | None:
    """The status code of a raw HTTP answer, None when there is none."""
    first = raw.split(b"\r\n", 1)[0].split()
    return int(first[1]) if len(first) >= 2 and first[0].startswith(b"HTTP/") and first[1].isdigit() else None


def status_get(port: int, path: str = "/api/status") -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        answer.read()
        return int(answer.status)


# ---- connections are capped ----------------------------------------------------------------------


def test_500_idle_connections_hold_neither_threads_nor_fds_and_a_real_client_still_gets_in(
    server_process: ServerProcess,
) -> None:
    assert status_get(server_process.port) == 200
    threads_before, fds_before = server_process.threads(), server_process.fds()
    idle = []
    try:
        for _ in range(500):
            idle.append(connect(server_process.port))
        time.sleep(0.5)  # the server accepts them all meanwhile
        threads, fds = server_process.threads(), server_process.fds()
        limits = HttpLimits()
        assert threads <= threads_before + limits.max_workers, f"{threads} threads under 500 idle connections"
        assert fds <= fds_before + limits.max_pending + limits.max_workers, f"{fds} fds under 500 idle connections"
        begun = time.monotonic()
        assert status_get(server_process.port) == 200
        assert time.monotonic() - begun < 2
    finally:
        for sock in idle:
            sock.close()
    print(f"500 idle connections: threads {threads_before} -> {threads}, fds {fds_before} -> {fds}")


def test_a_request_beyond_the_busy_workers_is_answered_503_at_once(server: CockpitServer) -> None:
    release = threading.Event()
    inside = threading.Semaphore(0)
    real_handle = server.service.handle

    def slow(*args: Any) -> Reply:
        inside.release()
        release.wait(10)
        return real_handle(*args)

    server.service.handle = slow  # type: ignore[method-assign]
    busy = [connect(server.server_address[1]) for _ in range(2)]
    try:
        for sock in busy:
            sock.sendall(b"GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n")
            assert inside.acquire(timeout=5), "the request never reached the service"
        threads = threading.active_count()
        extra = connect(server.server_address[1])
        begun = time.monotonic()
        extra.sendall(b"GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = answer_of(extra, 2)
        assert status_of(raw) == 503 and b"Retry-After: " in raw, raw
        assert time.monotonic() - begun < 1
        assert threading.active_count() == threads, "a thread was started for a request that had no room"
        extra.close()
    finally:
        release.set()
    assert all(status_of(answer_of(sock, 5)) == 200 for sock in busy)


# ---- slow clients are cut off ------------------------------------------------------------------------


def test_a_client_trickling_its_request_is_cut_off_at_the_request_deadline(state_db: Path) -> None:
    child = ServerProcess(state_db, request_timeout=1.5)
    try:
        sock = connect(child.port)
        begun = time.monotonic()
        sock.sendall(b"GET /api/status HTTP/1.1\r\n")
        cut_after = None
        # One byte every 0.2 s never trips a per-recv timeout; only a deadline for the whole request does.
        for n in range(50):
            try:
                sock.sendall(b"X-Slow-%d: y\r\n" % n)
            except (BrokenPipeError, ConnectionResetError):
                cut_after = time.monotonic() - begun
                break
            sock.settimeout(0.2)
            try:
                sock.recv(4096)  # an answer (408) or the end of the connection: either way, cut off
            except TimeoutError:
                continue
            except ConnectionResetError:
                pass
            cut_after = time.monotonic() - begun
            break
        assert cut_after is not None, "the trickling client was never cut off"
        assert 1.4 <= cut_after <= 3.0, f"cut off after {cut_after:.1f} s, not at the 1.5 s deadline"
        sock.close()
        assert status_get(child.port) == 200
    finally:
        child.stop()


def test_an_idle_connection_is_answered_408_at_the_deadline(server: CockpitServer) -> None:
    sock = connect(server.server_address[1])
    begun = time.monotonic()
    raw = answer_of(sock, 5)
    assert status_of(raw) == 408, raw
    assert 0.9 <= time.monotonic() - begun <= 2.5
    sock.close()


# ---- the request's size is checked before anything more is read -------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ("Content-Length: -1", 400),
        ("Content-Length: abc", 400),
        ("Content-Length: +5", 400),
        ("Content-Length: 1e3", 400),
        ("Content-Length: 99999999999999999999999", 413),
        ("Content-Length: 100000", 413),
        ("Content-Length: 1025", 413),
        ("Content-Length: 5\r\nContent-Length: 6", 400),
        ("Transfer-Encoding: chunked", 411),
    ],
)
def test_bad_or_huge_content_length_is_answered_at_once_without_reading(
    server_process: ServerProcess, headers: str, status: int
) -> None:
    sock = connect(server_process.port)
    begun = time.monotonic()
    # The head only: a server that waits for the body it was promised never answers.
    sock.sendall(f"POST /api/jobs/1778/forget HTTP/1.1\r\nHost: x\r\n{headers}\r\n\r\n".encode())
    raw = answer_of(sock, 3)
    assert status_of(raw) == status, raw
    assert time.monotonic() - begun < 1
    assert b'{"error":' in raw
    sock.close()


def test_the_token_is_checked_before_a_body_is_waited_for(server_process: ServerProcess) -> None:
    sock = connect(server_process.port)
    begun = time.monotonic()
    sock.sendall(b"POST /api/jobs/1778/forget HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n")
    raw = answer_of(sock, 3)
    assert status_of(raw) == 401, raw
    assert time.monotonic() - begun < 1
    sock.close()


def test_an_action_with_a_small_body_still_works(server_process: ServerProcess) -> None:
    sock = connect(server_process.port)
    sock.sendall(f"POST /api/jobs/1778/forget HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                 "Content-Length: 2\r\n\r\n{}".encode())  # fmt: skip
    raw = answer_of(sock, 5)
    assert status_of(raw) == 200, raw
    sock.close()


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % n for n in range(70)) + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 20000 + b"\r\n\r\n", 431),
    ],
    ids=["long request line", "70 headers", "20 kB header"],
)
def test_oversized_request_lines_and_headers_are_refused(
    server_process: ServerProcess, request_head: bytes, status: int
) -> None:
    sock = connect(server_process.port)
    try:
        sock.sendall(request_head)
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused before it was all sent: the answer is still waiting to be read
    raw = answer_of(sock, 3)
    assert status_of(raw) == status, raw[:200]
    sock.close()


def test_refusals_are_summed_up_in_the_log_not_logged_one_by_one(
    state_db: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(CockpitServer, "SUMMARY_EVERY", 0.3)
    running = make_server(Settings(state_db=state_db, rules_dirs=()), None, "127.0.0.1", 0).start()
    try:
        for _ in range(3):
            sock = connect(running.server_address[1])
            sock.sendall(b"POST /api/jobs/1778/forget HTTP/1.1\r\nContent-Length: -1\r\n\r\n")
            assert status_of(answer_of(sock, 3)) == 400
            sock.close()
        wait_for(lambda: "cockpit refused" in caplog.text, 5, "the summary")
    finally:
        running.close()
    [summary] = [r.getMessage() for r in caplog.records if "cockpit refused" in r.getMessage()]
    assert "refused 3 request(s)" in summary and "3 × 400 Bad Request" in summary
