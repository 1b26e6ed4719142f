"""KB Labs in Python: a self-hosted developer platform served by one process."""

__version__ = "0.1.0"
