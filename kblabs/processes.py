"""Helpers for the child processes the platform starts (shell steps, pip, workers)."""

from __future__ import annotations

import signal


def die_with_parent() -> None:
    """`preexec_fn`: on Linux the child gets SIGKILL when the process that started it
    dies (even by SIGKILL), so a crashed server or worker leaves no orphan running.
    Elsewhere (or if prctl is unavailable) it does nothing."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
