"""Keeping the credential out of what upstream says back: the key wins over pass-through.

An upstream that echoes request headers (a wrong endpoint, a debugging proxy, a gateway's error page)
can put the api-key or a bearer token into its body, a redirect's `Location`, the content type or a
request id. Everything upstream sends is redacted with the credential of the request before it can
reach an answer, a record or a log line; text in which only a percent-decoded form holds the credential
is replaced whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote_plus

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 8  # shorter "secrets" would redact ordinary words; real keys and tokens are far longer


def request_secrets(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The credentials a request carries: its `api-key`, and the token of `Authorization: Bearer`."""
    found = []
    if api_key := headers.get("api-key"):
        found.append(api_key)
    authorization = headers.get("authorization") or headers.get("Authorization") or ""
    if authorization[:7].lower() == "bearer ":
        found.append(authorization[7:].strip())
    return tuple(secret for secret in found if len(secret) >= MIN_SECRET_LENGTH)


def redact_text(text: str, secrets: Sequence[str]) -> str:
    """`text` with every secret replaced; wholly replaced when only its percent-decoded form holds one."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if "%" in text or "+" in text:
        decoded = unquote_plus(text)
        if any(secret in decoded for secret in secrets):
            return REDACTED
    return text


def redact_json(value: Any, secrets: Sequence[str]) -> Any:
    """A parsed JSON value with every secret redacted from its strings, names and numbers' digits."""
    if not secrets:
        return value
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, dict):
        return {redact_text(name, secrets): redact_json(item, secrets) for name, item in value.items()}
    if isinstance(value, list):
        return [redact_json(item, secrets) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and any(secret in str(value) for secret in secrets):
        return REDACTED  # an all-digit key echoed as a number
    return value
