"""The Azure OpenAI api-key, read from Key Vault with the app's identity and cached in memory.

Modelled on aws-powertools' parameter providers: the value is kept with its expiry, failures
are never cached, and `get(force_fetch=True)` / `refresh(refused=...)` re-read it. Concurrent
callers that find the cache empty wait for one Key Vault read instead of making one each, and
an expired value is still used while Key Vault is unreachable (CONTRACT section 7).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from shared.errors import ApiKeyUnavailable
from shared.retry import RETRYABLE_STATUSES

logger = logging.getLogger(__name__)

STALE_RETRY_SECONDS = 10.0  # while Key Vault is down, how often one caller tries it again
KEY_VAULT_RETRY_AFTER_SECONDS = 5.0  # advised to callers when no key can be had at all
KEY_VAULT_RETRIES = 2  # the SDK's own retries inside one read; our callers retry too
KEY_VAULT_CONNECT_TIMEOUT = 5
KEY_VAULT_READ_TIMEOUT = 10


class SecretReader(Protocol):
    """What we need of `azure.keyvault.secrets.SecretClient`."""

    def get_secret(self, name: str) -> object: ...


class OpenSecretReader(Protocol):
    """Opens the reader of one vault: `key_vault_secret_reader`, or a test's own."""

    def __call__(self, vault_url: str, *, verify_challenge_resource: bool) -> SecretReader: ...


def key_vault_secret_reader(vault_url: str, *, verify_challenge_resource: bool) -> SecretReader:
    """One `DefaultAzureCredential` and one `SecretClient`, the production path everywhere."""
    from azure.identity import DefaultAzureCredential
    from azure.keyvault.secrets import SecretClient

    return SecretClient(
        vault_url,
        DefaultAzureCredential(),
        verify_challenge_resource=verify_challenge_resource,
        retry_total=KEY_VAULT_RETRIES,
        connection_timeout=KEY_VAULT_CONNECT_TIMEOUT,
        read_timeout=KEY_VAULT_READ_TIMEOUT,
    )


class ApiKeySource:
    """Gives the api-key held in one Key Vault secret, cached for `cache_seconds`."""

    def __init__(
        self,
        *,
        vault_url: str,
        secret_name: str,
        cache_seconds: float,
        verify_challenge_resource: bool = True,
        clock: Callable[[], float] = time.monotonic,
        secret_reader: OpenSecretReader = key_vault_secret_reader,
    ) -> None:
        self.vault_url = vault_url
        self.secret_name = secret_name
        self._cache_seconds = cache_seconds
        self._verify_challenge_resource = verify_challenge_resource
        self._open_reader = secret_reader
        self._reader: SecretReader | None = None  # opened on first use, then kept
        self._clock = clock
        self._lock = threading.Lock()
        self._value: str | None = None
        self._expires_at = 0.0
        self.reads = 0  # Key Vault reads this source made, successful or not

    def get(self, *, force_fetch: bool = False) -> str:
        """The api-key; read from Key Vault when the cache is empty, expired or `force_fetch`."""
        value = self._value
        if value is not None and not force_fetch and self._clock() < self._expires_at:
            return value
        stale_allowed = value is not None and not force_fetch
        if not self._lock.acquire(blocking=not stale_allowed):
            # Another caller is reading Key Vault: the expired key serves meanwhile, rather than
            # every invocation queueing behind a read that may take seconds while the vault is down.
            return value  # type: ignore[return-value]
        try:
            if not force_fetch and self._value is not None and self._clock() < self._expires_at:
                return self._value  # another caller read it while we waited
            return self._fetch(allow_stale=not force_fetch)
        finally:
            self._lock.release()

    def refresh(self, *, refused: str) -> str:
        """A key other than `refused`: re-reads Key Vault unless another caller already has."""
        with self._lock:
            if self._value is not None and self._value != refused:
                return self._value
            return self._fetch(allow_stale=False)

    def clear_cache(self) -> None:
        with self._lock:
            self._value = None
            self._expires_at = 0.0

    def _fetch(self, *, allow_stale: bool) -> str:
        """Read the secret (lock held). On a transient failure, fall back to an expired value."""
        self.reads += 1
        try:
            if self._reader is None:
                self._reader = self._open_reader(
                    self.vault_url, verify_challenge_resource=self._verify_challenge_resource
                )
            value = getattr(self._reader.get_secret(self.secret_name), "value", None)
        except AzureError as err:
            failure = self._describe(err)
            if allow_stale and failure.transient and self._value is not None:
                logger.warning(
                    "Key Vault read failed (%s); using the api-key read earlier until it answers again",
                    failure.message,
                )
                self._expires_at = self._clock() + min(STALE_RETRY_SECONDS, self._cache_seconds or STALE_RETRY_SECONDS)
                return self._value
            raise failure from err
        if not value:
            raise ApiKeyUnavailable(
                self._where("holds no value"), transient=False, retry_after=KEY_VAULT_RETRY_AFTER_SECONDS
            )
        self._value = value
        self._expires_at = self._clock() + self._cache_seconds
        return value

    def _describe(self, err: AzureError) -> ApiKeyUnavailable:
        """An ApiKeyUnavailable saying what went wrong, never with a secret value in it."""
        status = getattr(err, "status_code", None)
        if isinstance(err, ResourceNotFoundError):
            reason, transient = "was not found (set it with az keyvault secret set)", False
        elif status == 403:
            reason, transient = "could not be read: access denied (the identity needs Key Vault Secrets User)", False
        elif isinstance(err, ClientAuthenticationError) and status is None:
            reason, transient = "could not be read: no token for the app's identity", True
        elif isinstance(err, (ServiceRequestError, ServiceResponseError)):
            reason, transient = "could not be read: Key Vault is unreachable", True
        elif isinstance(err, HttpResponseError) and status in RETRYABLE_STATUSES:
            reason, transient = f"could not be read: Key Vault answered {status}", True
        else:
            reason, transient = f"could not be read: Key Vault answered {status or type(err).__name__}", False
        return ApiKeyUnavailable(self._where(reason), transient=transient, retry_after=KEY_VAULT_RETRY_AFTER_SECONDS)

    def _where(self, reason: str) -> str:
        return f"the api-key secret '{self.secret_name}' in Key Vault {self.vault_url} {reason}"
