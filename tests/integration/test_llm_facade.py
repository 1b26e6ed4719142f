"""The gateway facades on the real app: /llm/v1/chat/completions (called with the real
openai SDK), /platform/v1/{adapter}/{method} for every configured adapter, and
/telemetry/v1/ingest — with an LLM and embeddings behind an OpenAI-compatible server on
loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest

from kblabs.platform import EventFilters
from tests.conftest import AppClient, running_app
from tests.openai_server import OpenAIServer, completion, error, stream, tool_call, vector
from tests.openai_server import openai_server as openai_server

pytestmark = pytest.mark.anyio


def config_for(server: OpenAIServer | None, **platform: Any) -> dict[str, Any]:
    adapters: dict[str, Any] = {"vectorStore": None, "embeddings": None}
    options: dict[str, Any] = {}
    if server is not None:
        adapters.update(llm="openai", embeddings="openai")
        options = {
            "llm": {
                "apiKey": "sk-facade",
                "baseUrl": server.url,
                "model": "base-model",
                "tiers": {"small": "tiny-model", "large": "big-model"},
            },
            "embeddings": {"apiKey": "sk-facade", "baseUrl": server.url, "dimensions": 8},
        }
    adapters.update(platform.pop("adapters", {}))
    options.update(platform.pop("adapterOptions", {}))
    return {"platform": {"adapters": adapters, "adapterOptions": options, **platform}}


@asynccontextmanager
async def sdk(app: AppClient) -> AsyncIterator[openai.AsyncOpenAI]:
    """The real openai SDK pointed at our /llm/v1, through the app in-process."""
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app.app))
    client = openai.AsyncOpenAI(
        api_key=app.token,
        base_url="http://testserver/llm/v1",
        http_client=http,
        max_retries=0,
    )
    try:
        yield client
    finally:
        await client.close()


async def platform(app: AppClient, path: str, *args: Any, **body: Any) -> httpx.Response:
    return await app.client.post(
        f"/platform/v1/{path}", json={"args": list(args), **body}, headers=app.auth
    )


async def events(app: AppClient, type: str, namespace: str = "default") -> list[dict[str, Any]]:
    analytics = app.app.state.runtime.adapters.get("analytics")
    page = await analytics.get_events(EventFilters(namespace_id=namespace, type=type))
    return page["events"]


async def operator_in(app: AppClient, namespace: str) -> dict[str, str]:
    registered = await app.client.post(
        "/auth/register",
        json={"name": "ci", "role": "operator", "namespaceId": namespace},
        headers=app.auth,
    )
    assert registered.status_code == 201, registered.text
    pair = await app.client.post(
        "/auth/token",
        json={
            "clientId": registered.json()["clientId"],
            "clientSecret": registered.json()["clientSecret"],
        },
    )
    return {"Authorization": f"Bearer {pair.json()['accessToken']}"}


# --- /llm/v1/chat/completions --------------------------------------------------------------------


async def test_chat_completions_without_an_llm_says_how_to_configure_one(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    async with running_app(project, config_for(None)) as app:
        response = await app.client.post(
            "/llm/v1/chat/completions",
            json={"model": "small", "messages": [{"role": "user", "content": "hi"}]},
            headers=app.auth,
        )
        assert response.status_code == 503
        error_body = response.json()["error"]
        assert error_body["type"] == "server_error" and error_body["code"] == "llm_not_configured"
        assert 'platform.adapters.llm to "openai"' in error_body["message"]
        assert "OPENAI_API_KEY" in error_body["message"]
        assert "docs/adapters.md" in error_body["message"]
        assert "a key alone" not in error_body["message"]
        # an API key in the project's .env does not switch the LLM on, but is mentioned
        (project / ".env").write_text("OPENAI_API_KEY=sk-lying-around\n")
        again = await app.client.post(
            "/llm/v1/chat/completions", json={"model": "small"}, headers=app.auth
        )
        assert again.status_code == 503
        assert "a key alone does not switch the LLM on" in again.json()["error"]["message"]
        assert app.app.state.runtime.adapters.get("llm") is None


async def test_chat_completions_through_the_sdk(project: Path, openai_server: OpenAIServer) -> None:
    openai_server.script(
        "chat", completion("Hi!", usage={"prompt_tokens": 9, "completion_tokens": 2})
    )
    async with running_app(project, config_for(openai_server)) as app, sdk(app) as client:
        answer = await client.chat.completions.create(
            model="small",
            messages=[
                {"role": "system", "content": "Be nice."},
                {"role": "user", "content": "Hello"},
            ],
            temperature=0.1,
            max_tokens=20,
        )
        assert answer.model == "small"  # the tier asked for
        assert answer.choices[0].message.content == "Hi!"
        assert answer.choices[0].finish_reason == "stop"
        assert answer.usage is not None and answer.usage.total_tokens == 11
        [seen] = openai_server.requests("chat")
        assert seen.authorization == "Bearer sk-facade"  # the platform's key, not the caller's
        assert seen.body["model"] == "tiny-model"
        assert seen.body["temperature"] == 0.1 and seen.body["max_tokens"] == 20
        assert seen.body["messages"][0] == {"role": "system", "content": "Be nice."}
        # a model name instead of a tier goes through as is
        named = await client.chat.completions.create(
            model="some-model", messages=[{"role": "user", "content": "x"}]
        )
        assert named.model == "some-model"
        assert openai_server.requests("chat")[1].body["model"] == "some-model"
        # usage lands in analytics, in the caller's namespace
        recorded = await events(app, "llm.completion.completed")
    by_model = {e["payload"]["model"]: e["payload"] for e in recorded}
    assert by_model["tiny-model"]["tier"] == "small"
    assert by_model["tiny-model"]["promptTokens"] == 9
    assert by_model["tiny-model"]["completionTokens"] == 2
    assert by_model["tiny-model"]["provider"] == "openai"
    assert "some-model" in by_model


async def test_chat_completions_stream_over_sse(project: Path, openai_server: OpenAIServer) -> None:
    openai_server.script("chat", stream(["Once", " upon", " a time"]))
    async with running_app(project, config_for(openai_server)) as app, sdk(app) as client:
        chunks = await client.chat.completions.create(
            model="large", messages=[{"role": "user", "content": "story"}], stream=True
        )
        pieces, reasons = [], []
        async for chunk in chunks:
            assert chunk.model == "large"
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                reasons.append(choice.finish_reason)
        assert "".join(pieces) == "Once upon a time"
        assert reasons[-1] == "stop"
        assert openai_server.requests("chat")[0].body["model"] == "big-model"
        assert openai_server.requests("chat")[0].body["stream"] is True
        # the raw wire: chunk events, then [DONE]
        openai_server.script("chat", stream(["a", "b"]))
        raw = await app.client.post(
            "/llm/v1/chat/completions",
            json={"model": "small", "stream": True, "messages": [{"role": "user", "content": "x"}]},
            headers=app.auth,
        )
        assert raw.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in raw.text.splitlines() if line]
        assert lines[-1] == "data: [DONE]"
        first = json.loads(lines[0].removeprefix("data: "))
        assert first["object"] == "chat.completion.chunk"
        recorded = await events(app, "llm.stream.completed")
    assert len(recorded) == 2


async def test_chat_completions_with_tools(project: Path, openai_server: OpenAIServer) -> None:
    openai_server.script("chat", tool_call("lookup", {"q": "kb labs"}, call_id="call_7"))
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Search the docs",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ]
    async with running_app(project, config_for(openai_server)) as app, sdk(app) as client:
        answer = await client.chat.completions.create(
            model="medium",
            messages=[{"role": "user", "content": "find kb labs"}],
            tools=tools,
            tool_choice={"type": "function", "function": {"name": "lookup"}},
        )
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls"
        [call] = choice.message.tool_calls or []
        assert call.id == "call_7" and call.function.name == "lookup"  # type: ignore[union-attr]
        assert json.loads(call.function.arguments) == {"q": "kb labs"}  # type: ignore[union-attr]
        seen = openai_server.requests("chat")[0].body
        assert seen["model"] == "base-model"  # medium has no tier entry: the adapter's model
        assert seen["tools"][0]["function"]["name"] == "lookup"
        assert seen["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
        # the tool's answer goes back in OpenAI's shape and reaches the server the same way
        await client.chat.completions.create(
            model="medium",
            messages=[
                {"role": "user", "content": "find kb labs"},
                choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]
                {"role": "tool", "tool_call_id": "call_7", "content": "a platform"},
            ],
            tools=tools,
        )
        sent = openai_server.requests("chat")[1].body["messages"]
        assert sent[1]["tool_calls"][0]["function"]["arguments"] == '{"q": "kb labs"}'
        assert sent[2] == {"role": "tool", "content": "a platform", "tool_call_id": "call_7"}


async def test_chat_completions_errors_in_openai_shape(
    project: Path, openai_server: OpenAIServer
) -> None:
    openai_server.script("chat", error(401, "bad key"), completion("slow").after(5))
    config = config_for(openai_server)
    config["platform"]["adapterOptions"]["llm"]["timeoutMs"] = 300
    async with running_app(project, config) as app, sdk(app) as client:
        with pytest.raises(openai.AuthenticationError) as auth:
            await client.chat.completions.create(
                model="small", messages=[{"role": "user", "content": "x"}]
            )
        assert auth.value.code == "llm_auth_failed"
        assert "HTTP 401" in auth.value.message
        with pytest.raises(openai.InternalServerError) as late:
            await client.chat.completions.create(
                model="small", messages=[{"role": "user", "content": "x"}]
            )
        assert late.value.status_code == 504 and late.value.code == "llm_timeout"
        assert "did not answer within 300 ms" in late.value.message
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(model="small", messages=[])
        assert bad.value.param == "messages"
        assert len(openai_server.requests("chat")) == 2
        failed = await events(app, "llm.completion.failed")
    assert {e["payload"]["error"]["code"] for e in failed} == {"LLM_AUTH_FAILED", "LLM_TIMEOUT"}


# --- /platform/v1 ------------------------------------------------------------------------------


async def test_platform_llm(project: Path, openai_server: OpenAIServer) -> None:
    async with running_app(project, config_for(openai_server)) as app:
        done = await platform(
            app, "llm/complete", "ping", {"maxTokens": 5, "metadata": {"tier": "large"}}
        )
        assert done.status_code == 200, done.text
        result = done.json()["result"]
        assert result["content"] == "echo: ping" and result["model"] == "big-model"
        assert (
            result["usage"]["totalTokens"]
            == result["usage"]["promptTokens"] + result["usage"]["completionTokens"]
        )
        assert openai_server.requests("chat")[0].body["max_tokens"] == 5
        # stream: one answer as JSON, or SSE chunks for a client that asks for them
        plain = await platform(app, "llm/stream", "one two")
        assert plain.json()["result"]["content"] == "echo: one two"
        sse = await app.client.post(
            "/platform/v1/llm/stream",
            json={"args": ["one two"]},
            headers={**app.auth, "Accept": "text/event-stream"},
        )
        assert sse.headers["content-type"].startswith("text/event-stream")
        data = [line.removeprefix("data: ") for line in sse.text.splitlines() if line]
        assert data[-1] == "[DONE]"
        assert "".join(json.loads(d) for d in data[:-1]) == "echo: one two"
        # tools
        openai_server.script("chat", tool_call("add", {"a": 1, "b": 2}, call_id="c1"))
        tools = await platform(
            app,
            "llm/chatWithTools",
            [{"role": "user", "content": "1+2"}],
            {"tools": [{"name": "add", "description": "adds", "inputSchema": {"type": "object"}}]},
        )
        assert tools.json()["result"]["toolCalls"] == [
            {"id": "c1", "name": "add", "input": {"a": 1, "b": 2}}
        ]
        assert tools.json()["result"]["stopReason"] == "tool_use"
        # an adapter error keeps its code and status
        openai_server.script("chat", error(400, "nope"))
        failed = await platform(app, "llm/complete", "x")
        assert failed.status_code == 502 and failed.json()["error"]["code"] == "LLM_ERROR"
        # a rate limit that outlasts the retries: 429 with the server's Retry-After
        limited = {"retry-after-ms": "5"}
        openai_server.script("chat", *[error(429, "quota", headers=limited) for _ in range(4)])
        throttled = await platform(app, "llm/complete", "x")
        assert throttled.status_code == 429 and throttled.headers["retry-after"] == "1"
        assert throttled.json()["error"]["code"] == "LLM_RATE_LIMITED"
        bad = await platform(app, "llm/complete", 42)
        assert bad.status_code == 400 and "args[0] (prompt)" in bad.json()["error"]["message"]
        # events of the platform API are in the caller's namespace too
        assert len(await events(app, "llm.completion.completed")) >= 2


async def test_platform_embeddings_and_vector_store(
    project: Path, openai_server: OpenAIServer
) -> None:
    config = config_for(openai_server, adapters={"vectorStore": "qdrant"})
    async with running_app(project, config) as app:
        one = await platform(app, "embeddings/embed", "alpha")
        assert one.status_code == 200, one.text
        assert len(one.json()["result"]) == 8
        many = (await platform(app, "embeddings/embedBatch", ["alpha", "beta"])).json()["result"]
        assert [len(v) for v in many] == [8, 8]
        assert max(abs(a - b) for a, b in zip(many[1], vector("beta", 8), strict=True)) < 1e-6
        records = [
            {"id": "a", "vector": many[0], "metadata": {"kind": "x"}},
            {"id": "b", "vector": many[1], "metadata": {"kind": "y"}},
        ]
        upsert = await platform(app, "vectorStore/upsert", records, collection="docs")
        assert upsert.status_code == 200, upsert.text
        count = await platform(app, "vectorStore/count", collection="docs")
        assert count.json()["result"] == 2
        found = await platform(app, "vectorStore/search", many[1], 1, collection="docs")
        assert [m["id"] for m in found.json()["result"]] == ["b"]
        # another namespace sees nothing of it
        other = await operator_in(app, "team-a")
        elsewhere = await app.client.post(
            "/platform/v1/vectorStore/count",
            json={"args": [], "collection": "docs"},
            headers=other,
        )
        assert elsewhere.json()["result"] == 0
        # usage is charged to the caller's namespace, for adapters that take none too
        embedded = await app.client.post(
            "/platform/v1/embeddings/embed", json={"args": ["theirs"]}, headers=other
        )
        assert embedded.status_code == 200, embedded.text
        assert len(await events(app, "embeddings.embed.completed", "team-a")) == 1
        assert len(await events(app, "embeddings.embed.completed")) == 2
        deleted = await platform(app, "vectorStore/delete", ["a"], collection="docs")
        assert deleted.status_code == 200
        assert (await platform(app, "vectorStore/count", collection="docs")).json()["result"] == 1


async def test_platform_storage_analytics_and_event_bus(project: Path) -> None:
    async with running_app(project, config_for(None)) as app:
        assert (await platform(app, "storage/write", "notes/a.txt", "hello")).json()["result"]
        assert (await platform(app, "storage/read", "notes/a.txt")).json()["result"] == "hello"
        assert (await platform(app, "storage/exists", "notes/a.txt")).json()["result"] is True
        assert (await platform(app, "storage/list", "notes")).json()["result"] == ["notes/a.txt"]
        binary = await platform(app, "storage/write", "b.bin", "AAEC/w==", {"encoding": "base64"})
        assert binary.status_code == 200
        as_text = await platform(app, "storage/read", "b.bin")
        assert as_text.status_code == 422 and as_text.json()["error"]["code"] == "STORAGE_NOT_TEXT"
        raw = await platform(app, "storage/read", "b.bin", {"encoding": "base64"})
        assert raw.json()["result"] == "AAEC/w=="
        escape = await platform(app, "storage/read", "../../etc/passwd")
        assert escape.status_code == 400
        # the namespace's files are its own
        other = await operator_in(app, "team-a")
        theirs = await app.client.post(
            "/platform/v1/storage/read", json={"args": ["notes/a.txt"]}, headers=other
        )
        assert theirs.json()["result"] is None
        assert (await platform(app, "storage/delete", "notes/a.txt")).json()["result"] is True

        # analytics: in the caller's namespace
        tracked = await platform(
            app, "analytics/track", "deploy.done", {"env": "prod"}, {"runId": "r1"}
        )
        assert tracked.json()["result"] is True
        page = (await platform(app, "analytics/getEvents", {"type": "deploy.done"})).json()
        assert [e["payload"] for e in page["result"]["events"]] == [{"env": "prod"}]
        assert page["result"]["events"][0]["runId"] == "r1"
        stats = (await platform(app, "analytics/getStats", {"type": "deploy.done"})).json()
        assert stats["result"]["totalEvents"] == 1
        theirs = await app.client.post(
            "/platform/v1/analytics/getEvents",
            json={"args": [{"type": "deploy.done"}]},
            headers=other,
        )
        assert theirs.json()["result"]["total"] == 0
        bad = await platform(app, "analytics/getEvents", {"from": "yesterday"})
        assert bad.status_code == 400 and "ISO-8601" in bad.json()["error"]["message"]
        await platform(app, "storage/read", "notes/a.txt")  # a usage event of storage
        daily = await platform(app, "analytics/getDailyStats", {"adapter": "storage"})
        assert daily.status_code == 200, daily.text
        buckets = daily.json()["result"]["buckets"]
        assert sum(bucket["calls"] for bucket in buckets) >= 1
        nameless = await platform(app, "analytics/getDailyStats", {})
        assert nameless.status_code == 400 and "adapter" in nameless.json()["error"]["message"]
        missing = await platform(app, "analytics/identify", "u1")
        assert missing.status_code == 501
        assert missing.json()["error"]["code"] == "METHOD_NOT_IMPLEMENTED"

        # event bus: published under the caller's namespace
        received: list[tuple[str, Any]] = []
        bus = app.app.state.runtime.adapters.get("eventBus")
        bus.subscribe("default:build.*", lambda topic, event: received.append((topic, event)))
        published = await platform(app, "eventBus/publish", "build.finished", {"ok": True})
        assert published.json()["result"] is True
        assert received == [("default:build.finished", {"ok": True})]
        subscribe = await platform(app, "eventBus/subscribe", "x")
        assert subscribe.status_code == 501

        # the allowlist and unconfigured adapters are unchanged
        assert (await platform(app, "llm/complete", "hi")).json()["error"]["code"] == (
            "ADAPTER_UNAVAILABLE"
        )
        assert (await platform(app, "embeddings/embed", "hi")).status_code == 503
        assert (await platform(app, "storage/rename", "a")).status_code == 403


async def test_telemetry_ingest(project: Path) -> None:
    async with running_app(project, config_for(None)) as app:
        other = await operator_in(app, "team-a")
        response = await app.client.post(
            "/telemetry/v1/ingest",
            json={
                "events": [
                    {
                        "source": "kb-cli",
                        "type": "cli.command.run",
                        "timestamp": "2026-01-02T03:04:05Z",
                        "payload": {"command": "status"},
                        "tags": {"version": "1.2.3", "os": "linux"},
                    },
                    {"source": "kb-cli", "type": "cli.command.run"},
                ]
            },
            headers=other,
        )
        assert response.status_code == 200, response.text
        assert response.json() == {"ok": True, "accepted": 2, "rejected": 0}
        stored = await events(app, "cli.command.run", namespace="team-a")
        assert await events(app, "cli.command.run") == []  # not in the default namespace
    assert len(stored) == 2
    dated = next(e for e in stored if e["payload"] == {"command": "status"})
    assert dated["source"] == {"product": "kb-cli", "version": "1.2.3"}
    assert dated["ts"] == "2026-01-02T03:04:05.000Z"
    assert dated["ctx"]["tags"] == {"version": "1.2.3", "os": "linux"}


async def test_telemetry_ingest_without_analytics(project: Path) -> None:
    async with running_app(project, config_for(None, adapters={"analytics": None})) as app:
        response = await app.client.post(
            "/telemetry/v1/ingest",
            json={"events": [{"source": "cli", "type": "x"}]},
            headers=app.auth,
        )
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "ANALYTICS_UNAVAILABLE"
        unavailable = await platform(app, "analytics/track", "x")
        assert unavailable.status_code == 503
