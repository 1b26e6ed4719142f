"""Generating credentials and hashing them for storage.

Every secret we hand out is 32 random bytes or more, so SHA-256 (not a slow password
hash) is the right way to store it; comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def same_digest(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and hmac.compare_digest(a, b)


def new_client_id() -> str:
    return "clt_" + secrets.token_hex(16)


def new_host_id() -> str:
    return "host_" + secrets.token_hex(12)


def new_namespace_id() -> str:
    return "ns_" + secrets.token_hex(16)


def new_key_id(prefix: str = "key_") -> str:
    return prefix + secrets.token_hex(8)


def new_client_secret() -> str:
    return "cs_" + secrets.token_urlsafe(32)


def new_refresh_token() -> str:
    return "rt_" + secrets.token_urlsafe(32)


def new_api_key() -> str:
    return "kbk_" + secrets.token_urlsafe(32)


def new_enrollment_token() -> str:
    return "kbe_" + secrets.token_urlsafe(24)


def utc_now() -> datetime:
    return datetime.now(UTC)


def aware(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)
