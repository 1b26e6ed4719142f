"""An adapter installed through the marketplace serves a platform token once
`platform.adapters.<token>` names it: a wheel from a loopback index, the real CLI
install, the real app."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from kblabs.app import create_app
from kblabs.errors import StartupError
from tests.conftest import make_settings
from tests.integration.test_marketplace import market, market_json
from tests.marketplace_fixtures import SimpleIndex, build_wheel

pytestmark = [pytest.mark.live, pytest.mark.anyio]

FANCY = '''
class FancyCache:
    """A dict cache that remembers what it was configured with."""

    def __init__(self, options):
        self.options = options
        self.values = {}

    async def get(self, key):
        return self.values.get(key)

    async def set(self, key, value, ttl_ms=None):
        self.values[key] = value

    async def delete(self, key):
        return self.values.pop(key, None) is not None

    async def clear(self, pattern=None):
        count = len(self.values)
        self.values.clear()
        return count


def create(token, options, context):
    return FancyCache({"token": token, **(options or {})})
'''


@pytest.fixture
def index(tmp_path: Path) -> Iterator[SimpleIndex]:
    folder = tmp_path / "wheels"
    build_wheel(
        folder,
        "kb-fancy-cache",
        "1.0.0",
        files={"kb_fancy_cache/__init__.py": FANCY},
        entry_points={"kb_labs.adapters": {"cache.fancy": "kb_fancy_cache:create"}},
    )
    build_wheel(
        folder,
        "kb-broken-cache",
        "1.0.0",
        files={"kb_broken_cache/__init__.py": "raise RuntimeError('no import for you')\n"},
        entry_points={"kb_labs.adapters": {"cache.broken": "kb_broken_cache:create"}},
    )
    with SimpleIndex(folder) as served:
        yield served


def configure(project: Path, index: SimpleIndex, cache: str | None = None) -> None:
    config: dict = {"marketplace": {"indexUrl": index.url}}
    if cache:
        config["platform"] = {
            "adapters": {"cache": cache},
            "adapterOptions": {"cache": {"flavour": "vanilla"}},
        }
    (project / "kb.config.json").write_text(json.dumps(config))


async def started_cache(project: Path):
    app = create_app(make_settings(project))
    async with app.router.lifespan_context(app):
        registry = app.state.runtime.adapters
        cache = registry.get("cache")
        await cache.set("k", 1)
        return registry.configured()["cache"], cache, await cache.get("k")


async def test_an_installed_adapter_serves_its_token(project: Path, index: SimpleIndex):
    configure(project, index)
    code, installed = market_json("install", "kb-fancy-cache", project=project)
    assert code == 0, installed
    configure(project, index, cache="fancy")
    name, cache, value = await started_cache(project)
    assert name == "fancy" and value == 1
    assert cache.options == {"token": "cache", "flavour": "vanilla"}  # (through usage tracking)

    # disabled: the name is unknown again, and the message says where names come from
    assert market("disable", "kb-fancy-cache", project=project).returncode == 0
    with pytest.raises(StartupError) as refused:
        await started_cache(project)
    assert "unknown adapter 'fancy'" in refused.value.message
    assert "kb_labs.adapters" in refused.value.message


async def test_an_adapter_that_does_not_import_stops_the_start_naming_it(
    project: Path, index: SimpleIndex
):
    configure(project, index)
    assert market("install", "kb-broken-cache", project=project).returncode == 0
    configure(project, index, cache="broken")
    with pytest.raises(StartupError) as refused:
        await started_cache(project)
    assert "kb-broken-cache" in refused.value.message
    assert "no import for you" in refused.value.message
