"""embeddings → "hashed": lexical vectors by feature hashing. No model, no download.

    "adapterOptions": { "embeddings": { "dimensions": 384 } }

This is **lexical, not semantic**: two texts are close when they share words, identifier
parts and spelling fragments, never because they mean the same thing ("remove" and
"delete" are unrelated to it). It is the embedded default because it needs nothing,
is fast and deterministic, and finds code by the names in it well; configure
`openai` or `local` for meaning.

Features of a text:
- **words**: every `\\w+` run; identifiers are split at `_`, camelCase and digits
  (`parseConfigFile2` → parse, config, file, 2), lowercased, and the whole identifier
  is kept too, joined without separators, so `parseConfigFile` and
  `parse_config_file` share the feature `parseconfigfile`;
- **3-grams** of each alphabetic part between boundary marks (`<pa par ars rse se>`),
  which tolerate plurals, prefixes and typos.

Very common keywords and English words weigh less and give no 3-grams. Each feature's
count `tf` weighs `1 + log(tf)` times its kind's weight; a stable 64-bit BLAKE2b hash
(never Python's salted `hash()`) picks its dimension and its sign, so vectors are the
same in every process and on every machine. The result is L2-normalised (float32).

A text without any word (empty, whitespace, punctuation) gives the **zero vector**
rather than an arbitrary unit vector that would pretend to be similar to something;
cosine similarity with it is 0 and the Qdrant vector store stores and searches it
(tested there).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import Field

from kblabs.platform.options import AdapterOptions, parse_options

if TYPE_CHECKING:
    import numpy as np

    from kblabs.platform.registry import AdapterContext

WORD = re.compile(r"\w+")
ASCII_WORD = re.compile(r"[A-Za-z0-9_]+")  # the same on ASCII text, twice as fast
# parts of an identifier: ACRONYM (before a Capitalised word), Capitalised or lower words,
# digit runs, runs of other letters (non-Latin scripts)
PART = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+|[^\W\dA-Za-z_]+")

WORD_WEIGHT = 1.0
GRAM_WEIGHT = 0.4
COMMON_WEIGHT = 0.25
DIGIT_WEIGHT = 0.5
# fmt: off
COMMON = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "do", "for", "from", "has", "have",
    "if", "in", "into", "is", "it", "its", "not", "of", "on", "or", "so", "than", "that", "the",
    "then", "there", "these", "this", "to", "was", "were", "will", "with", "you", "your", "we",
    "our", "can", "def", "return", "self", "cls", "none", "true", "false", "null", "undefined",
    "const", "let", "var", "function", "import", "export", "class", "new", "public", "private",
    "protected", "static", "void", "int", "str", "string", "bool", "float", "else", "elif",
    "end", "begin", "try", "except", "catch", "finally", "raise", "throw", "async", "await",
    "pass",
})
# fmt: on

THREAD_BATCH = 16  # embed_batch of more texts runs in a worker thread
MAX_WORDS = 500_000  # distinct words remembered; all tables start afresh past that


class HashedEmbeddingsOptions(AdapterOptions):
    dimensions: int = Field(default=384, ge=16)


def build(token: str, raw: Any, ctx: AdapterContext) -> HashedEmbeddings:
    return HashedEmbeddings(parse_options(HashedEmbeddingsOptions, token, raw).dimensions)


class _Column:
    """A numpy array that grows by appending (capacity doubles)."""

    def __init__(self, dtype: Any) -> None:
        import numpy as np

        self.data = np.zeros(1024, dtype=dtype)
        self.size = 0

    def extend(self, values: Sequence[Any]) -> None:
        import numpy as np

        end = self.size + len(values)
        if end > len(self.data):
            grown = np.zeros(max(end, 2 * len(self.data)), dtype=self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : end] = values
        self.size = end


class HashedEmbeddings:
    """The `Embeddings` of reference §D.2 by signed feature hashing (module docstring).

    Every distinct word is analysed once: its features get numbers (`fid`), hashed once
    each, and the word's list of fids is kept in flat tables, so embedding a text is a
    dictionary look-up per distinct word plus a few numpy operations per batch."""

    kind = "hashed-ngrams"

    def __init__(self, dimensions: int = 384) -> None:
        if dimensions < 16:
            raise ValueError(f"dimensions must be at least 16, not {dimensions}")
        self.dimensions = dimensions
        self._lock = threading.Lock()  # the tables below grow; one batch at a time
        self._word_ids: dict[str, int] = {}
        self._ready = False  # tables are made on first use (numpy is imported then, not
        # when the server starts)

    def _reset(self) -> None:
        self._ready = True
        self._word_ids = {}
        self._feature_ids: dict[str, int] = {}
        self._part_fids: dict[str, list[int]] = {}  # lowercased part → its fids
        self._word_start = _Column("int64")  # word id → first position in _word_features
        self._word_size = _Column("int64")  # word id → how many features
        self._word_features = _Column("int64")  # fids, word after word
        self._feature_index = _Column("int64")  # fid → dimension
        self._feature_weight = _Column("float64")  # fid → ±weight

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dimensions": self.dimensions,
            "semantic": False,
            "features": "identifier-aware words and character 3-grams, signed hashing",
        }

    def get_dimensions(self) -> int:
        return self.dimensions

    async def embed(self, text: str) -> list[float]:
        return self.vectors([text])[0].tolist()  # type: ignore[no-any-return]

    async def embed_batch(self, texts: Sequence[str]) -> list[list[float]]:
        texts = list(texts)
        if len(texts) > THREAD_BATCH:
            matrix = await asyncio.to_thread(self.vectors, texts)
        else:
            matrix = self.vectors(texts)
        return matrix.tolist()  # type: ignore[no-any-return]

    # --- the computation -------------------------------------------------------------

    def vectors(self, texts: Sequence[str]) -> np.ndarray:
        """A (len(texts), dimensions) float32 matrix of unit (or zero) rows."""
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"embeddings take strings, not {type(text).__name__}")
        with self._lock:
            return self._vectors(texts)

    def _vectors(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        if not self._ready or len(self._word_ids) > MAX_WORDS:
            self._reset()
        lookup = self._word_ids.get
        words: list[int] = []  # word ids, text after text
        counts: list[int] = []
        per_text: list[int] = []
        new = _NewEntries()
        for text in texts:
            found = Counter((ASCII_WORD if text.isascii() else WORD).findall(text))
            ids = [lookup(word, -1) for word in found]
            if -1 in ids:
                ids = [
                    i if i >= 0 else self._add_word(w, new) for i, w in zip(ids, found, strict=True)
                ]
            words.extend(ids)
            counts.extend(found.values())
            per_text.append(len(ids))
        new.flush_into(self)
        dims = self.dimensions
        out: np.ndarray = np.zeros(len(texts) * dims, dtype=np.float64)
        if words:
            wid = np.asarray(words, dtype=np.int64)
            sizes = self._word_size.data[wid]
            total = int(sizes.sum())
            if total:
                # positions of every word's features in the flat table
                ends = np.cumsum(sizes)
                offsets = np.repeat(self._word_start.data[wid] - (ends - sizes), sizes)
                fids = self._word_features.data[offsets + np.arange(total)]
                text_of = np.repeat(np.repeat(np.arange(len(texts)), per_text), sizes)
                keys = (text_of << 32) | fids
                unique, inverse = np.unique(keys, return_inverse=True)
                tf = np.bincount(
                    inverse, weights=np.repeat(np.asarray(counts, dtype=np.float64), sizes)
                )
                fid = unique & 0xFFFFFFFF
                value = (1.0 + np.log(tf)) * self._feature_weight.data[fid]
                cells = (unique >> 32) * dims + self._feature_index.data[fid]
                out = np.bincount(cells, weights=value, minlength=out.size)
        matrix = out.reshape(len(texts), dims)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        np.divide(matrix, norms, out=matrix, where=norms > 0)
        return matrix.astype(np.float32)

    def _add_word(self, word: str, new: _NewEntries) -> int:
        """Number a word seen for the first time (its tables are written by `new`)."""
        known = self._word_ids.get(word)
        if known is not None:  # twice among one text's new words
            return known
        parts = [p.lower() for p in PART.findall(word)]
        fids: list[int] = []
        for part in parts:
            part_fids = self._part_fids.get(part)
            if part_fids is None:
                part_fids = self._part_fids[part] = [
                    self._fid(name, new) for name in part_features(part)
                ]
            fids.extend(part_fids)
        if len(parts) > 1:
            fids.append(self._fid("w" + "".join(parts), new))
        word_id = self._word_ids[word] = len(self._word_ids)
        new.word_start.append(self._word_features.size + len(new.word_features))
        new.word_size.append(len(fids))
        new.word_features.extend(fids)
        return word_id

    def _fid(self, name: str, new: _NewEntries) -> int:
        fid = self._feature_ids.get(name)
        if fid is None:
            fid = self._feature_ids[name] = len(self._feature_ids)
            digest = int.from_bytes(
                hashlib.blake2b(name.encode(), digest_size=8).digest(), "little"
            )
            new.feature_index.append((digest & 0x7FFFFFFF) % self.dimensions)
            new.feature_weight.append((-1.0 if digest >> 63 else 1.0) * feature_weight(name))
        return fid


class _NewEntries:
    """Table rows for the words and features first seen in one batch, appended to the
    numpy columns once at its end."""

    def __init__(self) -> None:
        self.word_start: list[int] = []
        self.word_size: list[int] = []
        self.word_features: list[int] = []
        self.feature_index: list[int] = []
        self.feature_weight: list[float] = []

    def flush_into(self, owner: HashedEmbeddings) -> None:
        if self.word_start:
            owner._word_start.extend(self.word_start)
            owner._word_size.extend(self.word_size)
            owner._word_features.extend(self.word_features)
        if self.feature_index:
            owner._feature_index.extend(self.feature_index)
            owner._feature_weight.extend(self.feature_weight)


def features(word: str) -> list[str]:
    """The feature names of one `\\w+` word: those of each part, then "w<whole>" for an
    identifier of several parts (see the module docstring)."""
    parts = [p.lower() for p in PART.findall(word)]
    names = [name for part in parts for name in part_features(part)]
    if len(parts) > 1:
        names.append("w" + "".join(parts))
    return names


def part_features(part: str) -> list[str]:
    """ "w<part>", and "g<3-gram>" for the 3-grams of an alphabetic, uncommon part."""
    names = ["w" + part]
    if not part.isdigit() and part not in COMMON:
        padded = f"<{part}>"
        names.extend("g" + padded[i : i + 3] for i in range(len(padded) - 2))
    return names


def feature_weight(name: str) -> float:
    if name[0] == "g":
        return GRAM_WEIGHT
    word = name[1:]
    if word.isdigit():
        return DIGIT_WEIGHT
    return COMMON_WEIGHT if word in COMMON else WORD_WEIGHT
