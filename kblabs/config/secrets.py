"""Recognising secrets in configuration: redaction for display, refusal of literals."""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***REDACTED***"

# Keys whose string values are hidden whenever config is shown (the original's list).
_REDACT_WORDS = ("apikey", "secret", "password", "token", "key", "credentials", "auth")
# Keys whose values must come from the environment in production. Narrower than the
# redaction list: "key" alone would catch harmless names such as "keyPrefix".
_SECRET_WORDS = ("apikey", "secret", "password", "passwd", "token", "credentials", "privatekey")

# scheme://user:password@host → the password part
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]+)(?=@)")

_ONLY_REFERENCES = re.compile(r"^(\s*\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}\s*)+$")


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


def redact(value: Any, path: str = "", found: list[str] | None = None) -> Any:
    """Copy of `value` with secret-looking string values replaced (and passwords inside
    URLs masked); `found` gets the paths."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            item_path = f"{path}.{key}" if path else str(key)
            if isinstance(item, str) and item and is_redacted_key(str(key)):
                out[key] = REDACTED
                if found is not None:
                    found.append(item_path)
            else:
                out[key] = redact(item, item_path, found)
        return out
    if isinstance(value, list):
        return [redact(item, f"{path}[{i}]", found) for i, item in enumerate(value)]
    if isinstance(value, str) and "://" in value:
        masked = redact_url_password(value)
        if masked != value and found is not None:
            found.append(path)
        return masked
    return value


def literal_secrets(value: Any, path: str = "") -> list[str]:
    """Paths of secret-looking keys holding a literal (not `${VAR}`) non-empty string."""
    hits: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            item_path = f"{path}.{key}" if path else str(key)
            if (
                isinstance(item, str)
                and item.strip()
                and is_secret_key(str(key))
                and not _ONLY_REFERENCES.match(item)
            ):
                hits.append(item_path)
            else:
                hits.extend(literal_secrets(item, item_path))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            hits.extend(literal_secrets(item, f"{path}[{i}]"))
    return hits
