"""The Qdrant vector store adapter, in local mode on a temp dir always and against a
Qdrant server too when QDRANT_URL is set: ids, filters, scores, scoping, errors,
persistence and the lock of local mode's folder."""

from __future__ import annotations

import asyncio
import math
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from kblabs.config import load_settings
from kblabs.errors import KbError, StartupError
from kblabs.platform.adapters.qdrant_vectors import (
    QdrantVectorStore,
    QdrantVectorStoreOptions,
    collection_name,
)
from kblabs.platform.interfaces import VectorStore

pytestmark = pytest.mark.anyio

MakeStore = Callable[..., QdrantVectorStore]


@pytest.fixture(params=["local", "server"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeStore]:
    """make_store(**options) → a started store; every store made is stopped after the
    test (server mode: its collections are dropped)."""
    made: list[QdrantVectorStore] = []
    url = os.environ.get("QDRANT_URL")
    if request.param == "server" and not url:
        pytest.skip("QDRANT_URL is not set: the server-mode half of these tests needs a Qdrant")
    prefix = f"t{uuid.uuid4().hex[:10]}"  # server mode: this test's collections only

    def make(**options: Any) -> QdrantVectorStore:
        options.setdefault("collectionPrefix", prefix)
        parsed = QdrantVectorStoreOptions.model_validate(options)
        if request.param == "server":
            store = QdrantVectorStore(parsed, url=url, api_key=os.environ.get("QDRANT_API_KEY"))
        else:
            store = QdrantVectorStore(parsed, path=tmp_path / "qdrant")
        made.append(store)
        return store

    yield make
    for store in made:
        await store.stop()
    if request.param == "server":
        from qdrant_client import QdrantClient

        client = QdrantClient(url=url, api_key=os.environ.get("QDRANT_API_KEY"))
        for found in client.get_collections().collections:
            if found.name.startswith(prefix + "_"):
                client.delete_collection(found.name)
        client.close()


@pytest.fixture
async def store(make_store: MakeStore) -> QdrantVectorStore:
    return make_store()


def unit(*values: float) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def ids(matches: list[Any]) -> set[str]:
    return {m["id"] for m in matches}


# --- records ----------------------------------------------------------------------------


async def test_it_is_a_vector_store(store: QdrantVectorStore) -> None:
    assert isinstance(store, VectorStore)
    assert store.health() == ("ok", store.mode)


async def test_ids_round_trip_and_metadata_comes_back_clean(store: QdrantVectorStore) -> None:
    odd_ids = ["src/a.py#3", "weird id ✓ with spaces", "12", "6ba7b810-9dad-11d1-80b4-00c04fd430c8"]
    await store.upsert(
        [
            {"id": record_id, "vector": unit(1, n + 1, 0), "metadata": {"n": n, "path": record_id}}
            for n, record_id in enumerate(odd_ids)
        ]
    )
    matches = await store.search(unit(1, 1, 0), 10)
    assert ids(matches) == set(odd_ids)
    for match in matches:
        assert match["metadata"] == {"n": odd_ids.index(match["id"]), "path": match["id"]}
        assert "_kb_id" not in match["metadata"]
    got = await store.get(["12", "missing", "src/a.py#3"])
    assert [r["id"] for r in got] == ["12", "src/a.py#3"]  # the order asked, missing left out
    assert got[1]["metadata"] == {"n": 0, "path": "src/a.py#3"}
    # cosine collections keep vectors at unit length: these were unit already
    assert got[1]["vector"] == pytest.approx(unit(1, 1, 0), abs=1e-6)


async def test_upsert_replaces_a_record_with_the_same_id(store: QdrantVectorStore) -> None:
    await store.upsert([{"id": "a", "vector": unit(1, 0), "metadata": {"v": 1}}])
    await store.upsert([{"id": "a", "vector": unit(0, 1), "metadata": {"v": 2}}])
    assert await store.count() == 1
    [record] = await store.get(["a"])
    assert record["metadata"] == {"v": 2}
    assert record["vector"] == pytest.approx([0.0, 1.0], abs=1e-6)
    # twice in one call: the last one wins
    await store.upsert(
        [
            {"id": "b", "vector": unit(1, 0), "metadata": {"v": "first"}},
            {"id": "b", "vector": unit(1, 1), "metadata": {"v": "last"}},
        ]
    )
    assert await store.count() == 2
    assert (await store.get(["b"]))[0]["metadata"] == {"v": "last"}


async def test_delete_count_get_and_drop(store: QdrantVectorStore) -> None:
    await store.upsert([{"id": f"r{i}", "vector": unit(1, i)} for i in range(5)])
    assert await store.count() == 5
    await store.delete(["r1", "r3", "never-there"])
    assert await store.count() == 3
    assert ids(await store.search(unit(1, 1), 10)) == {"r0", "r2", "r4"}
    assert [r["id"] for r in await store.get(["r1", "r2"])] == ["r2"]
    assert (await store.get(["r0"]))[0]["metadata"] == {}
    assert await store.drop_collection() is True
    assert await store.drop_collection() is False
    assert await store.count() == 0


async def test_a_collection_that_does_not_exist_is_empty(store: QdrantVectorStore) -> None:
    assert await store.search([0.1, 0.2], 5, collection="nothing-here") == []
    assert await store.count(collection="nothing-here") == 0
    assert await store.get(["x"], collection="nothing-here") == []
    await store.delete(["x"], collection="nothing-here")  # no error
    assert await store.count(collection="nothing-here") == 0  # and not created by any of that


async def test_upserts_larger_than_a_batch_arrive_whole(make_store: MakeStore) -> None:
    store = make_store(batchSize=7)
    records = [
        {"id": f"doc-{i}", "vector": unit(1, i % 13, i % 5), "metadata": {"i": i}}
        for i in range(101)
    ]
    await store.upsert(records)
    assert await store.count() == 101
    got = await store.get([f"doc-{i}" for i in (0, 6, 7, 50, 100)])
    assert [r["metadata"]["i"] for r in got] == [0, 6, 7, 50, 100]
    await store.delete([f"doc-{i}" for i in range(0, 101, 2)])
    assert await store.count() == 50


# --- scores -----------------------------------------------------------------------------


async def test_scores_are_between_0_and_1_best_first(store: QdrantVectorStore) -> None:
    await store.upsert(
        [
            {"id": "same", "vector": [2.0, 0.0]},  # not unit: cosine does not care
            {"id": "near", "vector": unit(1, 0.2)},
            {"id": "orthogonal", "vector": [0.0, 1.0]},
            {"id": "far", "vector": unit(-1, 0.3)},
            {"id": "opposite", "vector": [-1.0, 0.0]},
        ]
    )
    matches = await store.search([1.0, 0.0], 10)
    assert [m["id"] for m in matches] == ["same", "near", "orthogonal", "far", "opposite"]
    scores = [m["score"] for m in matches]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert scores[2] == pytest.approx(0.5, abs=1e-5)
    assert scores[4] == pytest.approx(0.0, abs=1e-5)
    assert [m["id"] for m in await store.search([1.0, 0.0], 2)] == ["same", "near"]


async def test_a_zero_vector_is_stored_and_searched(store: QdrantVectorStore) -> None:
    """The hashed embeddings give zeros for a text without words."""
    await store.upsert(
        [{"id": "empty", "vector": [0.0, 0.0, 0.0]}, {"id": "x", "vector": [1.0, 0, 0]}]
    )
    matches = await store.search([0.0, 0.0, 0.0], 5)
    assert ids(matches) == {"empty", "x"}
    assert all(m["score"] == pytest.approx(0.5, abs=1e-6) for m in matches)
    by_id = {m["id"]: m["score"] for m in await store.search([1.0, 0.0, 0.0], 5)}
    assert by_id["x"] == pytest.approx(1.0, abs=1e-6)
    assert by_id["empty"] == pytest.approx(0.5, abs=1e-6)


# --- filters ----------------------------------------------------------------------------

FRUIT = ["apple", "pear", "plum"]


def filter_records() -> list[dict[str, Any]]:
    """Ten records: n = 0..9 (int), half = n / 2 (float), fruit cycles, r9 has no fruit,
    nested size, even n flagged."""
    records = []
    for n in range(10):
        metadata: dict[str, Any] = {
            "n": n,
            "half": n / 2,
            "meta": {"size": n * 10},
            "even": n % 2 == 0,
        }
        if n != 9:
            metadata["fruit"] = FRUIT[n % 3]
        records.append({"id": f"r{n}", "vector": unit(1, n / 10), "metadata": metadata})
    return records


def named(*numbers: int) -> set[str]:
    return {f"r{n}" for n in numbers}


FILTER_CASES: list[tuple[Any, set[str]]] = [
    ({"field": "fruit", "operator": "eq", "value": "pear"}, named(1, 4, 7)),
    ({"field": "n", "operator": "eq", "value": 3}, named(3)),
    ({"field": "n", "operator": "eq", "value": 3.0}, named(3)),  # numbers as numbers
    ({"field": "half", "operator": "eq", "value": 1.5}, named(3)),
    ({"field": "half", "operator": "eq", "value": 2}, named(4)),  # 2 finds 2.0
    ({"field": "even", "operator": "eq", "value": True}, named(0, 2, 4, 6, 8)),
    ({"field": "fruit", "operator": "ne", "value": "apple"}, named(1, 2, 4, 5, 7, 8, 9)),
    ({"field": "n", "operator": "ne", "value": 0}, named(1, 2, 3, 4, 5, 6, 7, 8, 9)),
    ({"field": "n", "operator": "gt", "value": 6}, named(7, 8, 9)),
    ({"field": "n", "operator": "gte", "value": 6}, named(6, 7, 8, 9)),
    ({"field": "n", "operator": "lt", "value": 2}, named(0, 1)),
    ({"field": "n", "operator": "lte", "value": 2}, named(0, 1, 2)),
    ({"field": "half", "operator": "gt", "value": 3.5}, named(8, 9)),
    ({"field": "half", "operator": "lte", "value": 0.5}, named(0, 1)),
    ({"field": "meta.size", "operator": "gte", "value": 80}, named(8, 9)),
    ({"field": "fruit", "operator": "in", "value": ["apple", "plum"]}, named(0, 2, 3, 5, 6, 8)),
    ({"field": "n", "operator": "in", "value": [1, 5, 42]}, named(1, 5)),
    ({"field": "n", "operator": "in", "value": []}, set()),
    ({"field": "fruit", "operator": "nin", "value": ["apple", "plum"]}, named(1, 4, 7, 9)),
    ({"field": "n", "operator": "nin", "value": [0, 1, 2, 3, 4, 5, 6, 7]}, named(8, 9)),
    ({"field": "n", "operator": "nin", "value": []}, named(*range(10))),
    ({"field": "nowhere", "operator": "eq", "value": 1}, set()),
    ({"field": "nowhere", "operator": "ne", "value": 1}, named(*range(10))),
    # a list is AND
    (
        [
            {"field": "n", "operator": "gte", "value": 3},
            {"field": "fruit", "operator": "eq", "value": "apple"},
        ],
        named(3, 6),
    ),
    (
        [
            {"field": "n", "operator": "gt", "value": 2},
            {"field": "n", "operator": "lt", "value": 6},
            {"field": "fruit", "operator": "nin", "value": ["plum"]},
        ],
        named(3, 4),
    ),
    ([], named(*range(10))),
]


async def test_every_filter_operator_selects_exactly_its_records(store: QdrantVectorStore) -> None:
    await store.upsert(filter_records())
    failures = []
    for spec, expected in FILTER_CASES:
        got = ids(await store.search(unit(1, 0.5), 100, spec))
        if got != expected:
            failures.append(f"{spec}: expected {sorted(expected)}, got {sorted(got)}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"field": "n", "operator": "like", "value": 1}, "operator 'like' is unknown"),
        ({"field": "n", "operator": "in", "value": "apple"}, "n in needs a list"),
        ({"field": "n", "operator": "nin", "value": 3}, "n nin needs a list"),
        ({"field": "n", "operator": "gt", "value": "5"}, "n gt needs a number"),
        ({"field": "n", "operator": "lte", "value": True}, "n lte needs a number"),
        ({"field": "n", "operator": "eq", "value": None}, "n eq needs a string, number"),
        ({"field": "n", "operator": "in", "value": [1, {"a": 1}]}, "values must be strings"),
        ({"field": "", "operator": "eq", "value": 1}, "field must be a non-empty"),
        ({"operator": "eq", "value": 1}, "field must be a non-empty"),
        ({"field": "n", "operator": "eq"}, "has no value"),
        ([{"field": "n", "operator": "eq", "value": 1}, "x"], "filter[1] must be an object"),
        ("n = 1", "a filter is an object"),
    ],
)
async def test_bad_filters_are_refused_with_the_problem_named(
    store: QdrantVectorStore, spec: Any, message: str
) -> None:
    await store.upsert(filter_records())
    with pytest.raises(KbError) as caught:
        await store.search(unit(1, 0.5), 5, spec)
    assert caught.value.code == "VECTOR_FILTER_INVALID"
    assert caught.value.status == 400
    assert message in caught.value.message


