"""Starting and stopping the process's components in a fixed order, and readiness.

The order is given by kblabs.app (ARCHITECTURE §2: store → adapters → state broker →
plugin registry → workflow workers and scheduler). Shutdown is the reverse and starts
by flipping /ready to 503.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Protocol

from loguru import logger

from kblabs.errors import StartupError


class Component(Protocol):
    """Anything with a name, start and stop. A component may also have
    `health() -> ("ok" | "degraded", message)`, consulted by /ready without I/O."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Lifecycle:
    def __init__(self, components: list[Component]) -> None:
        self.components = components
        self.phase = "initializing"  # → ready → draining → stopped, or → failed
        self.status: dict[str, str] = {c.name: "pending" for c in components}
        self.messages: dict[str, str] = {}
        self.started_at = utc_now_iso()
        self._started_monotonic = time.monotonic()
        self.startup_error: StartupError | None = None

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self._started_monotonic

    async def start(self) -> None:
        started: list[Component] = []
        for component in self.components:
            self.status[component.name] = "starting"
            began = time.perf_counter()
            try:
                await component.start()
            except Exception as exc:
                error = (
                    exc
                    if isinstance(exc, StartupError)
                    else StartupError(component.name, f"{type(exc).__name__}: {exc}")
                )
                self._fail(component.name, error, exc)
                for done in reversed(started):
                    await self._stop_one(done)
                raise error from exc
            started.append(component)
            self.status[component.name] = "started"
            logger.debug(
                "started {} in {:.0f} ms", component.name, (time.perf_counter() - began) * 1000
            )
        self.phase = "ready"

    def _fail(self, name: str, error: StartupError, exc: Exception) -> None:
        self.phase = "failed"
        self.status[name] = "failed"
        self.messages[name] = error.message
        self.startup_error = error
        if not isinstance(exc, StartupError):
            logger.opt(exception=exc).debug("component {} failed to start", name)

    def begin_draining(self) -> None:
        if self.phase == "ready" or self.phase == "initializing":
            self.phase = "draining"

    async def stop(self) -> None:
        self.begin_draining()
        for component in reversed(self.components):
            if self.status.get(component.name) == "started":
                await self._stop_one(component)
        self.phase = "stopped"

    async def _stop_one(self, component: Component) -> None:
        try:
            await component.stop()
            self.status[component.name] = "stopped"
        except Exception as exc:  # one failing stop must not keep the others running
            self.status[component.name] = "failed"
            logger.opt(exception=exc).error("component {} failed to stop", component.name)

    def degraded(self) -> dict[str, str]:
        """Started components that report themselves degraded: name → message."""
        found = {}
        for component in self.components:
            check = getattr(component, "health", None)
            if check is not None and self.status.get(component.name) == "started":
                status, message = check()
                if status != "ok":
                    found[component.name] = message
        return found

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, kb.ready/1 body). No I/O: answered from in-memory state.
        A degraded component (say, Redis down) keeps the process ready (200) but says so."""
        ready = self.phase == "ready"
        degraded = self.degraded() if ready else {}
        reason = {
            "ready": "ready",
            "initializing": "starting",
            "draining": "draining",
            "stopped": "stopped",
            "failed": "startup_failed",
        }[self.phase]
        components = {}
        for name, status in self.status.items():
            entry: dict[str, Any] = {"status": "degraded" if name in degraded else status}
            message = degraded.get(name) or self.messages.get(name)
            if message:
                entry["message"] = message
            components[name] = entry
        status = ("degraded" if degraded else "ready") if ready else self.phase
        body = {
            "schema": "kb.ready/1",
            "ts": utc_now_iso(),
            "ready": ready,
            "status": status,
            "reason": f"{next(iter(degraded))}_degraded" if degraded else reason,
            "components": components,
        }
        return (200 if ready else 503), body

    def health(self) -> str:
        """healthy | degraded | unhealthy, for service_health_status."""
        if self.phase == "ready":
            return "degraded" if self.degraded() else "healthy"
        if self.phase in ("initializing", "draining"):
            return "degraded"
        return "unhealthy"
