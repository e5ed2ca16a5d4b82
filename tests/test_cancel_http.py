"""CONTRACT section 3, row by row: the HTTP trigger against the simulator and the Key Vault emulator."""

from __future__ import annotations

import re

import pytest

from devstack.keyvault_emulator import KeyVaultEmulator
from devstack.openai_sim import FineTuningSimulator
from tests.support.handlers import API_KEY, SECRET_NAME

ISO_MS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
RECORD_FIELDS = [
    "schema_version", "job_id", "outcome", "job", "error", "status_code", "retryable", "trigger",
    "correlation_id", "request_id", "upstream_request_id", "attempts", "dequeue_count",
    "received_at", "completed_at", "resource", "caller",
]


def assert_answer_matches_record(call, status: int) -> dict:
    """Every response: the status, JSON, x-request-id = the record's; the record's own shape."""
    record = call.record
    assert call.response.status_code == status == record["status_code"]
    assert call.response.mimetype == "application/json"
    assert call.response.headers["x-request-id"] == record["request_id"]
    assert list(record) == RECORD_FIELDS
    assert record["schema_version"] == 1 and record["trigger"] == "http" and record["dequeue_count"] is None
    assert ISO_MS_Z.match(record["received_at"]) and ISO_MS_Z.match(record["completed_at"])
    assert record["received_at"] <= record["completed_at"]
    if record["error"] is None:
        assert call.body == record["job"]
    else:
        assert call.body == {"error": record["error"]}
    return record


# --- upstream 200 ---------------------------------------------------------------------------


def test_upstream_200_cancels_and_returns_the_job(simulator: FineTuningSimulator, call_http) -> None:
    job = simulator.create_job(status="running")
    call = call_http(job["id"], headers={"x-correlation-id": "pipeline-42"}, body=b"ignored body")
    record = assert_answer_matches_record(call, 200)
    assert call.body["id"] == job["id"] and call.body["status"] == "cancelled"
    assert simulator.job(job["id"])["status"] == "cancelled"
    assert record["outcome"] == "cancelled" and record["retryable"] is False
    assert record["correlation_id"] == "pipeline-42"
    assert record["attempts"] == 1
    [sent] = simulator.requests
    assert re.fullmatch(r"[0-9a-f-]{36}", record["upstream_request_id"])  # apim-request-id
    assert sent.method == "POST" and sent.path == f"/openai/fine_tuning/jobs/{job['id']}/cancel"
    assert sent.query == {"api-version": "2024-10-21"}
    assert sent.headers["api-key"] == API_KEY


def test_upstream_unknown_fields_are_kept(simulator: FineTuningSimulator, call_http) -> None:
    job = simulator.create_job(status="pending")
    body = {**job, "status": "cancelled", "x_future_field": {"nested": [1, 2]}}
    simulator.fail_next(status=200, body=body)
    call = call_http(job["id"])
    assert_answer_matches_record(call, 200)
    assert call.body["x_future_field"] == {"nested": [1, 2]}


def test_callers_api_version_is_ignored(simulator: FineTuningSimulator, call_http, monkeypatch) -> None:
    monkeypatch.setenv("AZURE_OPENAI_API_VERSION", "2024-10-21")
    job = simulator.create_job()
    call_http(job["id"])
    assert [r.query["api-version"] for r in simulator.requests] == ["2024-10-21"]


# --- invalid job id / correlation id ----------------------------------------------------------


@pytest.mark.parametrize(
    "job_id",
    ["", "job-1", "ftjob-a.b", "ftjob-a?b", "ftjob-a#b", "ftjob-a%2F..", "ftjob-a b", "ftjob-\u00e9", "ftjob-" + "a" * 65],
)
def test_invalid_job_id_is_rejected_without_any_outbound_request(
    simulator: FineTuningSimulator, vault: KeyVaultEmulator, call_http, job_id: str
) -> None:
    call = call_http(job_id)
    record = assert_answer_matches_record(call, 400)
    assert call.body["error"]["code"] == "invalidPayload" and call.body["error"]["target"] == "job_id"
    assert record["outcome"] == "rejected" and record["attempts"] == 0
    assert simulator.requests == [] and vault.read_count() == 0


@pytest.mark.parametrize("correlation_id", ["x" * 129, "tab\there", "caf\u00e9"])
def test_invalid_correlation_id_is_rejected(
    simulator: FineTuningSimulator, vault: KeyVaultEmulator, call_http, correlation_id: str
) -> None:
    job = simulator.create_job()
    call = call_http(job["id"], headers={"x-correlation-id": correlation_id})
    record = assert_answer_matches_record(call, 400)
    assert call.body["error"] == {"code": "invalidPayload", "message": record["error"]["message"], "target": "correlation_id"}
    assert record["outcome"] == "rejected" and record["job_id"] == job["id"]
    assert simulator.requests == [] and vault.read_count() == 0


