"""The real app starts with the embedded embeddings and vector store (hashed + Qdrant's
local mode), which work end to end; configuration switches them off or stops the start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kblabs.app import create_app
from kblabs.errors import StartupError
from tests.conftest import AppClient, make_settings

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def no_qdrant_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """The adapter reads QDRANT_URL from the process environment: these tests are about
    the embedded default, whatever the machine has."""
    monkeypatch.delenv("QDRANT_URL", raising=False)
    monkeypatch.delenv("QDRANT_API_KEY", raising=False)


CHUNKS = {
    "src/config.py#0": "def parse_config_file(path):\n    return json.loads(read(path))\n",
    "src/http.py#0": "class HttpServer:\n    def listen(self, port):\n        bind(port)\n",
    "src/mail.py#0": "def send_email(to, body):\n    smtp.send(to, body)\n",
    "docs/guide.md#0": "# Guide\nHow to configure logging levels and log files.\n",
}


async def test_the_embedded_defaults_index_and_search(app_client: AppClient) -> None:
    registry = app_client.app.state.runtime.adapters
    assert registry.configured()["embeddings"] == "hashed"
    assert registry.configured()["vectorStore"] == "qdrant"
    embeddings = registry.get("embeddings")
    vectors = registry.get("vectorStore")
    assert embeddings.kind == "hashed-ngrams" and embeddings.get_dimensions() == 384
    assert (vectors.kind, vectors.mode) == ("qdrant", "local")
    folder = app_client.settings.data_dir / "qdrant"
    assert vectors.path == folder
    assert not folder.exists()  # the start did not open the store
    assert registry.health()[0] == "ok"

    texts = list(CHUNKS.values())
    embedded = await embeddings.embed_batch(texts)
    await vectors.upsert(
        [
            {"id": chunk_id, "vector": vector, "metadata": {"path": chunk_id.split("#")[0]}}
            for chunk_id, vector in zip(CHUNKS, embedded, strict=True)
        ],
        collection="mind-test",
    )
    assert folder.is_dir()
    assert await vectors.count(collection="mind-test") == 4
    query = await embeddings.embed("parseConfigFile")
    matches = await vectors.search(query, 2, collection="mind-test")
    assert matches[0]["id"] == "src/config.py#0"
    assert matches[0]["metadata"] == {"path": "src/config.py"}
    assert 0.5 < matches[0]["score"] <= 1.0
    filtered = await vectors.search(
        query,
        5,
        {"field": "path", "operator": "eq", "value": "docs/guide.md"},
        collection="mind-test",
    )
    assert [m["id"] for m in filtered] == ["docs/guide.md#0"]
    assert await vectors.count(namespace="other-tenant", collection="mind-test") == 0

    response = await app_client.client.get("/ready")
    assert response.status_code == 200


def write_config(project: Path, platform: dict[str, Any]) -> None:
    (project / "kb.config.json").write_text(json.dumps({"platform": platform}))


async def test_null_switches_the_vector_store_off(project: Path) -> None:
    write_config(project, {"adapters": {"vectorStore": None}})
    app = create_app(make_settings(project))
    async with app.router.lifespan_context(app):
        registry = app.state.runtime.adapters
        assert registry.get("vectorStore") is None
        assert "vectorStore" not in registry.configured()
        assert registry.get("embeddings") is not None  # the other default stays
    assert not (project / ".kb" / "qdrant").exists()


@pytest.mark.parametrize(
    ("platform", "message"),
    [
        (
            {"adapterOptions": {"vectorStore": {"colectionPrefix": "x"}}},
            "platform.adapterOptions.vectorStore.colectionPrefix",
        ),
        (
            {"adapterOptions": {"embeddings": {"dimensions": 4}}},
            "platform.adapterOptions.embeddings.dimensions",
        ),
        (
            {"adapters": {"vectorStore": "pinecone"}},
            "platform.adapters.vectorStore: unknown adapter 'pinecone'; known: qdrant",
        ),
    ],
)
async def test_bad_configuration_stops_the_start(
    project: Path, platform: dict[str, Any], message: str
) -> None:
    write_config(project, platform)
    app = create_app(make_settings(project))
    with pytest.raises(StartupError) as caught:
        async with app.router.lifespan_context(app):
            pass
    assert message in str(caught.value)
