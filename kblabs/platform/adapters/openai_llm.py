"""llm → "openai": any OpenAI-compatible chat completions endpoint, through the openai SDK.

Built only when configured; with `platform.adapters.llm` absent (or null) there is no
LLM adapter, `use_llm()` returns None and `/llm/v1/chat/completions` answers 503. An
`OPENAI_API_KEY` in the environment does not switch it on by itself (explicit is
better than implicit: a key on the machine must not start sending prompts out):

    "platform": {
      "adapters": {"llm": "openai"},
      "adapterOptions": {"llm": {
        "apiKey": "${OPENAI_API_KEY}",         // default: env OPENAI_API_KEY (or .env)
        "baseUrl": "http://127.0.0.1:11434/v1", // default: env OPENAI_BASE_URL, else OpenAI
        "model": "gpt-4o-mini",                // the model when no tier maps elsewhere
        "temperature": 0.7,
        "timeoutMs": 60000,                    // per attempt, whole request
        "maxRetries": 3,                       // 429, 5xx, connection errors
        "tiers": {"small": "gpt-4o-mini", "large": [{"model": "gpt-4o", "priority": 1}]},
        "defaultTier": "medium",
        "pricing": {"gpt-4o-mini": {"promptPer1M": 0.15, "completionPer1M": 0.6}}
      }}
    }

Without an API key the adapter starts only for a custom `baseUrl` (local servers need
none); for OpenAI itself the start fails with a message that says where to put the key.

Calls: `complete(prompt, opts)`, `stream(prompt, opts)` (text chunks), `chat(messages,
opts)`, `stream_chat(messages, opts)`, `chat_with_tools(messages, opts)` (opts `tools
[{name, description, input_schema}]`, `tool_choice` auto|required|none|{function:
{name}}; the answer adds `tool_calls [{id, name, input}]` and `stop_reason`
end_turn|tool_use|max_tokens|content_filter) and `get_protocol_capabilities()`.
`opts.metadata.tier` (and `.capabilities`) pick the model through
kblabs.platform.llm_router; an explicit `opts.model` wins.

Retries and errors: kblabs.platform.adapters.openai_common (LLM_TIMEOUT 504,
LLM_RATE_LIMITED 429, LLM_AUTH_FAILED 401, LLM_ERROR 502).

Usage: every call records one analytics event through the analytics adapter (when
there is one; its failure never fails the call): `llm.completion.completed` (complete,
chat), `llm.chatWithTools.completed` or `llm.stream.completed`; a failed call records
the same name ending in `.failed` (`llm.completion.failed`…) with `error {code, message,
status}`. Payload: operation (complete, chat, chatWithTools, stream), model, tier,
requestedTier, provider "openai", baseUrl (no credentials), host, promptTokens,
completionTokens, totalTokens, costUsd (null for a model without `pricing`),
durationMs, retries, retryWaitMs; a stream whose server sent no usage gets
ceil(characters / 4) estimates and `estimated: true` (so does any answer without usage;
`aborted: true` marks a stream whose caller stopped reading early). The
event's namespace is `metadata.namespaceId` (the gateway sets the caller's), else the
running plugin's tenant, else "default".
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from pydantic import AliasChoices, Field

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
from kblabs.platform.interfaces import LLMResponse, LLMUsage
from kblabs.platform.llm_router import LLMRouter, Resolution, Tier
from kblabs.platform.options import AdapterOptions, parse_options

PROVIDER = "openai"
# operation → the middle of its analytics event names (llm.<this>.completed|failed)
EVENT_OF = {
    "complete": "completion",
    "chat": "completion",
    "chatWithTools": "chatWithTools",
    "stream": "stream",
}
STOP_REASONS = {
    "stop": "end_turn",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "length": "max_tokens",
    "content_filter": "content_filter",
}


class TierEntryOptions(AdapterOptions):
    model: str = Field(min_length=1)
    priority: float | None = None
    capabilities: list[str] = Field(default_factory=list)


class ModelPrice(AdapterOptions):
    prompt_per_1m: float = Field(ge=0, alias="promptPer1M")
    completion_per_1m: float = Field(ge=0, alias="completionPer1M")


class OpenAILLMOptions(AdapterOptions):
    api_key: str | None = None
    base_url: str | None = None
    model: str = Field(
        default="gpt-4o-mini",
        min_length=1,
        validation_alias=AliasChoices("model", "defaultModel"),
    )
    temperature: float = Field(default=0.7, ge=0, le=2)
    timeout_ms: int = Field(default=60_000, ge=1)
    max_retries: int = Field(default=3, ge=0, le=10)
    tiers: dict[Tier, str | list[str | TierEntryOptions]] = Field(
        default_factory=dict, validation_alias=AliasChoices("tiers", "tierMapping")
    )
    default_tier: Tier = "medium"
    pricing: dict[str, ModelPrice] = Field(default_factory=dict)


@dataclass
class LLMToolCallResponse(LLMResponse):
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # [{id, name, input}]
    stop_reason: str = "end_turn"


class OpenAILLM:
    """The adapter. Stateless per call apart from the SDK client's connection pool."""

    def __init__(
        self,
        options: OpenAILLMOptions,
        *,
        api_key: str | None,
        base_url: str,
        analytics: Any = None,
        backoff_base_s: float | None = None,
    ) -> None:
        self.options = options
        self.base_url = base_url
        self.endpoint = Endpoint("LLM", "the LLM", public_url(base_url))
        self.timeout_s = options.timeout_ms / 1000
        self.client = make_client(api_key, base_url, self.timeout_s)
        self.router = LLMRouter.from_config(
            options.model, options.tiers, options.default_tier, PROVIDER
        )
        self.analytics = analytics
        self._backoff: dict[str, float] = (
            {} if backoff_base_s is None else {"backoff_base_s": backoff_base_s}
        )
        self._warned: set[tuple[str | None, str]] = set()

    async def stop(self) -> None:
        await self.client.close()

    # --- router façade (ILLMRouter) ------------------------------------------------------

    def get_configured_tier(self) -> Tier:
        return self.router.get_configured_tier()

    def resolve(self, opts: Mapping[str, Any] | None = None) -> Resolution:
        opts = opts or {}
        return self.router.resolve(opts.get("tier"), opts.get("capabilities"))

    def resolve_adapter(self, opts: Mapping[str, Any] | None = None) -> dict[str, Any]:
        resolution = self.resolve(opts)
        return {"adapter": self, "model": resolution.model, "tier": resolution.tier}

    def has_capability(self, capability: str) -> bool:
        return self.router.has_capability(capability)

    def get_capabilities(self) -> list[str]:
        return self.router.get_capabilities()

    def get_protocol_capabilities(self) -> dict[str, Any]:
        return {"cache": {"supported": False}, "stream": {"supported": True}}

    # --- ILLM --------------------------------------------------------------------------

    async def complete(self, prompt: str, opts: Mapping[str, Any] | None = None) -> LLMResponse:
        return await self._chat(_prompt_messages(prompt), opts, "complete")

    async def chat(
        self, messages: Sequence[Mapping[str, Any]], opts: Mapping[str, Any] | None = None
    ) -> LLMResponse:
        return await self._chat(messages, opts, "chat")

    async def chat_with_tools(
        self, messages: Sequence[Mapping[str, Any]], opts: Mapping[str, Any] | None = None
    ) -> LLMToolCallResponse:
        response = await self._chat(messages, opts, "chatWithTools")
        assert isinstance(response, LLMToolCallResponse)
        return response

    def stream(self, prompt: str, opts: Mapping[str, Any] | None = None) -> AsyncIterator[str]:
        return self._stream(_prompt_messages(prompt), opts, "stream")

    def stream_chat(
        self, messages: Sequence[Mapping[str, Any]], opts: Mapping[str, Any] | None = None
    ) -> AsyncIterator[str]:
        return self._stream(messages, opts, "stream")

    # --- calls -------------------------------------------------------------------------

    def _route(self, opts: Mapping[str, Any] | None) -> tuple[Resolution, dict[str, Any]]:
        _check_execution(opts)
        resolution, options = self.router.route(opts)
        if resolution.warning:
            key = (resolution.requested_tier, resolution.tier)
            if key not in self._warned:  # once per pair, not once per call
                self._warned.add(key)
                logger.warning("llm: {}", resolution.warning)
        return resolution, options

    def _request(
        self, messages: Sequence[Mapping[str, Any]], options: Mapping[str, Any], tools: bool
    ) -> dict[str, Any]:
        converted = [to_openai_message(m) for m in messages]
        system = options.get("system_prompt") or options.get("systemPrompt")
        if system and not any(m.get("role") == "system" for m in converted):
            converted.insert(0, {"role": "system", "content": str(system)})
        temperature = options.get("temperature")
        request: dict[str, Any] = {
            "model": options["model"],
            "messages": converted,
            "temperature": self.options.temperature if temperature is None else temperature,
        }
        max_tokens = options.get("max_tokens", options.get("maxTokens"))
        if max_tokens is not None:
            request["max_tokens"] = int(max_tokens)
        if options.get("stop"):
            request["stop"] = options["stop"]
        if tools:
            specs = options.get("tools") or []
            if specs:
                request["tools"] = [to_openai_tool(t) for t in specs]
            choice = options.get("tool_choice", options.get("toolChoice"))
            if choice is not None:
                request["tool_choice"] = to_openai_tool_choice(choice)
        return request

    async def _chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        opts: Mapping[str, Any] | None,
        operation: str,
    ) -> LLMResponse:
        resolution, options = self._route(opts)
        with_tools = operation == "chatWithTools"
        request = self._request(messages, options, with_tools)
        stats = CallStats()
        try:
            completion = await with_retries(
                lambda: self.client.chat.completions.create(**request),
                endpoint=self.endpoint,
                max_retries=self.options.max_retries,
                timeout_s=self.timeout_s,
                stats=stats,
                **self._backoff,
            )
            response = _response(completion, request["model"], with_tools)
        except Exception as exc:
            error = to_kb_error(exc, self.endpoint, self.timeout_s, stats)
            await self._failed(operation, resolution, request["model"], options, stats, error)
            raise error from exc
        usage = response.usage
        estimated = getattr(completion, "usage", None) is None
        if estimated:  # a server that counts nothing: estimate, and say so
            usage = LLMUsage(
                prompt_tokens=estimate_tokens(_message_chars(request["messages"])),
                completion_tokens=estimate_tokens(len(response.content)),
            )
        payload = self._payload(operation, resolution, response.model, usage, stats)
        if estimated:
            payload["estimated"] = True
        await self._track(f"llm.{EVENT_OF[operation]}.completed", options, payload)
        return response

    async def _stream(
        self,
        messages: Sequence[Mapping[str, Any]],
        opts: Mapping[str, Any] | None,
        operation: str,
    ) -> AsyncIterator[str]:
        if _mode(opts, "stream") == "off":  # the caller wants one answer, not chunks
            response = await self._chat(messages, opts, "complete")
            yield response.content
            return
        resolution, options = self._route(opts)
        request = self._request(messages, options, tools=False)
        request.update(stream=True, stream_options={"include_usage": True})
        stats = CallStats()
        text: list[str] = []
        usage: Any = None
        model = request["model"]
        try:
            stream = await with_retries(
                lambda: self.client.chat.completions.create(**request),
                endpoint=self.endpoint,
                max_retries=self.options.max_retries,
                timeout_s=self.timeout_s,
                stats=stats,
                **self._backoff,
            )
        except Exception as exc:
            error = to_kb_error(exc, self.endpoint, self.timeout_s, stats)
            await self._failed(operation, resolution, model, options, stats, error)
            raise error from exc
        outcome = "aborted"  # until the server's stream ends or fails
        try:
            async for chunk in stream:
                model = getattr(chunk, "model", None) or model
                if getattr(chunk, "usage", None) is not None:
                    usage = chunk.usage
                for choice in chunk.choices or ():
                    piece = getattr(choice.delta, "content", None) if choice.delta else None
                    if piece:
                        text.append(piece)
                        yield piece
            outcome = "completed"
        except Exception as exc:
            outcome = "failed"
            error = to_kb_error(exc, self.endpoint, self.timeout_s, stats)
            await self._failed(operation, resolution, model, options, stats, error)
            raise error from exc
        finally:
            with contextlib.suppress(Exception):
                await stream.close()
            if outcome != "failed":  # failures were recorded above
                counted = (
                    _usage(usage)
                    if usage is not None
                    else LLMUsage(
                        prompt_tokens=estimate_tokens(_message_chars(request["messages"])),
                        completion_tokens=estimate_tokens(sum(len(t) for t in text)),
                    )
                )
                payload = self._payload(operation, resolution, model, counted, stats)
                if usage is None:
                    payload["estimated"] = True
                if outcome == "aborted":
                    payload["aborted"] = True  # the caller stopped reading
                await self._track(f"llm.{EVENT_OF[operation]}.completed", options, payload)

    # --- usage -------------------------------------------------------------------------

    def _payload(
        self,
        operation: str,
        resolution: Resolution,
        model: str,
        usage: LLMUsage,
        stats: CallStats,
    ) -> dict[str, Any]:
        prompt = int(usage.get("prompt_tokens", 0))
        completion = int(usage.get("completion_tokens", 0))
        return {
            "operation": operation,
            "model": model,
            "tier": resolution.tier,
            "requestedTier": resolution.requested_tier,
            "provider": PROVIDER,
            "baseUrl": self.endpoint.base_url,
            "host": self.endpoint.host,
            "promptTokens": prompt,
            "completionTokens": completion,
            "totalTokens": prompt + completion,
            "costUsd": self.cost_usd((model, resolution.model), prompt, completion),
            "durationMs": stats.duration_ms,
            "retries": stats.retries,
            "retryWaitMs": round(stats.waited_s * 1000, 3),
        }

    def cost_usd(self, models: Sequence[str | None], prompt: int, completion: int) -> float | None:
        """USD for the tokens, priced by the first of `models` (the model that answered,
        then the one asked for) found in `pricing`; None when none is."""
        for model in models:
            price = self.options.pricing.get(model) if model else None
            if price is not None:
                cost = (prompt * price.prompt_per_1m + completion * price.completion_per_1m) / 1e6
                return round(cost, 10)
        return None

    async def _failed(
        self,
        operation: str,
        resolution: Resolution,
        model: str,
        options: Mapping[str, Any],
        stats: CallStats,
        error: KbError,
    ) -> None:
        payload = self._payload(operation, resolution, model, LLMUsage(), stats)
        payload["error"] = {"code": error.code, "message": error.message, "status": error.status}
        await self._track(f"llm.{EVENT_OF[operation]}.failed", options, payload)

    async def _track(self, event: str, options: Mapping[str, Any], payload: dict[str, Any]) -> None:
        if self.analytics is None:
            return
        try:
            await self.analytics.track(event, payload, namespace_id=_namespace(options))
        except Exception as exc:  # analytics must never break the call
            logger.warning("llm: could not record {} in analytics: {}", event, exc)


