"""The real openai SDK as the client, through the local runner and Azurite (issues 11 section 6 and 14).

Both auth modes (api-key from Key Vault; Entra ID against a simulator with key access disabled), both
routes (dated, with `AzureOpenAI`; v1, with `OpenAI`), each ending in one record; and the SDK's own
retries, which must not repeat an answer that says it is permanent.
"""

from __future__ import annotations

import openai
import pytest

from devstack.keyvault_emulator import KeyVaultEmulator
from devstack.openai_sim import FineTuningSimulator
from devstack.storage import message_count
from shared.entra_token import COGNITIVE_SERVICES_SCOPE

AUDIENCE = COGNITIVE_SERVICES_SCOPE.removesuffix("/.default")


def _client(app, route: str, *, max_retries: int = 0) -> openai.OpenAI:
    headers = {"x-functions-key": app.function_key}
    if route == "dated":
        return openai.AzureOpenAI(
            azure_endpoint=app.api_url, api_key="unused", api_version="2024-10-21",
            default_headers=headers, max_retries=max_retries,
        )
    return openai.OpenAI(
        base_url=f"{app.api_url}/openai/v1", api_key="unused", default_headers=headers, max_retries=max_retries
    )


@pytest.mark.e2e
@pytest.mark.parametrize("route", ["dated", "v1"])
@pytest.mark.parametrize("mode", ["api-key", "entra"])
def test_sdk_cancels_in_each_mode_over_each_route(
    start_local_app, simulator: FineTuningSimulator, vault: KeyVaultEmulator, mode: str, route: str
) -> None:
    settings = {}
    if mode == "entra":
        simulator.key_access_disabled = True
        simulator.token_verifier = lambda token: vault.verify_token(token, audience=AUDIENCE)
        settings = {"AZURE_OPENAI_AUTH": "entra", "KEY_VAULT_URL": ""}
    app = start_local_app(**settings)
    job = simulator.create_job(status="running")

    cancelled = _client(app, route).fine_tuning.jobs.cancel(job["id"])

    assert (cancelled.id, cancelled.status) == (job["id"], "cancelled")
    [record] = app.wait_for_records(1)
    assert record["outcome"] == "cancelled" and record["job_id"] == job["id"]
    assert vault.read_count() == (0 if mode == "entra" else 1)


@pytest.mark.e2e
def test_sdk_does_not_repeat_a_finished_jobs_409(start_local_app, simulator: FineTuningSimulator) -> None:
    app = start_local_app()
    job = simulator.create_job(status="succeeded")
    with pytest.raises(openai.ConflictError):
        _client(app, "dated", max_retries=2).fine_tuning.jobs.cancel(job["id"])  # the SDK's default retries
    [record] = app.wait_for_records(1)
    assert record["outcome"] == "already_terminal"
    assert sum(1 for r in simulator.requests if r.method == "POST") == 1  # cancelled once, not three times
    assert message_count(app.results_queue) == 0  # and one record only


@pytest.mark.e2e
def test_sdk_does_not_repeat_a_refused_key(
    start_local_app, simulator: FineTuningSimulator, vault: KeyVaultEmulator
) -> None:
    vault.set_secret("azure-openai-api-key", "a-key-that-is-no-longer-valid")
    app = start_local_app()
    with pytest.raises(openai.InternalServerError):  # our 502
        _client(app, "dated", max_retries=2).fine_tuning.jobs.cancel(simulator.create_job()["id"])
    [record] = app.wait_for_records(1)
    assert record["error"]["code"] == "unauthorized"
    assert len(simulator.requests) == 2 and vault.read_count() == 2  # one try and one re-read, not three of each
