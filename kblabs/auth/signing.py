"""The JWT signing secret: where it comes from, when to refuse it, signing, verifying.

Production takes GATEWAY_JWT_SECRET from the environment and refuses to start if it is
missing, shorter than 32 bytes or a known default. Development generates one into the
data dir (0600) and warns. A previous secret (GATEWAY_JWT_SECRET_PREVIOUS, or the
rotated-out dev file) still verifies tokens, so a rotation is not an outage: access
tokens live 15 minutes.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from loguru import logger

from kblabs.datadir import write_secret_file
from kblabs.errors import StartupError

ACCESS_TTL_S = 900
MIN_SECRET_BYTES = 32
SECRET_FILE = "jwt.secret"
PREVIOUS_FILE = "jwt.secret.previous"
KNOWN_DEFAULTS = frozenset(
    {
        "dev-insecure-secret-change-me",
        "change-me",
        "changeme",
        "secret",
        "your-secret-here",
        "supersecret",
        "jwt-secret",
    }
)


def key_id(secret: bytes) -> str:
    return hashlib.sha256(secret).hexdigest()[:12]


@dataclass(frozen=True)
class KeySet:
    current: bytes
    previous: tuple[bytes, ...] = ()

    def by_kid(self) -> dict[str, bytes]:
        return {key_id(k): k for k in (self.current, *self.previous)}


def load_keys(data_dir: Path, environ: Mapping[str, str], production: bool) -> KeySet:
    configured = environ.get("GATEWAY_JWT_SECRET") or environ.get("KB_JWT_SECRET")
    previous = environ.get("GATEWAY_JWT_SECRET_PREVIOUS")
    if configured:
        _check_strength(configured)
        return KeySet(configured.encode(), (previous.encode(),) if previous else ())
    if production:
        raise StartupError(
            "auth",
            "GATEWAY_JWT_SECRET is not set; production needs a random secret of at least "
            "32 bytes (python -c 'import secrets; print(secrets.token_urlsafe(48))')",
        )
    return _development_keys(data_dir, previous)


def _check_strength(secret: str) -> None:
    if secret.strip().lower() in KNOWN_DEFAULTS:
        raise StartupError("auth", "GATEWAY_JWT_SECRET is a well-known default; set a random one")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise StartupError(
            "auth",
            f"GATEWAY_JWT_SECRET is {len(secret.encode())} bytes; at least "
            f"{MIN_SECRET_BYTES} random bytes are required",
        )


def _development_keys(data_dir: Path, previous_env: str | None) -> KeySet:
    path = data_dir / SECRET_FILE
    if write_secret_file(path, secrets.token_urlsafe(48)):
        logger.warning(
            "development: generated a JWT signing secret in {} (set GATEWAY_JWT_SECRET in "
            "production)",
            path,
        )
    previous = [previous_env.encode()] if previous_env else []
    previous_path = data_dir / PREVIOUS_FILE
    if previous_path.is_file():
        previous.append(previous_path.read_text().strip().encode())
    return KeySet(path.read_text().strip().encode(), tuple(previous))


def rotate_development_secret(data_dir: Path) -> None:
    """New dev secret; the old one moves to jwt.secret.previous and keeps verifying."""
    path = data_dir / SECRET_FILE
    previous_path = data_dir / PREVIOUS_FILE
    if path.is_file():
        previous_path.unlink(missing_ok=True)
        write_secret_file(previous_path, path.read_text().strip())
        path.unlink()
    write_secret_file(path, secrets.token_urlsafe(48))


class Signer:
    def __init__(self, keys: KeySet) -> None:
        self.keys = keys
        self._by_kid = keys.by_kid()

    def issue(self, claims: dict[str, Any], ttl_s: int = ACCESS_TTL_S) -> str:
        now = int(time.time())
        payload = {
            **claims,
            "type": "access",
            "iat": now,
            "exp": now + ttl_s,
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode(
            payload,
            self.keys.current,
            algorithm="HS256",
            headers={"kid": key_id(self.keys.current)},
        )

    def verify(self, token: str) -> dict[str, Any] | None:
        """Claims of a valid access token, else None (bad signature, expired, `alg`
        other than HS256, unknown key, or not an access token)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        key = self._by_kid.get(str(header.get("kid", "")))
        if key is None or header.get("alg") != "HS256":
            return None
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["HS256"],
                options={"require": ["exp", "iat", "sub", "type", "jti"]},
            )
        except jwt.PyJWTError:
            return None
        return claims if claims.get("type") == "access" else None
