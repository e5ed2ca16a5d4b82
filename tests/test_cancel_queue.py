"""CONTRACT section 4, row by row: the queue trigger with real QueueMessage objects."""

from __future__ import annotations

import base64
import json

import pytest

from devstack.keyvault_emulator import KeyVaultEmulator
from devstack.openai_sim import FineTuningSimulator
from function_app import MAX_DEQUEUE_COUNT


def test_max_dequeue_count_comes_from_host_json() -> None:
    with open("host.json", encoding="utf-8") as host_json:
        assert MAX_DEQUEUE_COUNT == json.load(host_json)["extensions"]["queues"]["maxDequeueCount"] == 5


# --- success ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encode",
    [
        lambda job_id: job_id,
        lambda job_id: json.dumps({"job_id": job_id, "correlation_id": "batch-9", "priority": "ignored"}),
        lambda job_id: base64.b64encode(job_id.encode()).decode(),
        lambda job_id: base64.b64encode(json.dumps({"job_id": job_id, "correlation_id": "batch-9"}).encode()).decode(),
    ],
    ids=["bare-id", "json", "base64-id", "base64-json"],
)
def test_success_writes_one_cancelled_record(simulator: FineTuningSimulator, call_queue, encode) -> None:
    job = simulator.create_job(status="running")
    call = call_queue(encode(job["id"]), dequeue_count=1)
    assert call.raised is None
    record = call.record
    assert record["outcome"] == "cancelled" and record["job"]["status"] == "cancelled"
    assert record["trigger"] == "queue" and record["dequeue_count"] == 1 and record["status_code"] == 200
    assert record["job_id"] == job["id"]
    assert record["correlation_id"] in (None, "batch-9")
    assert simulator.job(job["id"])["status"] == "cancelled"


def test_already_cancelled_job_writes_one_already_terminal_record(simulator: FineTuningSimulator, call_queue) -> None:
    job = simulator.create_job(status="cancelled")
    call = call_queue(job["id"])
    assert call.raised is None and call.record["outcome"] == "already_terminal"


# --- permanent failure -------------------------------------------------------------------------


def test_permanent_failure_writes_one_failed_record_and_returns(simulator: FineTuningSimulator, call_queue) -> None:
    call = call_queue("ftjob-unknown0000")
    assert call.raised is None
    record = call.record
    assert record["outcome"] == "failed" and record["status_code"] == 404 and record["retryable"] is False
    assert record["error"]["code"] == "notFound"


# --- invalid message ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "job_id"),
    [
        (b"not a job id", "not a job id"),
        (b"ftjob-a/../b", "ftjob-a/../b"),
        (b'{"job": "ftjob-abc"}', None),
        (b"{broken json", None),
        (b"\x00\xff\xfe", None),
        ("x" * 300, "x" * 200),
    ],
)
def test_invalid_message_writes_one_rejected_record_without_any_outbound_request(
    simulator: FineTuningSimulator, vault: KeyVaultEmulator, call_queue, body, job_id
) -> None:
    call = call_queue(body, dequeue_count=1)
    assert call.raised is None
    record = call.record
    assert record["outcome"] == "rejected" and record["status_code"] == 400 and record["retryable"] is False
    assert record["error"]["code"] == "invalidPayload"
    assert record["job_id"] == job_id and record["attempts"] == 0
    assert len(record["error"]["message"]) <= 300
    assert simulator.requests == [] and vault.read_count() == 0


# --- retryable failure before the last attempt ---------------------------------------------


@pytest.mark.parametrize("dequeue_count", range(1, MAX_DEQUEUE_COUNT))
def test_retryable_failure_before_last_attempt_raises_and_writes_nothing(
    simulator: FineTuningSimulator, call_queue, monkeypatch, dequeue_count: int
) -> None:
    monkeypatch.setenv("UPSTREAM_MAX_RETRIES", "0")
    simulator.fail_next(status=503)
    call = call_queue(simulator.create_job()["id"], dequeue_count=dequeue_count)
    assert call.raised is not None and call.output.values == []
    assert f"attempt {dequeue_count} of {MAX_DEQUEUE_COUNT}" in str(call.raised)


def test_key_vault_outage_before_last_attempt_raises(
    simulator: FineTuningSimulator, vault: KeyVaultEmulator, call_queue
) -> None:
    vault.set_available(False)
    call = call_queue(simulator.create_job()["id"], dequeue_count=1)
    assert call.raised is not None and call.output.values == []


# --- retryable failure on the final attempt ------------------------------------------------


@pytest.mark.parametrize("dequeue_count", [MAX_DEQUEUE_COUNT, MAX_DEQUEUE_COUNT + 3])
def test_retryable_failure_on_final_attempt_writes_one_failed_retryable_record(
    simulator: FineTuningSimulator, call_queue, monkeypatch, dequeue_count: int
) -> None:
    monkeypatch.setenv("UPSTREAM_MAX_RETRIES", "0")
    simulator.fail_next(status=429, headers={"retry-after": "3"})
    call = call_queue(simulator.create_job()["id"], dequeue_count=dequeue_count)
    assert call.raised is None
    record = call.record
    assert record["outcome"] == "failed" and record["retryable"] is True and record["status_code"] == 429
    assert record["dequeue_count"] == dequeue_count and record["error"]["code"] == "tooManyRequests"


def test_a_message_retried_by_the_host_ends_in_exactly_one_record(simulator: FineTuningSimulator, call_queue) -> None:
    """Outage on the first two deliveries, success on the third: one record in all."""
    job = simulator.create_job()
    simulator.fail_next(8, status=503, headers={"retry-after-ms": "1"})  # 4 calls per delivery
    calls = [call_queue(job["id"], dequeue_count=n) for n in (1, 2, 3)]
    assert [c.raised is not None for c in calls] == [True, True, False]
    assert sum(len(c.output.values) for c in calls) == 1
    assert calls[2].record["outcome"] == "cancelled" and calls[2].record["dequeue_count"] == 3


def test_record_request_id_is_the_message_id_so_redeliveries_can_be_deduplicated(
    simulator: FineTuningSimulator, call_queue
) -> None:
    job = simulator.create_job()["id"]
    first = call_queue(job, message_id="6b0a4c1e-0000-4000-8000-000000000001")
    again = call_queue(job, message_id="6b0a4c1e-0000-4000-8000-000000000001", dequeue_count=2)
    rejected = call_queue("nope", message_id="6b0a4c1e-0000-4000-8000-000000000002")
    assert first.record["request_id"] == again.record["request_id"] == "6b0a4c1e-0000-4000-8000-000000000001"
    assert rejected.record["request_id"] == "6b0a4c1e-0000-4000-8000-000000000002"
