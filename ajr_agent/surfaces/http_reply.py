"""What the HTTP service answers with: a status, a body and its type, headers; JSON ones from the read model."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from ajr_agent.views.models import ErrorOut

JSON = "application/json"
HTML = "text/html; charset=utf-8"
# The pages load only their own scripts and styles; frames are refused so that the
# operator buttons cannot be overlaid by another site (clickjacking).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "DENY",
}
COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


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


def error_reply(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    """An error as JSON (`{"error": ...}`)."""
    reply = Reply.json(ErrorOut(error=message), status)
    reply.headers.update(headers or {})
    return reply
