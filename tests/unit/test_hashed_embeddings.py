"""The hashed embeddings: stable across processes, unit length, identifier-aware, and
good enough to find code by a function's name."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from kblabs.config import load_settings
from kblabs.errors import StartupError
from kblabs.platform.adapters import hashed_embeddings
from kblabs.platform.adapters.hashed_embeddings import HashedEmbeddings, features
from kblabs.platform.interfaces import Embeddings

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]

SAMPLES = [
    "def parse_config_file(path):\n    return json.loads(Path(path).read_text())\n",
    "export function parseConfigFile(path: string) { return JSON.parse(read(path)); }",
    "class HTTPServer2:\n    pass",
    "Привет, мир: naïve café ünïcode",
    "x",
    "   ",
    "",
]


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(v * v for v in vector))


def cosine(a: list[float], b: list[float]) -> float:
    na, nb = norm(a), norm(b)
    return sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb) if na and nb else 0.0


async def test_it_is_an_embeddings_adapter_that_says_what_it_is() -> None:
    embeddings = HashedEmbeddings(64)
    assert isinstance(embeddings, Embeddings)
    assert embeddings.dimensions == embeddings.get_dimensions() == 64
    assert embeddings.kind == "hashed-ngrams"
    assert embeddings.describe()["semantic"] is False
    assert "lexical, not semantic" in (hashed_embeddings.__doc__ or "")


async def test_vectors_have_the_dimensions_and_unit_length() -> None:
    for dimensions in (16, 100, 384):
        embeddings = HashedEmbeddings(dimensions)
        for text in SAMPLES[:5]:
            vector = await embeddings.embed(text)
            assert len(vector) == dimensions
            assert all(isinstance(v, float) for v in vector)
            assert norm(vector) == pytest.approx(1.0, abs=1e-5), text


async def test_a_text_without_words_is_the_zero_vector() -> None:
    embeddings = HashedEmbeddings(32)
    for text in ("", "   ", "\n\t", "+-*/ ()[]{} ... !!!"):
        assert await embeddings.embed(text) == [0.0] * 32


async def test_batches_keep_their_order_and_match_single_embeds() -> None:
    embeddings = HashedEmbeddings(128)
    texts = [f"item_{i} handles {'alpha' if i % 2 else 'beta'} case {i * 7}" for i in range(40)]
    texts += SAMPLES
    singles = [await embeddings.embed(text) for text in texts]
    batch = await embeddings.embed_batch(texts)  # > 16: computed in a worker thread
    assert batch == singles
    reverse = await embeddings.embed_batch(list(reversed(texts)))
    assert reverse == list(reversed(singles))
    small = await embeddings.embed_batch(texts[:3])  # on the loop
    assert small == singles[:3]
    assert await embeddings.embed_batch([]) == []
    # a fresh instance (empty tables) gives the same vectors
    assert await HashedEmbeddings(128).embed_batch(texts) == singles


async def test_texts_must_be_strings() -> None:
    with pytest.raises(TypeError, match="strings"):
        await HashedEmbeddings().embed_batch(["fine", 3])  # type: ignore[list-item]


CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from kblabs.platform.adapters.hashed_embeddings import HashedEmbeddings

    texts = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(HashedEmbeddings(96).embed_batch(texts))))
    """
)


async def test_vectors_are_the_same_in_another_process() -> None:
    """A stable hash, not Python's salted hash(): a different PYTHONHASHSEED changes
    nothing (an index built by one process is searched by another)."""
    mine = await HashedEmbeddings(96).embed_batch(SAMPLES)
    for seed in ("1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", CHILD],
            input=json.dumps(SAMPLES),
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=120,
            check=True,
        )
        assert json.loads(done.stdout) == mine


async def test_the_hashing_scheme_does_not_change_unnoticed() -> None:
    """Stored vectors are only comparable with vectors made the same way: a change of
    tokens, hash or weights must be deliberate (and mean re-indexing)."""
    vector = await HashedEmbeddings(64).embed("parse")
    # "wparse" (weight 1) and the 3-grams <pa par ars rse se> (0.4 each), normalised
    word, gram = 1 / math.sqrt(1.8), 0.4 / math.sqrt(1.8)
    expected = {6: gram, 19: gram, 33: gram, 48: gram, 52: word, 60: -gram}
    assert {i: v for i, v in enumerate(vector) if v != 0} == pytest.approx(expected, abs=1e-6)


async def test_repeated_terms_weigh_one_plus_log_of_their_count() -> None:
    embeddings = HashedEmbeddings(4096)  # wide: these 6 + 5 features do not collide
    parse, read = await embeddings.embed_batch(["parse", "read"])
    both = await embeddings.embed("parse parse parse parse read")
    word = {
        name: max(range(4096), key=lambda i: abs(v[i])) for name, v in (("p", parse), ("r", read))
    }
    assert sum(1 for v in both if v != 0) == 11
    assert abs(both[word["p"]] / both[word["r"]]) == pytest.approx(1 + math.log(4), rel=1e-5)


