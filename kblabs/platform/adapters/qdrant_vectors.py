"""vectorStore → "qdrant": Qdrant's local mode in the data dir, or a Qdrant server.

    "adapterOptions": { "vectorStore": { "url": null, "path": ".kb/qdrant" } }

Server mode when `url` (or the environment's `QDRANT_URL`) is set, with `apiKey` (or
`QDRANT_API_KEY`); otherwise local mode in `path` (default `<data dir>/qdrant`; relative
paths are relative to the project root).

- **Scoping.** Every call names a `namespace` (the tenant) and a `collection`; each pair is
  its own Qdrant collection `<prefix>_<namespace>_<collection>`. Characters outside
  `[A-Za-z0-9_-]` become `_`, and when that (or an `_` in the namespace) could make two
  pairs share a name, a short hash of the exact pair is appended: namespaces never see
  each other's points.
- **Ids.** The caller's id (`src/a.py#3`) is any string: the Qdrant point id is
  `uuid5(NAMESPACE_URL, id)` and the id itself rides in the payload as `_kb_id`, which
  is taken out again before metadata is handed back.
- **Collections** are created by the first upsert, with that vector's dimension and
  cosine distance. Searching or counting a collection that does not exist gives [] / 0.
- **Scores** are cosine similarities mapped to 0..1 (`(s + 1) / 2`), best first. A zero
  vector (the hashed embeddings' answer for a text without words) is stored and searched
  without error; its similarity to anything is 0, i.e. a score of 0.5.
- **Filters**: one `{field, operator, value}` or a list of them (all must hold); `field`
  is a metadata key, dotted for nested objects. `eq ne gt gte lt lte in nin`; numbers
  compare as numbers (2 equals 2.0); `ne` and `nin` also select records without the
  field.

Threads. The client is qdrant-client's synchronous `QdrantClient`; every call runs in a
worker thread, never on the event loop (local mode computes searches in Python and
numpy). Local mode is not thread-safe, so its calls are serialised: an asyncio lock
queues them without holding threads, and a thread lock keeps a call whose caller was
cancelled from overlapping the next one. The client is opened on first use, so the
server's start pays nothing for it; local mode's folder is locked by the process that
opened it, and another process gets VECTOR_STORE_BUSY (503) until it is released.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import re
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from loguru import logger
from pydantic import Field

from kblabs.errors import KbError
from kblabs.platform.interfaces import VectorFilter, VectorMatch, VectorRecord
from kblabs.platform.options import AdapterOptions, parse_options

if TYPE_CHECKING:
    from qdrant_client import QdrantClient
    from qdrant_client.http import models

    from kblabs.platform.registry import AdapterContext

T = TypeVar("T")

ID_KEY = "_kb_id"  # the caller's id, in the payload
OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin")
RANGE_OPERATORS = ("gt", "gte", "lt", "lte")
MAX_NAME_CHARS = 180  # Qdrant allows 255; room for the hash suffix
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class QdrantVectorStoreOptions(AdapterOptions):
    url: str | None = None  # server mode (also env QDRANT_URL)
    api_key: str | None = None  # also env QDRANT_API_KEY
    path: str | None = None  # local mode folder; default <data dir>/qdrant
    collection_prefix: str = Field(default="kb", min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    batch_size: int = Field(default=100, ge=1)
    timeout_s: float = Field(default=30, gt=0)


def build(token: str, raw: Any, ctx: AdapterContext) -> QdrantVectorStore:
    from kblabs.config.loader import effective_environ

    options = parse_options(QdrantVectorStoreOptions, token, raw)
    environ = effective_environ(ctx.settings.project_root, os.environ)
    url = options.url or environ.get("QDRANT_URL") or None
    api_key = options.api_key or environ.get("QDRANT_API_KEY") or None
    if options.path is None:
        path = ctx.settings.data_dir / "qdrant"
    else:
        path = Path(options.path).expanduser()
        if not path.is_absolute():
            path = ctx.settings.project_root / path
    return QdrantVectorStore(options, path=path, url=url, api_key=api_key)


def collection_name(prefix: str, namespace: str, collection: str) -> str:
    """The Qdrant collection of a (namespace, collection) pair: readable, and never
    shared by two pairs (a hash of the exact pair is appended when the plain name alone
    could be ambiguous)."""
    plain = f"{prefix}_{namespace}_{collection}"
    safe = _UNSAFE.sub("_", plain)
    if safe == plain and "_" not in namespace and len(safe) <= MAX_NAME_CHARS:
        return safe
    pair = json.dumps([prefix, namespace, collection]).encode()
    return f"{safe[:MAX_NAME_CHARS]}-{hashlib.blake2b(pair, digest_size=5).hexdigest()}"


def point_id(record_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, record_id))


class QdrantVectorStore:
    """The `VectorStore` of reference §D.2 on qdrant-client (see the module docstring)."""

    kind = "qdrant"

    def __init__(
        self,
        options: QdrantVectorStoreOptions | None = None,
        *,
        path: Path | None = None,
        url: str | None = None,
        api_key: str | None = None,
    ) -> None:
        self.options = options or QdrantVectorStoreOptions()
        self.url = url
        self.api_key = api_key
        self.path = None if url else Path(path or ".kb/qdrant").resolve()
        self.mode = "server" if url else "local"
        self.prefix = self.options.collection_prefix
        self.batch_size = self.options.batch_size
        self._client: QdrantClient | None = None
        self._open_lock = threading.Lock()
        self._call_lock = threading.Lock()  # local mode: one call at a time
        self._queue = asyncio.Lock()  # local mode: callers wait here, not in threads
        self._dimensions: dict[str, int] = {}  # Qdrant collection → vector size

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self.mode == "server":
            logger.info("vectorStore qdrant: server mode at {}", self.url)
        else:
            logger.info("vectorStore qdrant: local mode in {} (opened on first use)", self.path)

    async def stop(self) -> None:
        if self._client is None:
            return
        async with self._queue:
            await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._call_lock, self._open_lock:
            client, self._client = self._client, None
            self._dimensions.clear()
            if client is not None:
                client.close()

    def health(self) -> tuple[str, str]:
        return "ok", self.mode

    # --- the interface ---------------------------------------------------------------

    async def search(
        self,
        vector: Sequence[float],
        limit: int,
        filter: VectorFilter | Sequence[VectorFilter] | None = None,
        *,
        namespace: str = "default",
        collection: str = "default",
    ) -> list[VectorMatch]:
        name = self._name(namespace, collection)
        query = _vector(vector, "the search vector")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise KbError("VALIDATION_ERROR", f"limit must be a positive integer, not {limit!r}")
        query_filter = build_filter(filter)
        if query_filter is NOTHING:
            return []

        def work(client: QdrantClient) -> list[VectorMatch]:
            size = self._dimension(client, name)
            if size is None:
                return []
            self._check_dimension(size, len(query), namespace, collection, "the search vector")
            try:
                points = client.query_points(
                    name,
                    query=query,
                    limit=limit,
                    query_filter=query_filter,  # type: ignore[arg-type]
                    with_payload=True,
                ).points
            except Exception as exc:
                if _is_missing(exc):
                    self._dimensions.pop(name, None)
                    return []
                raise
            matches = []
            for point in points:
                payload = dict(point.payload or {})
                record_id = payload.pop(ID_KEY, None)
                matches.append(
                    VectorMatch(
                        id=str(point.id) if record_id is None else str(record_id),
                        score=min(1.0, max(0.0, (float(point.score) + 1.0) / 2.0)),
                        metadata=payload,
                    )
                )
            return matches

        return await self._run(work)

    async def upsert(
        self,
        records: Sequence[VectorRecord],
        *,
        namespace: str = "default",
        collection: str = "default",
    ) -> None:
        name = self._name(namespace, collection)
        points: dict[str, tuple[str, list[float], dict[str, Any]]] = {}
        for position, record in enumerate(records):
            pid, vector, payload = _point(position, record)
            points[pid] = (pid, vector, payload)  # the last of two with one id wins
        if not points:
            return
        batch = list(points.values())
        size = len(batch[0][1])
        for _, vector, payload in batch:
            self._check_dimension(
                size, len(vector), namespace, collection, f"record {payload[ID_KEY]!r}"
            )

        def work(client: QdrantClient) -> None:
            from qdrant_client.http import models

            existing = self._dimension(client, name)
            if existing is None:
                self._create(client, name, size)
            else:
                self._check_dimension(
                    existing, size, namespace, collection, f"record {batch[0][2][ID_KEY]!r}"
                )
            for start in range(0, len(batch), self.batch_size):
                part = batch[start : start + self.batch_size]
                points_batch = models.Batch(
                    ids=[p[0] for p in part],
                    vectors=[p[1] for p in part],
                    payloads=[p[2] for p in part],
                )
                try:
                    client.upsert(name, points=points_batch, wait=True)
                except Exception as exc:
                    if not _is_missing(exc):
                        raise
                    # dropped by another instance since we looked: create it again
                    self._create(client, name, size)
                    client.upsert(name, points=points_batch, wait=True)

        await self._run(work)

    async def delete(
        self, ids: Sequence[str], *, namespace: str = "default", collection: str = "default"
    ) -> None:
        name = self._name(namespace, collection)
        point_ids = [point_id(i) for i in _ids(ids)]
        if not point_ids:
            return

        def work(client: QdrantClient) -> None:
            from qdrant_client.http import models

            for start in range(0, len(point_ids), self.batch_size * 10):
                part: list[Any] = point_ids[start : start + self.batch_size * 10]
                selector = models.PointIdsList(points=part)
                try:
                    client.delete(name, points_selector=selector, wait=True)
                except Exception as exc:
                    if _is_missing(exc):
                        return
                    raise

        await self._run(work)

    async def count(self, *, namespace: str = "default", collection: str = "default") -> int:
        name = self._name(namespace, collection)

        def work(client: QdrantClient) -> int:
            try:
                return int(client.count(name, exact=True).count)
            except Exception as exc:
                if _is_missing(exc):
                    return 0
                raise

        return await self._run(work)

    async def get(
        self, ids: Sequence[str], *, namespace: str = "default", collection: str = "default"
    ) -> list[VectorRecord]:
        """The records with these ids that exist, in the order asked, with metadata and
        vector (as stored: cosine collections keep vectors at unit length)."""
        name = self._name(namespace, collection)
        wanted = list(dict.fromkeys(_ids(ids)))
        if not wanted:
            return []

        def work(client: QdrantClient) -> list[VectorRecord]:
            try:
                found = client.retrieve(
                    name,
                    ids=[point_id(i) for i in wanted],
                    with_payload=True,
                    with_vectors=True,
                )
            except Exception as exc:
                if _is_missing(exc):
                    return []
                raise
            by_id: dict[str, VectorRecord] = {}
            for point in found:
                payload = dict(point.payload or {})
                record_id = str(payload.pop(ID_KEY, point.id))
                vector = point.vector
                by_id[record_id] = VectorRecord(
                    id=record_id,
                    vector=[float(x) for x in vector]  # type: ignore[arg-type]
                    if isinstance(vector, list)
                    else [],
                    metadata=payload,
                )
            return [by_id[i] for i in wanted if i in by_id]

        return await self._run(work)

    async def drop_collection(
        self, *, namespace: str = "default", collection: str = "default"
    ) -> bool:
        """Remove the collection and all its records; False when there was none."""
        name = self._name(namespace, collection)

        def work(client: QdrantClient) -> bool:
            self._dimensions.pop(name, None)
            if not client.collection_exists(name):
                return False
            client.delete_collection(name)
            return True

        return await self._run(work)

    # --- plumbing --------------------------------------------------------------------

    def _name(self, namespace: str, collection: str) -> str:
        for label, value in (("namespace", namespace), ("collection", collection)):
            if not isinstance(value, str) or not value:
                raise KbError("VALIDATION_ERROR", f"{label} must be a non-empty string")
        return collection_name(self.prefix, namespace, collection)

    async def _run(self, work: Callable[[QdrantClient], T]) -> T:
        try:
            if self.mode == "local":
                async with self._queue:
                    return await asyncio.to_thread(self._locked, work)
            return await asyncio.to_thread(lambda: work(self._open()))
        except KbError:
            raise
        except Exception as exc:
            self._dimensions.clear()  # another instance may have changed a collection
            raise _translate(exc, self.url) from exc

    def _locked(self, work: Callable[[QdrantClient], T]) -> T:
        with self._call_lock:
            return work(self._open())

    def _open(self) -> QdrantClient:
        """The client, opened on first use (in a worker thread)."""
        client = self._client
        if client is not None:
            return client
        with self._open_lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _connect(self) -> QdrantClient:
        from qdrant_client import QdrantClient

        if self.url:
            return QdrantClient(
                url=self.url,
                api_key=self.api_key,
                timeout=max(1, math.ceil(self.options.timeout_s)),
                check_compatibility=False,  # no request before the first real one
            )
        assert self.path is not None
        self.path.mkdir(parents=True, exist_ok=True)
        _check_not_locked(self.path)  # before qdrant-client loads every collection
        try:
            client = QdrantClient(path=str(self.path), force_disable_check_same_thread=True)
        except RuntimeError as exc:
            if "already accessed" in str(exc):
                raise _busy(self.path) from None
            raise
        logger.debug("vectorStore qdrant: opened the local store in {}", self.path)
        _tune_local(client)
        return client

    def _dimension(self, client: QdrantClient, name: str) -> int | None:
        """The vector size of a collection, None when it does not exist."""
        if name in self._dimensions:
            return self._dimensions[name]
        from qdrant_client.http import models

        try:
            info = client.get_collection(name)
        except Exception as exc:
            if _is_missing(exc):
                return None
            raise
        vectors = info.config.params.vectors
        if not isinstance(vectors, models.VectorParams):
            raise KbError(
                "VECTOR_STORE_ERROR",
                f"Qdrant collection {name!r} has named vectors; it was not created by KB Labs",
                500,
            )
        self._dimensions[name] = vectors.size
        return vectors.size

    def _create(self, client: QdrantClient, name: str, size: int) -> None:
        from qdrant_client.http import models

        try:
            client.create_collection(
                name,
                vectors_config=models.VectorParams(size=size, distance=models.Distance.COSINE),
            )
        except Exception as exc:
            if "already exists" not in str(exc):
                raise
            self._dimensions.pop(name, None)  # created by another instance meanwhile
            existing = self._dimension(client, name)
            if existing is not None and existing != size:
                raise KbError(
                    "VECTOR_DIMENSION_MISMATCH",
                    f"{name} holds {existing}-dimension vectors; got {size}",
                    400,
                ) from None
            return
        self._dimensions[name] = size
        if self.mode == "local":
            _tune_local(client)

    @staticmethod
    def _check_dimension(size: int, got: int, namespace: str, collection: str, what: str) -> None:
        if size != got:
            raise KbError(
                "VECTOR_DIMENSION_MISMATCH",
                f"collection {collection!r} (namespace {namespace!r}) holds {size}-dimension "
                f"vectors; got {got} for {what} (did the embeddings adapter change? drop the "
                "collection and re-index, or use another collection)",
                400,
            )


# --- filters ----------------------------------------------------------------------------


class _Nothing:
    """A filter no record can pass (`in` with an empty list)."""


NOTHING = _Nothing()


def build_filter(
    spec: VectorFilter | Sequence[VectorFilter] | None,
) -> models.Filter | _Nothing | None:
    """One VectorFilter or a list (AND) → a Qdrant Filter; None for no filter; NOTHING
    when no record can match. Raises VECTOR_FILTER_INVALID for a bad one."""
    if spec is None:
        return None
    from qdrant_client.http import models

    conditions: Sequence[Any] = [spec] if isinstance(spec, dict) else spec
    if isinstance(conditions, str | bytes) or not isinstance(conditions, Sequence):
        raise _bad_filter(
            f"a filter is an object {{field, operator, value}} or a list of them, not {spec!r}"
        )
    must: list[Any] = []
    must_not: list[Any] = []
    for position, condition in enumerate(conditions):
        where = f"filter[{position}]" if not isinstance(spec, dict) else "filter"
        if not isinstance(condition, dict):
            raise _bad_filter(f"{where} must be an object {{field, operator, value}}")
        field, operator = condition.get("field"), condition.get("operator")
        if not isinstance(field, str) or not field:
            raise _bad_filter(f"{where}.field must be a non-empty metadata key")
        if operator not in OPERATORS:
            raise _bad_filter(
                f"{where}.operator {operator!r} is unknown (known: {', '.join(OPERATORS)})"
            )
        if "value" not in condition:
            raise _bad_filter(f"{where} ({field} {operator}) has no value")
        value = condition["value"]
        if operator in RANGE_OPERATORS:
            if not _is_number(value):
                raise _bad_filter(f"{where}: {field} {operator} needs a number, not {value!r}")
            must.append(models.FieldCondition(key=field, range=models.Range(**{operator: value})))
        elif operator in ("eq", "ne"):
            if not _is_scalar(value):
                raise _bad_filter(
                    f"{where}: {field} {operator} needs a string, number or boolean, not {value!r}"
                )
            (must if operator == "eq" else must_not).append(_match(models, field, value))
        else:
            if not isinstance(value, list | tuple):
                raise _bad_filter(
                    f"{where}: {field} {operator} needs a list of values, not {value!r}"
                )
            bad = [v for v in value if not _is_scalar(v)]
            if bad:
                raise _bad_filter(
                    f"{where}: {field} {operator} values must be strings, numbers or booleans, "
                    f"not {bad[0]!r}"
                )
            if operator == "in":
                if not value:
                    return NOTHING
                must.append(_match_any(models, field, list(value)))
            elif value:
                must_not.append(_match_any(models, field, list(value)))
    if not must and not must_not:
        return None
    return models.Filter(must=must or None, must_not=must_not or None)


def _match(models: Any, field: str, value: Any) -> Any:
    if _is_number(value):  # as a range, so that 2 also finds 2.0
        return models.FieldCondition(key=field, range=models.Range(gte=value, lte=value))
    return models.FieldCondition(key=field, match=models.MatchValue(value=value))


def _match_any(models: Any, field: str, values: list[Any]) -> Any:
    if all(isinstance(v, str) for v in values):
        return models.FieldCondition(key=field, match=models.MatchAny(any=values))
    return models.Filter(should=[_match(models, field, v) for v in values])


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | bool) or _is_number(value)


def _bad_filter(message: str) -> KbError:
    return KbError("VECTOR_FILTER_INVALID", message, 400)


# --- records ----------------------------------------------------------------------------


def _ids(ids: Iterable[str]) -> list[str]:
    if isinstance(ids, str):
        raise KbError("VALIDATION_ERROR", "ids must be a list of strings, not one string")
    out = list(ids)
    for value in out:
        if not isinstance(value, str) or not value:
            raise KbError("VALIDATION_ERROR", f"ids must be non-empty strings, not {value!r}")
    return out


def _vector(vector: Any, what: str) -> list[float]:
    import numpy as np

    if isinstance(vector, str | bytes | dict) or vector is None:
        raise KbError("VALIDATION_ERROR", f"{what} must be a list of numbers")
    try:
        array = np.asarray(vector)
    except (ValueError, TypeError):
        raise KbError("VALIDATION_ERROR", f"{what} must be a list of numbers") from None
    if array.ndim != 1 or array.size == 0 or array.dtype.kind not in "iuf":
        raise KbError("VALIDATION_ERROR", f"{what} must be a non-empty list of numbers")
    if not np.isfinite(array).all():
        raise KbError("VALIDATION_ERROR", f"{what} holds NaN or infinite values")
    return array.astype(np.float64).tolist()  # type: ignore[no-any-return]


def _point(position: int, record: Any) -> tuple[str, list[float], dict[str, Any]]:
    if not isinstance(record, dict):
        raise KbError("VALIDATION_ERROR", f"records[{position}] must be an object")
    record_id = record.get("id")
    if not isinstance(record_id, str) or not record_id:
        raise KbError("VALIDATION_ERROR", f"records[{position}].id must be a non-empty string")
    vector = _vector(record.get("vector"), f"records[{position}].vector ({record_id!r})")
    metadata = record.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise KbError("VALIDATION_ERROR", f"records[{position}].metadata must be an object")
    if ID_KEY in metadata:
        raise KbError("VALIDATION_ERROR", f"records[{position}].metadata may not use {ID_KEY!r}")
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise KbError(
            "VALIDATION_ERROR", f"records[{position}].metadata is not plain JSON: {exc}"
        ) from None
    return point_id(record_id), vector, {**metadata, ID_KEY: record_id}


# --- local mode -------------------------------------------------------------------------


def _tune_local(client: QdrantClient) -> None:
    """Local mode keeps each collection's points in a SQLite file and commits once per
    point; in the default rollback-journal mode every commit waits for the disk (about
    200 points/s here). WAL with synchronous=NORMAL, as our own SQLite store uses,
    makes upserts ~10x faster; a power cut may lose the last commits, never corrupt
    the file. This reaches into qdrant-client's internals, so anything unexpected
    leaves the defaults alone."""
    collections = getattr(getattr(client, "_client", None), "collections", None)
    if not isinstance(collections, dict):
        return
    for collection in collections.values():
        connection = getattr(getattr(collection, "storage", None), "storage", None)
        if not isinstance(connection, sqlite3.Connection):
            continue
        try:
            if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            logger.debug("vectorStore qdrant: left SQLite settings as they were: {}", exc)


# --- errors -----------------------------------------------------------------------------


def _check_not_locked(path: Path) -> None:
    """Fail fast, without loading anything, when another process holds the folder."""
    import portalocker

    lock_path = path / ".lock"
    if not lock_path.exists():
        return
    with open(lock_path, "r+") as handle:
        try:
            portalocker.lock(
                handle, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING
            )
        except portalocker.exceptions.LockException:
            raise _busy(path) from None
        portalocker.unlock(handle)


def _busy(path: Path) -> KbError:
    return KbError(
        "VECTOR_STORE_BUSY",
        f"the local Qdrant store at {path} is in use by another process; set QDRANT_URL to "
        "share a Qdrant server",
        503,
    )


def _is_missing(exc: Exception) -> bool:
    from qdrant_client.http.exceptions import UnexpectedResponse

    if isinstance(exc, UnexpectedResponse):
        return exc.status_code == 404
    return isinstance(exc, ValueError) and "not found" in str(exc)


def _translate(exc: Exception, url: str | None) -> KbError:
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if isinstance(exc, ResponseHandlingException | OSError):
        if url:
            message = f"Qdrant at {url} did not answer: {exc}"
        else:
            message = f"the local Qdrant store could not be used: {exc}"
        return KbError("VECTOR_STORE_UNAVAILABLE", message, 503)
    if isinstance(exc, UnexpectedResponse):
        detail = exc.content.decode(errors="replace")[:500]
        if exc.status_code == 400 and "dimension" in detail.lower():
            return KbError("VECTOR_DIMENSION_MISMATCH", f"Qdrant refused the vector: {detail}")
        return KbError("VECTOR_STORE_ERROR", f"Qdrant answered {exc.status_code}: {detail}", 502)
    return KbError("VECTOR_STORE_ERROR", f"{type(exc).__name__}: {exc}", 500)
