"""Configuration: kb.config.json, environment, .env and profiles as one Settings object."""

from kblabs.config.loader import load_settings
from kblabs.config.problems import ConfigError, ConfigProblem
from kblabs.config.settings import Settings

__all__ = ["ConfigError", "ConfigProblem", "Settings", "load_settings"]
