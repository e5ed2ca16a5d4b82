"""Entra ID tokens for Azure OpenAI, from the app's identity (`AZURE_OPENAI_AUTH=entra`).

The same `DefaultAzureCredential` path as the Key Vault read: the managed identity in Azure, the
identity endpoint of the local stack on a laptop. A token is reused until shortly before it expires;
`refresh(refused=...)` gets a fresh one after Azure OpenAI refused it. Concurrent callers that find
no usable token wait for one request, not one each.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from azure.core.exceptions import AzureError, ClientAuthenticationError

from shared.errors import TokenUnavailable

COGNITIVE_SERVICES_SCOPE = "https://cognitiveservices.azure.com/.default"
REFRESH_MARGIN_SECONDS = 300.0  # a token is replaced this long before it expires
TOKEN_RETRY_AFTER_SECONDS = 5.0
REFRESH_CLAIMS = '{"access_token":{"nbf":{"essential":true,"value":"%d"}}}'  # "a token issued from now on"


class TokenCredential(Protocol):
    """What we need of an azure-identity credential."""

    def get_token(self, *scopes: str, claims: str | None = None) -> object: ...


def default_credential() -> TokenCredential:
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


class TokenSource:
    """Gives a bearer token for the Cognitive Services audience, cached until it nearly expires."""

    def __init__(
        self,
        *,
        credential_factory: Callable[[], TokenCredential] = default_credential,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._credential_factory = credential_factory
        self._credential: TokenCredential | None = None  # created on first use, then kept
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_on = 0.0
        self.requests = 0  # tokens asked of the credential, successfully or not

    def get(self) -> str:
        token = self._token
        if token is not None and self._clock() < self._expires_on - REFRESH_MARGIN_SECONDS:
            return token
        with self._lock:
            if self._token is not None and self._clock() < self._expires_on - REFRESH_MARGIN_SECONDS:
                return self._token
            return self._fetch()

    def refresh(self, *, refused: str) -> str:
        """A token other than `refused`: asks for a new one unless another caller already has."""
        with self._lock:
            if self._token is not None and self._token != refused:
                return self._token
            return self._fetch(fresh=True)

    def _fetch(self, *, fresh: bool = False) -> str:
        """Ask the credential for a token (lock held); failures are never cached.

        `fresh`: azure-identity caches tokens itself; a claims challenge is what makes it, and MSAL's
        managed-identity client under it, ask the identity endpoint again for the refused token
        (msal `managed_identity.py`, `acquire_token_for_client`, `token_sha256_to_refresh`).
        """
        self.requests += 1
        try:
            if self._credential is None:
                self._credential = self._credential_factory()
            claims = REFRESH_CLAIMS % int(self._clock()) if fresh else None
            access = self._credential.get_token(COGNITIVE_SERVICES_SCOPE, claims=claims)
        except AzureError as err:
            transient = not isinstance(err, ClientAuthenticationError) or getattr(err, "status_code", None) is None
            raise TokenUnavailable(
                f"the app's identity could not get a token for {COGNITIVE_SERVICES_SCOPE} "
                f"({type(err).__name__}): check the managed identity (AZURE_CLIENT_ID)",
                transient=transient,
                retry_after=TOKEN_RETRY_AFTER_SECONDS,
            ) from err
        self._token = access.token  # type: ignore[attr-defined]
        self._expires_on = float(access.expires_on)  # type: ignore[attr-defined]
        return self._token