# --- conversions ---------------------------------------------------------------------


def _prompt_messages(prompt: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}]


def to_openai_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """Our message ({role, content, tool_call_id?, tool_calls? [{id, name, input}]},
    camelCase accepted) → the chat completions shape."""
    role = message.get("role", "user")
    content = message.get("content")
    if role == "tool":
        call_id = message.get("tool_call_id", message.get("toolCallId")) or ""
        text = content if isinstance(content, str) else json.dumps(content)
        return {"role": "tool", "content": text, "tool_call_id": call_id}
    converted: dict[str, Any] = {"role": role, "content": content}
    calls = message.get("tool_calls", message.get("toolCalls"))
    if role == "assistant" and calls:
        converted["tool_calls"] = [
            {
                "id": call.get("id", ""),
                "type": "function",
                "function": {
                    "name": call.get("name", ""),
                    "arguments": json.dumps(call.get("input") or {}),
                },
            }
            for call in calls
        ]
    if content is None and role != "assistant":
        converted["content"] = ""
    return converted


def to_openai_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    schema = tool.get("input_schema", tool.get("inputSchema")) or {
        "type": "object",
        "properties": {},
    }
    function: dict[str, Any] = {"name": tool["name"], "parameters": schema}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def to_openai_tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return choice  # auto | required | none
    if isinstance(choice, Mapping):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else choice.get("name")
        if name:
            return {"type": "function", "function": {"name": name}}
    raise KbError(
        "VALIDATION_ERROR",
        f"tool_choice must be auto, required, none or {{function: {{name}}}}, not {choice!r}",
        400,
    )


