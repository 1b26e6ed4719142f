"""What a step ended with, and the errors a step can fail with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# Retrying cannot help these: the job fails at once, whatever its retry policy says.
NOT_RETRYABLE = frozenset(
    {
        "INVALID_STEP",
        "COMMAND_RESOLUTION_FAILED",
        "APPROVAL_REJECTED",
        "APPROVAL_TIMEOUT",
        "SHELL_BLOCKED",
        "PERMISSION_DENIED",
        "WORKFLOW_NOT_FOUND",
        "WORKFLOW_INVALID",
        "WORKFLOW_DEPTH_EXCEEDED",
        "GATE_FAILED",
        "GATE_MAX_ITERATIONS",
    }
)


class Stop(Exception):
    """The job must stop now: cancelled, lease lost or out of time."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # cancelled | lease-lost | timeout


class StepFailed(Exception):
    """Raised by a step kind: the step failed with this code and message."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def to_error(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return error


@dataclass
class StepOutcome:
    status: Literal["success", "failed", "skipped", "waiting", "restart"]
    outputs: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    restart_from: str | None = None  # a gate's target step id


def as_outputs(result: Any) -> dict[str, Any]:
    """A handler's return value as step outputs (reference workflow §5): an object as
    it is; `{exitCode, result}` → its result; a primitive → {result}; None → {}."""
    if result is None:
        return {}
    if isinstance(result, dict):
        if isinstance(result.get("exitCode"), int) and "result" in result:
            return as_outputs(result["result"])
        return result
    return {"result": result}
