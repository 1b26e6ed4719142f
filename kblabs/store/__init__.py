"""Storage: the async engine, tables, migrations and the store component."""

from kblabs.store.service import Store
from kblabs.store.tables import metadata

__all__ = ["Store", "metadata"]
