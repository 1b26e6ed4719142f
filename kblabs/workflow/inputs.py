"""A run's inputs, checked against the workflow's declarations.

A workflow that declares inputs gets exactly those: defaults filled in, required ones
enforced, values coerced to their declared type (`"3"` → 3 for a number, `"true"` →
True for a boolean), enums checked; an unknown name is an error (a typo should not
silently run with the default). A workflow that declares none receives what it is
given, as it is (plugin handlers take arbitrary input).
"""

from __future__ import annotations

from typing import Any

from kblabs.errors import KbError
from kblabs.workflow.spec import InputSpec, WorkflowSpec


def _coerce(name: str, value: Any, declared: InputSpec) -> tuple[Any, str | None]:
    kind = declared.type
    if kind == "string":
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return value, "expected a string"
        return str(value), None
    if kind == "number":
        if isinstance(value, bool):
            return value, "expected a number"
        if isinstance(value, int | float):
            return value, None
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                return value, f"expected a number, got {value!r}"
            return (int(number) if number.is_integer() and "." not in value else number), None
        return value, "expected a number"
    if isinstance(value, bool):
        return value, None
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true", None
    return value, "expected a boolean (true or false)"


def resolve_inputs(spec: WorkflowSpec, given: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(given, dict):
        raise KbError("VALIDATION_ERROR", "inputs must be an object", 400)
    if not spec.inputs:
        return dict(given)
    problems: list[dict[str, str]] = []
    unknown = sorted(set(given) - set(spec.inputs))
    for name in unknown:
        problems.append(
            {
                "field": f"inputs.{name}",
                "message": f"unknown input (declared: {', '.join(spec.inputs)})",
            }
        )
    resolved: dict[str, Any] = {}
    for name, declared in spec.inputs.items():
        if name not in given or given[name] is None:
            if declared.default is not None:
                resolved[name] = declared.default
            elif declared.required:
                problems.append({"field": f"inputs.{name}", "message": "required"})
            continue
        value, problem = _coerce(name, given[name], declared)
        if problem is None and declared.enum is not None and value not in declared.enum:
            problem = f"must be one of {', '.join(map(str, declared.enum))}"
        if problem:
            problems.append({"field": f"inputs.{name}", "message": problem})
        else:
            resolved[name] = value
    if problems:
        first = problems[0]
        raise KbError(
            "VALIDATION_ERROR", f"{first['field']}: {first['message']}", 400, details=problems
        )
    return resolved
