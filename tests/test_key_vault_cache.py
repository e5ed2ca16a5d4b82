"""CONTRACT section 7 and the secrecy rule: one Key Vault read for many callers, stale on outage, no leaks."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from devstack.keyvault_emulator import KeyVaultEmulator
from devstack.openai_sim import FineTuningSimulator
from shared.cancel import current_service
from tests.support.handlers import API_KEY


def test_50_concurrent_invocations_with_a_cold_cache_read_key_vault_once(
    simulator: FineTuningSimulator, vault: KeyVaultEmulator, call_http
) -> None:
    jobs = [simulator.create_job()["id"] for _ in range(50)]
    with ThreadPoolExecutor(max_workers=50) as pool:
        calls = list(pool.map(call_http, jobs))
    assert [c.response.status_code for c in calls] == [200] * 50
    assert {simulator.job(job_id)["status"] for job_id in jobs} == {"cancelled"}
    assert vault.read_count() == 1


def test_cached_key_is_used_until_it_expires(
    simulator: FineTuningSimulator, vault: KeyVaultEmulator, call_http, monkeypatch
) -> None:
    monkeypatch.setenv("SECRET_CACHE_SECONDS", "1")
    call_http(simulator.create_job()["id"])
    call_http(simulator.create_job()["id"])
    assert vault.read_count() == 1
    time.sleep(1.1)
    call_http(simulator.create_job()["id"])
    assert vault.read_count() == 2


def test_key_vault_outage_with_a_cached_key_keeps_cancelling(
    simulator: FineTuningSimulator, vault: KeyVaultEmulator, call_http, monkeypatch, caplog
) -> None:
    monkeypatch.setenv("SECRET_CACHE_SECONDS", "0.2")
    assert call_http(simulator.create_job()["id"]).response.status_code == 200
    vault.set_available(False)
    time.sleep(0.3)  # the cached key has expired
    with caplog.at_level(logging.WARNING, logger="shared.api_key"):
        calls = [call_http(simulator.create_job()["id"]) for _ in range(3)]
    assert [c.response.status_code for c in calls] == [200, 200, 200]
    warnings = [r for r in caplog.records if r.name == "shared.api_key"]
    assert warnings and all("using the api-key read earlier" in w.getMessage() for w in warnings)
    vault.set_available(True)


def test_during_a_slow_key_vault_read_other_invocations_use_the_expired_key(
    simulator: FineTuningSimulator, vault: KeyVaultEmulator, call_http, monkeypatch
) -> None:
    monkeypatch.setenv("SECRET_CACHE_SECONDS", "0.2")
    call_http(simulator.create_job()["id"])
    vault.set_available(False)  # each read now spends the SDK's retries before it gives up
    time.sleep(0.3)
    api_keys = current_service().api_keys
    with ThreadPoolExecutor(max_workers=1) as pool:
        reader = pool.submit(call_http, simulator.create_job()["id"])
        while api_keys.reads == 1 and not reader.done():  # until the reader is inside its Key Vault read
            time.sleep(0.005)
        others = [call_http(simulator.create_job()["id"]) for _ in range(5)]
        first = reader.result()
    assert [c.response.status_code for c in others] == [200] * 5 and first.response.status_code == 200
    assert max(c.record["completed_at"] for c in others) < first.record["completed_at"]
    vault.set_available(True)


def test_key_vault_outage_without_a_cached_key_is_503(
    simulator: FineTuningSimulator, vault: KeyVaultEmulator, call_http
) -> None:
    vault.set_available(False)
    call = call_http(simulator.create_job()["id"])
    assert call.response.status_code == 503 and call.record["retryable"] is True


def test_one_credential_and_one_secret_client_per_process(
    simulator: FineTuningSimulator, vault: KeyVaultEmulator, call_http
) -> None:
    call_http(simulator.create_job()["id"])
    service = current_service()
    reader = service.api_keys._reader
    service.api_keys.clear_cache()
    call_http(simulator.create_job()["id"])
    assert current_service() is service and service.api_keys._reader is reader
    assert vault.read_count() == 2
    assert vault.token_count == 1  # the credential kept its token


@pytest.mark.parametrize(
    "scenario",
    ["success", "rotation", "wrong-key", "throttled", "vault-down", "rejected", "queue"],
)
def test_api_key_and_bearer_token_never_appear_in_records_responses_or_debug_logs(
    simulator: FineTuningSimulator, vault: KeyVaultEmulator, call_http, call_queue, caplog, scenario: str
) -> None:
    job = simulator.create_job()["id"]
    with caplog.at_level(logging.DEBUG):
        for name in ("urllib3", "azure", "shared", "function_app"):
            logging.getLogger(name).setLevel(logging.DEBUG)
        if scenario == "rotation":
            call_http(job)
            simulator.api_key = vault_key = "rotated-" + API_KEY
            vault.set_secret("azure-openai-api-key", vault_key)
            job = simulator.create_job()["id"]
        elif scenario == "wrong-key":
            vault.set_secret("azure-openai-api-key", "wrong-" + API_KEY)
        elif scenario == "throttled":
            simulator.fail_next(4, status=429, headers={"retry-after-ms": "5"})
        elif scenario == "vault-down":
            vault.set_available(False)
        outputs = []
        if scenario == "queue":
            call = call_queue(json.dumps({"job_id": job}))
            outputs += call.output.values
        else:
            call = call_http("ftjob-bad.id" if scenario == "rejected" else job)
            outputs += call.output.values + [call.response.get_body().decode(), json.dumps(dict(call.response.headers))]
    assert outputs, "the scenario produced nothing to search"
    searched = "\n".join(outputs + [caplog.text] + [str(r.exc_info) for r in caplog.records if r.exc_info])
    assert API_KEY not in searched
    for token in vault.issued_tokens:
        assert token not in searched
    assert "urllib3" in caplog.text or scenario in ("rejected", "vault-down")  # DEBUG output was captured
