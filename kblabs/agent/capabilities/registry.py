"""Building the capability table of an agent and dispatching a tunnelled call to it."""

from __future__ import annotations

from typing import Any

from loguru import logger

from kblabs.agent.capabilities.base import Capability, CapabilityError, Workspace, os_error
from kblabs.agent.capabilities.execution import ExecutionCapability
from kblabs.agent.capabilities.filesystem import FilesystemCapability
from kblabs.agent.capabilities.git import GitCapability
from kblabs.agent.capabilities.search import SearchCapability
from kblabs.agent.capabilities.shell import ShellCapability

MAX_ERROR_MESSAGE = 300


def build_capabilities(
    workspace: Workspace, *, shell_enabled: bool = False, shell_timeout_ms: int = 30000
) -> dict[str, Capability]:
    """Every capability the agent serves, by adapter name.

    The shell capability is always present (so a call gets a clear UNSUPPORTED rather
    than UNKNOWN_ADAPTER) but refuses everything unless ``shell_enabled``.
    """
    capabilities: list[Capability] = [
        FilesystemCapability(workspace),
        GitCapability(workspace),
        SearchCapability(workspace),
        ShellCapability(workspace, enabled=shell_enabled, timeout_ms=shell_timeout_ms),
        ExecutionCapability(workspace),
    ]
    return {capability.name: capability for capability in capabilities}


async def dispatch(
    capabilities: dict[str, Capability], adapter: str, method: str, args: list[Any]
) -> Any:
    """Run ``adapter.method(*args)``; every failure is a CapabilityError.

    Unexpected exceptions become HANDLER_ERROR with a one-line message; the traceback
    goes to the agent's log, never to the gateway.
    """
    capability = capabilities.get(adapter) if isinstance(adapter, str) else None
    if capability is None:
        raise CapabilityError("UNKNOWN_ADAPTER", f"unknown adapter: {adapter}")
    if not isinstance(method, str):
        raise CapabilityError("UNKNOWN_METHOD", f"unknown method: {adapter}.{method}")
    if args is None:
        args = []
    if not isinstance(args, list):
        raise CapabilityError("INVALID_ARGS", "args must be a list")
    try:
        return await capability.call(method, args)
    except CapabilityError:
        raise
    except TimeoutError as exc:
        raise CapabilityError("TIMEOUT", f"{adapter}.{method} timed out", retryable=True) from exc
    except OSError as exc:
        logger.opt(exception=exc).warning("agent call {}.{} failed", adapter, method)
        raise os_error(exc, str(exc.filename or "")) from exc
    except Exception as exc:
        logger.opt(exception=exc).error("agent call {}.{} failed", adapter, method)
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:MAX_ERROR_MESSAGE]
        raise CapabilityError("HANDLER_ERROR", message) from exc
