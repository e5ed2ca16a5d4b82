"""CONTRACT sections 3 and 4 as code: how a cancel ends, from upstream's reply or the error that stopped it.

    situation (CONTRACT section 3)                  outcome            status  error code              retryable
    upstream 2xx with the job                       cancelled          200     -                       no
    upstream 400/409, GET says `cancelled`          already_terminal   200     -                       no
    upstream 400/409, GET says succeeded/failed     already_terminal   409     unexpectedEntityState   no
    upstream 404 or another 4xx                     failed             same    upstream's own          no
    upstream 5xx (not retried: 501, 505 ...)        failed             503     serviceUnavailable      yes
    an error of `shared.errors`                     failed             ERROR_ROWS below
    a bad app setting                               failed             503     serviceUnavailable      yes (30 s)
    an invalid request                              rejected           400     invalidPayload          no

A retryable ending carries the wait the HTTP answer advises (`Retry-After`, see `shared.answers`).
Section 4: a queue message whose ending is retryable raises (no record) until its last delivery.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import CancelError, CredentialUnavailable, KeyRefused, RetryableStatus, UnreadableBody
from shared.records import InvalidRequest, Outcome
from shared.settings import SettingsError
from shared.upstream import UpstreamReply

TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
MISCONFIGURED_RETRY_AFTER_SECONDS = 30
# The host's own default when host.json sets none (azure-webjobs-sdk
# src/Microsoft.Azure.WebJobs.Extensions.Storage/Queues/Config/QueuesOptions.cs, DefaultMaxDequeueCount).
DEFAULT_MAX_DEQUEUE_COUNT = 5

# The errors of `shared.errors`, first match wins: an error of this class (and status, None for any) ends with
# this answer status, error code and message; whether it is retryable, and after how long, is the error's own.
#    error class             status   answer  error code             message
ERROR_ROWS: tuple[tuple[type[CancelError], int | None, int, str, str], ...] = (
    (KeyRefused,             401,     502,    "unauthorized",        "{message}"),
    (KeyRefused,             None,    502,    "forbidden",           "{message}"),
    (UnreadableBody,         None,    502,    "internalFailure",     "{message}"),
    (RetryableStatus,        429,     429,    "tooManyRequests",     "Azure OpenAI is throttling requests: {message}"),
    (CredentialUnavailable,  None,    503,    "serviceUnavailable",  "{message}"),
    (CancelError,            None,    503,    "serviceUnavailable",  "Azure OpenAI is unavailable: {message}"),
)  # fmt: skip


@dataclass(frozen=True)
class Ending:
    """How one cancel ended: the record's outcome, status, job and error, and the wait to advise a retry after."""

    outcome: Outcome
    status_code: int
    job: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    retryable: bool = False
    retry_after: float | None = None  # seconds; only when retryable


def needs_confirmation(reply: UpstreamReply) -> bool:
    """Upstream refuses to cancel a finished job with 400 or 409; a GET of the job says whether that is why."""
    return reply.status in (400, 409)


def reply_ending(reply: UpstreamReply, job_id: str, *, current: UpstreamReply | None = None) -> Ending:
    """The ending of upstream's answer to the cancel; `current` is the GET that confirms a refusal."""
    try:
        if 200 <= reply.status < 300:
            return Ending(Outcome.CANCELLED, 200, job=_job_body(reply, job_id))
        if reply.status >= 500:  # 501, 505 ...: not retried (section 6), but still a 503 (section 3)
            raise RetryableStatus(
                f"Azure OpenAI answered {reply.status}", status=reply.status, request_id=reply.request_id, retry_after=1
            )
        job = current.body if current is not None and current.status == 200 and is_job(current.body, job_id) else None
        state = job.get("status") if job else None
        if state == "cancelled":
            return Ending(Outcome.ALREADY_TERMINAL, 200, job=job)
        if state in TERMINAL_STATES:
            error = {
                "code": "unexpectedEntityState",
                "message": f"job {job_id} has already {state}; a finished job cannot be cancelled",
                "target": "job_id",
            }
            return Ending(Outcome.ALREADY_TERMINAL, 409, job=job, error=error)
        return Ending(Outcome.FAILED, reply.status, error=_upstream_error(reply))
    except CancelError as err:
        return error_ending(err)