# --- errors -----------------------------------------------------------------------------


async def test_vectors_of_another_dimension_are_refused(store: QdrantVectorStore) -> None:
    await store.upsert([{"id": "a", "vector": [1.0, 0.0, 0.0, 0.0]}], collection="four")
    with pytest.raises(KbError) as caught:
        await store.upsert([{"id": "b", "vector": [1.0, 0.0, 0.0]}], collection="four")
    assert caught.value.code == "VECTOR_DIMENSION_MISMATCH" and caught.value.status == 400
    assert "'four'" in caught.value.message
    assert "holds 4-dimension vectors; got 3" in caught.value.message
    with pytest.raises(KbError, match="holds 4-dimension vectors; got 5") as caught:
        await store.search([1.0, 0, 0, 0, 0], 3, collection="four")
    assert caught.value.code == "VECTOR_DIMENSION_MISMATCH"
    # mixed sizes in one call: refused before anything is written
    with pytest.raises(KbError) as caught:
        await store.upsert(
            [{"id": "c", "vector": [1.0, 0, 0, 0]}, {"id": "d", "vector": [1.0, 0]}],
            collection="four",
        )
    assert caught.value.code == "VECTOR_DIMENSION_MISMATCH"
    assert await store.count(collection="four") == 1
    # another collection may have another size
    await store.upsert([{"id": "b", "vector": [1.0, 0.0, 0.0]}], collection="three")
    assert await store.count(collection="three") == 1


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"vector": [1.0, 2.0]}, "records[0].id must be a non-empty string"),
        ({"id": "", "vector": [1.0, 2.0]}, "records[0].id must be a non-empty string"),
        ({"id": 7, "vector": [1.0, 2.0]}, "records[0].id must be a non-empty string"),
        ({"id": "a"}, "vector ('a') must be a list of numbers"),
        ({"id": "a", "vector": ["x", "y"]}, "must be a non-empty list of numbers"),
        ({"id": "a", "vector": "12"}, "must be a list of numbers"),
        ({"id": "a", "vector": []}, "must be a non-empty list of numbers"),
        ({"id": "a", "vector": [1.0, float("nan")]}, "NaN or infinite"),
        ({"id": "a", "vector": [[1.0], [2.0]]}, "must be a non-empty list of numbers"),
        ({"id": "a", "vector": [1.0, 2.0], "metadata": [1]}, "metadata must be an object"),
        ({"id": "a", "vector": [1.0, 2.0], "metadata": {"_kb_id": "b"}}, "may not use '_kb_id'"),
        ({"id": "a", "vector": [1.0, 2.0], "metadata": {"s": {1, 2}}}, "is not plain JSON"),
    ],
)
async def test_bad_records_are_refused(
    store: QdrantVectorStore, record: dict[str, Any], message: str
) -> None:
    with pytest.raises(KbError) as caught:
        await store.upsert([{"id": "fine", "vector": [1.0, 0.0]}, record])
    assert caught.value.code == "VALIDATION_ERROR" and caught.value.status == 400
    assert message.replace("[0]", "[1]") in caught.value.message
    assert await store.count() == 0  # all or nothing


