"""The function app end to end: real HTTP to the local runner, real Azurite queues, emulated upstream."""

from __future__ import annotations

import openai
import pytest
import requests

from devstack.openai_sim import FineTuningSimulator

pytestmark = pytest.mark.e2e


def test_http_cancel_answers_the_job_and_writes_one_record(start_local_app, simulator: FineTuningSimulator):
    app = start_local_app()
    job = simulator.create_job(status="running")

    response = requests.post(app.cancel_url(job["id"]), headers={"x-functions-key": app.function_key}, timeout=30)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["id"] == job["id"]
    assert response.json()["status"] == "cancelled"
    [record] = app.wait_for_records(1)
    assert (record["trigger"], record["outcome"], record["status_code"]) == ("http", "cancelled", 200)
    assert record["request_id"] == response.headers["x-request-id"]
    assert simulator.job(job["id"])["status"] == "cancelled"


@pytest.mark.parametrize("credentials", [{}, {"headers": {"x-functions-key": "wrong"}}, {"params": {"code": "wrong"}}])
def test_http_cancel_without_the_function_key_is_refused_before_the_function_runs(
    start_local_app, simulator: FineTuningSimulator, credentials
):
    app = start_local_app()
    job = simulator.create_job(status="running")

    response = requests.post(app.cancel_url(job["id"]), timeout=30, **credentials)

    assert response.status_code == 401
    assert simulator.job(job["id"])["status"] == "running"
    assert simulator.requests == []


def test_http_cancel_takes_the_key_as_code_query_parameter(start_local_app, simulator: FineTuningSimulator):
    app = start_local_app()
    job = simulator.create_job(status="running")

    response = requests.post(app.cancel_url(job["id"]), params={"code": app.function_key}, timeout=30)

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"


def test_queue_cancel_writes_one_record_and_deletes_the_message(start_local_app, simulator: FineTuningSimulator):
    app = start_local_app()
    job = simulator.create_job(status="running")

    app.enqueue(f'{{"job_id": "{job["id"]}", "correlation_id": "e2e-queue"}}')

    [record] = app.wait_for_records(1)
    assert (record["trigger"], record["outcome"], record["job_id"]) == ("queue", "cancelled", job["id"])
    assert record["correlation_id"] == "e2e-queue"
    assert record["dequeue_count"] == 1
    assert record["job"]["status"] == "cancelled"
    assert simulator.job(job["id"])["status"] == "cancelled"
    assert app.messages_left() == 0


def test_always_503_upstream_is_retried_max_dequeue_count_times_then_one_failed_record(
    start_local_app, simulator: FineTuningSimulator, host_settings
):
    app = start_local_app(UPSTREAM_MAX_RETRIES="0")  # one upstream call per attempt: attempts = dequeues
    job = simulator.create_job(status="running")
    simulator.fail_next(1000, status=503)

    app.enqueue(job["id"])

    [record] = app.wait_for_records(1, timeout=60)
    assert record["outcome"] == "failed"
    assert record["retryable"] is True
    assert record["status_code"] == 503
    assert record["error"]["code"] == "serviceUnavailable"
    assert record["dequeue_count"] == host_settings.max_dequeue_count == 5
    cancels = [r for r in simulator.requests if r.method == "POST" and r.path.endswith("/cancel")]
    assert len(cancels) == host_settings.max_dequeue_count
    assert app.messages_left() == 0
    assert app.messages_left(app.queue(app.requests_queue.queue_name + "-poison")) == 0
    assert app.results_queue.peek_messages() == []  # exactly one record


def test_invalid_message_is_rejected_once_without_retry_or_upstream_call(
    start_local_app, simulator: FineTuningSimulator
):
    app = start_local_app()

    app.enqueue("please cancel ftjob-abc/../x")

    [record] = app.wait_for_records(1)
    assert record["outcome"] == "rejected"
    assert record["dequeue_count"] == 1
    assert record["error"]["code"] == "invalidPayload"
    assert "please cancel ftjob-abc/../x" in record["error"]["message"]
    assert simulator.requests == []
    assert app.messages_left() == 0
    assert app.results_queue.peek_messages() == []


def test_openai_sdk_cancels_through_the_function_with_a_function_key(start_local_app, simulator: FineTuningSimulator):
    app = start_local_app()
    job = simulator.create_job(status="running")
    client = openai.AzureOpenAI(
        azure_endpoint=app.api_url,
        api_key="not-used-the-function-reads-the-real-key-from-key-vault",
        api_version="2024-10-21",
        default_headers={"x-functions-key": app.function_key},
        max_retries=0,
    )

    cancelled = client.fine_tuning.jobs.cancel(job["id"])

    assert isinstance(cancelled, openai.types.fine_tuning.FineTuningJob)
    assert (cancelled.id, cancelled.status) == (job["id"], "cancelled")
    [record] = app.wait_for_records(1)
    assert record["outcome"] == "cancelled"
