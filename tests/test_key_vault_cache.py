"""CONTRACT section 7 and the secrecy rule: one Key Vault read for many callers, stale on outage, no leaks."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from devstack.keyvault_emulator import KeyVaultEmulator
from devstack.openai_sim import FineTuningSimulator
from shared.api_key import SecretReader, key_vault_secret_reader
from shared.cancel import CancelService, current_service
from shared.records import CancelRequest, ResultRecord, Trigger
from shared.settings import load_settings
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


class FakeClock:
    """Monotonic seconds that pass only when the test says so: a cached key expires without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def cancel_one(service: CancelService, simulator: FineTuningSimulator) -> ResultRecord:
    return service.cancel(CancelRequest(job_id=simulator.create_job()["id"], trigger=Trigger.HTTP))


def test_cached_key_is_used_until_it_expires(
    simulator: FineTuningSimulator, vault: KeyVaultEmulator, app_settings, monkeypatch
) -> None:
    monkeypatch.setenv("SECRET_CACHE_SECONDS", "1")
    clock = FakeClock()
    service = CancelService(load_settings(), clock=clock)
    cancel_one(service, simulator)
    cancel_one(service, simulator)
    assert vault.read_count() == 1
    clock.advance(1.1)
    cancel_one(service, simulator)
    assert vault.read_count() == 2


def test_key_vault_outage_with_a_cached_key_keeps_cancelling(
    simulator: FineTuningSimulator, vault: KeyVaultEmulator, app_settings, monkeypatch, caplog
) -> None:
    monkeypatch.setenv("SECRET_CACHE_SECONDS", "0.2")
    clock = FakeClock()
    service = CancelService(load_settings(), clock=clock)
    assert cancel_one(service, simulator).status_code == 200
    vault.set_available(False)
    clock.advance(0.3)  # the cached key has expired
    with caplog.at_level(logging.WARNING, logger="shared.api_key"):
        records = [cancel_one(service, simulator) for _ in range(3)]
    assert [r.status_code for r in records] == [200, 200, 200]
    warnings = [r for r in caplog.records if r.name == "shared.api_key"]
    assert warnings and all("using the api-key read earlier" in w.getMessage() for w in warnings)
    vault.set_available(True)


def test_during_a_slow_key_vault_read_other_invocations_use_the_expired_key(
    simulator: FineTuningSimulator, vault: KeyVaultEmulator, app_settings, monkeypatch
) -> None:
    monkeypatch.setenv("SECRET_CACHE_SECONDS", "0.2")
    clock = FakeClock()
    service = CancelService(load_settings(), clock=clock)
    cancel_one(service, simulator)
    vault.set_available(False)  # each read now spends the SDK's retries before it gives up
    clock.advance(0.3)
    api_keys = service.api_keys
    with ThreadPoolExecutor(max_workers=1) as pool:
        reader = pool.submit(cancel_one, service, simulator)
        while api_keys.reads == 1 and not reader.done():  # until the reader is inside its Key Vault read
            time.sleep(0.005)
        others = [cancel_one(service, simulator) for _ in range(5)]
        first = reader.result()
    assert [r.status_code for r in others] == [200] * 5 and first.status_code == 200
    assert max(r.completed_at for r in others) < first.completed_at
    vault.set_available(True)


def test_key_vault_outage_without_a_cached_key_is_503(
    simulator: FineTuningSimulator, vault: KeyVaultEmulator, call_http
) -> None:
    vault.set_available(False)
    call = call_http(simulator.create_job()["id"])
    assert call.response.status_code == 503 and call.record["retryable"] is True


def test_one_service_per_process(simulator: FineTuningSimulator, call_http) -> None:
    call_http(simulator.create_job()["id"])
    service = current_service()
    call_http(simulator.create_job()["id"])
    assert current_service() is service


def test_one_credential_and_one_secret_client_per_service(
    simulator: FineTuningSimulator, vault: KeyVaultEmulator, app_settings
) -> None:
    opened: list[str] = []

    def open_reader(vault_url: str, *, verify_challenge_resource: bool) -> SecretReader:
        opened.append(vault_url)
        return key_vault_secret_reader(vault_url, verify_challenge_resource=verify_challenge_resource)

    service = CancelService(load_settings(), secret_reader=open_reader)
    cancel_one(service, simulator)
    service.api_keys.clear_cache()
    cancel_one(service, simulator)
    assert len(opened) == 1  # one SecretClient, kept
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
