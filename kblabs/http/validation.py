"""Request bodies → pydantic models, with 400 errors that name the field."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from kblabs.errors import KbError, json_path

M = TypeVar("M", bound=BaseModel)


def field_error(field: str, message: str) -> KbError:
    """A 400 about one field, with the same `details` shape as body validation."""
    return KbError(
        "VALIDATION_ERROR",
        f"{field}: {message}",
        400,
        details=[{"field": field, "message": message}],
    )


def validation_error(exc: ValidationError) -> KbError:
    problems = [{"field": json_path(e["loc"]), "message": e["msg"]} for e in exc.errors()]
    first = problems[0]
    message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more)"
    return KbError("VALIDATION_ERROR", message, 400, details=problems)


def validate(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


async def json_body(request: Request, model: type[M], *, optional: bool = False) -> M:
    """Parse the body as a JSON object and validate it; an empty body is `{}` when
    `optional`."""
    raw = await request.body()
    if not raw.strip():
        if optional:
            return validate(model, {})
        raise KbError("VALIDATION_ERROR", "request body must be a JSON object", 400)
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KbError("VALIDATION_ERROR", f"request body is not valid JSON: {exc}", 400) from None
    if not isinstance(data, dict):
        raise KbError("VALIDATION_ERROR", "request body must be a JSON object", 400)
    return validate(model, data)
