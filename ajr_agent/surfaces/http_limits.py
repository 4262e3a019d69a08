"""What one client may take of the HTTP service, and the check of a request head against it.

The listening thread checks each head as it arrives, before any of it reaches the service:
sizes, the number of header fields and the body's framing (these endpoints take no body).
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus


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