# --- already terminal --------------------------------------------------------------------------


def test_already_cancelled_job_answers_200_with_the_job(simulator: FineTuningSimulator, call_http) -> None:
    job = simulator.create_job(status="cancelled")
    call = call_http(job["id"])
    record = assert_answer_matches_record(call, 200)
    assert record["outcome"] == "already_terminal" and call.body["status"] == "cancelled"
    assert [(r.method, r.path.rsplit("/", 1)[-1]) for r in simulator.requests] == [("POST", "cancel"), ("GET", job["id"])]
    assert record["attempts"] == 2


@pytest.mark.parametrize("state", ["succeeded", "failed"])
def test_finished_job_answers_409_and_record_carries_the_job(
    simulator: FineTuningSimulator, call_http, state: str
) -> None:
    job = simulator.create_job(status=state)
    call = call_http(job["id"])
    record = assert_answer_matches_record(call, 409)
    assert call.body["error"]["code"] == "unexpectedEntityState"
    assert state in call.body["error"]["message"]
    assert record["outcome"] == "already_terminal" and record["job"]["status"] == state


def test_refusal_for_a_job_that_is_not_terminal_passes_upstream_error_through(
    simulator: FineTuningSimulator, call_http
) -> None:
    job = simulator.create_job(status="running")
    error = {"error": {"code": "invalidPayload", "message": "something else is wrong"}}
    simulator.fail_next(status=400, body=error, path_suffix="/cancel")
    call = call_http(job["id"])
    record = assert_answer_matches_record(call, 400)
    assert call.body == error and record["outcome"] == "failed"


# --- upstream 404 and other 4xx -------------------------------------------------------------


def test_upstream_404_passes_through(simulator: FineTuningSimulator, call_http) -> None:
    call = call_http("ftjob-doesnotexist")
    record = assert_answer_matches_record(call, 404)
    assert call.body["error"]["code"] == "notFound"
    assert record["outcome"] == "failed" and record["retryable"] is False and record["attempts"] == 1


@pytest.mark.parametrize("status", [400, 405, 409, 412, 422])
def test_other_upstream_4xx_pass_through_with_the_same_status(
    simulator: FineTuningSimulator, call_http, status: int
) -> None:
    job = simulator.create_job()
    error = {"error": {"code": "conflict", "message": f"upstream said {status}", "target": "x"}}
    simulator.fail_next(status=status, body=error, path_suffix="/cancel")
    call = call_http(job["id"])
    record = assert_answer_matches_record(call, status)
    assert call.body == error and record["outcome"] == "failed" and record["retryable"] is False


# --- 401/403 ---------------------------------------------------------------------------------


def test_wrong_key_in_vault_answers_502_unauthorized_after_one_reread(
    simulator: FineTuningSimulator, vault: KeyVaultEmulator, call_http
) -> None:
    vault.set_secret(SECRET_NAME, "not-the-key")
    call = call_http(simulator.create_job()["id"])
    record = assert_answer_matches_record(call, 502)
    assert call.body["error"]["code"] == "unauthorized"
    assert "api-key" in call.body["error"]["message"] and "not-the-key" not in call.body["error"]["message"]
    assert record["outcome"] == "failed" and record["attempts"] == 2
    assert vault.read_count() == 2


def test_403_twice_answers_502_forbidden(simulator: FineTuningSimulator, vault: KeyVaultEmulator, call_http) -> None:
    simulator.fail_next(2, status=403)
    call = call_http(simulator.create_job()["id"])
    assert_answer_matches_record(call, 502)
    assert call.body["error"]["code"] == "forbidden" and vault.read_count() == 2


def test_key_rotation_rereads_vault_once_and_succeeds(
    simulator: FineTuningSimulator, vault: KeyVaultEmulator, call_http
) -> None:
    call_http(simulator.create_job()["id"])  # warms the cache with the old key
    simulator.api_key = "rotated-" + API_KEY
    vault.set_secret(SECRET_NAME, "rotated-" + API_KEY)
    call = call_http(simulator.create_job()["id"])
    record = assert_answer_matches_record(call, 200)
    assert record["outcome"] == "cancelled" and record["attempts"] == 2
    assert vault.read_count() == 2
    assert [r.status for r in simulator.requests[-2:]] == [401, 200]


# --- 429 and 5xx / timeouts / connection errors -----------------------------------------------


def test_429_after_retries_answers_429_with_retry_after(simulator: FineTuningSimulator, call_http) -> None:
    simulator.fail_next(4, status=429, headers={"retry-after-ms": "20", "retry-after": "2"})
    call = call_http(simulator.create_job()["id"])
    record = assert_answer_matches_record(call, 429)
    assert call.body["error"]["code"] == "tooManyRequests"
    assert call.response.headers["Retry-After"] == "1"  # 20 ms, rounded up to whole seconds
    assert record["retryable"] is True and record["attempts"] == 4  # 1 + UPSTREAM_MAX_RETRIES


