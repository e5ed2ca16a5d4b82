"""What the triggers call: a request read and validated, cancelled within its time budget, and recorded.

`cancel_from_http` answers the single-job HTTP routes, `handle_queue_message` one message of the
request queue, and `cancel_requests` the validated requests of either (and of the bulk route,
`shared.bulk`). Every request ends in one record, logged here and written to the results queue.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from shared.answers import HttpAnswer, record_answer
from shared.cancel import Cancelling, current_service
from shared.contract import RetryLater, misconfigured_ending, rejected_error, should_retry_message
from shared.records import (
    CancelRequest,
    InvalidRequest,
    Outcome,
    ResultRecord,
    Trigger,
    cut_for_record,
    parse_queue_message,
    utc_now,
    validate_correlation_id,
    validate_job_id,
    validate_resource,
    validate_wait_seconds,
)
from shared.results_queue import RecordNotWritten, results_queue
from shared.settings import SettingsError, load_settings

logger = logging.getLogger(__name__)

LOGGED_MESSAGE_LENGTH = 500  # an upstream error message may be huge; a log line is not the place for all of it
MAX_REQUEST_SECONDS = 200  # a whole request: Azure's front end drops an HTTP request after 230 s


def cancel_from_http(
    job_id: object,
    correlation_id: object,
    wait_seconds: object = None,
    *,
    resource: object = None,
    principal: tuple[str | None, str | None] = (None, None),
) -> HttpAnswer:
    """The HTTP trigger's request: route's resource and job id, `x-correlation-id` header, `wait_seconds` query.

    The record goes to the results queue, and the answer says so when it could not. `principal` is the
    `x-ms-client-principal-id` and `-name` headers: the record's `caller` when App Service Authentication
    is on (only then does the platform set them; otherwise anyone could).
    """
    received_at = utc_now()
    caller = caller_of(principal)
    try:
        request = CancelRequest(
            resource=validate_resource(resource, allowed_resources()),  # before the job id
            job_id=validate_job_id(job_id),
            trigger=Trigger.HTTP,
            correlation_id=validate_correlation_id(correlation_id),
            wait_seconds=validate_wait_seconds(wait_seconds, from_query=True),
            caller=caller,
            received_at=received_at,
        )
    except InvalidRequest as err:
        readable_job_id = err.job_id if err.target == "job_id" else cut_for_record(str(job_id))
        record = rejected_record(err, Trigger.HTTP, received_at, job_id=readable_job_id, caller=caller)
        return record_answer(record, write_records([record]))
    [(record, retry_after)] = _cancel_and_wait([request], wait_seconds=request.wait_seconds)
    return record_answer(record, write_records([record]), retry_after=retry_after)


def handle_queue_message(
    body: bytes, *, dequeue_count: int | None, message_id: str | None, max_dequeue_count: int
) -> ResultRecord:
    """One message of the request queue, in any form CONTRACT section 4 allows, ended in one record or `RetryLater`.

    Retryable failures before the last delivery raise (no record); so does a record the results queue
    would not take, since the message's next delivery will write it (a cancelled job cancels again safely).
    The record's `request_id` is the queue message id, so a redelivered message's record can be told apart.
    """
    received_at = utc_now()
    try:
        request = parse_queue_message(
            body, dequeue_count=dequeue_count, request_id=message_id, resources=allowed_resources()
        )
    except InvalidRequest as err:
        record = rejected_record(
            err, Trigger.QUEUE, received_at, job_id=err.job_id, dequeue_count=dequeue_count, request_id=message_id
        )
    else:
        [record] = cancel_requests([request], wait_seconds=request.wait_seconds)
    attempt = f"message {message_id} attempt {dequeue_count} of {max_dequeue_count}"
    if should_retry_message(record.retryable, dequeue_count=dequeue_count, max_dequeue_count=max_dequeue_count):
        raise RetryLater(f"{attempt}: {record.error['message'] if record.error else record.outcome.value}")
    not_written = write_records([record])
    if not_written is not None:
        raise RetryLater(f"{attempt}: {not_written.message}") from not_written
    return record


def cancel_requests(
    requests: Sequence[CancelRequest], *, wait_seconds: float, concurrency: int = 1
) -> list[ResultRecord]:
    """Cancel validated requests within one request's time budget, then wait for them together.

    Every cancel ends by `UPSTREAM_DEADLINE_SECONDS` after the first began, and the wait that follows
    lasts `wait_seconds` at most in all; neither runs past MAX_REQUEST_SECONDS, well inside the 230 s
    after which Azure's front end drops an HTTP request and inside host.json's functionTimeout.
    """
    return [record for record, _ in _cancel_and_wait(requests, wait_seconds=wait_seconds, concurrency=concurrency)]


def _cancel_and_wait(
    requests: Sequence[CancelRequest], *, wait_seconds: float, concurrency: int = 1
) -> list[tuple[ResultRecord, float | None]]:
    """`cancel_requests`, each record with the wait its HTTP answer advises before a retry."""
    try:
        service = current_service()
    except SettingsError as err:
        cancels = [Cancelling(request, misconfigured_ending(err)) for request in requests]
    else:
        started = service.clock()
        budget_ends = started + MAX_REQUEST_SECONDS
        deadline = min(started + service.settings.upstream_deadline_seconds, budget_ends)
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="cancel") as pool:
            map_calls = pool.map if concurrency > 1 else map
            cancels = list(map_calls(lambda request: service.start(request, deadline=deadline), requests))
            if wait_seconds > 0:
                until = min(service.clock() + wait_seconds, budget_ends)
                cancels = service.wait_until_final(cancels, until, map_calls=map_calls)
    return [(_log_end(cancel.record()), cancel.ending.retry_after) for cancel in cancels]


def write_records(records: Iterable[ResultRecord]) -> RecordNotWritten | None:
    """Send each record to the results queue; the first failure, if any (the others are still tried)."""
    first_failure: RecordNotWritten | None = None
    for record in records:
        try:
            results_queue().send(record.to_json())
        except RecordNotWritten as err:
            logger.error("record of %s (request %s) not written: %s", record.job_id, record.request_id, err.message)
            first_failure = first_failure or err
    return first_failure


def allowed_resources() -> Collection[str] | None:
    """The allow-list of resource names; None while the settings are bad (every cancel then says so)."""
    try:
        return load_settings().resources.keys()
    except SettingsError:
        return None


def caller_of(principal: tuple[str | None, str | None]) -> dict[str, str | None] | None:
    """Who asked, from App Service Authentication's headers, trusted only while it is on (`WEBSITE_AUTH_ENABLED`)."""
    principal_id, name = principal
    try:
        platform_auth = load_settings().platform_auth
    except SettingsError:
        return None
    if not platform_auth or (principal_id is None and name is None):
        return None
    return {"id": _header_text(principal_id), "name": _header_text(name)}


