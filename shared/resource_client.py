"""One Azure OpenAI resource as the cancel service uses it: its credential, and its upstream client.

Each resource of the allow-list (`default`, and the names of `AZURE_OPENAI_RESOURCES`) has its own
api-key cache or token, its own connection pool and its own pacing after a 429, so Key Vault is read
once per keyed resource per cache period, whatever the load, and one resource's trouble (or throttling)
does not hold another's connections (or callers).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from shared.api_key import ApiKeySource, OpenSecretReader, key_vault_secret_reader
from shared.entra_token import TokenSource
from shared.errors import KeyRefused
from shared.settings import API_KEY_AUTH, AZURE_OPENAI_AUTH, DEFAULT_RESOURCE, ENTRA_AUTH, ResourceSettings, Settings
from shared.upstream import CallTrace, UpstreamClient, UpstreamReply

logger = logging.getLogger(__name__)

KEYS_DISABLED_CODE = "AuthenticationTypeDisabled"  # Azure's answer to an api-key when key access is off
# The least built-in role that may cancel fine-tuning jobs (Cognitive Services OpenAI User may not).
OPENAI_ROLE = "Cognitive Services OpenAI Contributor"


class ResourceClient:
    """Cancels and reads jobs on one resource, with a fresh credential once when the first is refused."""

    def __init__(
        self,
        settings: Settings,
        resource: ResourceSettings,
        *,
        sleep: Callable[[float], None],
        clock: Callable[[], float] = time.monotonic,
        secret_reader: OpenSecretReader = key_vault_secret_reader,
    ) -> None:
        self.resource = resource
        self.credentials: ApiKeySource | TokenSource
        if resource.auth == ENTRA_AUTH:
            self.credentials = TokenSource()  # Key Vault is never read for this resource
        else:
            assert settings.key_vault_url is not None  # required while a resource uses an api-key
            self.credentials = ApiKeySource(
                vault_url=settings.key_vault_url,
                secret_name=resource.key_secret_name,
                cache_seconds=settings.secret_cache_seconds,
                verify_challenge_resource=settings.verify_challenge_resource,
                clock=clock,
                secret_reader=secret_reader,
            )
        self.upstream = UpstreamClient(settings, resource, sleep=sleep, clock=clock)
        # The jobs collection has a client and session of its own: a long listing never holds cancels' connections.
        # It shares the resource's pacer: Azure throttles the resource, whichever path is called.
        self._collection = UpstreamClient(settings, resource, pacer=self.upstream.pacer, sleep=sleep, clock=clock)

    def cancel_job(self, job_id: str, *, deadline: float, trace: CallTrace) -> UpstreamReply:
        """POST .../jobs/{id}/cancel."""
        return self._with_credential(lambda auth: self.upstream.cancel_job(job_id, auth, deadline=deadline, trace=trace))

    def get_job(self, job_id: str, *, deadline: float, trace: CallTrace) -> UpstreamReply:
        """GET .../jobs/{id}."""
        return self._with_credential(lambda auth: self.upstream.get_job(job_id, auth, deadline=deadline, trace=trace))

    def list_jobs_page(
        self, *, after: str | None, limit: int, deadline: float, trace: CallTrace
    ) -> UpstreamReply:
        """GET .../fine_tuning/jobs?limit=&after=: one page of jobs, newest first (the guard pages through them)."""
        query = {"limit": str(limit), **({"after": after} if after else {})}
        return self._with_credential(
            lambda auth: self._collection.list_jobs(auth, query=query, deadline=deadline, trace=trace)
        )

    def _with_credential(self, call: Callable[[Mapping[str, str]], UpstreamReply]) -> UpstreamReply:
        """Make the call; on 401/403 get a fresh api-key (Key Vault) or token and retry once."""
        secret = self.credentials.get()
        reply = call(self._auth_header(secret))
        if reply.status not in (401, 403):
            return reply
        if self.resource.auth == API_KEY_AUTH and _error_code(reply) == KEYS_DISABLED_CODE:
            raise KeyRefused(
                f"the Azure OpenAI resource {self.resource.endpoint} refuses api-keys (key access is "
                f"disabled): set {self._auth_setting}={ENTRA_AUTH} and give the app's identity the "
                f"'{OPENAI_ROLE}' role on the resource",
                status=reply.status,
                request_id=reply.request_id,
            )
        logger.info("Azure OpenAI refused the %s (%d); getting a fresh one", self._credential_name, reply.status)
        reply = call(self._auth_header(self.credentials.refresh(refused=secret)))
        if reply.status in (401, 403):
            raise KeyRefused(self._refused_message(reply.status), status=reply.status, request_id=reply.request_id)
        return reply

    @property
    def _auth_setting(self) -> str:
        """Where this resource's auth mode is set: AZURE_OPENAI_AUTH, or its entry's `auth`."""
        if self.resource.name == DEFAULT_RESOURCE:
            return AZURE_OPENAI_AUTH
        return f"\"auth\" of resource '{self.resource.name}' in AZURE_OPENAI_RESOURCES (or {AZURE_OPENAI_AUTH})"

    @property
    def _credential_name(self) -> str:
        return "api-key" if self.resource.auth == API_KEY_AUTH else "token"

    def _auth_header(self, secret: str) -> dict[str, str]:
        if self.resource.auth == ENTRA_AUTH:
            return {"Authorization": f"Bearer {secret}"}
        return {"api-key": secret}

    def _refused_message(self, status: int) -> str:
        if self.resource.auth == ENTRA_AUTH:
            return (
                f"Azure OpenAI refused the app's Entra ID token ({status}) even after a fresh one: the app's identity "
                f"needs the '{OPENAI_ROLE}' role on {self.resource.endpoint}"
            )
        return (
            f"Azure OpenAI refused the function's api-key ({status}) even after it was read again "
            f"from Key Vault secret '{self.resource.key_secret_name}': the secret must hold a current "
            f"key of {self.resource.endpoint}"
        )


def _error_code(reply: UpstreamReply) -> object:
    error = reply.body.get("error") if isinstance(reply.body, dict) else None
    return error.get("code") if isinstance(error, dict) else None