def test_429_then_success_is_retried_transparently(simulator: FineTuningSimulator, call_http) -> None:
    simulator.fail_next(2, status=429, headers={"retry-after-ms": "10"})
    call = call_http(simulator.create_job()["id"])
    record = assert_answer_matches_record(call, 200)
    assert record["outcome"] == "cancelled" and record["attempts"] == 3


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 500},
        {"status": 502},
        {"status": 503},
        {"status": 504},
        {"status": 408},
        {"delay": 1.5},  # past UPSTREAM_TIMEOUT_SECONDS=1
        {"drop": True},
    ],
    ids=["500", "502", "503", "504", "408", "timeout", "dropped-connection"],
)
def test_transient_failures_after_retries_answer_503(
    simulator: FineTuningSimulator, call_http, monkeypatch, fault: dict
) -> None:
    monkeypatch.setenv("UPSTREAM_MAX_RETRIES", "1")
    headers = {"retry-after-ms": "10"} if "status" in fault else None
    simulator.fail_next(2, headers=headers, **fault)
    call = call_http(simulator.create_job()["id"])
    record = assert_answer_matches_record(call, 503)
    assert call.body["error"]["code"] == "serviceUnavailable"
    assert int(call.response.headers["Retry-After"]) >= 1
    assert record["outcome"] == "failed" and record["retryable"] is True and record["attempts"] == 2


def test_wait_past_the_deadline_stops_and_advises_that_wait(
    simulator: FineTuningSimulator, call_http, monkeypatch
) -> None:
    monkeypatch.setenv("UPSTREAM_DEADLINE_SECONDS", "5")
    simulator.fail_next(status=503, headers={"retry-after": "30"})
    call = call_http(simulator.create_job()["id"])
    record = assert_answer_matches_record(call, 503)
    assert call.response.headers["Retry-After"] == "30"
    assert record["attempts"] == 1 and record["retryable"] is True


# --- Key Vault -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("break_vault", "says"),
    [
        (lambda vault: vault.set_available(False), "503"),
        (lambda vault: vault.fail_next(10, status=429), "429"),
        (lambda vault: vault.deny(True), "access denied"),
        (lambda vault: vault.stop(), "unreachable"),
    ],
    ids=["outage", "throttled", "access-denied", "unreachable"],
)
def test_key_vault_failure_answers_503_naming_vault_and_secret(
    simulator: FineTuningSimulator, vault: KeyVaultEmulator, call_http, break_vault, says: str
) -> None:
    break_vault(vault)
    call = call_http(simulator.create_job()["id"])
    record = assert_answer_matches_record(call, 503)
    message = call.body["error"]["message"]
    assert call.body["error"]["code"] == "serviceUnavailable"
    assert SECRET_NAME in message and vault.vault_url in message and says in message
    assert record["retryable"] is True and record["attempts"] == 0 and simulator.requests == []
    assert "Retry-After" in call.response.headers


def test_missing_secret_answers_503(simulator: FineTuningSimulator, call_http, monkeypatch) -> None:
    monkeypatch.setenv("AZURE_OPENAI_KEY_SECRET_NAME", "no-such-secret")
    call = call_http(simulator.create_job()["id"])
    assert_answer_matches_record(call, 503)
    assert "no-such-secret" in call.body["error"]["message"] and "not found" in call.body["error"]["message"]


# --- unreadable upstream answers -------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        {"non_json": True},
        {"status": 200, "body": b'{"id": "ftjob-trunc'},
        {"status": 200, "body": b"[1, 2, 3]"},
        {"status": 404, "body": b"<html>not found</html>"},
        {"status": 400, "body": b'{"message": "no error object"}'},
    ],
    ids=["html-200", "truncated-json", "json-array", "html-404", "json-without-error"],
)
def test_unreadable_upstream_answer_is_502_internal_failure(
    simulator: FineTuningSimulator, call_http, fault: dict
) -> None:
    simulator.fail_next(path_suffix="/cancel", **fault)
    call = call_http(simulator.create_job()["id"])
    record = assert_answer_matches_record(call, 502)
    assert call.body["error"]["code"] == "internalFailure"
    assert "answered" in call.body["error"]["message"] and record["retryable"] is False


@pytest.mark.parametrize("status", [501, 505, 511])
def test_other_upstream_5xx_is_503_without_in_call_retries(simulator: FineTuningSimulator, call_http, status: int) -> None:
    simulator.fail_next(status=status, path_suffix="/cancel")
    call = call_http(simulator.create_job()["id"])
    record = assert_answer_matches_record(call, 503)
    assert call.body["error"]["code"] == "serviceUnavailable" and str(status) in call.body["error"]["message"]
    assert record["retryable"] is True and record["attempts"] == 1  # CONTRACT 6 retries 500/502/503/504 only
