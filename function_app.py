"""The function app: HTTP and queue triggers that cancel Azure OpenAI fine-tuning jobs.

Each trigger reads its input, makes one call into `shared`, and turns the result records into
its answer; every request or message ends in one record per job on the results queue, which
`shared` writes itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import azure.functions as func

from shared.answers import HttpAnswer, bulk_answer
from shared.bulk import cancel_many
from shared.contract import max_dequeue_count
from shared.health import health
from shared.sdk_logging import quiet_sdk_request_logs
from shared.triggers import cancel_from_http, handle_queue_message, write_records


class CancelFunctionApp(func.FunctionApp):
    """A FunctionApp that can be indexed more than once (by the host, a local runner, tests)."""

    def get_functions(self) -> list[func.Function]:
        # azure-functions 1.2x remembers names across calls and takes a second indexing for duplicates.
        self.functions_bindings = {}
        return super().get_functions()


app = CancelFunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
quiet_sdk_request_logs()  # the worker logs at INFO: without this, two SDK log lines per storage call

MAX_DEQUEUE_COUNT = max_dequeue_count(Path(__file__).with_name("host.json"))

# Records go to %CANCEL_RESULTS_QUEUE% from shared.results_queue, not through an output binding:
# a binding would re-format them and let them expire after 7 days (see that module's docstring).


@app.function_name("cancel_job_http")
@app.route(route="openai/fine_tuning/jobs/{job_id}/cancel", methods=["POST"])
def cancel_job_http(req: func.HttpRequest) -> func.HttpResponse:
    """POST /api/openai/fine_tuning/jobs/{job_id}/cancel, answered like Azure OpenAI's own route."""
    return _cancel_one(req)


@app.function_name("cancel_job_http_v1")
@app.route(route="openai/v1/fine_tuning/jobs/{job_id}/cancel", methods=["POST"])
def cancel_job_http_v1(req: func.HttpRequest) -> func.HttpResponse:
    """POST /api/openai/v1/fine_tuning/jobs/{job_id}/cancel: the same, for v1 clients (`OpenAI(base_url=...)`)."""
    return _cancel_one(req)


@app.function_name("cancel_job_http_resource")
@app.route(route="resources/{resource}/openai/fine_tuning/jobs/{job_id}/cancel", methods=["POST"])
def cancel_job_http_resource(req: func.HttpRequest) -> func.HttpResponse:
    """POST /api/resources/{resource}/openai/fine_tuning/jobs/{job_id}/cancel: on a named resource."""
    return _cancel_one(req)


@app.function_name("cancel_job_http_resource_v1")
@app.route(route="resources/{resource}/openai/v1/fine_tuning/jobs/{job_id}/cancel", methods=["POST"])
def cancel_job_http_resource_v1(req: func.HttpRequest) -> func.HttpResponse:
    """POST /api/resources/{resource}/openai/v1/fine_tuning/jobs/{job_id}/cancel: the v1 form."""
    return _cancel_one(req)


@app.function_name("cancel_job_queue")
@app.queue_trigger(arg_name="msg", queue_name="%CANCEL_REQUESTS_QUEUE%", connection="AzureWebJobsStorage")
def cancel_job_queue(msg: func.QueueMessage) -> None:
    """One message of the request queue: a job id or {"job_id": ...}, plain or base64."""
    handle_queue_message(
        msg.get_body(), dequeue_count=msg.dequeue_count, message_id=msg.id, max_dequeue_count=MAX_DEQUEUE_COUNT
    )


@app.function_name("cancel_jobs_bulk")
@app.route(route="cancel", methods=["POST"])
def cancel_jobs_bulk(req: func.HttpRequest) -> func.HttpResponse:
    """POST /api/cancel with {"job_ids": [...]}: up to 100 jobs, answered in input order."""
    bulk = cancel_many(
        req.get_body(),
        principal=(req.headers.get("x-ms-client-principal-id"), req.headers.get("x-ms-client-principal-name")),
    )
    not_written = write_records(bulk.queued)
    return _http_response(bulk_answer(bulk.status_code, bulk.records, error=bulk.error, not_written=not_written))


@app.function_name("health")
@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health_check(req: func.HttpRequest) -> func.HttpResponse:
    """GET /api/health: are the settings valid? Contacts neither Key Vault nor upstream."""
    status_code, body = health()
    return func.HttpResponse(json.dumps(body), status_code=status_code, mimetype="application/json")


def _cancel_one(req: func.HttpRequest) -> func.HttpResponse:
    answer = cancel_from_http(
        req.route_params.get("job_id"),
        req.headers.get("x-correlation-id"),
        req.params.get("wait_seconds"),
        resource=req.route_params.get("resource"),
        principal=(req.headers.get("x-ms-client-principal-id"), req.headers.get("x-ms-client-principal-name")),
    )
    return _http_response(answer)


def _http_response(answer: HttpAnswer) -> func.HttpResponse:
    return func.HttpResponse(
        answer.body, status_code=answer.status_code, headers=answer.headers, mimetype="application/json"
    )


# The guard's modules are imported when a guard function first runs, not with the app: a cold start
# that only cancels does not load them (about 25 ms of a cold start, docs/benchmarks.md).


@app.function_name("guard_cancel_active")
@app.route(route="guard/cancel-active", methods=["POST"])
def guard_cancel_active(req: func.HttpRequest) -> func.HttpResponse:
    """POST /api/guard/cancel-active: the kill switch; enqueues a cancel of every active job asked for."""
    from shared.guard import cancel_active

    return _http_response(cancel_active(req.get_body()))


@app.function_name("guard_budget_alert")
@app.route(route="guard/budget-alert", methods=["POST"])
def guard_budget_alert(req: func.HttpRequest) -> func.HttpResponse:
    """POST /api/guard/budget-alert: an Azure budget alert, acted on as GUARD_POLICY's on_budget_alert says."""
    from shared.guard import budget_alert

    return _http_response(budget_alert(req.get_body()))


@app.function_name("guard_sweep")
@app.timer_trigger(arg_name="timer", schedule="%GUARD_SCHEDULE%")
def guard_sweep(timer: func.TimerRequest) -> None:
    """The guard's sweep on %GUARD_SCHEDULE% (six-field NCRONTAB, UTC): each breaker of GUARD_POLICY enqueued once.

    The host refuses to index this function when GUARD_SCHEDULE is unset, and runs the others (see README,
    "Guardrails"); without GUARD_POLICY the sweep lists nothing.
    """
    from shared.guard import sweep

    sweep()
