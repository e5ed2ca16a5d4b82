"""Issue 7 through the real handlers: bulk cancel, waiting for a cancel to take, the health check."""

from __future__ import annotations

import json

import azure.functions as func
import pytest

from devstack.keyvault_emulator import KeyVaultEmulator
from devstack.openai_sim import FineTuningSimulator
from shared import __version__
from tests.support.handlers import call_bulk, handler


@pytest.fixture
def bulk(app_settings):
    return call_bulk


def test_bulk_cancels_each_id_in_input_order(simulator: FineTuningSimulator, bulk) -> None:
    running = [simulator.create_job()["id"] for _ in range(3)]
    done = simulator.create_job(status="succeeded")["id"]
    ids = [running[0], "ftjob-bad.id", running[1], done, running[0], 42, running[2]]
    response, output = bulk({"job_ids": ids, "correlation_id": "sweep-1"})
    assert response.status_code == 200 and response.mimetype == "application/json"
    results = json.loads(response.get_body())["results"]
    assert [r["outcome"] for r in results] == [
        "cancelled", "rejected", "cancelled", "already_terminal", "cancelled", "rejected", "cancelled",
    ]
    assert [r["job_id"] for r in results] == [running[0], "ftjob-bad.id", running[1], done, running[0], None, running[2]]
    assert results[0] == results[4]  # a repeated id is cancelled once, reported at each position
    assert {r["correlation_id"] for r in results} == {"sweep-1"}
    cancels = [r for r in simulator.requests if r.path.endswith("/cancel")]
    assert sorted(r.path.split("/")[-2] for r in cancels) == sorted([*running, done])
    queued = output.records
    assert len(queued) == 6  # one per distinct id
    assert {r["request_id"] for r in queued} == {r["request_id"] for r in results}


def test_bulk_of_100_ids_runs_with_bounded_concurrency(simulator: FineTuningSimulator, vault: KeyVaultEmulator, bulk) -> None:
    ids = [simulator.create_job()["id"] for _ in range(100)]
    response, output = bulk({"job_ids": ids})
    results = json.loads(response.get_body())["results"]
    assert [r["job_id"] for r in results] == ids
    assert {r["outcome"] for r in results} == {"cancelled"}
    assert len(output.records) == 100 and vault.read_count() == 1


@pytest.mark.parametrize(
    ("body", "target"),
    [
        (b"not json", "body"),
        (b"", "body"),
        ({"ids": ["ftjob-abc"]}, "job_ids"),
        ({"job_ids": "ftjob-abc"}, "job_ids"),
        ({"job_ids": []}, "job_ids"),
        ({"job_ids": ["ftjob-a%d" % n for n in range(101)]}, "job_ids"),
        ({"job_ids": ["ftjob-abc"], "wait_seconds": 121}, "wait_seconds"),
        ({"job_ids": ["ftjob-abc"], "correlation_id": "x" * 200}, "correlation_id"),
        ([1, 2], "job_ids"),
    ],
    ids=["not-json", "empty", "no-job_ids", "job_ids-not-a-list", "no-ids", "101-ids", "wait-too-long",
         "bad-correlation", "json-array"],
)
def test_bad_bulk_body_is_400_invalid_payload_with_no_outbound_request(
    simulator: FineTuningSimulator, vault: KeyVaultEmulator, bulk, body, target: str
) -> None:
    response, output = bulk(body)
    assert response.status_code == 400
    error = json.loads(response.get_body())["error"]
    assert error["code"] == "invalidPayload" and error["target"] == target
    [record] = output.records
    assert record["outcome"] == "rejected" and record["error"] == error
    assert response.headers["x-request-id"] == record["request_id"]
    assert simulator.requests == [] and vault.read_count() == 0


# --- waiting ---------------------------------------------------------------------------------


def test_wait_seconds_polls_until_the_job_is_final(simulator: FineTuningSimulator, call_http) -> None:
    simulator.cancel_delay = 1.2  # the job reports "cancelled" only after a while
    job = simulator.create_job()["id"]
    call = call_http(job, params={"wait_seconds": "10"})
    record = call.record
    assert call.response.status_code == 200 and record["outcome"] == "cancelled"
    assert record["job"]["status"] == "cancelled" and call.body["status"] == "cancelled"
    assert 1.0 <= record["waited_seconds"] < 10
    assert [r.method for r in simulator.requests][0] == "POST"
    assert {r.method for r in simulator.requests[1:]} == {"GET"}
    assert record["attempts"] == len(simulator.requests)


def test_wait_ends_when_time_is_up_with_the_last_answer(simulator: FineTuningSimulator, call_http) -> None:
    simulator.cancel_delay = 60
    call = call_http(simulator.create_job()["id"], params={"wait_seconds": "1.5"})
    record = call.record
    assert record["outcome"] == "cancelled" and record["job"]["status"] == "running"
    assert 0.5 <= record["waited_seconds"] < 10  # gave up at its own limit, long before the job's 60 s


def test_no_wait_means_no_waited_seconds_field(simulator: FineTuningSimulator, call_http) -> None:
    record = call_http(simulator.create_job()["id"]).record
    assert "waited_seconds" not in record


@pytest.mark.parametrize("value", ["-1", "121", "soon", "nan", "inf"])
def test_bad_wait_seconds_is_rejected(simulator: FineTuningSimulator, call_http, value: str) -> None:
    call = call_http(simulator.create_job()["id"], params={"wait_seconds": value})
    assert call.response.status_code == 400 and call.body["error"]["target"] == "wait_seconds"
    assert simulator.requests == []


def test_queue_message_can_ask_to_wait(simulator: FineTuningSimulator, call_queue) -> None:
    simulator.cancel_delay = 0.8
    job = simulator.create_job()["id"]
    record = call_queue(json.dumps({"job_id": job, "wait_seconds": 10})).record
    assert record["job"]["status"] == "cancelled" and record["waited_seconds"] >= 0.7


# --- health ------------------------------------------------------------------------------------


def call_health() -> func.HttpResponse:
    request = func.HttpRequest(method="GET", url="http://localhost:7071/api/health", headers={}, body=b"")
    return handler("httpTrigger", "health")(req=request)


def test_health_is_ok_with_valid_settings_and_contacts_nothing(
    simulator: FineTuningSimulator, vault: KeyVaultEmulator, app_settings
) -> None:
    response = call_health()
    assert response.status_code == 200
    assert json.loads(response.get_body()) == {"status": "ok", "version": __version__}
    assert simulator.requests == [] and vault.read_count() == 0 and vault.token_count == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [("AZURE_OPENAI_ENDPOINT", None), ("KEY_VAULT_URL", "http://plain.example"), ("UPSTREAM_MAX_RETRIES", "lots")],
)
def test_health_names_the_bad_setting_without_its_value(app_settings, monkeypatch, name: str, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv(name)
    else:
        monkeypatch.setenv(name, value)
    response = call_health()
    body = json.loads(response.get_body())
    assert response.status_code == 503
    assert body["error"]["target"] == name and name in body["error"]["message"]
    assert value is None or value not in response.get_body().decode()
    assert health_auth_level() == "ANONYMOUS"


def health_auth_level() -> str:
    import function_app

    for function in function_app.app.get_functions():
        for binding in function.get_bindings():
            if getattr(binding, "route", None) == "health":
                return str(binding.auth_level.name)
    raise LookupError("health")