def _usage(usage: Any) -> LLMUsage:
    counted = LLMUsage(
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
    )
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    if cached:
        counted["cache_read_tokens"] = int(cached)
    return counted


def _response(completion: Any, requested_model: str, with_tools: bool) -> LLMResponse:
    if not getattr(completion, "choices", None):
        raise KbError("LLM_ERROR", "the LLM answered without any choice", 502)
    choice = completion.choices[0]
    message = choice.message
    content = (message.content if message is not None else None) or ""
    model = getattr(completion, "model", None) or requested_model
    usage = _usage(completion.usage) if completion.usage is not None else LLMUsage()
    if not with_tools:
        return LLMResponse(content=content, model=model, usage=usage)
    calls: list[dict[str, Any]] = []
    for call in getattr(message, "tool_calls", None) or ():
        function = getattr(call, "function", None)
        if function is None:
            continue
        entry: dict[str, Any] = {"id": call.id, "name": function.name}
        try:
            parsed = json.loads(function.arguments or "{}")
            entry["input"] = parsed if isinstance(parsed, dict) else {"value": parsed}
        except json.JSONDecodeError as exc:
            logger.warning("llm: tool call {} has arguments that are not JSON", function.name)
            entry["input"] = {}
            entry["error"] = f"arguments are not valid JSON: {exc}"
            entry["rawArguments"] = function.arguments
        calls.append(entry)
    reason = choice.finish_reason or ("tool_calls" if calls else "stop")
    return LLMToolCallResponse(
        content=content,
        model=model,
        usage=usage,
        tool_calls=calls,
        stop_reason=STOP_REASONS.get(reason, reason),
    )


