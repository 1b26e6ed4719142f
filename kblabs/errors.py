"""The one error type of the platform and the one exit-code table of the CLI.

Every HTTP error body is produced from a `KbError` (see `kblabs.http.errors`), and every
CLI command returns one of the `ExitCode` values, so scripts can rely on them.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2  # bad flags, bad config
    NOT_READY = 3  # not ready, degraded, migration pending
    UNREACHABLE = 4  # the server could not be reached
    INTERRUPTED = 130  # Ctrl-C


class KbError(Exception):
    """An error with a stable code, a human message and the HTTP status it maps to."""

    def __init__(
        self,
        code: str,
        message: str,
        status: int = 400,
        details: Any = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.details = details
        self.headers = headers or {}
        self.extra = extra or {}  # top-level body fields some clients expect (429's retryAfter)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


class StartupError(Exception):
    """A component could not start; `component` names it for the one-line report."""

    def __init__(self, component: str, message: str) -> None:
        super().__init__(f"{component}: {message}")
        self.component = component
        self.message = message


def json_path(loc: Any) -> str:
    """("rest", "routes", 0, "handler") → "rest.routes[0].handler", for messages that name
    where in a document a problem is."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path