def _header_text(value: str | None) -> str | None:
    return cut_for_record(value) if value is not None else None


def rejected_record(
    err: InvalidRequest,
    trigger: Trigger,
    received_at: datetime,
    *,
    job_id: str | None,
    dequeue_count: int | None = None,
    request_id: str | None = None,
    caller: dict[str, str | None] | None = None,
    correlation_id: str | None = None,
) -> ResultRecord:
    """The `rejected` record of a request that could not be read (logged)."""
    return _log_end(
        ResultRecord(
            job_id=job_id,
            outcome=Outcome.REJECTED,
            status_code=400,
            trigger=trigger,
            request_id=request_id or str(uuid.uuid4()),
            received_at=received_at,
            error=rejected_error(err),
            correlation_id=correlation_id,
            dequeue_count=dequeue_count,
            resource=err.resource,
            caller=caller,
        )
    )


def _log_end(record: ResultRecord) -> ResultRecord:
    """Log how the request ended: INFO, or WARNING when it failed. Returns the record."""
    logger.log(
        logging.WARNING if record.outcome is Outcome.FAILED else logging.INFO,
        "cancel %s: %s (%d) after %d upstream call(s); request %s, upstream request %s; %s",
        record.job_id,
        record.outcome.value,
        record.status_code,
        record.attempts,
        record.request_id,
        record.upstream_request_id,
        record.error["message"][:LOGGED_MESSAGE_LENGTH] if record.error else "ok",
    )
    return record
