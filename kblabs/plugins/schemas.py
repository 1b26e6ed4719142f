"""Input and output schemas of plugin handlers.

A manifest's `input`/`output` is `{"jsonSchema": {...}}` (JSON Schema, checked with
the `jsonschema` library), `{"model": "package.module:Model"}` (a pydantic model), or
a bare JSON Schema object. The schema covers the whole handler input — for REST routes
`{"query", "body", "params"}` — so one schema states every field a route accepts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError

from kblabs.errors import KbError, json_path
from kblabs.plugins.handlers import import_handler


def schema_document(schema: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON Schema to publish (OpenAPI), when there is one."""
    if "jsonSchema" in schema:
        return schema["jsonSchema"]
    if "model" in schema:
        return None
    return schema


def problems(schema: dict[str, Any] | None, value: Any, root: Path | None) -> list[dict]:
    """Every mismatch as {field, message}; [] when `value` fits (or there is no schema)."""
    if not schema:
        return []
    if "model" in schema:
        model = import_handler(str(schema["model"]), root)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise KbError("INVALID_SCHEMA", f"{schema['model']} is not a pydantic model", 500)
        try:
            model.model_validate(value)
        except ValidationError as exc:
            return [{"field": json_path(e["loc"]), "message": e["msg"]} for e in exc.errors()]
        return []
    document = schema_document(schema) or {}
    validator = Draft202012Validator(document)
    return [
        {"field": json_path(error.absolute_path), "message": error.message}
        for error in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    ]
