"""Local Key Vault (secrets) emulator over real TLS, with an App Service managed-identity endpoint.

The vault speaks the challenge protocol azure-keyvault-secrets 4.x expects (401 + `WWW-Authenticate`
until a bearer token from the identity endpoint is sent), serves `GET/PUT /secrets/...`, counts
reads and can fail on purpose (outage, next-N failures, RBAC denial). Beside it runs the
managed-identity endpoint that issues its tokens (`devstack/keyvault_identity.py`, optionally
signed: `signed_token`, `verify_signed_token`); its certificate and CA bundle come from
`devstack/keyvault_tls.py`. `environ()` gives the settings that make
`SecretClient(url, DefaultAzureCredential(), verify_challenge_resource=False)` work unchanged.
Run standalone with `python -m devstack.keyvault_emulator --port N --secret NAME=VALUE`.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import shutil
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
from urllib.parse import unquote

from devstack._http import AppHandler, BackgroundServer, EmulatorServer, QuietHandler
from devstack.keyvault_identity import IDENTITY_PATH, IdentityEndpoint, signed_token, verify_signed_token
from devstack.keyvault_tls import server_context
from devstack.processes import serve_until_signalled

# Imported from here by the tests and the stack.
__all__ = ["CHALLENGE", "KeyVaultEmulator", "signed_token", "verify_signed_token"]

VAULT_RESOURCE = "https://vault.azure.net"
TENANT_ID = "00000000-0000-0000-0000-000000000000"
CHALLENGE = f'Bearer authorization="https://login.microsoftonline.com/{TENANT_ID}", resource="{VAULT_RESOURCE}"'
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
        self.identity = IdentityEndpoint(
            identity_header=identity_header or secrets.token_urlsafe(24),
            token_lifetime=token_lifetime,
            signing_key=token_signing_key,
        )
        self._lock = threading.Lock()
        self._secrets: dict[str, list[dict[str, Any]]] = {}  # lower-cased name -> versions, oldest first
        self._reads: Counter[str] = Counter()
        self._available = True
        self._denied = False
        self._faults: list[list[Any]] = []  # [status, drop, remaining]

        self.workdir = Path(tempfile.mkdtemp(prefix="kv-emulator-")) if workdir is None else Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if workdir is None:
            # Kept past stop() so clients still pointed at the bundle see "connection refused", not a missing file.
            weakref.finalize(self, shutil.rmtree, str(self.workdir), ignore_errors=True)
        context, self.ca_pem, self.ca_bundle = server_context(self.workdir)

        vault = EmulatorServer((host, port), AppHandler, app=self.handle_vault, ssl_context=context)
        identity = EmulatorServer((host, identity_port), AppHandler, app=self.identity.handle)
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
        return self.identity.identity_header

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
        return self.identity.token_count

    @property
    def token_requests(self) -> list[dict[str, str]]:
        """Return the query of every token request that got a token (resource, client_id, ...)."""
        return self.identity.token_requests

    @property
    def issued_tokens(self) -> list[str]:
        """Return every bearer token the identity endpoint has issued (for leak searches)."""
        return self.identity.issued_tokens

    def reset_counts(self) -> None:
        """Zero the read and token counters and forget token requests."""
        with self._lock:
            self._reads.clear()
        self.identity.reset_counts()

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
        issued = self.identity.issued(token)
        return issued is not None and issued[0] > time.time() and issued[1].rstrip("/") == audience.rstrip("/")

    def _authorized(self, handler: QuietHandler) -> str | None:
        """Return None for a valid bearer token, else the AKV message explaining the 401."""
        header = handler.headers.get("Authorization")
        if not header:
            return "AKV10000: Request is missing a Bearer or PoP token."
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "AKV10001: Unsupported authorization scheme."
        issued = self.identity.issued(token.strip())
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
