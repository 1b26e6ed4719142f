"""Alembic environment for KB Labs.

The platform runs migrations through `kblabs.store.migrations`, which hands a live
connection in `config.attributes["connection"]`. Running `alembic` by hand also works:
it then connects to `sqlalchemy.url` (set it with `-x url=...` or in alembic.ini).
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from kblabs.store.engine import create_engine
from kblabs.store.tables import metadata

config = context.config


def run_with_connection(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_with_own_engine(url: str) -> None:
    engine = create_engine(url)
    async with engine.connect() as connection:
        await connection.run_sync(run_with_connection)
        await connection.commit()
    await engine.dispose()


def run_offline(url: str) -> None:
    context.configure(url=url, target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
    "sqlalchemy.url"
)
if connection is not None:
    run_with_connection(connection)
elif context.is_offline_mode():
    run_offline(url)
else:
    asyncio.run(run_with_own_engine(url))
