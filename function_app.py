"""The function app: HTTP and queue triggers that cancel Azure OpenAI fine-tuning jobs.

Each trigger reads its input, makes one call into `shared`, and turns the result records into
its answer; every request or message ends in one record per job on the results queue.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path

import azure.functions as func

from shared.bulk import cancel_many
from shared.cancel import cancel_from_http, cancel_from_queue, max_dequeue_count, should_retry_message
from shared.health import health
from shared.records import ResultRecord


class CancelFunctionApp(func.FunctionApp):
    """A FunctionApp that can be indexed more than once (by the host, a local runner, tests)."""

    def get_functions(self) -> list[func.Function]:
        # azure-functions 1.2x remembers names across calls and takes a second indexing for duplicates.
        self.functions_bindings = {}
        return super().get_functions()


app = CancelFunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

MAX_DEQUEUE_COUNT = max_dequeue_count(Path(__file__).with_name("host.json"))


class RetryLater(Exception):
    """Raised so the host makes the message visible again and retries it."""


@app.function_name("cancel_job_http")
@app.route(route="openai/fine_tuning/jobs/{job_id}/cancel", methods=["POST"])
@app.queue_output(arg_name="results", queue_name="%CANCEL_RESULTS_QUEUE%", connection="AzureWebJobsStorage")
def cancel_job_http(req: func.HttpRequest, results: func.Out[str]) -> func.HttpResponse:
    """POST /api/openai/fine_tuning/jobs/{job_id}/cancel, answered like Azure OpenAI's own route."""
    record = cancel_from_http(
        req.route_params.get("job_id"), req.headers.get("x-correlation-id"), req.params.get("wait_seconds")
    )
    results.set(record.to_json())
    return _http_response(record)


@app.function_name("cancel_job_queue")
@app.queue_trigger(arg_name="msg", queue_name="%CANCEL_REQUESTS_QUEUE%", connection="AzureWebJobsStorage")
@app.queue_output(arg_name="results", queue_name="%CANCEL_RESULTS_QUEUE%", connection="AzureWebJobsStorage")
def cancel_job_queue(msg: func.QueueMessage, results: func.Out[str]) -> None:
    """One message of the request queue: a job id or {"job_id": ...}, plain or base64."""
    record = cancel_from_queue(msg.get_body(), dequeue_count=msg.dequeue_count, message_id=msg.id)
    if should_retry_message(record, dequeue_count=msg.dequeue_count, max_dequeue_count=MAX_DEQUEUE_COUNT):
        raise RetryLater(
            f"message {msg.id} attempt {msg.dequeue_count} of {MAX_DEQUEUE_COUNT}: {record.error['message']}"
        )
    results.set(record.to_json())


@app.function_name("cancel_jobs_bulk")
@app.route(route="cancel", methods=["POST"])
@app.queue_output(arg_name="results", queue_name="%CANCEL_RESULTS_QUEUE%", connection="AzureWebJobsStorage")
# typing.List: the Python worker refuses to load func.Out[list[str]] (azure-functions-python-worker#1034).
def cancel_jobs_bulk(req: func.HttpRequest, results: func.Out[typing.List[str]]) -> func.HttpResponse:  # noqa: UP006
    """POST /api/cancel with {"job_ids": [...]}: up to 100 jobs, answered in input order."""
    bulk = cancel_many(req.get_body())
    results.set([record.to_json() for record in bulk.queued])
    body = {"error": bulk.error} if bulk.error else {"results": [record.to_dict() for record in bulk.records]}
    return _json_response(body, bulk.status_code, {"x-request-id": bulk.records[0].request_id} if bulk.error else {})


@app.function_name("health")
@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health_check(req: func.HttpRequest) -> func.HttpResponse:
    """GET /api/health: are the settings valid? Contacts neither Key Vault nor upstream."""
    status_code, body = health()
    return _json_response(body, status_code)


def _http_response(record: ResultRecord) -> func.HttpResponse:
    body = {"error": record.error} if record.error is not None else record.job
    headers = {"x-request-id": record.request_id}
    if record.retry_after_seconds is not None:
        headers["Retry-After"] = str(record.retry_after_seconds)
    return _json_response(body, record.status_code, headers)


def _json_response(body: object, status_code: int, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body), status_code=status_code, headers=headers, mimetype="application/json")