async def test_bad_search_arguments_are_refused(store: QdrantVectorStore) -> None:
    for vector, limit in (([1.0, 0.0], 0), ([1.0, 0.0], -3), (["a"], 3), ([1.0, 0.0], 2.5)):
        with pytest.raises(KbError) as caught:
            await store.search(vector, limit)  # type: ignore[arg-type]
        assert caught.value.code == "VALIDATION_ERROR"
    with pytest.raises(KbError, match="namespace must be a non-empty string"):
        await store.count(namespace="")


# --- scoping ----------------------------------------------------------------------------


async def test_namespaces_and_collections_never_see_each_other(store: QdrantVectorStore) -> None:
    scopes = [
        ("default", "default"),
        ("team-a", "code"),
        ("team-b", "code"),
        ("team-a", "docs"),
        ("a_b", "c"),  # these two would share "kb_a_b_c" without the hash suffix
        ("a", "b_c"),
        ("a/b", "c"),  # and these "kb_a_b_c" after sanitising
        ("a b", "c"),
    ]
    for number, (namespace, collection) in enumerate(scopes):
        records = [
            {"id": "shared-id", "vector": [1.0, 0.0], "metadata": {"scope": number}},
            *({"id": f"own-{number}-{i}", "vector": [1.0, 0.1 * i]} for i in range(number)),
        ]
        await store.upsert(records, namespace=namespace, collection=collection)
    for number, (namespace, collection) in enumerate(scopes):
        where = {"namespace": namespace, "collection": collection}
        assert await store.count(**where) == number + 1, where
        matches = await store.search([1.0, 0.0], 100, **where)
        assert ids(matches) == {"shared-id", *(f"own-{number}-{i}" for i in range(number))}
        [shared] = await store.get(["shared-id"], **where)
        assert shared["metadata"] == {"scope": number}
    await store.delete(["shared-id"], namespace="team-a", collection="code")
    assert await store.count(namespace="team-a", collection="code") == 1
    assert await store.count(namespace="team-b", collection="code") == 3
    assert await store.drop_collection(namespace="a_b", collection="c") is True
    assert await store.count(namespace="a", collection="b_c") == 6


