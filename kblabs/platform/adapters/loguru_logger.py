"""logger → "loguru": the platform's own loguru logger, with bound fields.

Records go wherever kblabs.observability.logging sent loguru (JSON lines in production),
with the request and trace ids and the redaction that module adds. Fields become
loguru `extra` keys (top-level keys of a JSON line). The message is never used as a
format string, so braces in it are printed as they are.
"""

from __future__ import annotations

from typing import Any

from loguru import logger as _root_logger
from pydantic import Field

from kblabs.platform.options import AdapterOptions


class LoguruLoggerOptions(AdapterOptions):
    # Fields bound to every record of this adapter (say {"module": "platform"}).
    fields: dict[str, Any] = Field(default_factory=dict)


class LoguruLogger:
    def __init__(self, fields: dict[str, Any] | None = None) -> None:
        self.fields = dict(fields or {})
        self._logger = _root_logger.bind(**self.fields)

    def _log(self, level: str, message: str, exc: BaseException | None, fields: Any) -> None:
        # depth=2: the record names the caller of debug()/info()/…, not this module
        target = self._logger.bind(**fields) if fields else self._logger
        target.opt(depth=2, exception=exc).log(level, str(message))

    def debug(self, message: str, **fields: Any) -> None:
        self._log("DEBUG", message, None, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._log("INFO", message, None, fields)

    def warn(self, message: str, **fields: Any) -> None:
        self._log("WARNING", message, None, fields)

    def error(self, message: str, exc: BaseException | None = None, **fields: Any) -> None:
        self._log("ERROR", message, exc, fields)

    def child(self, **fields: Any) -> LoguruLogger:
        return LoguruLogger({**self.fields, **fields})
