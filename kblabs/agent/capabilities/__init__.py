"""Capability handlers of the host agent.

A capability is a named group of methods (``filesystem.readFile``, ``git.status``…) that
the gateway calls with positional JSON arguments. Every path argument is confined to the
configured workspace roots (:class:`Workspace`). See ``docs/agent-capabilities.md``.
"""

from kblabs.agent.capabilities.base import Capability, CapabilityError, Workspace
from kblabs.agent.capabilities.registry import build_capabilities, dispatch

__all__ = ["Capability", "CapabilityError", "Workspace", "build_capabilities", "dispatch"]
