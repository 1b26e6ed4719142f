"""The ``execution`` capability: running plugin handlers on the host (not available yet).

The original agent runs ``execute({executionId, pluginId, handlerRef, …})`` and
``discover()``; both need the plugin runtime, which the host agent does not embed yet.
Every call answers UNSUPPORTED so the gateway can tell the host cannot do it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kblabs.agent.capabilities.base import BaseCapability, CapabilityError, Handler

UNAVAILABLE_MESSAGE = (
    "plugin execution on the host agent is not available yet (needs the plugin runtime)"
)


class ExecutionCapability(BaseCapability):
    name = "execution"

    def methods(self) -> Mapping[str, Handler]:
        return {}

    async def call(self, method: str, args: list[Any]) -> Any:
        raise CapabilityError("UNSUPPORTED", UNAVAILABLE_MESSAGE)
