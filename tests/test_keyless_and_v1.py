"""Issue 14 on the real handlers: Entra ID tokens instead of the api-key, the v1 API and route, today's job states.

The identity endpoint of the Key Vault emulator issues the tokens (the managed-identity protocol that
`DefaultAzureCredential` uses in Azure), and the simulator, with key access disabled as Azure has it,
takes only the tokens that endpoint issued for the Cognitive Services audience.
"""

from __future__ import annotations

import json
import logging

import pytest

from devstack.keyvault_emulator import KeyVaultEmulator
from devstack.openai_sim import FineTuningSimulator
from shared.entra_token import COGNITIVE_SERVICES_SCOPE
from tests.support.handlers import API_KEY, handler

AUDIENCE = COGNITIVE_SERVICES_SCOPE.removesuffix("/.default")


@pytest.fixture
def keyless(simulator: FineTuningSimulator, vault: KeyVaultEmulator, app_settings, monkeypatch) -> FineTuningSimulator:
    """A resource with key access disabled, and the app in `entra` mode without a Key Vault setting."""
    simulator.key_access_disabled = True
    simulator.token_verifier = lambda token: vault.verify_token(token, audience=AUDIENCE)
    monkeypatch.setenv("AZURE_OPENAI_AUTH", "entra")
    monkeypatch.delenv("KEY_VAULT_URL")
    return simulator


def test_entra_mode_cancels_with_a_token_and_never_reads_key_vault(
    keyless: FineTuningSimulator, vault: KeyVaultEmulator, call_http
) -> None:
    jobs = [keyless.create_job()["id"] for _ in range(3)]
    calls = [call_http(job_id) for job_id in jobs]
    assert [call.response.status_code for call in calls] == [200, 200, 200]
    assert [call.record["outcome"] for call in calls] == ["cancelled"] * 3
    assert vault.read_count() == 0  # Key Vault is never read in this mode
    sent = keyless.requests
    assert all(request.headers.get("authorization", "").startswith("Bearer ") for request in sent)
    assert all("api-key" not in request.headers for request in sent)
    audiences = [query.get("resource") for query in vault.token_requests]
    assert audiences == [AUDIENCE]  # one token, reused for all three cancels


def test_refused_token_gets_one_fresh_token_then_502_naming_the_role(
    keyless: FineTuningSimulator, vault: KeyVaultEmulator, call_http
) -> None:
    keyless.token_verifier = lambda token: False  # the identity lacks the role
    call = call_http(keyless.create_job()["id"])
    assert call.response.status_code == 502 and call.record["error"]["code"] == "unauthorized"
    assert "Cognitive Services OpenAI Contributor" in call.record["error"]["message"]
    assert call.record["attempts"] == 2 and len(vault.token_requests) == 2
    assert call.response.headers["x-should-retry"] == "false"


def test_api_key_mode_against_a_key_disabled_resource_is_one_clear_502(
    simulator: FineTuningSimulator, vault: KeyVaultEmulator, call_http
) -> None:
    simulator.key_access_disabled = True
    call = call_http(simulator.create_job()["id"])
    assert call.response.status_code == 502 and call.record["error"]["code"] == "forbidden"
    message = call.record["error"]["message"]
    assert "refuses api-keys" in message and "AZURE_OPENAI_AUTH=entra" in message
    assert vault.read_count() == 1 and call.record["attempts"] == 1  # no Key Vault re-read, no retry


def test_no_token_in_records_answers_or_logs_even_when_upstream_echoes_it(
    keyless: FineTuningSimulator, vault: KeyVaultEmulator, call_http, caplog
) -> None:
    job = keyless.create_job()
    call_http(job["id"])  # a first cancel, so the token is known before upstream echoes it
    [token] = vault.issued_tokens
    keyless.fail_next(status=404, body={"error": {"code": "x", "message": f"Authorization: Bearer {token}"}},
                      headers={"apim-request-id": token})
    with caplog.at_level(logging.DEBUG):
        call = call_http(keyless.create_job()["id"])
    seen = [call.response.get_body().decode(), json.dumps(dict(call.response.headers)), *call.output.values]
    seen += [record.getMessage() for record in caplog.records]
    assert call.response.status_code == 404
    assert not [text for text in seen if token in text]


# --- the v1 API and route ------------------------------------------------------------------------------------------


def test_v1_upstream_calls_go_to_openai_v1_without_api_version(
    simulator: FineTuningSimulator, call_http, monkeypatch
) -> None:
    monkeypatch.setenv("AZURE_OPENAI_API_VERSION", "v1")
    done = simulator.create_job(status="succeeded")
    call = call_http(done["id"])
    assert call.response.status_code == 409
    assert [(r.method, r.path, r.query) for r in simulator.requests] == [
        ("POST", f"/openai/v1/fine_tuning/jobs/{done['id']}/cancel", {}),
        ("GET", f"/openai/v1/fine_tuning/jobs/{done['id']}", {}),
    ]


@pytest.mark.parametrize("api_version", ["2024-10-21", "v1"])
def test_v1_route_answers_like_the_dated_route_whatever_the_upstream_version(
    simulator: FineTuningSimulator, app_settings, monkeypatch, api_version: str
) -> None:
    import azure.functions as func

    from tests.support.handlers import drain_results

    monkeypatch.setenv("AZURE_OPENAI_API_VERSION", api_version)
    job = simulator.create_job()
    request = func.HttpRequest(
        method="POST",
        url=f"http://localhost:7071/api/openai/v1/fine_tuning/jobs/{job['id']}/cancel",
        route_params={"job_id": job["id"]},
        body=b"",
    )
    response = handler("httpTrigger", "openai/v1/fine_tuning/jobs/{job_id}/cancel")(req=request)
    [record] = drain_results().records
    assert response.status_code == 200 and json.loads(response.get_body())["status"] == "cancelled"
    assert record["outcome"] == "cancelled" and record["trigger"] == "http"


# --- job states as Azure has them now -----------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["queued", "validating_files", "pausing", "paused", "resuming"])
def test_jobs_in_every_active_state_are_cancelled(simulator: FineTuningSimulator, call_http, state: str) -> None:
    job = simulator.create_job(status=state)
    call = call_http(job["id"])
    assert call.response.status_code == 200 and call.record["job"]["status"] == "cancelled"


def test_an_unknown_future_state_is_passed_through_and_waited_on(
    simulator: FineTuningSimulator, call_http
) -> None:
    job = simulator.create_job()
    simulator.fail_next(status=200, body={**job, "status": "defragmenting"}, path_suffix="/cancel")
    simulator.fail_next(5, status=200, body={**job, "status": "defragmenting"}, method="GET")
    call = call_http(job["id"], params={"wait_seconds": "1"})
    assert call.response.status_code == 200 and call.body["status"] == "defragmenting"  # not rejected
    assert call.record["outcome"] == "cancelled" and call.record["waited_seconds"] > 0  # not final: waited


def test_key_vault_api_key_is_still_the_default(simulator: FineTuningSimulator, vault, call_http) -> None:
    call = call_http(simulator.create_job()["id"])
    assert call.response.status_code == 200 and vault.read_count() == 1
    assert simulator.requests[0].headers["api-key"] == API_KEY
