#!/usr/bin/env python
"""Mind bench: index throughput of `MindIndex.index` on a generated repository, and query
latency at 10k and 100k chunks in local mode (hashed embeddings, Qdrant local mode),
against a brute-force numpy search over the same vectors.

Everything runs in this process, in a fresh temp project (`KB_PROJECT_ROOT`, nothing
from the machine's KB_*, QDRANT_* or OPENAI_* variables), on the adapters the project
configures by default, started as the CLI's `mind … --local` starts them
(`kblabs.platform.standalone.started_adapters`): embeddings "hashed" (384 dimensions),
vectorStore "qdrant" in local mode under `<project>/.kb/qdrant`, storage "fs", each
behind its usage-tracking proxy. Measured in one run:

1. Index throughput. `tests/mind_repo.generate` writes `--files` Python modules (2,000;
   about 1.03 chunks each) to `<project>/repo`, and `MindIndex.index(LocalWorkspace(repo))`
   indexes them three times: a first full index, a re-index with nothing changed (every
   file is still read and hashed, nothing is embedded) and a re-index after changing 1%
   of the files (a line appended to every 100th module: those, and only those, are
   embedded again). Reported per run: wall time, files/s (files read and hashed / wall),
   chunks/s (chunks embedded and stored / wall), how many files and chunks were embedded,
   and where the time went: the adapters are wrapped in a thin timing proxy, so the time
   inside `embed_batch`, the vector store's `upsert`/`delete` and storage `write`
   (the manifest, saved every 200 files) is split from the rest (walking the folder,
   reading each file in a worker thread, hashing, chunking, collecting identifiers).
2. Query latency at each `--sizes` (10,000 and 100,000 chunks; `--quick`: 10,000 only).
   One collection (`mind-bench-query`) is filled up to each size in turn with chunks of
   generated modules (the same generator, chunked with `chunk_lines` as mind chunks
   them), embedded with the embeddings adapter's `embed_batch` (`--batch` texts at a
   time) exactly as mind embeds them (`<path>\\n<chunk text>`) and upserted with the
   vector store's `upsert` with mind's payload (path, startLine, endLine, text),
   plus the manifest mind would have written for such an index, with each file's
   definitions (saved through
   storage), so `MindIndex.query` can run on it. The fill is timed (generating,
   embedding: chunks/s, upserting: points/s). Then `--queries` queries (200: half the
   exact name of a generated function, half three generated words) run interleaved (the
   order of the methods rotates from query to query), after up to 3 unrecorded warm-up
   queries per method (1 for a method slower than 1 s), through:
   - the baseline: brute-force numpy over the same vectors, a float32 matrix N x 384,
     `matrix @ q`, `argpartition` for the top `--limit` (10), those sorted;
   - the vector store's `search(vector, 10)` (what a plain vector search costs through
     the adapter: a worker thread, validation, the usage proxy);
   - mind's exact-name lookup (`MindIndex.defining`: the query's identifiers looked up
     in the manifest's per-file definitions, those chunks fetched by id and scored),
     which mind adds to every query that has an identifier of 3+ characters;
   - qdrant-client's `query_points(limit=10)` called directly on the adapter's client,
     synchronously (local mode without the adapter around it);
   - `MindIndex.query(text, 10)`: manifest read, query embedding, the vector search
     (limit 40), the exact-name lookup, re-rank.
   The query vectors of the three plain searches and of numpy are computed once, before
   timing. Each method stops being timed at a size once it has spent `--budget` seconds
   (30) there and has `--min-queries` (3) queries (a guard: a payload-filtered search,
   which mind used before, took seconds at 100k chunks). The report prints, per
   method, how many queries were timed, and a NOTE when that is fewer than `--queries`.
   Reported: p50/p99/mean ms of each, the ratios of their p50 (and p99) to numpy's, and
   recall@10 of the vector store search against numpy's exact top 10 (ids; a miss whose
   score ties numpy's 10th best is counted as a tie, not a miss). Last, the vector store
   is stopped and one more search opens it again: local mode loads every point of every
   collection in the folder when it opens, which every `mind query --local` CLI call
   pays.

Reported at the end: the process's peak RSS (`resource.getrusage`, ru_maxrss), the RSS
after each fill and after the reopen, the local store's size on disk, and the warnings
qdrant-client gave (past 20,000 points it warns that local mode is not meant for that).

Where local mode spends its time (qdrant-client 1.20; two default runs and a quick one on the
2-CPU test machine, shared with other work at a load of 3 to 4, so figures wander by up to 2x
between runs, the ratios less; bench/README.md has one run's table):
- Indexing 2,000 files takes 2.3-3.2 s (620-900 files/s and chunks/s): 40-45% in the
  vector store's upsert (each point validated, pickled and committed to the
  collection's SQLite file one by one), about 40% walking, reading (one worker-thread
  hop per file), hashing and chunking, 10-15% embedding. A re-index with nothing
  changed still reads and hashes every file (1,550-2,500 files/s, 0.35-0.4x the full
  index's time); one with 1% changed costs about as much or a little more, and embeds
  only those 20 files.
- Filling: the hashed embeddings run at about 5,000-6,500 chunks/s; upserts at
  1,150-1,950 points/s up to 10k and about 1,000-1,100 points/s from 10k to 100k, so the
  100k collection takes about 2 minutes to fill: feasible, though a real `mind index` of
  that size, at the 650-900 chunks/s of the index runs above, would take longer.
  Memory: about 1.8 GB RSS after the 100k fill.
- A plain search is 4-7x numpy at 10k (25-40 ms) and about 11x at 100k (0.2-0.3 s): on
  every cosine search local mode normalises every stored vector again (`np.linalg.norm`
  over N x 384 and an in-place divide, ~90% of a search's time by cProfile) and then
  `argsort`s all N scores, where the baseline does one `matrix @ q` and an
  `argpartition`. The adapter around it (worker thread, validation, usage proxy) adds
  little: `query_points` called directly is within 10%.
- A payload-filtered search evaluates the filter in Python for every point of the
  collection (qdrant-client's `calculate_payload_mask`), 100-170 us per point: 1-1.5 s
  at 10k and 14-17 s at 100k. mind first found exact names that way, which made
  `MindIndex.query` 150-280x numpy at 10k and 500-860x at 100k; it now looks names up
  in its manifest's definitions and fetches those chunks by id (the "exact" row).
- Opening the store again (what a CLI call in local mode pays before its first search)
  loads and unpickles every point: 2-4 s at 10k, 25-35 s at 100k, and RSS reaches
  about 3.3 GB (peak about 3.5 GB).
The default run (2,000 files; 10k and 100k chunks; 200 queries) takes about 7.5 minutes
there: 2 filling the 100k collection, 3 querying it, 0.5 reopening it. The quick run
(`--quick`: 10k only) takes 1.5 to 2 minutes.

numpy's matrix-vector product runs on OpenBLAS threads; on a loaded 2-CPU machine they
make both the baseline and local mode's search noisier, and `OPENBLAS_NUM_THREADS=1` in
the environment steadies both (the bench records the variable's value).

Usage: python bench/mind.py [--files 2000] [--sizes 10000,100000] [--quick]
       [--queries 200] [--budget 30] [--min-queries 3] [--limit 10] [--batch 1000]
       [--json]

kblabs and its dependencies (numpy, qdrant-client), plus tests/mind_repo.py from this
repository (standard library only). Linux (/proc for RSS).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import random
import resource
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402 - after the sys.path entry
from _stats import spread  # noqa: E402
from loguru import logger  # noqa: E402

from kblabs.config import load_settings  # noqa: E402
from kblabs.mind.chunking import chunk_lines  # noqa: E402
from kblabs.mind.index import (  # noqa: E402
    CANDIDATES_PER_HIT,
    MANIFEST_VERSION,
    MIN_CANDIDATES,
    SNIPPET_CHARS,
    MindIndex,
    definitions,
    identifiers,
)
from kblabs.mind.workspace import LocalWorkspace  # noqa: E402
from kblabs.platform.standalone import started_adapters  # noqa: E402
from tests.mind_repo import WORDS, generate, module_text  # noqa: E402

SCRUBBED_PREFIXES = ("KB_", "QDRANT_", "OPENAI_", "GATEWAY_")
SCRUBBED_EXACT = {"NODE_ENV", "LOG_LEVEL", "PORT", "REDIS_URL"}
INDEX_NAME = "bench-index"
QUERY_INDEX_NAME = "bench-query"
WARMUP_QUERIES = 3
WARMUP_MAX_S = 1.0  # a method whose warm-up took this long is warm enough
CHANGED_SHARE = 100  # every 100th file changes: 1%
SEED = 11
METHODS = {
    "numpy": "numpy brute force (baseline)",
    "search": "vector store search",
    "exact": "mind's exact-name lookup (definitions)",
    "direct": "qdrant-client query_points, no adapter",
    "mind": "MindIndex.query",
}


# --- helpers -------------------------------------------------------------------------------


def ratio(value: float | None, base: float | None, digits: int = 1) -> float | None:
    return round(value / base, digits) if value is not None and base else None


def rate(count: float, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 else None


def rss_mib() -> float | None:
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def folder_mib(path: Path) -> float:
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(folder, name)).st_size
    return round(total / 2**20, 1)


def environ_for(project: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in SCRUBBED_EXACT and not key.startswith(SCRUBBED_PREFIXES)
    }
    env["KB_PROJECT_ROOT"] = str(project)
    return env


class Timed:
    """Forwards every call to an adapter; sums the time spent in the async methods named."""

    def __init__(self, inner: Any, methods: tuple[str, ...]) -> None:
        self._inner = inner
        self.seconds: dict[str, float] = dict.fromkeys(methods, 0.0)
        self.calls: dict[str, int] = dict.fromkeys(methods, 0)

    def reset(self) -> None:
        for name in self.seconds:
            self.seconds[name], self.calls[name] = 0.0, 0

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        if name not in self.seconds:
            return target

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await target(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started
                self.calls[name] += 1

        return timed


# --- 1. index throughput -------------------------------------------------------------------


def change_files(repo: Path, written: dict[str, str]) -> list[str]:
    """Append a line to every CHANGED_SHARE-th module: a new hash, new chunk text."""
    changed = sorted(written)[::CHANGED_SHARE]
    for relative in changed:
        with (repo / relative).open("a") as handle:
            handle.write("CHANGED_BY_BENCH = 1\n")
    return changed


async def index_throughput(adapters: Any, project: Path, files: int, say: Callable) -> dict:
    repo = project / "repo"
    started = time.perf_counter()
    written = generate(repo, files)
    result: dict[str, Any] = {
        "files": files,
        "generate_s": round(time.perf_counter() - started, 3),
        "runs": [],
    }
    embeddings = Timed(adapters.get("embeddings"), ("embed_batch", "embed"))
    vectors = Timed(adapters.get("vectorStore"), ("upsert", "delete", "drop_collection"))
    storage = Timed(adapters.get("storage"), ("write", "read"))
    mind = MindIndex(embeddings=embeddings, vectors=vectors, storage=storage, name=INDEX_NAME)
    workspace = LocalWorkspace(repo)
    for label in ("full", "unchanged", "1% changed"):
        changed: list[str] = []
        if label == "1% changed":
            changed = change_files(repo, written)
        say(f"index: {label} ({files:,} files)")
        for timed in (embeddings, vectors, storage):
            timed.reset()
        cpu = time.process_time()
        started = time.perf_counter()
        report = await mind.index(workspace)
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu
        parts = {
            "embed_s": embeddings.seconds["embed_batch"] + embeddings.seconds["embed"],
            "upsert_s": vectors.seconds["upsert"],
            "delete_s": vectors.seconds["delete"] + vectors.seconds["drop_collection"],
            "manifest_write_s": storage.seconds["write"],
            "manifest_read_s": storage.seconds["read"],
        }
        parts["other_s"] = wall - sum(parts.values())
        run = {
            "run": label,
            "changed_files": len(changed),
            "wall_s": round(wall, 3),
            "cpu_pct": round(100 * cpu / wall, 1) if wall > 0 else None,
            "files": report.files,
            "files_per_s": rate(report.files, wall),
            "unchanged": report.unchanged,
            "files_embedded": len(report.embedded_files),
            "chunks_embedded": report.chunks_embedded,
            "chunks_per_s": rate(report.chunks_embedded, wall),
            "chunks_in_index": report.chunks,
            "upsert_calls": vectors.calls["upsert"],
            "manifest_saves": storage.calls["write"],
            **{key: round(value, 3) for key, value in parts.items()},
        }
        if label == "1% changed":
            run["changed_embedded"] = sorted(report.embedded_files) == sorted(changed)
        result["runs"].append(run)
    full = result["runs"][0]["wall_s"]
    for run in result["runs"][1:]:
        run["x_full"] = ratio(run["wall_s"], full, 3)
    result["rss_mib"] = rss_mib()
    # the index's collection stays in the store (and in memory) for the rest of the run;
    # it is small next to the query collection
    return result


# --- 2. query latency ----------------------------------------------------------------------


class Corpus:
    """Chunks of generated modules, made in bulk as mind would make them from files."""

    def __init__(self, seed: int = SEED) -> None:
        self.rnd = random.Random(seed)
        self.modules = 0
        self.ids: list[str] = []
        self.names: list[str] = []  # each module's unique function name
        self.manifest_files: dict[str, Any] = {}

    def more(self, count: int) -> list[dict[str, Any]]:
        """At least `count` new records (whole modules), vector missing."""
        records: list[dict[str, Any]] = []
        while len(records) < count:
            i = self.modules
            self.modules += 1
            text, name = module_text(i, self.rnd)
            self.names.append(name)
            path = f"pkg{i % 20}/mod_{i}.py"
            chunk_ids = []
            chunks = chunk_lines(text)
            for n, chunk in enumerate(chunks):
                record_id = f"{path}#{n}"
                chunk_ids.append(record_id)
                records.append(
                    {
                        "id": record_id,
                        "embed": f"{path}\n{chunk.text}",
                        "metadata": {
                            "path": path,
                            "startLine": chunk.start_line,
                            "endLine": chunk.end_line,
                            "text": chunk.text[:SNIPPET_CHARS],
                        },
                    }
                )
            digest = hashlib.sha256(text.encode()).hexdigest()
            self.manifest_files[path] = {
                "hash": digest,
                "chunks": chunk_ids,
                "defines": definitions(chunks),
            }
        self.ids += [record["id"] for record in records]
        return records


def make_queries(names: list[str], count: int, seed: int = SEED) -> list[dict[str, str]]:
    """Half the exact name of a generated function, half three generated words."""
    rnd = random.Random(seed)
    queries = []
    for j in range(count):
        if j % 2 == 0:
            queries.append({"kind": "name", "text": rnd.choice(names)})
        else:
            queries.append({"kind": "words", "text": " ".join(rnd.sample(WORDS, 3))})
    return queries


async def fill(
    adapters: Any,
    mind: MindIndex,
    corpus: Corpus,
    matrix: np.ndarray,
    count: int,
    batch: int,
) -> dict[str, Any]:
    embeddings, vectors = adapters.get("embeddings"), adapters.get("vectorStore")
    start = len(corpus.ids)
    generate_s = embed_s = upsert_s = 0.0
    added = 0
    while added < count:
        started = time.perf_counter()
        records = corpus.more(min(batch, count - added))
        generate_s += time.perf_counter() - started
        started = time.perf_counter()
        embedded = await embeddings.embed_batch([record.pop("embed") for record in records])
        embed_s += time.perf_counter() - started
        for record, vector in zip(records, embedded, strict=True):
            record["vector"] = vector
        row = start + added
        matrix[row : row + len(records)] = np.asarray(embedded, dtype=np.float32)
        started = time.perf_counter()
        await vectors.upsert(records, collection=mind.collection)
        upsert_s += time.perf_counter() - started
        added += len(records)
    started = time.perf_counter()
    manifest = {
        "version": MANIFEST_VERSION,
        "root": str(Path(tempfile.gettempdir()) / "bench-corpus"),
        "files": corpus.manifest_files,
        "dimensions": matrix.shape[1],
    }
    await mind._save(manifest)
    manifest_s = time.perf_counter() - started
    raw = await adapters.get("storage").read(mind.manifest_path)
    return {
        "added": added,
        "modules": corpus.modules,
        "generate_s": round(generate_s, 3),
        "embed_s": round(embed_s, 3),
        "embed_chunks_per_s": rate(added, embed_s),
        "upsert_s": round(upsert_s, 3),
        "upsert_points_per_s": rate(added, upsert_s),
        "manifest_write_s": round(manifest_s, 3),
        "manifest_mib": round(len(raw or b"") / 2**20, 2),
        "total_s": round(generate_s + embed_s + upsert_s + manifest_s, 3),
    }


def numpy_top(matrix: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    scores = matrix @ query
    top = np.argpartition(-scores, k)[:k] if k < len(scores) else np.arange(len(scores))
    return top[np.argsort(-scores[top])]


async def query_latency(
    adapters: Any,
    mind: MindIndex,
    corpus: Corpus,
    matrix: np.ndarray,
    queries: list[dict[str, str]],
    limit: int,
    budget_s: float,
    min_queries: int,
) -> dict[str, Any]:
    vectors, embeddings = adapters.get("vectorStore"), adapters.get("embeddings")
    size = len(corpus.ids)
    view = matrix[:size]
    store = getattr(vectors, "__wrapped__", vectors)  # the QdrantVectorStore itself
    qdrant_name = store._name("default", mind.collection)
    pool = max(limit * CANDIDATES_PER_HIT, MIN_CANDIDATES)
    prepared = []
    for query in queries:
        vector = await embeddings.embed(query["text"])
        names = identifiers(query["text"])
        prepared.append((query, vector, np.asarray(vector, dtype=np.float32), names))

    def direct(vector: list[float]) -> Any:
        client = store._open()
        return client.query_points(qdrant_name, query=vector, limit=limit, with_payload=True)

    manifest = await mind.load_manifest()
    assert manifest is not None, "the bench's manifest was not written"

    async def one(method: str, query: dict, vector: list, q: np.ndarray, names: set) -> Any:
        if method == "numpy":
            return numpy_top(view, q, limit)
        if method == "search":
            return await vectors.search(vector, limit, collection=mind.collection)
        if method == "exact":
            return await mind.defining(manifest, names, vector, pool)
        if method == "direct":
            return direct(vector)
        return await mind.query(query["text"], limit)

    # warm-up, not recorded: up to WARMUP_QUERIES queries per method, fewer for a slow one
    for method in METHODS:
        warm = 0.0
        for item in prepared[:WARMUP_QUERIES]:
            started = time.perf_counter()
            await one(method, *item)
            warm += time.perf_counter() - started
            if warm > WARMUP_MAX_S:
                break
    timed = prepared[WARMUP_QUERIES:]
    times: dict[str, list[float]] = {method: [] for method in METHODS}
    spent = dict.fromkeys(METHODS, 0.0)
    matched = ties = expected = 0
    exact_hits = 0
    methods = list(METHODS)
    for position, item in enumerate(timed):
        # rotate the order, so no method always runs right after another
        order = methods[position % len(methods) :] + methods[: position % len(methods)]
        answers: dict[str, Any] = {}
        for method in order:
            if budget_s and position >= min_queries and spent[method] >= budget_s:
                continue  # this method's time budget at this size is used up
            started = time.perf_counter()
            answers[method] = await one(method, *item)
            elapsed = time.perf_counter() - started
            spent[method] += elapsed
            times[method].append(elapsed * 1000)
        if "exact" in answers:
            exact_hits += len(answers["exact"])
        if "numpy" not in answers or "search" not in answers:
            continue
        exact_rows = answers["numpy"]
        exact_ids = {corpus.ids[row] for row in exact_rows}
        kth = float(view[exact_rows[-1]] @ item[2]) if len(exact_rows) else 0.0
        expected += len(exact_ids)
        for match in answers["search"]:
            if match["id"] in exact_ids:
                matched += 1
            else:
                cosine = 2 * match["score"] - 1  # the adapter maps cosine to 0..1
                if abs(cosine - kth) <= 1e-5:
                    ties += 1
    latency = {method: spread(values) for method, values in times.items()}
    base = latency["numpy"]["p50_ms"]
    # local mode loads every collection of the folder when it opens: what a CLI call pays
    await vectors.stop()
    started = time.perf_counter()
    first = await vectors.search(prepared[0][1], limit, collection=mind.collection)
    reopen_s = time.perf_counter() - started
    return {
        "size": size,
        "queries": len(timed),
        "limit": limit,
        "pool": pool,
        "latency": latency,
        "x_numpy_p50": {method: ratio(latency[method]["p50_ms"], base) for method in METHODS},
        "x_numpy_p99": {
            method: ratio(latency[method]["p99_ms"], latency["numpy"]["p99_ms"])
            for method in METHODS
        },
        "recall_at_k": round(matched / expected, 4) if expected else None,
        "recall_with_ties": round((matched + ties) / expected, 4) if expected else None,
        "tie_misses": ties,
        "timed": {method: len(values) for method, values in times.items()},
        "spent_s": {method: round(value, 3) for method, value in spent.items()},
        "exact_hits_per_query": round(exact_hits / len(times["exact"]), 1)
        if times["exact"]
        else None,
        "reopen_first_search_s": round(reopen_s, 3),
        "reopen_hits": len(first),
        "rss_mib": rss_mib(),
    }


# --- the run -------------------------------------------------------------------------------


async def run_bench(args: argparse.Namespace, result: dict[str, Any]) -> None:
    def say(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="kblabs-mind-bench-") as tmp:
        project = Path(tmp) / "project"
        project.mkdir()
        settings = load_settings(environ=environ_for(project))
        async with started_adapters(settings) as adapters:
            embeddings, vectors = adapters.get("embeddings"), adapters.get("vectorStore")
            store = getattr(vectors, "__wrapped__", vectors)
            result["adapters"] = {
                "configured": adapters.configured(),
                "embeddings": embeddings.describe() if embeddings is not None else None,
                "vector_store_mode": getattr(store, "mode", None),
                "vector_store_path": str(getattr(store, "path", None)),
                "vector_store_batch_size": getattr(store, "batch_size", None),
            }
            if getattr(store, "mode", None) != "local" or embeddings is None:
                result["error"] = "the project's vector store is not Qdrant in local mode"
                return
            dims = embeddings.get_dimensions()
            # the first call opens local mode (imports qdrant-client, opens the folder): a
            # one-time cost every process pays, timed apart from the index runs
            started = time.perf_counter()
            await vectors.count(collection="bench-open")
            result["adapters"]["vector_store_open_s"] = round(time.perf_counter() - started, 3)
            started = time.perf_counter()
            result["index"] = await index_throughput(adapters, project, args.files, say)
            result["index"]["total_s"] = round(time.perf_counter() - started, 3)

            storage = adapters.get("storage")
            mind = MindIndex(
                embeddings=embeddings, vectors=vectors, storage=storage, name=QUERY_INDEX_NAME
            )
            corpus = Corpus()
            sizes = sorted(args.sizes)
            # a margin: whole modules are added, so a fill may go a chunk or two past
            matrix = np.zeros((sizes[-1] + 64, dims), dtype=np.float32)
            result["sizes"] = []
            for size in sizes:
                step: dict[str, Any] = {"size": size}
                result["sizes"].append(step)
                need = size - len(corpus.ids)
                say(f"fill: {len(corpus.ids):,} → {size:,} chunks")
                step["fill"] = await fill(adapters, mind, corpus, matrix, need, args.batch)
                step["fill"]["rss_mib"] = rss_mib()
                queries = make_queries(corpus.names, args.queries + WARMUP_QUERIES)
                say(f"queries: {args.queries} x {len(METHODS)} at {len(corpus.ids):,} chunks")
                started = time.perf_counter()
                step["query"] = await query_latency(
                    adapters,
                    mind,
                    corpus,
                    matrix,
                    queries,
                    args.limit,
                    args.budget,
                    args.min_queries,
                )
                step["query"]["seconds"] = round(time.perf_counter() - started, 3)
                step["peak_rss_mib"] = peak_rss_mib()
            result["store_mib"] = folder_mib(Path(result["adapters"]["vector_store_path"]))
            result["data_dir_mib"] = folder_mib(settings.data_dir)


# --- the report ----------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_report(result: dict[str, Any]) -> None:
    s = result["settings"]
    a = result.get("adapters", {})
    emb = a.get("embeddings") or {}
    print(
        f"kblabs mind bench: Python {result['python']}, {result['cpus']} CPU(s), numpy "
        f"{result['numpy']}, qdrant-client {result['qdrant_client']}; embeddings "
        f"{emb.get('kind')} {emb.get('dimensions')} dims, vector store qdrant "
        f"{a.get('vector_store_mode')} mode in {a.get('vector_store_path')}"
    )
    if a.get("vector_store_open_s") is not None:
        print(
            f"vector store first use (import qdrant-client, open the folder): "
            f"{a['vector_store_open_s']:.2f} s, before the index runs"
        )
    index = result.get("index")
    if index:
        print()
        print(
            f"index throughput: {index['files']:,} generated modules (tests/mind_repo.py, "
            f"written in {index['generate_s']:.1f} s) through MindIndex.index(LocalWorkspace)"
        )
        print(
            f"  {'run':<16}{'wall s':>8}{'files/s':>9}{'chunks/s':>10}{'embedded':>10}"
            f"{'chunks':>8}{'x full':>8}{'embed s':>9}{'upsert s':>10}{'manifest s':>12}"
            f"{'other s':>9}{'CPU%':>6}"
        )
        for run in index["runs"]:
            label = run["run"]
            if run["changed_files"]:
                label += f" ({run['changed_files']})"
            manifest = run["manifest_write_s"] + run["manifest_read_s"]
            print(
                f"  {label:<16}{run['wall_s']:>8.2f}{fmt(run['files_per_s'], ',.0f'):>9}"
                f"{fmt(run['chunks_per_s'], ',.0f'):>10}{run['files_embedded']:>10,}"
                f"{run['chunks_embedded']:>8,}{fmt(run.get('x_full'), '.3f'):>8}"
                f"{run['embed_s']:>9.2f}{run['upsert_s'] + run['delete_s']:>10.2f}"
                f"{manifest:>12.2f}{run['other_s']:>9.2f}{fmt(run['cpu_pct'], '.0f'):>6}"
            )
            if run.get("changed_embedded") is False:
                print("    WARNING: the files embedded are not exactly the changed ones")
        print(
            "  (files/s: files read and hashed / wall; chunks/s: chunks embedded and stored "
            "/ wall; embedded: files; upsert s includes deletes; manifest s: storage reads "
            "and writes of the manifest, saved every 200 files; other: walk, read, hash, "
            "chunk, names)"
        )
    sizes = result.get("sizes") or []
    if sizes:
        print()
        print(
            f"fill of the query collection (mind's payload, embed_batch and upsert of "
            f"{s['batch']:,} records at a time; the adapter sends "
            f"{a.get('vector_store_batch_size')} points per Qdrant upsert)"
        )
        print(
            f"  {'chunks':>8}{'added':>9}{'gen s':>8}{'embed s':>9}{'chunks/s':>10}"
            f"{'upsert s':>10}{'points/s':>10}{'manifest':>10}{'total s':>9}{'RSS MiB':>9}"
        )
        for step in sizes:
            f = step["fill"]
            print(
                f"  {step['query']['size'] if 'query' in step else step['size']:>8,}"
                f"{f['added']:>9,}{f['generate_s']:>8.1f}{f['embed_s']:>9.1f}"
                f"{fmt(f['embed_chunks_per_s'], ',.0f'):>10}{f['upsert_s']:>10.1f}"
                f"{fmt(f['upsert_points_per_s'], ',.0f'):>10}"
                f"{f['manifest_mib']:>6.1f} MiB{f['total_s']:>9.1f}{fmt(f['rss_mib'], ',.0f'):>9}"
            )
        print()
        print(
            f"query latency: {s['queries']} queries per size (half exact function names, half "
            f"three words), top {s['limit']}, the methods interleaved, after up to "
            f"{s['warmup_queries']} warm-up queries each; ms"
        )
        print(
            f"  {'chunks':>8}  {'method':<42}{'n':>5}{'p50':>10}{'p99':>10}{'mean':>10}"
            f"{'x numpy p50':>13}{'x numpy p99':>13}"
        )
        for step in sizes:
            q = step.get("query")
            if not q:
                continue
            for n, (method, label) in enumerate(METHODS.items()):
                lat = q["latency"][method]
                print(
                    f"  {(format(q['size'], ',') if n == 0 else ''):>8}  {label:<42}"
                    f"{q['timed'][method]:>5}{fmt(lat['p50_ms'], ',.2f'):>10}"
                    f"{fmt(lat['p99_ms'], ',.2f'):>10}{fmt(lat['mean_ms'], ',.2f'):>10}"
                    f"{fmt(q['x_numpy_p50'][method], ',.1f'):>13}"
                    f"{fmt(q['x_numpy_p99'][method], ',.1f'):>13}"
                )
            cut = [METHODS[m] for m, count in q["timed"].items() if count < q["queries"]]
            if cut:
                print(
                    f"  {'':>8}  NOTE: {', '.join(cut)} timed on fewer than the {q['queries']} "
                    f"queries: each method stops at this size once it has spent "
                    f"{s['budget_s']:g} s and has {s['min_queries']} queries (--budget, "
                    "--min-queries); a p99 over fewer than 100 queries is close to their max"
                )
            print(
                f"  {'':>8}  recall@{q['limit']} of the vector store search vs numpy's exact top "
                f"{q['limit']}: {fmt(q['recall_at_k'], '.4f')} (counting score ties: "
                f"{fmt(q['recall_with_ties'], '.4f')}); exact-name hits/query "
                f"{q['exact_hits_per_query']}"
            )
            print(
                f"  {'':>8}  reopen: vector store stopped, first search after "
                f"{q['reopen_first_search_s']:.2f} s (local mode loads every point on open); "
                f"RSS {fmt(q['rss_mib'], ',.0f')} MiB"
            )
        print()
        for step in sizes:
            q = step.get("query")
            if q:
                r = q["x_numpy_p50"]
                print(
                    f"ratios at {q['size']:,} chunks (p50 / numpy p50): vector store search "
                    f"{fmt(r['search'], ',.1f')}x, exact-name lookup {fmt(r['exact'], ',.1f')}x, "
                    f"query_points without the adapter {fmt(r['direct'], ',.1f')}x, "
                    f"MindIndex.query {fmt(r['mind'], ',.1f')}x"
                )
    if result.get("error"):
        print(f"ERROR: {result['error']}")
    print(
        f"memory: peak RSS {fmt(result.get('peak_rss_mib'), ',.0f')} MiB (ru_maxrss); "
        f"local store on disk {fmt(result.get('store_mib'), ',.1f')} MiB, data dir "
        f"{fmt(result.get('data_dir_mib'), ',.1f')} MiB; whole run {result['seconds']:.0f} s"
    )
    for message in result.get("warnings") or []:
        print(f"warning from the libraries: {message}")


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not sizes or sizes[0] < 100:
        raise argparse.ArgumentTypeError("sizes must be at least 100 chunks")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000, help="generated files to index (2000)")
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=[10_000, 100_000],
        help="collection sizes in chunks for query latency (10000,100000)",
    )
    parser.add_argument("--quick", action="store_true", help="query latency at 10,000 only")
    parser.add_argument("--queries", type=int, default=200, help="timed queries per size (200)")
    parser.add_argument("--limit", type=int, default=10, help="hits per query, k (10)")
    parser.add_argument(
        "--budget",
        type=float,
        default=30.0,
        help="seconds each method may spend per size before it is skipped for the remaining "
        "queries, once it has --min-queries (30; 0: no limit)",
    )
    parser.add_argument(
        "--min-queries", type=int, default=3, help="queries timed per method in any case (3)"
    )
    parser.add_argument(
        "--batch", type=int, default=1000, help="records per embed_batch and upsert (1000)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = [10_000]
    if args.budget < 0:
        parser.error("--budget must be 0 or more")
    for name in ("files", "queries", "limit", "batch", "min_queries"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    # in-process adapters log through loguru: warnings and worse only, on stderr
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    from importlib.metadata import PackageNotFoundError, version

    try:
        qdrant_client_version: str | None = version("qdrant-client")
    except PackageNotFoundError:
        qdrant_client_version = None
    result: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "qdrant_client": qdrant_client_version,
        "settings": {
            "files": args.files,
            "sizes": args.sizes,
            "queries": args.queries,
            "warmup_queries": WARMUP_QUERIES,
            "budget_s": args.budget,
            "min_queries": args.min_queries,
            "limit": args.limit,
            "batch": args.batch,
        },
    }
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            asyncio.run(run_bench(args, result))
        except KeyboardInterrupt:
            result["error"] = "interrupted"
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["peak_rss_mib"] = peak_rss_mib()
    result["warnings"] = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_report(result)
    return 1 if result.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
