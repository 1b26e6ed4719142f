"""embeddings → "local": a sentence-transformers model that is already on this machine.

    "adapters": { "embeddings": "local" },
    "adapterOptions": { "embeddings": { "model": "/opt/models/all-MiniLM-L6-v2" } }

Semantic embeddings without a service. Needs the extra
`pip install 'kblabs[local-embeddings]'` (sentence-transformers, which brings torch).

`model` is a folder holding a saved model, the name of an installed Python package that
ships one (its folder is used), or a model name already in the Hugging Face cache. The
model is loaded with `HF_HUB_OFFLINE=1` and `local_files_only=True`: this adapter never
downloads anything, and a model that is not on the machine stops the start with a
message saying so. `dimensions` is the model's. Vectors are L2-normalised; encoding
runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger
from pydantic import Field

from kblabs.errors import StartupError
from kblabs.platform.options import AdapterOptions, parse_options

if TYPE_CHECKING:
    from kblabs.platform.registry import AdapterContext

EXTRA_MESSAGE = "embeddings 'local' needs the extra: pip install 'kblabs[local-embeddings]'"


class LocalEmbeddingsOptions(AdapterOptions):
    model: str = Field(min_length=1)
    batch_size: int = Field(default=32, ge=1)
    device: str | None = None  # "cpu", "cuda"…; None: sentence-transformers chooses


def build(token: str, raw: Any, ctx: AdapterContext) -> LocalEmbeddings:
    options = parse_options(LocalEmbeddingsOptions, token, raw)
    if importlib.util.find_spec("sentence_transformers") is None:
        raise StartupError("adapters", EXTRA_MESSAGE)
    return LocalEmbeddings(options, ctx.settings.project_root)


def model_location(model: str, project_root: Path) -> str:
    """A folder for `model` when it names one (relative to the project root) or an
    installed package; otherwise the name itself, for the local Hugging Face cache."""
    path = Path(model).expanduser()
    if not path.is_absolute():
        path = project_root / path
    if path.is_dir():
        return str(path)
    try:
        spec = importlib.util.find_spec(model)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return str(next(iter(spec.submodule_search_locations)))
    return model


class LocalEmbeddings:
    kind = "sentence-transformers"

    def __init__(self, options: LocalEmbeddingsOptions, project_root: Path) -> None:
        self.options = options
        self.location = model_location(options.model, project_root)
        self.dimensions = 0  # known once the model is loaded (start)
        self._model: Any = None

    async def start(self) -> None:
        self._model = await asyncio.to_thread(self._load)
        self.dimensions = int(self._model.get_sentence_embedding_dimension())
        logger.info("embeddings local: {} ({} dimensions)", self.options.model, self.dimensions)

    def _load(self) -> Any:
        os.environ["HF_HUB_OFFLINE"] = "1"  # before the import: huggingface_hub reads it then
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        try:
            return SentenceTransformer(
                self.location, device=self.options.device, local_files_only=True
            )
        except Exception as exc:
            raise StartupError(
                "adapters",
                f"embeddings 'local': cannot load model {self.options.model!r} from this "
                f"machine (nothing is downloaded): {type(exc).__name__}: {exc}",
            ) from exc

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": self.options.model,
            "dimensions": self.dimensions,
            "semantic": True,
        }

    def get_dimensions(self) -> int:
        return self.dimensions

    async def embed(self, text: str) -> list[float]:
        return (await self.embed_batch([text]))[0]

    async def embed_batch(self, texts: Sequence[str]) -> list[list[float]]:
        if self._model is None:
            raise RuntimeError("the local embeddings model is not loaded (start() first)")
        texts = list(texts)
        if not texts:
            return []
        vectors = await asyncio.to_thread(
            self._model.encode,
            texts,
            batch_size=self.options.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return vectors.tolist()  # type: ignore[no-any-return]
