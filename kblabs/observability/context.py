"""Per-request correlation ids, carried in contextvars so every log line can show them."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
trace_id: ContextVar[str | None] = ContextVar("trace_id", default=None)

MAX_ID_LENGTH = 128
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def new_id() -> str:
    return str(uuid.uuid4())


def accept_id(value: str | None) -> str | None:
    """An inbound id is echoed only when short and made of safe characters."""
    if value and len(value) <= MAX_ID_LENGTH and _SAFE_ID.match(value):
        return value
    return None
