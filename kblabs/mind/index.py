"""One `mind` index: a workspace's chunks in a vector-store collection, kept in step with
the files by content hash.

The manifest (`mind/<namespace>/<index>.json` in platform storage) remembers each
indexed file's sha256 and the ids of its chunks. A re-index reads every file but embeds
only those whose hash changed, deletes the chunks of files that are gone (or are now
ignored, binary or too large) and saves the manifest every `SAVE_EVERY` files, so an
interrupted run loses little and the next one repairs the rest: chunk ids are
`<path>#<n>`, so upserting a file again replaces its chunks instead of duplicating them.

The manifest also keeps the vector of a fixed probe text. When the embeddings adapter
now gives another vector for it (another model, even one of the same dimensions), the
old vectors cannot be compared with new queries, so the next index run starts over. It
also starts over when the manifest lists chunks the vector store does not have (a new
vector store).

`embeddings`, `vectors` and `storage` are the platform adapters, or a plugin's governed
views of them (the same methods); the vector store is called with `collection=` only, so
a plugin's calls stay in its tenant's namespace.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kblabs.mind.chunking import Chunk, chunk_lines
from kblabs.mind.workspace import Workspace, looks_binary

MANIFEST_VERSION = 2  # 2: files carry their definitions
EMBED_BATCH = 64
SAVE_EVERY = 200  # files between manifest saves
SNIPPET_CHARS = 2000  # of each chunk kept in the store, shown in hits
SNIPPET_LINES = 8
PROBE_TEXT = "kb-labs mind probe: which embeddings model made this index?"
SAME_EMBEDDINGS = 0.98  # probe cosine at or above: the same model (servers are not bit-exact)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
WORD = re.compile(r"[A-Za-z][a-z]+|[A-Z]+(?![a-z])|\d+")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MIN_IDENTIFIER = 3
EXACT_BONUS = 0.25  # at most this much, when every identifier of the query is in a chunk
CANDIDATES_PER_HIT = 4  # vector hits re-ranked per hit returned…
MIN_CANDIDATES = 40  # …and at least this many
MAX_DEFINES = 500  # definitions kept per file for exact-name lookups
DEFINITION = re.compile(
    r"\b(?:def|class|function|func|fn|interface|type|struct|enum|trait|impl|module|const"
    r"|let|var|val|macro)\s+\*?([A-Za-z_$][\w$]*)"
    r"|\b([A-Za-z_$][\w$]*)\s*[:=]\s*(?:async\s+)?(?:function\b|\([^)]*\)\s*=>|lambda\b)"
    r"|\bfunc\s*\([^)]*\)\s*([A-Za-z_]\w*)"  # a Go method: func (s *Server) Serve(
)

# manifest path → (its bytes, the parsed manifest) of the last read: queries reuse it
# while the bytes are unchanged (never mutated: index() works on a fresh parse).
_PARSED: dict[str, tuple[bytes, dict[str, Any]]] = {}

Progress = Callable[[str, int, int, str], Awaitable[None] | None]
"""progress(stage, done, total, path): stage is "scan", "embed" or "done"."""


class MindError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class IndexReport:
    index: str
    root: str
    files: int = 0  # indexed now (text files inside the limits)
    unchanged: int = 0
    embedded_files: list[str] = field(default_factory=list)
    removed_files: list[str] = field(default_factory=list)
    chunks: int = 0  # in the index after the run
    chunks_embedded: int = 0
    skipped_binary: int = 0
    skipped_large: int = 0
    ignored: int = 0
    rebuilt_because: str | None = None  # why the index started over, when it did
    duration_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "root": self.root,
            "files": self.files,
            "unchanged": self.unchanged,
            "filesEmbedded": len(self.embedded_files),
            "filesRemoved": len(self.removed_files),
            "removed": self.removed_files[:100],
            "chunks": self.chunks,
            "chunksEmbedded": self.chunks_embedded,
            "skippedBinary": self.skipped_binary,
            "skippedLarge": self.skipped_large,
            "ignored": self.ignored,
            "rebuiltBecause": self.rebuilt_because,
            "durationMs": round(self.duration_ms, 1),
        }


@dataclass(frozen=True)
class Hit:
    path: str
    start_line: int
    end_line: int
    score: float
    snippet: str
    snippet_line: int  # the first line of the snippet

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "startLine": self.start_line,
            "endLine": self.end_line,
            "score": round(self.score, 4),
            "snippet": self.snippet,
            "snippetLine": self.snippet_line,
        }


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise MindError(
            "MIND_INDEX_NAME_INVALID",
            f"index name {name!r}: use 1-64 letters, digits, '-' or '_'",
        )
    return name


def words(text: str) -> set[str]:
    """Lower-case identifier parts: `parseConfigFile` → parse, config, file."""
    return {w.lower() for w in WORD.findall(text)}


def identifiers(text: str) -> set[str]:
    """Identifier-like words, lower-cased (`parse_config`, `loaduser`, `config`)."""
    return {w.lower() for w in IDENTIFIER.findall(text) if len(w) >= MIN_IDENTIFIER}


def exact_bonus(names: set[str], body: str, path: str) -> float:
    """Extra score for a chunk that contains the query's identifiers verbatim. Vectors
    find the neighbourhood; a name typed exactly is the strongest signal a code search
    gets, and similar-looking names must not outrank it. (The manifest's definitions
    find the defining chunk even when the vector ranks it low.)"""
    if not names:
        return 0.0
    present = identifiers(body + " " + path)
    return EXACT_BONUS * len(names & present) / len(names)


def definitions(chunks: Sequence[Chunk]) -> dict[str, int]:
    """{lower-cased name: the chunk that defines it} for the names a file defines
    (`def`, `class`, `function`, `fn`, `func`, `type`, `struct`, `const`…, Go methods,
    and `name = function`/arrow forms), at most `MAX_DEFINES`; the first chunk wins."""
    found: dict[str, int] = {}
    for number, chunk in enumerate(chunks):
        for match in DEFINITION.finditer(chunk.text):
            name = next(group for group in match.groups() if group).lower()
            if len(name) >= MIN_IDENTIFIER:
                found.setdefault(name, number)
                if len(found) >= MAX_DEFINES:
                    return found
    return found


def _definition_index(manifest: dict[str, Any]) -> dict[str, list[str]]:
    """{name: chunk ids defining it}, built once per parsed manifest (kept in it under a
    key that is never saved: only the shared, read-only copies get it)."""
    index = manifest.get("_byName")
    if index is None:
        index = {}
        for path, entry in manifest["files"].items():
            for name, chunk in (entry.get("defines") or {}).items():
                index.setdefault(name, []).append(f"{path}#{chunk}")
        manifest["_byName"] = index
    return index


def _unit(vector: Sequence[float]) -> Any:
    import numpy as np

    array = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(array))
    return array / norm if norm else array


def _why_start_over(
    manifest: dict[str, Any] | None, root: str, probe: list[float], rebuild: bool
) -> str | None:
    """Why an index run cannot build on the stored manifest, or None when it can."""
    if rebuild:
        return "asked to rebuild"
    if manifest is None:
        return "the stored index could not be read (damaged, or from another version)"
    if manifest.get("root") != root:
        return f"the index was of another folder ({manifest.get('root')})"
    if not same_embeddings(manifest.get("probe"), probe):
        return "the embeddings adapter changed (its vectors are not comparable)"
    return None


def same_embeddings(recorded: list[float] | None, probe: list[float]) -> bool:
    """Whether `probe` comes from the model that recorded `recorded` (None: an index made
    before probes were kept, taken on trust)."""
    if recorded is None:
        return True
    if len(recorded) != len(probe):
        return False
    a, b = _unit(recorded), _unit(probe)
    if not a.any() or not b.any():
        return bool((a == b).all())
    return float(a @ b) >= SAME_EMBEDDINGS


def best_window(text: str, query_words: set[str], start_line: int) -> tuple[str, int]:
    """The `SNIPPET_LINES` lines of a chunk that mention the query's words most."""
    lines = text.splitlines()
    if len(lines) <= SNIPPET_LINES:
        return text, start_line
    scores = [len(words(line) & query_words) for line in lines]
    best = max(range(len(lines)), key=lambda i: (scores[i], -i))
    first = max(0, min(best - 2, len(lines) - SNIPPET_LINES))
    return "\n".join(lines[first : first + SNIPPET_LINES]), start_line + first


