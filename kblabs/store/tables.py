"""The store's own tables. Other modules add theirs to the same `metadata`."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table

# Constraint names are spelled out so Alembic migrations match on SQLite and PostgreSQL.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# One row per process start: the persisted boot counter behind service_restarts_total.
boots = Table(
    "kb_boots",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("hostname", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("version", String(64), nullable=False),
)