def test_identifiers_are_split_and_kept_whole() -> None:
    camel = features("parseConfigFile")
    snake = features("parse_config_file")
    for name in ("wparse", "wconfig", "wfile", "wparseconfigfile"):
        assert name in camel and name in snake
    assert set(camel) == set(snake)
    assert {"g<pa", "gpar", "gse>"} <= set(camel)
    assert {"whttp", "wserver", "w2", "whttpserver2"} <= set(features("HTTPServer2"))
    assert "wxml" in features("XMLHttpRequest") and "whttp" in features("XMLHttpRequest")
    assert features("return") == ["wreturn"]  # common words: no 3-grams
    assert features("42") == ["w42"]


async def test_camel_and_snake_spellings_are_close_and_unrelated_code_is_not() -> None:
    embeddings = HashedEmbeddings()
    camel, snake, other = await embeddings.embed_batch(
        ["parseConfigFile", "parse_config_file", "renderHtmlTemplate"]
    )
    assert cosine(camel, snake) == pytest.approx(1.0, abs=1e-6)
    # the whole identifier is a feature of its own: separate words are close, not equal
    words = await embeddings.embed("parse config file")
    assert 0.8 < cosine(camel, words) < 0.99
    assert cosine(camel, other) < 0.2


DISTRACTOR_NAMES = [
    "parse_json",
    "load_file",
    "read_config",
    "ConfigError",
    "parse_args",
    "write_file",
    "config_path",
    "file_exists",
    "parse_header",
    "save_config",
    "open_file",
    "parser",
    "configure_logging",
    "file_size",
    "parse_date",
    "merge_config",
    "delete_file",
    "ParseResult",
    "config_value",
    "list_files",
    "parse_url",
    "validate_config",
    "copy_file",
    "parse_int",
    "default_config",
    "file_hash",
    "tokenize",
    "render_page",
    "connect_database",
    "send_email",
    "compute_total",
    "format_currency",
    "retry_request",
    "hash_password",
    "load_plugin",
    "parse_query",
    "FileWatcher",
    "ConfigLoader",
    "read_lines",
    "parse_version",
    "write_config",
    "normalize_path",
    "parse_csv",
    "config_schema",
    "temp_file",
    "parse_yaml",
    "reload_config",
    "file_mode",
    "parse_time",
    "stream_file",
]


def snippet(name: str) -> str:
    return textwrap.dedent(
        f'''
        def {name}(path, options=None):
            """Helper: {name.replace("_", " ")} for the config file loader."""
            if options is None:
                options = {{}}
            with open(path) as handle:
                data = handle.read()
            result = process(data, options)
            logger.debug("{name} done for %s", path)
            return result
        '''
    )


async def test_a_function_name_finds_the_chunk_that_defines_it() -> None:
    embeddings = HashedEmbeddings()
    target = textwrap.dedent(
        '''
        def parse_config_file(path):
            """Read the settings file and return a dict."""
            with open(path) as handle:
                return json.load(handle)
        '''
    )
    assert len(DISTRACTOR_NAMES) == 50
    chunks = [snippet(name) for name in DISTRACTOR_NAMES]
    chunks.insert(23, target)
    vectors = await embeddings.embed_batch(chunks)
    for query in ("parseConfigFile", "parse_config_file", "parse config file"):
        wanted = await embeddings.embed(query)
        scores = [cosine(wanted, vector) for vector in vectors]
        best = max(range(len(chunks)), key=scores.__getitem__)
        assert best == 23, (query, sorted(scores, reverse=True)[:3], scores[23])
    # and the camelCase definition from the snake_case query
    chunks[23] = (
        "export function parseConfigFile(path) {\n  return JSON.parse(fs.readFileSync(path));\n}"
    )
    vectors = await embeddings.embed_batch(chunks)
    wanted = await embeddings.embed("parse_config_file")
    scores = [cosine(wanted, vector) for vector in vectors]
    assert max(range(len(chunks)), key=scores.__getitem__) == 23


def test_dimensions_option(tmp_path: Path) -> None:
    from kblabs.platform.registry import AdapterContext, factory_for

    settings = load_settings(environ={"KB_PROJECT_ROOT": str(tmp_path)})
    context = AdapterContext(settings, store=None)  # type: ignore[arg-type]  # unused here

    def build(raw: Any) -> Any:
        return factory_for("embeddings", "hashed")("embeddings", raw, context)

    assert build(None).dimensions == 384
    assert build({"dimensions": 1536}).get_dimensions() == 1536
    with pytest.raises(StartupError, match=r"adapterOptions\.embeddings\.dimensions"):
        build({"dimensions": 8})
    with pytest.raises(StartupError, match=r"adapterOptions\.embeddings\.dims"):
        build({"dims": 64})


def test_local_embeddings_without_the_extra_says_how_to_install_it(tmp_path: Path) -> None:
    from kblabs.platform.registry import AdapterContext, factory_for

    try:  # this test needs the extra NOT installed
        import sentence_transformers  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("sentence-transformers is installed here")
    settings = load_settings(environ={"KB_PROJECT_ROOT": str(tmp_path)})
    context = AdapterContext(settings, store=None)  # type: ignore[arg-type]
    with pytest.raises(StartupError) as caught:
        factory_for("embeddings", "local")("embeddings", {"model": "all-MiniLM-L6-v2"}, context)
    assert caught.value.component == "adapters"
    assert caught.value.message == (
        "embeddings 'local' needs the extra: pip install 'kblabs[local-embeddings]'"
    )
    with pytest.raises(StartupError, match=r"adapterOptions\.embeddings\.model"):
        factory_for("embeddings", "local")("embeddings", {}, context)