def test_collection_names_are_readable_and_unique() -> None:
    assert collection_name("kb", "default", "mind-repo") == "kb_default_mind-repo"
    names = {
        collection_name("kb", namespace, collection)
        for namespace, collection in [
            ("a_b", "c"),
            ("a", "b_c"),
            ("a/b", "c"),
            ("a b", "c"),
            ("a", "b"),
            ("x" * 300, "c"),
            ("x" * 300, "d"),
        ]
    }
    assert len(names) == 7
    for name in names:
        assert all(ch.isalnum() or ch in "_-" for ch in name) and len(name) < 255


async def test_concurrent_calls_are_served_one_at_a_time_without_errors(
    store: QdrantVectorStore,
) -> None:
    async def writer(n: int) -> None:
        await store.upsert(
            [{"id": f"w{n}-{i}", "vector": unit(1, n, i)} for i in range(20)], collection="busy"
        )

    async def reader() -> int:
        return len(await store.search(unit(1, 1, 1), 5, collection="busy"))

    results = await asyncio.gather(*(writer(n) for n in range(8)), *(reader() for _ in range(8)))
    assert all(r is None or 0 <= r <= 5 for r in results)
    assert await store.count(collection="busy") == 160


# --- local mode: the folder -------------------------------------------------------------


async def test_local_mode_keeps_its_points_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "kept"
    first = QdrantVectorStore(path=path)
    await first.upsert(
        [{"id": "src/x.py#0", "vector": [0.6, 0.8], "metadata": {"path": "src/x.py"}}],
        namespace="ns",
        collection="mind-repo",
    )
    await first.stop()
    second = QdrantVectorStore(path=path)
    try:
        assert await second.count(namespace="ns", collection="mind-repo") == 1
        [match] = await second.search([0.6, 0.8], 3, namespace="ns", collection="mind-repo")
        assert match["id"] == "src/x.py#0" and match["metadata"] == {"path": "src/x.py"}
        with pytest.raises(KbError, match="holds 2-dimension"):  # the size is remembered too
            await second.upsert(
                [{"id": "y", "vector": [1.0]}], namespace="ns", collection="mind-repo"
            )
    finally:
        await second.stop()


