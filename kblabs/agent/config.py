"""The host agent's configuration file (``~/.kb/agent.json``) and the gateway URL policy.

The file holds the agent's client credentials, so it is written with mode 0600 through a
temporary file and an atomic rename; a file others can read is still loaded, with a
warning. ``KB_AGENT_CONFIG`` names another path (tests, several agents on one machine).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import stat
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kblabs.gateway.protocol import CAPABILITIES

CONFIG_ENV = "KB_AGENT_CONFIG"
DEFAULT_CONFIG_PATH = Path("~/.kb/agent.json")
DEFAULT_CAPABILITIES = ("filesystem", "git", "search", "execution")
SECRET_PATTERN = re.compile(r"^[A-Za-z0-9_\-+/=]{16,}$")
INSECURE_HOSTS = frozenset({"localhost", "host.docker.internal"})


class AgentConfigError(Exception):
    """The configuration file is missing, unreadable or invalid (CLI exit 2)."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


class InsecureUrlError(ValueError):
    """A gateway URL the URL policy refuses."""


class ShellSettings(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")
    enabled: bool = False
    timeout_ms: int = Field(default=30_000, alias="timeoutMs", ge=1, le=600_000)


class AgentConfig(BaseModel):
    """What `agent register` stores and `agent run` / `agent status` read."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    gateway_url: str = Field(alias="gatewayUrl", min_length=1)
    client_id: str = Field(alias="clientId", min_length=1)
    client_secret: str = Field(alias="clientSecret", min_length=16)
    host_id: str = Field(alias="hostId", min_length=1)
    namespace_id: str = Field(default="default", alias="namespaceId", min_length=1)
    name: str = Field(min_length=1, max_length=64)
    workspace_paths: list[str] = Field(alias="workspacePaths", min_length=1)
    capabilities: list[str] = Field(default_factory=lambda: list(DEFAULT_CAPABILITIES))
    shell: ShellSettings = Field(default_factory=ShellSettings)
    allow_insecure_ws: bool = Field(default=False, alias="allowInsecureWs")

    @field_validator("gateway_url")
    @classmethod
    def _gateway_url(cls, value: str) -> str:
        return normalize_gateway_url(value)

    @field_validator("workspace_paths")
    @classmethod
    def _workspaces(cls, value: list[str]) -> list[str]:
        for path in value:
            if not os.path.isabs(path):
                raise ValueError(f"workspace path must be absolute: {path}")
            if not os.path.isdir(path):
                raise ValueError(f"workspace path is not an existing directory: {path}")
        return value

    @field_validator("capabilities")
    @classmethod
    def _capabilities(cls, value: list[str]) -> list[str]:
        unknown = [c for c in value if c not in CAPABILITIES]
        if unknown:
            raise ValueError(f"unknown capabilities {unknown}; known: {', '.join(CAPABILITIES)}")
        return list(dict.fromkeys(value))

    @property
    def shell_enabled(self) -> bool:
        return self.shell.enabled and "shell" in self.capabilities

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


# --------------------------------------------------------------------------- the file


def config_path() -> Path:
    """``KB_AGENT_CONFIG`` or ``~/.kb/agent.json``."""
    override = os.environ.get(CONFIG_ENV)
    return Path(override).expanduser() if override else DEFAULT_CONFIG_PATH.expanduser()


def load_config(path: Path | None = None) -> AgentConfig:
    """The agent configuration; AgentConfigError says what is wrong and where."""
    path = path or config_path()
    try:
        info = path.stat()
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AgentConfigError(
            f"no agent configuration at {path}; run `python -m kblabs agent register` first"
            f" (or set {CONFIG_ENV})",
            path,
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AgentConfigError(f"cannot read {path}: {exc}", path) from None
    if stat.S_IMODE(info.st_mode) & 0o077:
        logger.warning(
            "{} is readable by other users (mode {:o}); it holds a client secret: chmod 600 {}",
            path,
            stat.S_IMODE(info.st_mode),
            path,
        )
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AgentConfigError(
            f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}); fix it or register again",
            path,
        ) from None
    if not isinstance(raw, dict):
        raise AgentConfigError(f"{path} must hold a JSON object", path)
    try:
        return AgentConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or '(file)'}: {error['msg']}"
            for error in exc.errors()
        )
        raise AgentConfigError(f"{path} is invalid: {problems}", path) from None


def save_config(config: AgentConfig, path: Path | None = None) -> Path:
    """Write the file atomically with mode 0600 (its folder 0700 when created)."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = json.dumps(config.to_json(), indent=2) + "\n"
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o600)  # whatever the umask did
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    return path


# --------------------------------------------------------------------------- URL policy


def normalize_gateway_url(url: str) -> str:
    """``http(s)://host[:port][/prefix]`` without a trailing slash; ws(s) becomes http(s)."""
    parts = urlsplit(url.strip())
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme not in ("http", "https"):
        raise ValueError(f"gateway URL must start with http://, https://, ws:// or wss://: {url}")
    if not parts.hostname:
        raise ValueError(f"gateway URL has no host: {url}")
    if parts.query or parts.fragment:
        raise ValueError(f"gateway URL must not have a query or fragment: {url}")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def is_private_host(host: str) -> bool:
    """Loopback, RFC 1918 (and IPv6 unique-local), localhost or host.docker.internal."""
    host = host.strip("[]").lower()
    if host in INSECURE_HOSTS or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return True
    if isinstance(address, ipaddress.IPv4Address):
        return any(
            address in ipaddress.ip_network(net)
            for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
        )
    return address in ipaddress.ip_network("fc00::/7")


def check_gateway_url(url: str, allow_insecure: bool = False) -> str:
    """The normalized URL, or InsecureUrlError for plain http/ws to a public host.

    TLS (https/wss) is always accepted; plain http/ws only for loopback, localhost,
    RFC 1918 addresses and host.docker.internal, unless ``allow_insecure``: the tokens
    and every tunnelled call would otherwise cross the network in clear text.
    """
    normalized = normalize_gateway_url(url)
    parts = urlsplit(normalized)
    if parts.scheme == "http" and not allow_insecure and not is_private_host(parts.hostname or ""):
        raise InsecureUrlError(
            f"refusing the unencrypted gateway URL {url}: plain http:// and ws:// are "
            "only allowed for localhost, loopback and private (RFC 1918) addresses. Use "
            "https://, or pass --allow-insecure-ws if you accept sending credentials "
            "in clear text"
        )
    return normalized


def websocket_url(gateway_url: str, path: str = "/hosts/connect") -> str:
    """http → ws, https → wss, with ``path`` appended to any prefix."""
    parts = urlsplit(gateway_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + path, "", ""))


def valid_secret(secret: str) -> bool:
    return bool(SECRET_PATTERN.match(secret))