class MindIndex:
    def __init__(
        self,
        *,
        embeddings: Any,
        vectors: Any,
        storage: Any,
        name: str = "default",
        namespace: str = "default",
    ) -> None:
        if embeddings is None or vectors is None or storage is None:
            missing = [
                token
                for token, adapter in (
                    ("embeddings", embeddings),
                    ("vectorStore", vectors),
                    ("storage", storage),
                )
                if adapter is None
            ]
            raise MindError(
                "MIND_ADAPTERS_MISSING",
                f"mind needs the {', '.join(missing)} adapter(s); they are configured by "
                "default, so check platform.adapters in kb.config.json",
            )
        self.embeddings = embeddings
        self.vectors = vectors
        self.storage = storage
        self.name = check_name(name)
        self.collection = f"mind-{self.name}"
        self.manifest_path = f"mind/{namespace}/{self.name}.json"

    # --- manifest ----------------------------------------------------------------------

    async def load_manifest(self, *, shared: bool = False) -> dict[str, Any] | None:
        """The manifest, or None. `shared=True` (read-only callers: queries) may return
        the copy parsed for an earlier call when the stored bytes are the same, because
        parsing a big repository's manifest costs more than the search itself."""
        raw = await self.storage.read(self.manifest_path)
        if raw is None:
            return None
        if isinstance(raw, str):  # a governed storage view may hand back text
            raw = raw.encode()
        cached = _PARSED.get(self.manifest_path)
        if shared and cached is not None and cached[0] == raw:
            return cached[1]
        try:
            manifest = json.loads(raw)
        except ValueError:
            return None  # a damaged manifest: rebuild rather than trust it
        if manifest.get("version") != MANIFEST_VERSION:
            return None
        if shared:
            _PARSED[self.manifest_path] = (raw, manifest)
        return manifest

    async def _save(self, manifest: dict[str, Any]) -> None:
        manifest.pop("_byName", None)  # derived, never stored
        manifest["updatedAt"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        await self.storage.write(self.manifest_path, json.dumps(manifest).encode())

    # --- indexing ----------------------------------------------------------------------

    async def index(
        self, workspace: Workspace, progress: Progress | None = None, *, rebuild: bool = False
    ) -> IndexReport:
        started = time.perf_counter()
        report = IndexReport(self.name, workspace.root)
        manifest = None if rebuild else await self.load_manifest()
        probe = await self._probe()
        reason = _why_start_over(manifest, workspace.root, probe, rebuild)
        if reason is None and manifest is not None and await self._store_lost_it(manifest):
            reason = "the vector store holds none of its vectors (another vector store?)"
        if reason is not None or manifest is None:
            if rebuild or manifest is not None or await self.storage.exists(self.manifest_path):
                await self.vectors.drop_collection(collection=self.collection)
                report.rebuilt_because = reason  # (a first index is no rebuild)
            manifest = {"version": MANIFEST_VERSION, "root": workspace.root, "files": {}}
        manifest["probe"] = probe
        await _report(progress, "scan", 0, 0, "")
        listing = await workspace.files()
        report.skipped_large, report.ignored = len(listing.skipped_large), listing.ignored
        known: dict[str, Any] = manifest["files"]
        batch = _Batch(self, manifest, report)
        seen: set[str] = set()
        total = len(listing.files)
        for done, source in enumerate(listing.files, 1):
            try:
                data = await workspace.read(source.path)
            except OSError:
                continue  # vanished since the listing: its old chunks go below
            if looks_binary(data):
                report.skipped_binary += 1
                continue
            seen.add(source.path)
            report.files += 1
            digest = hashlib.sha256(data).hexdigest()
            if known.get(source.path, {}).get("hash") == digest:
                report.unchanged += 1
            else:
                text = data.decode("utf-8", "replace")
                await batch.add(source.path, digest, chunk_lines(text))
            if done % SAVE_EVERY == 0:
                await batch.flush()
                await self._save(manifest)
            await _report(progress, "embed", done, total, source.path)
        await batch.flush()
        gone = sorted(set(known) - seen)
        for path in gone:
            chunk_ids = known.pop(path)["chunks"]
            if chunk_ids:
                await self.vectors.delete(chunk_ids, collection=self.collection)
        report.removed_files = gone
        report.chunks = sum(len(entry["chunks"]) for entry in known.values())
        await self._save(manifest)
        report.duration_ms = (time.perf_counter() - started) * 1000
        await _report(progress, "done", total, total, "")
        return report

    async def _store_lost_it(self, manifest: dict[str, Any]) -> bool:
        """The manifest lists chunks, but the collection is empty."""
        listed = any(entry["chunks"] for entry in manifest["files"].values())
        return listed and await self.vectors.count(collection=self.collection) == 0

    async def _probe(self) -> list[float]:
        """The vector of `PROBE_TEXT`: which embeddings made this index."""
        return [round(float(x), 6) for x in await self.embeddings.embed(PROBE_TEXT)]

    # --- querying ----------------------------------------------------------------------

    async def query(self, text: str, limit: int = 10) -> list[Hit]:
        if not text.strip():
            raise MindError("MIND_QUERY_EMPTY", "the query is empty")
        manifest = await self.load_manifest(shared=True)
        if manifest is None:
            raise MindError(
                "MIND_INDEX_NOT_FOUND",
                f"there is no index {self.name!r} yet: run `python -m kblabs mind index` first",
            )
        vector = await self.embeddings.embed(text)
        pool = max(limit * CANDIDATES_PER_HIT, MIN_CANDIDATES)
        matches = await self.vectors.search(vector, pool, collection=self.collection)
        names = identifiers(text)
        if names:  # and the chunks that define a name of the query, however they rank
            matches += await self.defining(manifest, names, vector, pool)
        query_words = words(text)
        hits = []
        for match in {m["id"]: m for m in matches}.values():
            meta = match.get("metadata") or {}
            body = str(meta.get("text", ""))
            snippet, line = best_window(body, query_words, meta["startLine"])
            score = match["score"] + exact_bonus(names, body, meta["path"])
            hits.append(Hit(meta["path"], meta["startLine"], meta["endLine"], score, snippet, line))
        hits.sort(key=lambda hit: -hit.score)
        return hits[:limit]

    async def defining(
        self, manifest: dict[str, Any], names: set[str], vector: Sequence[float], most: int
    ) -> list[dict[str, Any]]:
        """The chunks where a file defines one of `names` (the manifest keeps each file's
        definitions), scored against the query like the store scores (cosine → 0..1).
        A lookup in the manifest, not a filtered search: Qdrant's local mode checks a
        payload filter in Python against every point (seconds at 10k chunks)."""
        by_name = _definition_index(manifest)
        ids = [chunk_id for name in sorted(names) for chunk_id in by_name.get(name, ())][:most]
        if not ids:
            return []
        records = await self.vectors.get(ids, collection=self.collection)
        query = _unit(vector)
        return [
            {
                "id": record["id"],
                "score": (float(_unit(record["vector"]) @ query) + 1) / 2,
                "metadata": record.get("metadata") or {},
            }
            for record in records
            if record.get("vector")
        ]

    async def status(self) -> dict[str, Any]:
        manifest = await self.load_manifest()
        if manifest is None:
            return {"index": self.name, "exists": False}
        files = manifest["files"]
        return {
            "index": self.name,
            "exists": True,
            "root": manifest.get("root"),
            "files": len(files),
            "chunks": sum(len(entry["chunks"]) for entry in files.values()),
            "dimensions": manifest.get("dimensions"),
            "updatedAt": manifest.get("updatedAt"),
        }


class _Batch:
    """Chunks waiting to be embedded, written to the store `EMBED_BATCH` at a time. A
    file's manifest entry changes only after all of its chunks are stored."""

    def __init__(self, index: MindIndex, manifest: dict[str, Any], report: IndexReport) -> None:
        self.index = index
        self.manifest = manifest
        self.report = report
        self.pending: list[tuple[str, int, Chunk]] = []
        # (path, hash, chunk count, {defined name: chunk number})
        self.files: list[tuple[str, str, int, dict[str, int]]] = []

    async def add(self, path: str, digest: str, chunks: Sequence[Chunk]) -> None:
        self.pending.extend((path, n, chunk) for n, chunk in enumerate(chunks))
        self.files.append((path, digest, len(chunks), definitions(chunks)))
        self.report.embedded_files.append(path)
        if len(self.pending) >= EMBED_BATCH:
            await self.flush()

    async def flush(self) -> None:
        if not self.files:
            return
        index, known = self.index, self.manifest["files"]
        if self.pending:
            texts = [f"{path}\n{chunk.text}" for path, _, chunk in self.pending]
            vectors = await index.embeddings.embed_batch(texts)
            self._check_dimensions(len(vectors[0]))
            records = [
                {
                    "id": f"{path}#{n}",
                    "vector": vector,
                    "metadata": {
                        "path": path,
                        "startLine": chunk.start_line,
                        "endLine": chunk.end_line,
                        "text": chunk.text[:SNIPPET_CHARS],
                    },
                }
                for (path, n, chunk), vector in zip(self.pending, vectors, strict=True)
            ]
            await index.vectors.upsert(records, collection=index.collection)
            self.report.chunks_embedded += len(records)
        for path, digest, count, defines in self.files:
            new_ids = [f"{path}#{n}" for n in range(count)]
            kept = set(new_ids)
            stale = [i for i in known.get(path, {}).get("chunks", []) if i not in kept]
            if stale:
                await index.vectors.delete(stale, collection=index.collection)
            known[path] = {"hash": digest, "chunks": new_ids, "defines": defines}
        self.pending, self.files = [], []

    def _check_dimensions(self, dimensions: int) -> None:
        recorded = self.manifest.setdefault("dimensions", dimensions)
        if recorded != dimensions:
            raise MindError(
                "MIND_DIMENSIONS_CHANGED",
                f"index {self.index.name!r} holds {recorded}-dimension vectors but the "
                f"embeddings adapter now gives {dimensions}: re-index with --rebuild",
            )


async def _report(progress: Progress | None, stage: str, done: int, total: int, path: str) -> None:
    if progress is not None:
        result = progress(stage, done, total, path)
        if result is not None:
            await result
