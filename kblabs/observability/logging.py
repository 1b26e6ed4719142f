"""Logging with loguru: JSON lines in production, readable lines in development.

Every record carries the request and trace ids of the request being served, and
secrets (bearer tokens, `access_token=` and similar values) are redacted from messages.
Standard-library logging (Hypercorn, Alembic, libraries) is routed into loguru.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC
from typing import TYPE_CHECKING, Any

from loguru import logger

from kblabs.config import Settings
from kblabs.observability import context

if TYPE_CHECKING:
    from loguru import Record

_SECRET_PATTERNS = (
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=\-]+"), "Bearer [REDACTED]"),
    (
        re.compile(
            r"(?i)\b(access_token|refresh_token|token|secret|password|api_key|apikey)"
            r"=([^&\s\"']+)"
        ),
        r"\1=[REDACTED]",
    ),
)

LOGURU_LEVELS = {
    "trace": "TRACE",
    "debug": "DEBUG",
    "info": "INFO",
    "warning": "WARNING",
    "error": "ERROR",
    "critical": "CRITICAL",
}


def redact_text(text: str) -> str:
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _patch(record: Record) -> None:
    record["message"] = redact_text(record["message"])
    extra = record["extra"]
    rid, tid = context.request_id.get(), context.trace_id.get()
    if rid and "requestId" not in extra:
        extra["requestId"] = rid
    if tid and "traceId" not in extra:
        extra["traceId"] = tid


def _json_sink(service_id: str):
    def sink(message: Any) -> None:
        record = message.record
        line: dict[str, Any] = {
            "ts": record["time"].astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "level": record["level"].name.lower(),
            "msg": record["message"],
            "serviceId": service_id,
            "module": record["extra"].get("module", record["name"]),
        }
        line.update({k: v for k, v in record["extra"].items() if k != "module"})
        if record["exception"] is not None:
            line["exception"] = "".join(_format_exception(record["exception"]))
        sys.stderr.write(json.dumps(line, default=str) + "\n")
        sys.stderr.flush()

    return sink


def _format_exception(exception: Any) -> list[str]:
    import traceback

    return traceback.format_exception(exception.type, exception.value, exception.traceback)


def _pretty_format(record: Record) -> str:
    ids = ""
    if record["extra"].get("requestId"):
        ids = " <dim>[{extra[requestId]}]</dim>"
    return (
        "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
        "<cyan>{name}</cyan>" + ids + " {message}\n{exception}"
    )


class _InterceptHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).bind(module=record.name).log(
            level, record.getMessage()
        )


def configure_logging(settings: Settings, level: str | None = None) -> None:
    """Install the one sink for this process. `level` overrides the configured level."""
    chosen = (level or settings.logging.level).lower()
    logger.remove()
    logger.configure(patcher=_patch)
    if chosen != "silent":
        loguru_level = LOGURU_LEVELS.get(chosen, "INFO")
        as_json = settings.logging.format == "json" or (
            settings.logging.format == "auto" and settings.is_production
        )
        if as_json:
            logger.add(
                _json_sink(settings.observability.service_id),
                level=loguru_level,
                backtrace=False,
                diagnose=False,
            )
        else:
            logger.add(
                sys.stderr,
                level=loguru_level,
                format=_pretty_format,
                colorize=None,
                backtrace=False,
                diagnose=False,  # never print local variables: they may hold secrets
            )
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.WARNING, force=True)
    for name in ("hypercorn.error", "alembic"):
        logging.getLogger(name).setLevel(
            logging.INFO if chosen in ("trace", "debug") else logging.WARNING
        )