async def test_local_mode_writes_its_sqlite_files_in_wal_mode(tmp_path: Path) -> None:
    """One commit per point in rollback-journal mode waits for the disk every time;
    WAL + synchronous=NORMAL is what makes local upserts usable (see _tune_local)."""
    store = QdrantVectorStore(path=tmp_path / "q")
    await store.upsert([{"id": "a", "vector": [1.0, 0.0]}], collection="one")
    await store.stop()
    reopened = QdrantVectorStore(path=tmp_path / "q")
    await reopened.upsert([{"id": "b", "vector": [1.0, 0.0]}], collection="two")
    await reopened.stop()
    files = sorted((tmp_path / "q").rglob("storage.sqlite"))
    assert len(files) == 2
    for file in files:
        with sqlite3.connect(file) as connection:
            assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_the_client_is_opened_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "lazy"
    store = QdrantVectorStore(path=path)
    await store.start()
    assert not path.exists()  # starting touched nothing
    assert await store.count() == 0
    assert path.is_dir()
    await store.stop()


HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from kblabs.platform.adapters.qdrant_vectors import QdrantVectorStore

    async def main():
        store = QdrantVectorStore(path=Path(sys.argv[1]))
        await store.upsert([{"id": "held", "vector": [1.0, 0.0]}])
        print("holding", flush=True)
        sys.stdin.readline()  # until the test says so
        await store.stop()

    asyncio.run(main())
    """
)


async def test_a_folder_held_by_another_process_is_reported_busy(tmp_path: Path) -> None:
    path = tmp_path / "shared"
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        line = await asyncio.to_thread(child.stdout.readline)  # type: ignore[union-attr]
        assert line.strip() == "holding", child.stderr.read()  # type: ignore[union-attr]
        store = QdrantVectorStore(path=path)
        for call in (store.count(), store.search([1.0, 0.0], 3)):
            with pytest.raises(KbError) as caught:
                await call
            assert caught.value.code == "VECTOR_STORE_BUSY"
            assert caught.value.status == 503
            assert str(path) in caught.value.message and "QDRANT_URL" in caught.value.message
        assert store.health() == ("ok", "local")
    finally:
        child.communicate("done\n", timeout=60)
    assert child.returncode == 0
    # released: the same instance opens it now (a busy store is not remembered as broken)
    assert await store.count() == 1
    await store.stop()


# --- configuration ----------------------------------------------------------------------


def built(project: Path, raw: Any) -> QdrantVectorStore:
    from kblabs.platform.registry import AdapterContext, factory_for

    settings = load_settings(environ={"KB_PROJECT_ROOT": str(project)})
    context = AdapterContext(settings, store=None)  # type: ignore[arg-type]  # unused here
    return factory_for("vectorStore", "qdrant")("vectorStore", raw, context)  # type: ignore[no-any-return]


def test_options_paths_and_modes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QDRANT_URL", raising=False)
    monkeypatch.delenv("QDRANT_API_KEY", raising=False)
    project = tmp_path / "p"
    project.mkdir()
    default = built(project, None)
    assert default.mode == "local" and default.path == project / ".kb" / "qdrant"
    assert built(project, {"path": "vectors"}).path == project / "vectors"
    assert built(project, {"path": str(tmp_path / "abs")}).path == tmp_path / "abs"
    server = built(project, {"url": "http://qdrant.internal:6333", "apiKey": "k"})
    assert (server.mode, server.url, server.api_key, server.path) == (
        "server",
        "http://qdrant.internal:6333",
        "k",
        None,
    )
    assert server.health() == ("ok", "server")
    monkeypatch.setenv("QDRANT_URL", "http://from-env:6333")
    monkeypatch.setenv("QDRANT_API_KEY", "env-key")
    from_env = built(project, {"collectionPrefix": "team_x", "batchSize": 5})
    assert (from_env.mode, from_env.url, from_env.api_key) == (
        "server",
        "http://from-env:6333",
        "env-key",
    )
    assert (from_env.prefix, from_env.batch_size) == ("team_x", 5)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"colection": "x"}, "platform.adapterOptions.vectorStore.colection"),
        ({"batchSize": 0}, "platform.adapterOptions.vectorStore.batchSize"),
        ({"collectionPrefix": "a b"}, "platform.adapterOptions.vectorStore.collectionPrefix"),
        ({"timeoutS": -1}, "platform.adapterOptions.vectorStore.timeoutS"),
    ],
)
def test_bad_options_stop_the_start(tmp_path: Path, raw: Any, message: str) -> None:
    with pytest.raises(StartupError) as caught:
        built(tmp_path, raw)
    assert message in caught.value.message


async def test_a_server_that_does_not_answer_is_reported_unavailable() -> None:
    with socket.socket() as sock:  # a free port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = QdrantVectorStore(
        url=f"http://127.0.0.1:{port}", options=QdrantVectorStoreOptions(timeoutS=2)
    )
    try:
        for call in (store.count(), store.upsert([{"id": "a", "vector": [1.0]}])):
            with pytest.raises(KbError) as caught:
                await call
            assert caught.value.code == "VECTOR_STORE_UNAVAILABLE" and caught.value.status == 503
            assert f"127.0.0.1:{port}" in caught.value.message
    finally:
        await store.stop()
