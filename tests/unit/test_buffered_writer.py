"""kblabs.store.buffered_writer against a real SQLite store: rows survive an outage, a
refused row does not hold back the others, the buffer stays bounded, rows enqueued from
other threads are all written, and retention deletes in chunks."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from loguru import logger
from sqlalchemy import insert, select

from kblabs.config import load_settings
from kblabs.store import Store
from kblabs.store.buffered_writer import BufferedTableWriter, Row, WriterTexts
from kblabs.store.tables import analytics_events

pytestmark = pytest.mark.anyio


class Events(BufferedTableWriter):
    """The writer as a component uses it, on the analytics table."""

    table = analytics_events
    texts = WriterTexts("test writer", "rows")
    purge_chunk = 2  # so a few rows take several delete transactions

    def __init__(
        self,
        store: Store,
        *,
        chunk_size: int = 2,
        max_pending: int = 100,
        retention_days: int | None = None,
    ) -> None:
        super().__init__(
            store,
            flush_interval_s=3600.0,  # the tests flush, or wake the task
            chunk_size=chunk_size,
            max_pending=max_pending,
            retention_days=retention_days,
        )
        self.refused: list[str] = []

    def _on_row_refused(self, row: Row, exc: Exception) -> None:
        self.refused.append(row["id"])


def event(event_id: str, age: timedelta = timedelta(0), **columns: Any) -> Row:
    ts = datetime.now(UTC) - age
    row = {"id": event_id, "type": "t", "ts": ts, "ingest_ts": ts, "namespace_id": "default"}
    return {**row, "source": {"product": "test"}, **columns}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    root = tmp_path / "project"
    root.mkdir()
    settings = load_settings(environ={"KB_PROJECT_ROOT": str(root)})
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    started = Store(settings)
    await started.start()
    yield started
    await started.stop()


@pytest.fixture
def lines() -> Iterator[list[tuple[str, str]]]:
    """(level, message) of what is logged at INFO or worse."""
    found: list[tuple[str, str]] = []
    handler = logger.add(
        lambda m: found.append((m.record["level"].name, m.record["message"])), level="INFO"
    )
    yield found
    logger.remove(handler)


async def stored_ids(store: Store) -> list[str]:
    async with store.engine.connect() as connection:
        found = await connection.execute(select(analytics_events.c.id))
        return sorted(found.scalars())


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.01)


async def test_rows_wait_through_an_outage_and_are_written_when_it_ends(
    store: Store, lines: list[tuple[str, str]]
) -> None:
    writer = Events(store)
    for n in range(5):
        writer._enqueue(event(f"e{n}"))
    await store.stop()  # the database goes away
    await writer.flush()
    await writer.flush()  # does not raise, keeps everything
    assert len(writer._pending) == 5 and writer.written == 0
    assert writer.failed_flushes == 2 and writer.last_error is not None
    warned = [m for level, m in lines if "cannot write" in m]
    assert warned == [f"test writer: cannot write 5 rows, keeping them: {writer.last_error}"]

    await store.start()  # back again
    await writer.flush()
    assert writer.last_error is None and writer.written == 5 and writer._pending == []
    assert await stored_ids(store) == [f"e{n}" for n in range(5)]
    assert ("INFO", "test writer: writing rows again") in lines


async def test_a_refused_row_is_dropped_and_the_others_written(store: Store) -> None:
    async with store.engine.begin() as connection:
        await connection.execute(insert(analytics_events), [event("taken")])
    writer = Events(store, chunk_size=10)
    for row in (event("a"), event("taken"), event("b"), event("no-type", type=None)):
        writer._enqueue(row)
    await writer.flush()
    assert writer.refused == ["taken", "no-type"]
    assert (writer.written, writer.dropped, writer.failed_flushes) == (2, 2, 0)
    assert writer.last_error is None and writer._pending == []
    assert await stored_ids(store) == ["a", "b", "taken"]


async def test_a_full_buffer_drops_new_rows_and_says_how_many_once(
    store: Store, lines: list[tuple[str, str]]
) -> None:
    writer = Events(store, max_pending=3)
    assert [writer._enqueue(event(f"e{n}")) for n in range(5)] == [1, 2, 3, None, None]
    assert writer.dropped == 2
    await writer.flush()
    await writer.flush()
    dropped = [m for level, m in lines if "dropped" in m]
    assert dropped == ["test writer: 2 rows were dropped while the buffer was full"]
    assert await stored_ids(store) == ["e0", "e1", "e2"]


async def test_rows_enqueued_from_other_threads_while_flushing_are_all_written(
    store: Store,
) -> None:
    writer = Events(store, chunk_size=50, max_pending=10_000)

    def produce(thread: int) -> None:
        for n in range(250):
            writer._enqueue(event(f"t{thread}-{n:03d}"))
            if n % 10 == 0:
                time.sleep(0.001)  # let flushes run between the appends

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        await writer.flush()  # takes rows from the head while the threads append
        await asyncio.sleep(0)
    await writer.flush()
    assert writer.written == 1000 and writer.dropped == 0 and writer._pending == []
    assert len(set(await stored_ids(store))) == 1000


async def test_the_task_writes_when_woken_then_purges_and_stop_writes_the_rest(
    store: Store, lines: list[tuple[str, str]]
) -> None:
    async with store.engine.begin() as connection:
        await connection.execute(insert(analytics_events), [event("old", timedelta(days=2))])
    writer = Events(store, retention_days=1)
    writer._start_writer("test-writer")
    writer._enqueue(event("woken"))
    writer._wake.set()
    await eventually(lambda: writer.written == 1 and writer.purged == 1)
    assert ("INFO", "test writer: deleted 1 rows older than 1 days") in lines
    writer._enqueue(event("at-stop"))
    assert await writer._stop_writer() == 0
    assert await stored_ids(store) == ["at-stop", "woken"]


async def test_stop_reports_the_rows_it_could_not_write(store: Store) -> None:
    writer = Events(store)
    writer._start_writer("test-writer")
    writer._enqueue(event("lost"))
    await store.stop()
    assert await writer._stop_writer() == 1
    await store.start()  # for the fixture's stop


async def test_purge_deletes_older_rows_a_chunk_at_a_time(store: Store) -> None:
    rows = [event(f"old{n}", timedelta(days=3)) for n in range(5)] + [event("recent")]
    async with store.engine.begin() as connection:
        await connection.execute(insert(analytics_events), rows)
    writer = Events(store)
    assert await writer.purge_older_than(datetime.now(UTC) - timedelta(days=1)) == 5
    assert writer.purged == 5
    assert await stored_ids(store) == ["recent"]