def estimate_tokens(characters: int) -> int:
    return math.ceil(characters / 4)


def _message_chars(messages: Sequence[Mapping[str, Any]]) -> int:
    total = 0
    for message in messages:
        content = message.get("content")
        total += len(content) if isinstance(content, str) else len(json.dumps(content or ""))
    return total


def _mode(opts: Mapping[str, Any] | None, what: str) -> str | None:
    execution = (opts or {}).get("execution") or {}
    section = execution.get(what) if isinstance(execution, Mapping) else None
    return section.get("mode") if isinstance(section, Mapping) else None


def _check_execution(opts: Mapping[str, Any] | None) -> None:
    if _mode(opts, "cache") == "require":
        raise KbError(
            "CACHE_NOT_SUPPORTED",
            "execution.cache.mode is 'require', but the openai LLM adapter has no "
            "prompt cache; use 'prefer' or 'bypass'",
            422,
        )


def _namespace(options: Mapping[str, Any]) -> str:
    metadata = options.get("metadata") or {}
    namespace = metadata.get("namespaceId") or metadata.get("tenantId")
    if namespace:
        return str(namespace)
    from kblabs.plugins.context import current_context

    handler = current_context()
    return str(getattr(handler, "tenant_id", None) or "default")


# --- factory -------------------------------------------------------------------------


def build(token: str, raw: Any, ctx: Any) -> OpenAILLM:
    """`BUILTINS["llm"]["openai"]`: options, key and URL from config or environment."""
    options = parse_options(OpenAILLMOptions, token, raw)
    base_url, api_key = resolve_endpoint(
        token, options.base_url, options.api_key, ctx.settings.project_root
    )
    return OpenAILLM(
        options, api_key=api_key, base_url=base_url, analytics=ctx.adapter("analytics")
    )


__all__ = [
    "LLMToolCallResponse",
    "OpenAILLM",
    "OpenAILLMOptions",
    "build",
]
