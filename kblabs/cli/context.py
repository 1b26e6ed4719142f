"""What every command gets: parsed flags, output, and settings loaded on demand."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kblabs.cli.output import Output
from kblabs.config import Settings, load_settings


@dataclass
class CliContext:
    args: argparse.Namespace
    output: Output
    overrides: dict[str, tuple[Any, str]] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)  # as given, for re-running the command

    def settings(self) -> Settings:
        """Load settings; a ConfigError propagates to main, which reports it (exit 2)."""
        overrides = dict(self.overrides)
        if self.args.log_level:
            overrides["logging.level"] = (self.args.log_level, "--log-level")
        config = Path(self.args.config) if self.args.config else None
        settings = load_settings(config_path=config, profile=self.args.profile, overrides=overrides)
        _export_dotenv(settings)
        return settings


def _export_dotenv(settings: Settings) -> None:
    """Make .env values visible to this process (never overriding the environment)."""
    from kblabs.config.loader import effective_environ

    for key, value in effective_environ(settings.project_root, {}).items():
        os.environ.setdefault(key, value)
