"""CLI output: readable text through rich, or exactly one JSON object with --json."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console


class Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.console = Console(highlight=False, soft_wrap=True)
        self.errors = Console(stderr=True, highlight=False, soft_wrap=True)
        self._emitted = False

    def result(self, payload: dict[str, Any], human: Callable[[Console], None]) -> None:
        """Print the command's one result: `payload` as JSON, or `human` as text."""
        if self.as_json:
            self._emit(payload)
        else:
            human(self.console)

    def failure(self, message: str, *, code: str = "ERROR", **extra: Any) -> None:
        if self.as_json:
            self._emit({"ok": False, "error": {"code": code, "message": message}, **extra})
        else:
            self.errors.print(f"[red]error:[/red] {message}", markup=True)

    def _emit(self, payload: dict[str, Any]) -> None:
        if self._emitted:  # one object per invocation, whatever happens after the first
            return
        self._emitted = True
        sys.stdout.write(json.dumps(payload, default=str) + "\n")
        sys.stdout.flush()
