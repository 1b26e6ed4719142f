"""embeddings → "openai": the real openai SDK against an OpenAI-compatible server on
loopback, built by the real registry."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from kblabs.errors import KbError
from kblabs.platform import AdapterRegistry
from kblabs.platform.adapters.openai_embeddings import OpenAIEmbeddings
from kblabs.store import Store
from tests.conftest import make_settings
from tests.openai_server import OpenAIServer, embeddings, error, rate_limited, vector
from tests.openai_server import openai_server as openai_server

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def embedder(
    project: Path, server: OpenAIServer, **options: Any
) -> AsyncIterator[tuple[Any, OpenAIEmbeddings]]:
    """(the registry's embeddings adapter, the OpenAIEmbeddings behind it)."""
    config = {
        "platform": {
            "adapters": {"embeddings": "openai", "vectorStore": None},
            "adapterOptions": {
                "embeddings": {"apiKey": "sk-emb", "baseUrl": server.url, **options}
            },
        }
    }
    (project / "kb.config.json").write_text(json.dumps(config))
    settings = make_settings(project)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings)
    await store.start()
    registry = AdapterRegistry(settings, store)
    try:
        await registry.start()
        adapter = registry.get("embeddings")
        inner = getattr(adapter, "__wrapped__", adapter)  # behind a usage proxy or not
        assert isinstance(inner, OpenAIEmbeddings)
        yield adapter, inner
    finally:
        await registry.stop()
        await store.stop()


def close(a: list[float], b: list[float]) -> bool:
    """Equal up to float32 (the SDK asks for base64-encoded float32 by default)."""
    return len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b, strict=True))


async def test_embed(project: Path, openai_server: OpenAIServer) -> None:
    async with embedder(project, openai_server) as (adapter, inner):
        got = await adapter.embed("hello world")
        assert inner.get_dimensions() == adapter.dimensions == 1536
    assert close(got, vector("hello world", 1536))
    [seen] = openai_server.requests("embeddings")
    assert seen.authorization == "Bearer sk-emb"
    assert seen.body["model"] == "text-embedding-3-small"
    assert seen.body["input"] == ["hello world"]
    assert seen.body["dimensions"] == 1536  # text-embedding-3 models are asked for the size


async def test_embed_batch_keeps_order_across_batches(
    project: Path, openai_server: OpenAIServer
) -> None:
    texts = [f"text number {i}" for i in range(5)]
    async with embedder(project, openai_server, batchSize=2, dimensions=8) as (adapter, _):
        got = await adapter.embed_batch(texts)
    assert [len(v) for v in got] == [8] * 5
    assert all(close(v, vector(t, 8)) for v, t in zip(got, texts, strict=True))
    sent = [r.body["input"] for r in openai_server.requests("embeddings")]
    assert sent == [texts[0:2], texts[2:4], texts[4:5]]
    assert await adapter.embed_batch([]) == []


async def test_other_models_are_not_sent_dimensions(
    project: Path, openai_server: OpenAIServer
) -> None:
    async with embedder(project, openai_server, model="nomic-embed-text", dimensions=16) as (
        adapter,
        _,
    ):
        openai_server.embedding_dimensions = 16
        assert len(await adapter.embed("x")) == 16
    assert "dimensions" not in openai_server.requests("embeddings")[0].body


async def test_dimension_mismatch_is_refused(project: Path, openai_server: OpenAIServer) -> None:
    openai_server.script("embeddings", embeddings(dimensions=768))
    async with embedder(project, openai_server) as (adapter, _):
        with pytest.raises(KbError) as caught:
            await adapter.embed("x")
    assert caught.value.code == "EMBEDDINGS_DIMENSION_MISMATCH"
    assert "768 dimensions" in caught.value.message and "is 1536" in caught.value.message
    assert caught.value.details == {"expected": 1536, "actual": 768}


async def test_batch_is_all_or_nothing(project: Path, openai_server: OpenAIServer) -> None:
    openai_server.script("embeddings", embeddings(), error(400, "input too long"))
    async with embedder(project, openai_server, batchSize=1, dimensions=4) as (adapter, _):
        with pytest.raises(KbError) as caught:
            await adapter.embed_batch(["a", "b", "c"])
    assert caught.value.code == "EMBEDDINGS_ERROR"
    assert "HTTP 400" in caught.value.message and "input too long" in caught.value.message
    assert len(openai_server.requests("embeddings")) == 2  # stopped at the failed batch


async def test_rate_limit_is_retried(project: Path, openai_server: OpenAIServer) -> None:
    openai_server.script("embeddings", rate_limited("0"), embeddings())
    async with embedder(project, openai_server, dimensions=4) as (adapter, _):
        assert len(await adapter.embed("x")) == 4
    assert len(openai_server.requests("embeddings")) == 2


async def test_auth_failure_and_empty_text(project: Path, openai_server: OpenAIServer) -> None:
    openai_server.script("embeddings", error(401, "bad key"))
    async with embedder(project, openai_server, dimensions=4) as (adapter, _):
        with pytest.raises(KbError) as caught:
            await adapter.embed("x")
        assert caught.value.code == "EMBEDDINGS_AUTH_FAILED"
        assert "the embeddings endpoint at" in caught.value.message
        with pytest.raises(KbError) as empty:
            await adapter.embed_batch(["ok", ""])
        assert empty.value.code == "VALIDATION_ERROR" and "texts[1]" in empty.value.message
    assert len(openai_server.requests("embeddings")) == 1
