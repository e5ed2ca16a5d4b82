"""The ways to cancel a fine-tuning job that the benchmark compares, side by side.

A case is built once per process (untimed set-up) and gives each worker thread its own
`cancel(job_id)` callable, which raises `CancelFailed` unless the job came back cancelled:
a run that measured failures would mean nothing. Every case reads the same environment, the
app settings of CONTRACT section 1 pointed at the simulator and the Key Vault emulator.
Libraries are imported inside the cases, so a cold-start process imports only its own.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

API_VERSION = "2024-10-21"
CANCEL_ROUTE = "openai/fine_tuning/jobs/{job_id}/cancel"
DEFAULT_SECRET_NAME = "azure-openai-api-key"
COGNITIVE_SERVICES_SCOPE = "https://cognitiveservices.azure.com/.default"

Cancel = Callable[[str], None]


class CancelFailed(Exception):
    """A cancel did not end in HTTP 200 with the job cancelled."""


class Case(Protocol):
    """One way to cancel jobs."""

    def thread_cancel(self) -> Cancel:
        """A cancel callable for one thread (per-thread state such as a session is made here)."""
        ...


def _endpoint() -> str:
    return os.environ["AZURE_OPENAI_ENDPOINT"].rstrip("/")


def _secret_name() -> str:
    return os.environ.get("AZURE_OPENAI_KEY_SECRET_NAME") or DEFAULT_SECRET_NAME


def _verify_challenge_resource() -> bool:
    return os.environ.get("KEY_VAULT_VERIFY_CHALLENGE_RESOURCE", "true").lower() != "false"


def read_api_key_once() -> str:
    """The api-key from Key Vault, read once at start-up as a long-running client would."""
    from azure.identity import DefaultAzureCredential
    from azure.keyvault.secrets import SecretClient

    client = SecretClient(
        os.environ["KEY_VAULT_URL"], DefaultAzureCredential(), verify_challenge_resource=_verify_challenge_resource()
    )
    return client.get_secret(_secret_name()).value or ""


def _check_job(job: Any, where: str) -> None:
    status = job.get("status") if isinstance(job, dict) else getattr(job, "status", None)
    if status != "cancelled":
        raise CancelFailed(f"{where}: the job came back {status!r}, not cancelled")


class RawRequests:
    """The floor: a keep-alive `requests.Session` per thread, posting cancels and reading the job."""

    def __init__(self) -> None:
        self._api_key = read_api_key_once()
        self._jobs_url = _endpoint() + "/openai/fine_tuning/jobs/"

    def thread_cancel(self) -> Cancel:
        import requests

        session = requests.Session()
        params = {"api-version": API_VERSION}
        headers = {"api-key": self._api_key}

        def cancel(job_id: str) -> None:
            response = session.post(f"{self._jobs_url}{job_id}/cancel", params=params, headers=headers)
            if response.status_code != 200:
                raise CancelFailed(f"raw: HTTP {response.status_code}")
            _check_job(response.json(), "raw")

        return cancel


def cancel_handler() -> Callable[..., Any]:
    """The HTTP trigger's user function, found in `function_app.app` by route as the host indexes it."""
    import function_app

    for function in function_app.app.get_functions():
        for binding in function.get_bindings():
            if binding.type == "httpTrigger" and getattr(binding, "route", None) == CANCEL_ROUTE:
                return function.get_user_function()
    raise LookupError(f"function_app.app has no HTTP trigger on route {CANCEL_ROUTE}")


class OursHandler:
    """Our HTTP trigger, called in-process with a real `func.HttpRequest`; it writes its record to Azurite."""

    def __init__(self) -> None:
        import azure.functions as func

        self._http_request = func.HttpRequest
        self._function = cancel_handler()

    def thread_cancel(self) -> Cancel:
        def cancel(job_id: str) -> None:
            request = self._http_request(
                method="POST",
                url=f"http://localhost:7071/api/openai/fine_tuning/jobs/{job_id}/cancel",
                headers={},
                params={"api-version": API_VERSION},
                route_params={"job_id": job_id},
                body=b"",
            )
            response = self._function(req=request)  # the record goes to Azurite, as in Azure to Storage
            if response.status_code != 200:
                raise CancelFailed(f"ours: HTTP {response.status_code} {response.get_body()[:200]!r}")

        return cancel


