"""llm → "openai": the real openai SDK against an OpenAI-compatible server on loopback.

The adapter is built by the real registry from a kb.config.json; its usage events are
read back from the real analytics adapter (SQLite)."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from kblabs.errors import KbError, StartupError
from kblabs.platform import AdapterRegistry, EventFilters
from kblabs.platform.adapters.openai_common import public_url, retry_after_s
from kblabs.platform.adapters.openai_llm import OpenAILLM, OpenAILLMOptions
from kblabs.store import Store
from tests.conftest import make_settings
from tests.openai_server import (
    OpenAIServer,
    completion,
    error,
    rate_limited,
    stream,
    tool_call,
)
from tests.openai_server import openai_server as openai_server

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def started(project: Path, **llm: Any) -> AsyncIterator[AdapterRegistry]:
    """The registry of a project whose kb.config.json selects llm "openai" with `llm`
    options (the others that need no service are the defaults; embeddings and the
    vector store are off)."""
    config = {
        "platform": {
            "adapters": {"llm": "openai", "embeddings": None, "vectorStore": None},
            "adapterOptions": {"llm": llm},
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
        yield registry
    finally:
        await registry.stop()
        await store.stop()


@asynccontextmanager
async def llm_for(
    project: Path, server: OpenAIServer, **options: Any
) -> AsyncIterator[tuple[OpenAILLM, AdapterRegistry]]:
    options = {"apiKey": "sk-test", "baseUrl": server.url, **options}
    async with started(project, **options) as registry:
        llm = registry.get("llm")
        assert isinstance(llm, OpenAILLM)
        yield llm, registry


async def events(registry: AdapterRegistry, type: str) -> list[dict[str, Any]]:
    page = await registry.get("analytics").get_events(EventFilters(type=type))
    return [event["payload"] for event in page["events"]]


# --- calls ---------------------------------------------------------------------------------


async def test_complete(project: Path, openai_server: OpenAIServer) -> None:
    openai_server.script(
        "chat", completion("Paris.", usage={"prompt_tokens": 12, "completion_tokens": 3})
    )
    async with llm_for(project, openai_server) as (llm, registry):
        response = await llm.complete("Capital of France?", {"system_prompt": "Be brief."})
        assert response.content == "Paris."
        assert response.model == "gpt-4o-mini"
        assert response.usage == {"prompt_tokens": 12, "completion_tokens": 3}
        [seen] = openai_server.requests("chat")
        assert seen.authorization == "Bearer sk-test"
        assert seen.body["model"] == "gpt-4o-mini"
        assert seen.body["temperature"] == 0.7
        assert seen.body["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
        ]
        [usage] = await events(registry, "llm.completion.completed")
    assert usage["model"] == "gpt-4o-mini" and usage["tier"] == "medium"
    assert usage["provider"] == "openai" and usage["operation"] == "complete"
    assert (usage["promptTokens"], usage["completionTokens"], usage["totalTokens"]) == (12, 3, 15)
    assert usage["costUsd"] is None  # no pricing for this model
    assert usage["retries"] == 0 and usage["durationMs"] >= 0
    assert usage["host"] == f"127.0.0.1:{openai_server.port}"
    assert usage["baseUrl"] == openai_server.url


async def test_an_answer_without_usage_is_estimated(
    project: Path, openai_server: OpenAIServer
) -> None:
    openai_server.script("chat", completion("12345", usage=False))
    async with llm_for(project, openai_server) as (llm, registry):
        response = await llm.complete("123456789")
        assert response.usage == {}  # the answer says what the server said: nothing
        [usage] = await events(registry, "llm.completion.completed")
    assert usage["estimated"] is True
    assert (usage["promptTokens"], usage["completionTokens"]) == (3, 2)  # ceil(9/4), ceil(5/4)


async def test_tiers_pick_models_and_pricing_prices_them(
    project: Path, openai_server: OpenAIServer
) -> None:
    options = {
        "tiers": {"small": "tiny", "large": [{"model": "huge", "priority": 1}]},
        "pricing": {"tiny": {"promptPer1M": 1.0, "completionPer1M": 2.0}},
        "temperature": 0.2,
    }
    openai_server.script(
        "chat",
        completion("a", usage={"prompt_tokens": 1_000_000, "completion_tokens": 500_000}),
        completion("b"),
        completion("c"),
    )
    async with llm_for(project, openai_server, **options) as (llm, registry):
        small = await llm.complete("x", {"metadata": {"tier": "small"}})
        await llm.complete("x", {"metadata": {"tier": "large"}, "temperature": 0})
        await llm.complete("x", {"model": "pinned", "metadata": {"tier": "small"}})
        assert small.model == "tiny"
        sent = [(r.body["model"], r.body["temperature"]) for r in openai_server.requests("chat")]
        assert sent == [("tiny", 0.2), ("huge", 0), ("pinned", 0.2)]
        usage = await events(registry, "llm.completion.completed")
    by_model = {u["model"]: u for u in usage}
    assert by_model["tiny"]["costUsd"] == pytest.approx(2.0)  # 1M x $1 + 0.5M x $2
    assert by_model["tiny"]["tier"] == "small" and by_model["huge"]["tier"] == "large"
    assert by_model["huge"]["costUsd"] is None


async def test_stream(project: Path, openai_server: OpenAIServer) -> None:
    openai_server.script(
        "chat", stream(["Hel", "lo ", "world"], usage={"prompt_tokens": 7, "completion_tokens": 3})
    )
    async with llm_for(project, openai_server) as (llm, registry):
        chunks = [chunk async for chunk in llm.stream("say hello")]
        assert chunks == ["Hel", "lo ", "world"]
        [seen] = openai_server.requests("chat")
        assert seen.body["stream"] is True
        assert seen.body["stream_options"] == {"include_usage": True}
        [usage] = await events(registry, "llm.stream.completed")
    assert (usage["promptTokens"], usage["completionTokens"]) == (7, 3)
    assert "estimated" not in usage


async def test_stream_without_usage_from_the_server_is_estimated(
    project: Path, openai_server: OpenAIServer
) -> None:
    openai_server.script("chat", stream(["abcde", "fgh"], usage=False))
    async with llm_for(project, openai_server) as (llm, registry):
        assert "".join([c async for c in llm.stream("1234567890")]) == "abcdefgh"
        [usage] = await events(registry, "llm.stream.completed")
    assert usage["estimated"] is True
    assert usage["promptTokens"] == 3  # ceil(10 / 4)
    assert usage["completionTokens"] == 2  # ceil(8 / 4)


async def test_chat_with_tools(project: Path, openai_server: OpenAIServer) -> None:
    openai_server.script(
        "chat", tool_call("get_weather", {"city": "Oslo"}, call_id="call_9"), completion("Cold.")
    )
    tools = [
        {
            "name": "get_weather",
            "description": "Weather of a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Oslo?"}]
    async with llm_for(project, openai_server) as (llm, registry):
        first = await llm.chat_with_tools(messages, {"tools": tools, "tool_choice": "required"})
        assert first.tool_calls == [
            {"id": "call_9", "name": "get_weather", "input": {"city": "Oslo"}}
        ]
        assert first.stop_reason == "tool_use"
        messages += [
            {"role": "assistant", "content": "", "tool_calls": first.tool_calls},
            {"role": "tool", "tool_call_id": "call_9", "content": "-3 C"},
        ]
        second = await llm.chat_with_tools(messages, {"tools": tools})
        assert second.content == "Cold." and second.tool_calls == []
        assert second.stop_reason == "end_turn"
        sent = openai_server.requests("chat")
        assert sent[0].body["tools"] == [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": tools[0]["input_schema"],
                    "description": "Weather of a city",
                },
            }
        ]
        assert sent[0].body["tool_choice"] == "required"
        assistant, tool = sent[1].body["messages"][1:]
        assert assistant["tool_calls"] == [
            {
                "id": "call_9",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
            }
        ]
        assert tool == {"role": "tool", "content": "-3 C", "tool_call_id": "call_9"}
        assert len(await events(registry, "llm.chatWithTools.completed")) == 2


# --- retries and errors ----------------------------------------------------------------------


async def test_429_with_retry_after_then_success(
    project: Path, openai_server: OpenAIServer
) -> None:
    openai_server.script("chat", rate_limited("1"), completion("finally"))
    async with llm_for(project, openai_server) as (llm, registry):
        assert (await llm.complete("hi")).content == "finally"
        first, second = openai_server.requests("chat")
        [usage] = await events(registry, "llm.completion.completed")
    assert usage["retries"] == 1
    assert usage["retryWaitMs"] == 1000  # what Retry-After said, not a backoff guess
    assert second.at - first.at >= 0.8  # loose sanity bound on the server's clock


async def test_500_then_success(project: Path, openai_server: OpenAIServer) -> None:
    openai_server.script("chat", error(500, "upstream hiccup"), completion("ok"))
    async with llm_for(project, openai_server) as (llm, registry):
        assert (await llm.complete("hi")).content == "ok"
        assert len(openai_server.requests("chat")) == 2
        [usage] = await events(registry, "llm.completion.completed")
    assert usage["retries"] == 1
    assert 0 < usage["retryWaitMs"] <= 500  # backoff with jitter: 50-100 % of 0.5 s


async def test_401_fails_at_once(project: Path, openai_server: OpenAIServer) -> None:
    openai_server.script(
        "chat", error(401, "Incorrect API key provided", type="invalid_request_error")
    )
    async with llm_for(project, openai_server) as (llm, registry):
        with pytest.raises(KbError) as caught:
            await llm.complete("hi")
        assert len(openai_server.requests("chat")) == 1
        [failed] = await events(registry, "llm.completion.failed")
    assert caught.value.code == "LLM_AUTH_FAILED" and caught.value.status == 401
    assert "HTTP 401" in caught.value.message
    assert "Incorrect API key provided" in caught.value.message
    assert openai_server.url in caught.value.message
    assert failed["error"]["code"] == "LLM_AUTH_FAILED" and failed["retries"] == 0


async def test_other_4xx_fail_at_once(project: Path, openai_server: OpenAIServer) -> None:
    openai_server.script("chat", error(400, "model 'nope' does not exist"))
    async with llm_for(project, openai_server) as (llm, _):
        with pytest.raises(KbError) as caught:
            await llm.complete("hi", {"model": "nope"})
        assert len(openai_server.requests("chat")) == 1
    assert caught.value.code == "LLM_ERROR" and caught.value.status == 502
    assert "HTTP 400" in caught.value.message and "does not exist" in caught.value.message


async def test_rate_limit_that_never_ends(project: Path, openai_server: OpenAIServer) -> None:
    fast = {"retry-after-ms": "10", "Retry-After": "7"}  # retry-after-ms wins when both
    openai_server.script("chat", *[error(429, "quota", headers=fast) for _ in range(3)])
    async with llm_for(project, openai_server, maxRetries=2) as (llm, registry):
        with pytest.raises(KbError) as caught:
            await llm.complete("hi")
        assert len(openai_server.requests("chat")) == 3
        [failed] = await events(registry, "llm.completion.failed")
    assert caught.value.code == "LLM_RATE_LIMITED" and caught.value.status == 429
    assert "after 2 retries" in caught.value.message
    assert caught.value.headers == {"Retry-After": "1"}  # 10 ms, rounded up to a second
    assert failed["retries"] == 2 and failed["retryWaitMs"] == 20


async def test_timeout_is_a_clear_error(project: Path, openai_server: OpenAIServer) -> None:
    openai_server.script("chat", completion("too late").after(5))
    async with llm_for(project, openai_server, timeoutMs=300) as (llm, registry):
        with pytest.raises(KbError) as caught:
            await llm.complete("hi")
        assert len(openai_server.requests("chat")) == 1  # a timeout is not retried
        [failed] = await events(registry, "llm.completion.failed")
    assert caught.value.code == "LLM_TIMEOUT" and caught.value.status == 504
    assert caught.value.message == f"the LLM at {openai_server.url} did not answer within 300 ms"
    assert failed["error"]["code"] == "LLM_TIMEOUT"


async def test_connection_refused_is_retried_then_reported(project: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = {"apiKey": "k", "baseUrl": f"http://127.0.0.1:{port}/v1", "maxRetries": 1}
    async with started(project, **options) as registry:
        with pytest.raises(KbError) as caught:
            await registry.get("llm").complete("hi")
        [failed] = await events(registry, "llm.completion.failed")
    assert caught.value.code == "LLM_ERROR" and caught.value.status == 502
    assert caught.value.message.startswith(f"could not reach the LLM at http://127.0.0.1:{port}/v1")
    assert failed["retries"] == 1


async def test_analytics_failure_never_breaks_the_call(openai_server: OpenAIServer) -> None:
    class BrokenAnalytics:
        async def track(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("disk full")

    llm = OpenAILLM(
        OpenAILLMOptions(), api_key="k", base_url=openai_server.url, analytics=BrokenAnalytics()
    )
    try:
        assert (await llm.complete("hi")).content == "echo: hi"
        assert [c async for c in llm.stream("yo")] == ["echo:", " yo"]
    finally:
        await llm.stop()


async def test_cache_required_is_refused(openai_server: OpenAIServer) -> None:
    llm = OpenAILLM(OpenAILLMOptions(), api_key="k", base_url=openai_server.url)
    try:
        assert llm.get_protocol_capabilities()["stream"]["supported"] is True
        with pytest.raises(KbError) as caught:
            await llm.complete("hi", {"execution": {"cache": {"mode": "require"}}})
        assert caught.value.code == "CACHE_NOT_SUPPORTED"
        assert openai_server.requests("chat") == []
    finally:
        await llm.stop()


# --- configuration ---------------------------------------------------------------------------


async def test_no_key_for_openai_itself_stops_the_start(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(StartupError) as caught:
        async with started(project):
            pass
    assert "OPENAI_API_KEY" in caught.value.message
    assert "platform.adapterOptions.llm.apiKey" in caught.value.message


async def test_key_and_url_from_the_projects_env_file(
    project: Path, openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    (project / ".env").write_text(
        f"OPENAI_API_KEY=sk-from-dotenv\nOPENAI_BASE_URL={openai_server.url}\n"
    )
    async with started(project) as registry:
        await registry.get("llm").complete("hi")
    assert openai_server.requests("chat")[0].authorization == "Bearer sk-from-dotenv"


async def test_bad_options_name_the_field(project: Path) -> None:
    with pytest.raises(StartupError) as caught:
        async with started(project, apiKey="k", tiers={"huge": "x"}):
            pass
    assert "platform.adapterOptions.llm.tiers.huge" in caught.value.message


# --- helpers ---------------------------------------------------------------------------------


def test_retry_after_parsing() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_s({"Retry-After": "2"}, now) == 2
    assert retry_after_s({"retry-after": "0.5"}, now) == 0.5
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}, now) == 0.25
    date = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert retry_after_s({"Retry-After": date}, now) == 30
    assert retry_after_s({"Retry-After": format_datetime(now - timedelta(seconds=5))}, now) == 0
    assert retry_after_s({"Retry-After": "3600"}, now) == 60  # capped
    assert retry_after_s({"Retry-After": "soon"}, now) is None
    assert retry_after_s({"Retry-After": "-1"}, now) is None
    assert retry_after_s({}, now) is None


def test_public_url_drops_credentials() -> None:
    assert public_url("https://user:hunter2@llm.example:8443/v1/?key=x") == (
        "https://llm.example:8443/v1"
    )
