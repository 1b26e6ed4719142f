"""What plugin authors import: `PluginError` now; `define_*` and hooks follow with the
plugin runtime."""

from __future__ import annotations

from typing import Any

from kblabs.errors import KbError


class PluginError(KbError):
    """Raise from a handler to answer with your own code and HTTP status."""

    def __init__(
        self, code: str, message: str, http_status: int = 500, details: Any = None
    ) -> None:
        super().__init__(code, message, http_status, details=details)
        self.http_status = http_status
