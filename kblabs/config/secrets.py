"""Recognising secrets in configuration: redaction for display, refusal of literals."""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***REDACTED***"

# Keys whose values are hidden whenever config is shown (the original's list, + passwd).
_REDACT_WORDS = ("apikey", "secret", "password", "passwd", "token", "key", "credentials", "auth")
# Keys whose values must come from the environment in production. Narrower than the
# redaction list: "key" alone would catch harmless names such as "keyPrefix".
_SECRET_WORDS = ("apikey", "secret", "password", "passwd", "token", "credentials", "privatekey")

# scheme://user:password@host → the password part
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]+)(?=@)")

# Only `${VAR}` references (an empty default allowed): `${VAR:-sk-...}` carries a literal.
_ONLY_REFERENCES = re.compile(r"^(\s*\$\{[A-Za-z_][A-Za-z0-9_]*(:-)?\}\s*)+$")


def _normalise(key: str) -> str:
    return key.lower().replace("_", "").replace("-", "")


def is_redacted_key(key: str) -> bool:
    norm = _normalise(key)
    return any(word in norm for word in _REDACT_WORDS)


def is_secret_key(key: str) -> bool:
    norm = _normalise(key)
    return any(word in norm for word in _SECRET_WORDS)


def redact_url_password(text: str) -> str:
    return _URL_PASSWORD.sub(lambda m: m.group("head") + REDACTED, text)


def redact(value: Any, path: str = "", found: list[str] | None = None, secret: bool = False) -> Any:
    """Copy of `value` with secret-looking values replaced: every string under a
    secret-looking key (however deeply nested) and passwords inside URLs. `found` gets
    the paths that were changed."""
    if isinstance(value, dict):
        return {
            key: redact(
                item,
                f"{path}.{key}" if path else str(key),
                found,
                secret or is_redacted_key(str(key)),
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact(item, f"{path}[{i}]", found, secret) for i, item in enumerate(value)]
    if not isinstance(value, str) or not value:
        return value
    masked = REDACTED if secret else redact_url_password(value)
    if masked != value and found is not None:
        found.append(path)
    return masked


def literal_secrets(value: Any, path: str = "", secret: bool = False) -> list[str]:
    """Paths of strings under secret-looking keys that are literals, not `${VAR}`."""
    if isinstance(value, dict):
        hits: list[str] = []
        for key, item in value.items():
            item_path = f"{path}.{key}" if path else str(key)
            hits.extend(literal_secrets(item, item_path, secret or is_secret_key(str(key))))
        return hits
    if isinstance(value, list):
        # A list of objects under a secret-looking key (`staticTokens: [{token, role}]`):
        # each object's own keys decide; a list of strings inherits the key's secrecy.
        return [
            hit
            for i, item in enumerate(value)
            for hit in literal_secrets(item, f"{path}[{i}]", secret and not isinstance(item, dict))
        ]
    if secret and isinstance(value, str) and value.strip() and not _ONLY_REFERENCES.match(value):
        return [path]
    return []
