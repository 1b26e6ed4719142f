"""embeddings → "openai": any OpenAI-compatible `/embeddings` endpoint, through the SDK.

    "platform": {
      "adapters": {"embeddings": "openai"},
      "adapterOptions": {"embeddings": {
        "apiKey": "${OPENAI_API_KEY}",          // default: env OPENAI_API_KEY (or .env)
        "baseUrl": "http://127.0.0.1:11434/v1", // default: env OPENAI_BASE_URL, else OpenAI
        "model": "text-embedding-3-small",
        "dimensions": 1536,                     // what every vector must have
        "batchSize": 256,                       // texts per request
        "timeoutMs": 60000,
        "maxRetries": 3
      }}
    }

`dimensions` is a promise to the vector store, so it is checked on every answer: a
vector of another length fails the call with EMBEDDINGS_DIMENSION_MISMATCH (the message
names both numbers) instead of reaching the store. For `text-embedding-3*` models it is
also sent to the API, which shortens the vectors to that size; other models (and most
local servers) do not accept the parameter, so for them it is only checked.

`embed_batch(texts)` keeps the order of `texts`, sends `batchSize` texts per request
(one after the other) and is all or nothing: any failed batch fails the call and no
partial result is returned. Retries and error codes (EMBEDDINGS_TIMEOUT,
EMBEDDINGS_RATE_LIMITED, EMBEDDINGS_AUTH_FAILED, EMBEDDINGS_ERROR) are those of
kblabs.platform.adapters.openai_common.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import Field

from kblabs.errors import KbError
from kblabs.platform.adapters.openai_common import (
    CallStats,
    Endpoint,
    make_client,
    public_url,
    resolve_endpoint,
    to_kb_error,
    with_retries,
)
from kblabs.platform.options import AdapterOptions, parse_options

MAX_BATCH_SIZE = 2048  # OpenAI's limit of inputs per request


class OpenAIEmbeddingsOptions(AdapterOptions):
    api_key: str | None = None
    base_url: str | None = None
    model: str = Field(default="text-embedding-3-small", min_length=1)
    dimensions: int = Field(default=1536, ge=1, le=65_536)
    batch_size: int = Field(default=256, ge=1, le=MAX_BATCH_SIZE)
    timeout_ms: int = Field(default=60_000, ge=1)
    max_retries: int = Field(default=3, ge=0, le=10)


class OpenAIEmbeddings:
    def __init__(
        self,
        options: OpenAIEmbeddingsOptions,
        *,
        api_key: str | None,
        base_url: str,
        backoff_base_s: float | None = None,
    ) -> None:
        self.options = options
        self.dimensions = options.dimensions
        self.model = options.model
        self.batch_size = options.batch_size
        self.endpoint = Endpoint("EMBEDDINGS", "the embeddings endpoint", public_url(base_url))
        self.timeout_s = options.timeout_ms / 1000
        self.client = make_client(api_key, base_url, self.timeout_s)
        # the API shortens text-embedding-3 vectors on request; other models refuse it
        self._send_dimensions = options.model.startswith("text-embedding-3")
        self._backoff: dict[str, float] = (
            {} if backoff_base_s is None else {"backoff_base_s": backoff_base_s}
        )

    async def stop(self) -> None:
        await self.client.close()

    def get_dimensions(self) -> int:
        return self.dimensions

    async def embed(self, text: str) -> list[float]:
        return (await self.embed_batch([text]))[0]

    async def embed_batch(self, texts: Sequence[str]) -> list[list[float]]:
        items = list(texts)
        for index, text in enumerate(items):
            if not isinstance(text, str) or not text:
                raise KbError(
                    "VALIDATION_ERROR",
                    f"texts[{index}] must be a non-empty string (embeddings of nothing "
                    "are refused by OpenAI-compatible servers)",
                    400,
                )
        vectors: list[list[float]] = []
        for start in range(0, len(items), self.batch_size):
            vectors.extend(await self._batch(items[start : start + self.batch_size]))
        return vectors

    async def _batch(self, texts: list[str]) -> list[list[float]]:
        request: dict[str, Any] = {"model": self.model, "input": texts}
        if self._send_dimensions:
            request["dimensions"] = self.dimensions
        stats = CallStats()
        try:
            answer = await with_retries(
                lambda: self.client.embeddings.create(**request),
                endpoint=self.endpoint,
                max_retries=self.options.max_retries,
                timeout_s=self.timeout_s,
                stats=stats,
                **self._backoff,
            )
        except Exception as exc:
            raise to_kb_error(exc, self.endpoint, self.timeout_s, stats) from exc
        data = sorted(answer.data or [], key=lambda item: item.index)
        if len(data) != len(texts) or [d.index for d in data] != list(range(len(texts))):
            raise KbError(
                "EMBEDDINGS_ERROR",
                f"{self.endpoint.where} returned {len(data)} vectors for {len(texts)} texts",
                502,
            )
        vectors = [list(item.embedding) for item in data]
        for vector in vectors:
            if len(vector) != self.dimensions:
                raise KbError(
                    "EMBEDDINGS_DIMENSION_MISMATCH",
                    f"{self.endpoint.where} returned vectors of {len(vector)} dimensions "
                    f"for model {self.model!r}, but platform.adapterOptions.embeddings."
                    f"dimensions is {self.dimensions}; set it to {len(vector)} (a vector "
                    "store built for the old size must be rebuilt)",
                    502,
                    details={"expected": self.dimensions, "actual": len(vector)},
                )
        return vectors


def build(token: str, raw: Any, ctx: Any) -> OpenAIEmbeddings:
    """`BUILTINS["embeddings"]["openai"]`."""
    options = parse_options(OpenAIEmbeddingsOptions, token, raw)
    base_url, api_key = resolve_endpoint(
        token, options.base_url, options.api_key, ctx.settings.project_root
    )
    return OpenAIEmbeddings(options, api_key=api_key, base_url=base_url)
