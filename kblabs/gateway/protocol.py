"""Host-agent protocol 1.0: every WebSocket message, as pydantic models.

Shared by the server (kblabs.gateway.hub) and the Python agent (kblabs.agent.client).
One JSON object per text frame, discriminated by `type`; unknown types are ignored by
both sides. See reference/gateway.md §6; our additions: `cancel{requestId, reason}` is
sent to the host when a call is abandoned, and pending calls fail at once with
HOST_DISCONNECTED when the socket closes.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

PROTOCOL_VERSION = "1.0"
SUPPORTED_VERSIONS = ("1.0",)
# Server-side timings are settings (`gateway.*`, kblabs.config.settings.GatewaySettings);
# these are the protocol's defaults, also used by the agent.
HELLO_TIMEOUT_S = 5.0
HEARTBEAT_INTERVAL_S = 30.0
RECONNECT_GRACE_S = 10.0
CAPABILITIES = ("filesystem", "git", "search", "shell", "execution", "editor-context")
# Routed to a host only when a caller names it explicitly (as in the original).
EXPLICIT_ONLY = ("search", "shell")
REVERSE_ADAPTERS = ("llm", "cache", "vectorStore", "embeddings", "storage", "state")


class Message(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class Hello(Message):
    type: Literal["hello"]
    protocol_version: str = Field(alias="protocolVersion")
    agent_version: str = Field(default="unknown", alias="agentVersion")
    host_id: str | None = Field(default=None, alias="hostId")
    name: str | None = None
    capabilities: list[str] = Field(default_factory=list)
    host_type: Literal["local", "cloud"] = Field(default="local", alias="hostType")
    workspaces: list[Any] = Field(default_factory=list)
    plugins: list[Any] = Field(default_factory=list)


class Connected(Message):
    type: Literal["connected"] = "connected"
    protocol_version: str = Field(default=PROTOCOL_VERSION, alias="protocolVersion")
    host_id: str = Field(alias="hostId")
    session_id: str = Field(alias="sessionId")


class Negotiate(Message):
    type: Literal["negotiate"] = "negotiate"
    supported_versions: list[str] = Field(
        default_factory=lambda: list(SUPPORTED_VERSIONS), alias="supportedVersions"
    )


class Heartbeat(Message):
    type: Literal["heartbeat"] = "heartbeat"


class Ack(Message):
    type: Literal["ack"] = "ack"


class Trace(Message):
    trace_id: str = Field(alias="traceId")
    span_id: str = Field(alias="spanId")
    parent_id: str | None = Field(default=None, alias="parentId")


class Call(Message):
    type: Literal["call"] = "call"
    request_id: str = Field(alias="requestId")
    adapter: str
    method: str
    args: list[Any] = Field(default_factory=list)
    trace: Trace | None = None
    timeout_ms: int | None = Field(default=None, alias="timeoutMs")


class Chunk(Message):
    type: Literal["chunk"] = "chunk"
    request_id: str = Field(alias="requestId")
    data: Any = None
    index: int = 0


class Result(Message):
    type: Literal["result"] = "result"
    request_id: str = Field(alias="requestId")
    done: bool = True


class ErrorBody(Message):
    code: str
    message: str
    retryable: bool = False
    details: Any = None


class Error(Message):
    type: Literal["error"] = "error"
    request_id: str = Field(alias="requestId")
    error: ErrorBody


class Cancel(Message):
    type: Literal["cancel"] = "cancel"
    request_id: str = Field(alias="requestId")
    reason: str = "cancelled"


class AdapterCall(Message):
    type: Literal["adapter:call"] = "adapter:call"
    request_id: str = Field(alias="requestId")
    adapter: str
    method: str
    args: list[Any] = Field(default_factory=list)
    timeout: int | None = None
    context: dict[str, Any] = Field(default_factory=dict)


class AdapterResponse(Message):
    type: Literal["adapter:response"] = "adapter:response"
    request_id: str = Field(alias="requestId")
    result: Any = None


class AdapterError(Message):
    type: Literal["adapter:error"] = "adapter:error"
    request_id: str = Field(alias="requestId")
    error: ErrorBody


AnyMessage = Annotated[
    Hello
    | Connected
    | Negotiate
    | Heartbeat
    | Ack
    | Call
    | Chunk
    | Result
    | Error
    | Cancel
    | AdapterCall
    | AdapterResponse
    | AdapterError,
    Field(discriminator="type"),
]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(AnyMessage)
KNOWN_TYPES = frozenset(
    (
        "hello",
        "connected",
        "negotiate",
        "heartbeat",
        "ack",
        "call",
        "chunk",
        "result",
        "error",
        "cancel",
        "adapter:call",
        "adapter:response",
        "adapter:error",
    )
)


class InvalidMessage(ValueError):
    pass


def parse(text: str | bytes) -> Message | None:
    """A known message, None for an unknown `type` (ignored by protocol), or
    InvalidMessage for anything malformed."""
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidMessage(f"not JSON: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise InvalidMessage("a message is a JSON object with a string `type`")
    if raw["type"] not in KNOWN_TYPES:
        return None
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:])
        raise InvalidMessage(f"invalid {raw['type']}: {where}: {first['msg']}") from None


def dump(message: Message) -> str:
    return message.model_dump_json(by_alias=True, exclude_none=True)