class OursService:
    """The cancel service alone: `current_service().cancel(...)`, no trigger and no JSON out."""

    def __init__(self) -> None:
        from shared.cancel import current_service
        from shared.records import CancelRequest, Trigger

        self._current_service = current_service
        self._request = CancelRequest
        self._trigger = Trigger.HTTP

    def thread_cancel(self) -> Cancel:
        def cancel(job_id: str) -> None:
            record = self._current_service().cancel(self._request(job_id=job_id, trigger=self._trigger))
            if record.status_code != 200:
                raise CancelFailed(f"ours-service: {record.status_code} {record.error}")
            _check_job(record.job, "ours-service")

        return cancel


class OpenAISdk:
    """The official SDK: one `AzureOpenAI` client shared by every thread, key read once at start."""

    def __init__(self) -> None:
        from openai import AzureOpenAI

        self._client = AzureOpenAI(azure_endpoint=_endpoint(), api_key=read_api_key_once(), api_version=API_VERSION)

    def thread_cancel(self) -> Cancel:
        jobs = self._client.fine_tuning.jobs

        def cancel(job_id: str) -> None:
            _check_job(jobs.cancel(job_id), "sdk")

        return cancel


class NaiveScript:
    """What a quick script does: a new credential, SecretClient and `requests.post` for every cancel."""

    def __init__(self) -> None:
        import requests
        from azure.identity import DefaultAzureCredential
        from azure.keyvault.secrets import SecretClient

        self._post = requests.post
        self._credential = DefaultAzureCredential
        self._secret_client = SecretClient
        self._vault_url = os.environ["KEY_VAULT_URL"]
        self._jobs_url = _endpoint() + "/openai/fine_tuning/jobs/"

    def thread_cancel(self) -> Cancel:
        def cancel(job_id: str) -> None:
            client = self._secret_client(
                self._vault_url, self._credential(), verify_challenge_resource=_verify_challenge_resource()
            )
            api_key = client.get_secret(_secret_name()).value
            response = self._post(
                f"{self._jobs_url}{job_id}/cancel", params={"api-version": API_VERSION}, headers={"api-key": api_key}
            )
            if response.status_code != 200:
                raise CancelFailed(f"naive: HTTP {response.status_code}")
            _check_job(response.json(), "naive")

        return cancel


class NaiveEntraScript:
    """The naive script without a key: a new `DefaultAzureCredential` and token, then `requests.post`, per cancel."""

    def __init__(self) -> None:
        import requests
        from azure.identity import DefaultAzureCredential

        self._post = requests.post
        self._credential = DefaultAzureCredential
        self._jobs_url = _endpoint() + "/openai/fine_tuning/jobs/"

    def thread_cancel(self) -> Cancel:
        def cancel(job_id: str) -> None:
            token = self._credential().get_token(COGNITIVE_SERVICES_SCOPE).token
            response = self._post(
                f"{self._jobs_url}{job_id}/cancel",
                params={"api-version": API_VERSION},
                headers={"Authorization": f"Bearer {token}"},
            )
            if response.status_code != 200:
                raise CancelFailed(f"naive-entra: HTTP {response.status_code}")
            _check_job(response.json(), "naive-entra")

        return cancel


CASES: dict[str, Callable[[], Case]] = {
    "raw": RawRequests,
    "ours": OursHandler,
    "ours-service": OursService,
    "sdk": OpenAISdk,
    "naive": NaiveScript,
    "naive-entra": NaiveEntraScript,
}

DESCRIPTIONS = {
    "raw": "`requests.Session` keep-alive loop of cancel POSTs, one session per thread (the floor)",
    "ours": "the HTTP trigger's function from `function_app.app`, real `func.HttpRequest`, Key Vault cache warm",
    "ours-service": "`shared.cancel.current_service().cancel(...)` alone: no trigger, no response or record JSON",
    "sdk": "`AzureOpenAI(...).fine_tuning.jobs.cancel`, one client shared by all threads, key read once",
    "naive": "per cancel: new `DefaultAzureCredential`, new `SecretClient`, `get_secret`, `requests.post`",
    "naive-entra": "per cancel: new `DefaultAzureCredential`, `get_token` for Cognitive Services, `requests.post`",
}


def build_case(name: str) -> Case:
    """Set up one case (imports, clients, key reads) outside any timed region."""
    return CASES[name]()
