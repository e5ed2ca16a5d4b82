"""Local Key Vault (secrets) emulator over real TLS, with an App Service managed-identity endpoint.

The vault speaks the challenge protocol azure-keyvault-secrets 4.x expects (401 + `WWW-Authenticate`
until a bearer token from the identity endpoint is sent), serves `GET/PUT /secrets/...`, counts
reads and can fail on purpose (outage, next-N failures, RBAC denial). The identity endpoint answers
the `IDENTITY_ENDPOINT`/`IDENTITY_HEADER` protocol (api-version 2019-08-01) that azure-identity's
ManagedIdentityCredential uses on App Service and Functions. `environ()` gives the settings that make
`SecretClient(url, DefaultAzureCredential(), verify_challenge_resource=False)` work unchanged.
With a `token_signing_key`, each token also carries its audience and expiry signed with that key
(HMAC-SHA256), so another process holding the key (the Azure OpenAI simulator of the local stack)
can check a token offline, as a service checks an Entra token's signature: `verify_signed_token`.
Run standalone with `python -m devstack.keyvault_emulator --port N --secret NAME=VALUE`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import ssl
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qsl, unquote

import trustme

from devstack._http import AppHandler, BackgroundServer, EmulatorServer, QuietHandler, serve_until_signalled

VAULT_RESOURCE = "https://vault.azure.net"
TENANT_ID = "00000000-0000-0000-0000-000000000000"
CHALLENGE = f'Bearer authorization="https://login.microsoftonline.com/{TENANT_ID}", resource="{VAULT_RESOURCE}"'
IDENTITY_API_VERSION = "2019-08-01"
IDENTITY_PATH = "/msi/token"
SYSTEM_ASSIGNED_CLIENT_ID = "11111111-1111-1111-1111-111111111111"
_SECRET_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
_ACCEPTED_AUDIENCES = frozenset({VAULT_RESOURCE, VAULT_RESOURCE + "/"})
_CONTENT_TYPE = "application/json; charset=utf-8"

_ERROR_CODES = {
    400: "BadParameter",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    429: "Throttled",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}
_FORBIDDEN_MESSAGE = (
    "Caller is not authorized to perform action on resource.\r\n"
    "If role assignments, deny assignments or role definitions were changed recently, "
    "please observe propagation time.\r\n"
    "Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'\r\n"
    "Assignment: (not found)\r\nDecisionReason: null\r\n"
)


def _kv_error(code: str, message: str, inner: str | None = None) -> dict[str, Any]:
    """Build a Key Vault error body."""
    error: dict[str, Any] = {"code": code, "message": message}
    if inner:
        error["innererror"] = {"code": inner}
    return {"error": error}


def system_ca_bundle(*, exclude: Path | None = None) -> Path | None:
    """Return the CA bundle this process trusts now (REQUESTS_CA_BUNDLE, SSL_CERT_FILE, certifi, OpenSSL)."""
    candidates = [os.environ.get("REQUESTS_CA_BUNDLE"), os.environ.get("SSL_CERT_FILE")]
    try:
        import certifi

        candidates.append(certifi.where())
    except ImportError:
        pass
    candidates.append(ssl.get_default_verify_paths().cafile)
    for candidate in candidates:
        if not candidate or not Path(candidate).is_file():
            continue
        path = Path(candidate).resolve()
        if exclude is None or path != exclude.resolve():  # never build on our own previous bundle
            return path
    return None


class KeyVaultEmulator:
    """Key Vault secrets API over HTTPS plus a managed-identity token endpoint, both on loopback."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        identity_port: int = 0,
        workdir: Path | None = None,
        identity_header: str | None = None,
        token_lifetime: int = 3600,
        token_signing_key: bytes | None = None,
    ) -> None:
        self.host = host
        self._token_signing_key = token_signing_key
        self.token_lifetime = token_lifetime
        self._identity_header = identity_header or secrets.token_urlsafe(24)
        self._lock = threading.Lock()
        self._secrets: dict[str, list[dict[str, Any]]] = {}  # lower-cased name -> versions, oldest first
        self._tokens: dict[str, tuple[float, str]] = {}  # token -> (expires_on, resource)
        self._reads: Counter[str] = Counter()
        self._token_count = 0
        self._token_requests: list[dict[str, str]] = []
        self._available = True
        self._denied = False
        self._faults: list[list[Any]] = []  # [status, drop, remaining]

        self.workdir = Path(tempfile.mkdtemp(prefix="kv-emulator-")) if workdir is None else Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if workdir is None:
            # Kept past stop() so clients still pointed at the bundle see "connection refused", not a missing file.
            weakref.finalize(self, shutil.rmtree, str(self.workdir), ignore_errors=True)
        ca = trustme.CA()
        server_cert = ca.issue_cert("127.0.0.1", "localhost")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_cert.configure_cert(context)
        self.ca_pem = self.workdir / "emulator-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_pem))
        self.ca_bundle = self.workdir / "ca-bundle.pem"
        base = system_ca_bundle(exclude=self.ca_bundle)
        base_pem = base.read_bytes() if base is not None else b""
        self.ca_bundle.write_bytes(base_pem.rstrip(b"\n") + b"\n" + ca.cert_pem.bytes())

        vault = EmulatorServer((host, port), AppHandler, app=self.handle_vault, ssl_context=context)
        identity = EmulatorServer((host, identity_port), AppHandler, app=self.handle_identity)
        self._vault = BackgroundServer(vault, "keyvault-emulator")
        self._identity = BackgroundServer(identity, "identity-emulator")

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """Return the vault's port."""
        return self._vault.port

    @property
    def identity_port(self) -> int:
        """Return the identity endpoint's port."""
        return self._identity.port

    @property
    def vault_url(self) -> str:
        """Return the KEY_VAULT_URL value (with trailing slash)."""
        return f"https://{self.host}:{self.port}/"

    @property
    def identity_endpoint(self) -> str:
        """Return the IDENTITY_ENDPOINT value."""
        return f"http://{self.host}:{self.identity_port}{IDENTITY_PATH}"

    @property
    def identity_header(self) -> str:
        """Return the IDENTITY_HEADER value."""
        return self._identity_header

    def environ(self) -> dict[str, str]:
        """Return the environment that points the function app (and the Azure SDK) at this emulator."""
        bundle = str(self.ca_bundle)
        return {
            "KEY_VAULT_URL": self.vault_url,
            "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE": "false",
            "IDENTITY_ENDPOINT": self.identity_endpoint,
            "IDENTITY_HEADER": self.identity_header,
            "REQUESTS_CA_BUNDLE": bundle,
            "SSL_CERT_FILE": bundle,
        }

    def start(self) -> Self:
        """Start both servers in background threads."""
        self._identity.start()
        self._vault.start()
        return self

    def stop(self) -> None:
        """Stop both servers and close their connections (a default workdir goes when the emulator is collected)."""
        self._vault.stop()
        self._identity.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- state and counters ----------------------------------------------------------------

    def set_secret(self, name: str, value: str) -> str:
        """Store a new version of a secret directly and return the version id."""
        if not _SECRET_NAME.match(name):
            raise ValueError(f"invalid Key Vault secret name {name!r}")
        return self._store(name, value, None, None)["version"]

    def read_count(self, name: str | None = None) -> int:
        """Return how many secret GETs succeeded, for one secret or in total."""
        with self._lock:
            return self._reads[name.lower()] if name is not None else sum(self._reads.values())

    @property
    def token_count(self) -> int:
        """Return how many tokens the identity endpoint has issued."""
        with self._lock:
            return self._token_count

    @property
    def token_requests(self) -> list[dict[str, str]]:
        """Return the query of every token request that got a token (resource, client_id, ...)."""
        with self._lock:
            return [dict(query) for query in self._token_requests]

    @property
    def issued_tokens(self) -> list[str]:
        """Return every bearer token the identity endpoint has issued (for leak searches)."""
        with self._lock:
            return list(self._tokens)

    def reset_counts(self) -> None:
        """Zero the read and token counters and forget token requests."""
        with self._lock:
            self._reads.clear()
            self._token_count = 0
            self._token_requests.clear()

    # --- faults ----------------------------------------------------------------------------

    def set_available(self, available: bool) -> None:
        """Answer 503 to every secrets request while unavailable."""
        with self._lock:
            self._available = available

    def fail_next(self, n: int = 1, *, status: int = 503, drop: bool = False) -> None:
        """Fail the next n secrets requests with `status`, or close their connections unanswered."""
        if n < 1:
            raise ValueError("n must be at least 1")
        with self._lock:
            self._faults.append([status, drop, n])

    def deny(self, denied: bool = True) -> None:
        """Answer 403 Forbidden to authenticated secrets requests, as for a missing RBAC role."""
        with self._lock:
            self._denied = denied

    # --- vault -----------------------------------------------------------------------------

    def _store(self, name: str, value: str, content_type: str | None, tags: Any) -> dict[str, Any]:
        """Append a secret version and return it."""
        now = int(time.time())
        record: dict[str, Any] = {"name": name, "version": uuid.uuid4().hex, "value": value, "created": now}
        if content_type is not None:
            record["contentType"] = content_type
        if isinstance(tags, dict):
            record["tags"] = tags
        with self._lock:
            self._secrets.setdefault(name.lower(), []).append(record)
        return record

    def _bundle(self, record: dict[str, Any]) -> dict[str, Any]:
        """Render a stored version as a SecretBundle."""
        bundle: dict[str, Any] = {
            "value": record["value"],
            "id": f"{self.vault_url}secrets/{record['name']}/{record['version']}",
            "attributes": {
                "enabled": True,
                "created": record["created"],
                "updated": record["created"],
                "recoveryLevel": "Recoverable+Purgeable",
                "recoverableDays": 90,
            },
        }
        for field in ("contentType", "tags"):
            if field in record:
                bundle[field] = record[field]
        return bundle

    def _vault_headers(self, extra: tuple[tuple[str, str], ...] = ()) -> list[tuple[str, str]]:
        """Return Key Vault's usual response headers."""
        return [
            ("Cache-Control", "no-cache"),
            ("x-ms-request-id", str(uuid.uuid4())),
            ("x-ms-keyvault-region", "westeurope"),
            ("x-ms-keyvault-service-version", "1.9.0.0"),
            *extra,
        ]

    def _send(self, handler: QuietHandler, status: int, payload: Any, extra: tuple[tuple[str, str], ...] = ()) -> None:
        """Send a Key Vault JSON response."""
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        handler.send_raw(status, body, self._vault_headers(extra), content_type=_CONTENT_TYPE)

    def verify_token(self, token: str, *, audience: str) -> bool:
        """Whether the identity endpoint issued `token` for `audience` and it has not expired."""
        with self._lock:
            issued = self._tokens.get(token)
        return issued is not None and issued[0] > time.time() and issued[1].rstrip("/") == audience.rstrip("/")

    def _authorized(self, handler: QuietHandler) -> str | None:
        """Return None for a valid bearer token, else the AKV message explaining the 401."""
        header = handler.headers.get("Authorization")
        if not header:
            return "AKV10000: Request is missing a Bearer or PoP token."
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "AKV10001: Unsupported authorization scheme."
        with self._lock:
            issued = self._tokens.get(token.strip())
        if issued is None:
            return "AKV10032: Invalid token: not issued by the trusted identity endpoint."
        expires_on, resource = issued
        if expires_on <= time.time():
            return "AKV10021: Token is expired."
        if resource not in _ACCEPTED_AUDIENCES:
            return f"AKV10022: Invalid audience. Expected {VAULT_RESOURCE}, found: {resource}."
        return None

    def _take_fault(self) -> tuple[int, bool] | None:
        """Return the (status, drop) fault for this secrets request, if any."""
        with self._lock:
            if not self._available:
                return 503, False
            if self._faults:
                entry = self._faults[0]
                entry[2] -= 1
                if entry[2] == 0:
                    self._faults.pop(0)
                return entry[0], entry[1]
        return None

    def handle_vault(self, handler: QuietHandler) -> None:
        """Answer one vault request: faults, then the challenge, then RBAC, then the secrets API."""
        method = handler.command
        raw_path = handler.path.partition("?")[0]  # api-version is accepted whatever its value
        body = handler.read_body()
        parts = [unquote(part) for part in raw_path.split("/")]
        is_secrets = len(parts) in (3, 4) and parts[0] == "" and parts[1] == "secrets"
        if is_secrets:
            fault = self._take_fault()
            if fault is not None:
                status, drop = fault
                if drop:
                    handler.drop_connection()
                    return
                message = "The service is temporarily unavailable." if status == 503 else "Simulated failure."
                self._send(handler, status, _kv_error(_ERROR_CODES.get(status, "InternalServerError"), message))
                return
        problem = self._authorized(handler)
        if problem is not None:
            self._send(handler, 401, _kv_error("Unauthorized", problem), (("WWW-Authenticate", CHALLENGE),))
            return
        if not is_secrets or not parts[2]:
            self._send(handler, 404, _kv_error("NotFound", "The requested resource was not found."))
            return
        if self._denied:
            self._send(handler, 403, _kv_error("Forbidden", _FORBIDDEN_MESSAGE, "ForbiddenByRbac"))
            return
        name = parts[2]
        if not _SECRET_NAME.match(name):
            self._send(handler, 400, _kv_error("BadParameter", f"The request URI contains an invalid name: {name}"))
            return
        if method == "GET":
            self._get_secret(handler, name, parts[3] if len(parts) == 4 else "")
        elif method == "PUT" and len(parts) == 3:
            self._put_secret(handler, name, body)
        else:
            self._send(handler, 405, _kv_error("BadParameter", f"The method {method} is not allowed here."))

    def _get_secret(self, handler: QuietHandler, name: str, version: str) -> None:
        """GET /secrets/{name}[/{version}]."""
        key = name.lower()
        with self._lock:
            versions = self._secrets.get(key, [])
            if version:
                found = next((record for record in versions if record["version"] == version), None)
            else:
                found = versions[-1] if versions else None
            if found is not None:
                self._reads[key] += 1
        if found is None:
            ident = f"{name}/{version}" if version else name
            message = (
                f"A secret with (name/id) {ident} was not found in this key vault. If you recently deleted this secret "
                "you may be able to recover it using the correct recovery command. For help resolving this "
                "issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
            )
            self._send(handler, 404, _kv_error("SecretNotFound", message))
            return
        self._send(handler, 200, self._bundle(found))

    def _put_secret(self, handler: QuietHandler, name: str, body: bytes) -> None:
        """PUT /secrets/{name}: store a new version."""
        try:
            request = json.loads(body) if body else None
        except ValueError:
            request = None
        if not isinstance(request, dict) or not isinstance(request.get("value"), str):
            self._send(handler, 400, _kv_error("BadParameter", "Property value is required and must be a string."))
            return
        record = self._store(name, request["value"], request.get("contentType"), request.get("tags"))
        self._send(handler, 200, self._bundle(record))

    # --- managed identity ------------------------------------------------------------------

    def handle_identity(self, handler: QuietHandler) -> None:
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
        if secret != self._identity_header:
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
        if self._token_signing_key is None:
            token = secrets.token_urlsafe(32)
        else:
            token = signed_token(self._token_signing_key, audience=resource, expires_on=expires_on)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until SIGINT/SIGTERM, printing one ready line with environ() as JSON."""
    parser = argparse.ArgumentParser(prog="python -m devstack.keyvault_emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--identity-port", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="where the CA bundle is written")
    parser.add_argument("--identity-header", default=None, help="the IDENTITY_HEADER secret (random if omitted)")
    parser.add_argument("--secret", action="append", default=[], metavar="NAME=VALUE", help="seed a secret")
    args = parser.parse_args(argv)
    emulator = KeyVaultEmulator(
        host=args.host,
        port=args.port,
        identity_port=args.identity_port,
        workdir=args.workdir,
        identity_header=args.identity_header,
    )
    for spec in args.secret:
        name, sep, value = spec.partition("=")
        if not sep:
            parser.error("--secret takes NAME=VALUE")
        emulator.set_secret(name, value)
    return serve_until_signalled(emulator, "keyvault-emulator", emulator.environ)


if __name__ == "__main__":
    sys.exit(main())
