"""The local managed-identity endpoint: bearer tokens for the Key Vault emulator and the simulator.

Answers the App Service `IDENTITY_ENDPOINT`/`IDENTITY_HEADER` protocol (api-version 2019-08-01) that
azure-identity's ManagedIdentityCredential uses on App Service and Functions, and keeps every token
it issued with its audience and expiry, so the vault can check the tokens it is sent. With a signing
key, each token also carries its audience and expiry signed with that key (HMAC-SHA256), so another
process holding the key (the Azure OpenAI simulator of the local stack) can check a token offline,
as a service checks an Entra token's signature: `verify_signed_token`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from urllib.parse import parse_qsl

from devstack._http import QuietHandler

IDENTITY_API_VERSION = "2019-08-01"
IDENTITY_PATH = "/msi/token"
SYSTEM_ASSIGNED_CLIENT_ID = "11111111-1111-1111-1111-111111111111"


class IdentityEndpoint:
    """Issues bearer tokens to callers holding the identity header, and remembers each one it issued."""

    def __init__(self, *, identity_header: str, token_lifetime: int, signing_key: bytes | None) -> None:
        self.identity_header = identity_header
        self.token_lifetime = token_lifetime
        self._signing_key = signing_key
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[float, str]] = {}  # token -> (expires_on, resource)
        self._token_count = 0
        self._token_requests: list[dict[str, str]] = []

    def issued(self, token: str) -> tuple[float, str] | None:
        """The (expires_on, resource) of a token this endpoint issued, or None."""
        with self._lock:
            return self._tokens.get(token)

    @property
    def token_count(self) -> int:
        """How many tokens have been issued."""
        with self._lock:
            return self._token_count

    @property
    def token_requests(self) -> list[dict[str, str]]:
        """The query of every token request that got a token (resource, client_id, ...)."""
        with self._lock:
            return [dict(query) for query in self._token_requests]

    @property
    def issued_tokens(self) -> list[str]:
        """Every bearer token issued so far."""
        with self._lock:
            return list(self._tokens)

    def reset_counts(self) -> None:
        """Zero the token counter and forget token requests (the tokens stay valid)."""
        with self._lock:
            self._token_count = 0
            self._token_requests.clear()

    def handle(self, handler: QuietHandler) -> None:
        """Answer an App Service managed-identity token request (api-version 2019-08-01)."""
        if handler.command != "GET":
            handler.read_body()
            handler.send_json(405, {"statusCode": 405, "message": "Only GET is supported."})
            return
        raw_path, _, raw_query = handler.path.partition("?")
        handler.read_body()
        if raw_path.rstrip("/") != IDENTITY_PATH:
            handler.send_json(404, {"statusCode": 404, "message": "Not found."})
            return
        secret = handler.headers.get("X-IDENTITY-HEADER")
        if secret is None:
            handler.send_json(400, {"statusCode": 400, "message": "The X-IDENTITY-HEADER header is missing."})
            return
        if secret != self.identity_header:
            handler.send_json(401, {"statusCode": 401, "message": "The X-IDENTITY-HEADER header is not valid."})
            return
        query = dict(parse_qsl(raw_query))
        if query.get("api-version") != IDENTITY_API_VERSION:
            message = f"api-version must be {IDENTITY_API_VERSION}."
            handler.send_json(400, {"statusCode": 400, "message": message})
            return
        resource = query.get("resource")
        if not resource:
            handler.send_json(400, {"statusCode": 400, "message": "The resource parameter is required."})
            return
        expires_on = int(time.time()) + self.token_lifetime
        if self._signing_key is None:
            token = secrets.token_urlsafe(32)
        else:
            token = signed_token(self._signing_key, audience=resource, expires_on=expires_on)
        with self._lock:
            self._tokens[token] = (expires_on, resource)
            self._token_count += 1
            self._token_requests.append(query)
        handler.send_json(
            200,
            {
                "access_token": token,
                "expires_on": str(expires_on),  # App Service sends epoch seconds as a string
                "resource": resource,
                "token_type": "Bearer",
                "client_id": query.get("client_id") or SYSTEM_ASSIGNED_CLIENT_ID,
            },
        )


def signed_token(key: bytes, *, audience: str, expires_on: int) -> str:
    """A bearer token naming its audience and expiry, signed with `key`: `<claims>.<signature>`, base64url."""
    claims = json.dumps({"aud": audience, "exp": expires_on, "jti": secrets.token_hex(8)}, separators=(",", ":"))
    encoded = _base64url(claims.encode())
    return f"{encoded}.{_base64url(hmac.new(key, encoded.encode(), hashlib.sha256).digest())}"


def verify_signed_token(token: str, *, key: bytes, audience: str, now: float | None = None) -> bool:
    """Whether `token` was signed with `key` for `audience` (trailing `/` ignored) and has not expired."""
    encoded, _, signature = token.partition(".")
    expected = _base64url(hmac.new(key, encoded.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        return False
    try:
        claims = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except ValueError:
        return False
    if not isinstance(claims, dict) or not isinstance(claims.get("aud"), str):
        return False
    expires_on = claims.get("exp")
    if not isinstance(expires_on, int) or expires_on <= (time.time() if now is None else now):
        return False
    return claims["aud"].rstrip("/") == audience.rstrip("/")


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