def error_ending(err: CancelError) -> Ending:
    """The ending of a cancel stopped by one of the errors of `shared.errors` (ERROR_ROWS)."""
    for kind, status, status_code, code, message in ERROR_ROWS:
        if isinstance(err, kind) and status in (None, getattr(err, "status", None)):
            error = {"code": code, "message": message.format(message=err.message)}
            retry_after = err.retry_after if err.retryable else None
            return Ending(Outcome.FAILED, status_code, error=error, retryable=err.retryable, retry_after=retry_after)
    raise AssertionError("the last row matches every CancelError")


def misconfigured_ending(err: SettingsError) -> Ending:
    """The ending of every cancel while an app setting is bad: retry once it is fixed."""
    error = {"code": "serviceUnavailable", "message": f"the function app is misconfigured: {err}", "target": err.name}
    return Ending(Outcome.FAILED, 503, error=error, retryable=True, retry_after=MISCONFIGURED_RETRY_AFTER_SECONDS)


def rejected_error(err: InvalidRequest) -> dict[str, Any]:
    """The error of a `rejected` record (400 `invalidPayload`)."""
    return {"code": "invalidPayload", "message": err.message, "target": err.target}


def is_job(body: object, job_id: str) -> bool:
    """Whether an answer's body is the FineTuningJob asked for: its `id` is the job's, its `status` a string."""
    return isinstance(body, dict) and body.get("id") == job_id and isinstance(body.get("status"), str)


def is_final(ending: Ending) -> bool:
    """Whether waiting for the cancel to take is over: it was not cancelled, or its job is in a final state."""
    return ending.outcome is not Outcome.CANCELLED or (ending.job or {}).get("status") in TERMINAL_STATES


# --- CONTRACT section 4: the queue trigger ---------------------------------------------------------


class RetryLater(Exception):
    """Raised from the queue trigger so the host makes the message visible again and retries it."""


def should_retry_message(retryable: bool, *, dequeue_count: int | None, max_dequeue_count: int) -> bool:
    """Whether the queue trigger raises (no record) so the host retries the message: retryable, not the last try."""
    return retryable and (dequeue_count or 1) < max_dequeue_count


def max_dequeue_count(host_json: Path) -> int:
    """`extensions.queues.maxDequeueCount` from host.json: the single source of that number."""
    try:
        config = json.loads(host_json.read_text(encoding="utf-8"))
        return int(config.get("extensions", {}).get("queues", {}).get("maxDequeueCount", DEFAULT_MAX_DEQUEUE_COUNT))
    except FileNotFoundError:
        return DEFAULT_MAX_DEQUEUE_COUNT


def _job_body(reply: UpstreamReply, job_id: str) -> dict[str, Any]:
    if not is_job(reply.body, job_id):
        raise UnreadableBody(
            _unexpected_body(reply, f"fine-tuning job {job_id}"), status=reply.status, request_id=reply.request_id
        )
    return reply.body


def _upstream_error(reply: UpstreamReply) -> dict[str, Any]:
    """Upstream's own `error` object, passed through as it came."""
    error = reply.body.get("error") if isinstance(reply.body, dict) else None
    if not isinstance(error, dict) or not all(_non_empty_text(error.get(name)) for name in ("code", "message")):
        raise UnreadableBody(
            _unexpected_body(reply, "an error response"), status=reply.status, request_id=reply.request_id
        )
    return error


def _non_empty_text(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def _unexpected_body(reply: UpstreamReply, expected: str) -> str:
    kind = "no JSON" if reply.body is None else f"JSON {type(reply.body).__name__}"
    content_type = reply.content_type[:100] or "no content type"
    return f"Azure OpenAI answered {reply.status} with {content_type} ({kind}), not {expected}"
