"""The cancel service: one request in, one result record out (CONTRACT sections 3 to 5).

`cancel_from_http` and `cancel_from_queue` are the two entry points the triggers call. They
validate the input before anything leaves the process, then fetch the api-key, call
upstream, confirm an "already terminal" refusal with a GET, and describe the end in a
`ResultRecord` that also says which HTTP answer the HTTP trigger gives.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from shared.api_key import ApiKeySource
from shared.errors import CancelError, CredentialUnavailable, KeyRefused, RetryableStatus, UnreadableBody
from shared.records import (
    CancelRequest,
    InvalidRequest,
    Outcome,
    ResultRecord,
    Trigger,
    parse_queue_message,
    shorten,
    utc_now,
    validate_correlation_id,
    validate_job_id,
    validate_resource,
    validate_wait_seconds,
)
from shared.results_queue import RecordNotWritten, results_queue
from shared.resource_client import ResourceClient
from shared.settings import DEFAULT_RESOURCE, Settings, SettingsError, load_settings
from shared.upstream import CallTrace, UpstreamReply

logger = logging.getLogger(__name__)

TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
FIRST_POLL_DELAY = 0.5  # waiting for a cancel to take: GET after 0.5 s, 1 s, 2 s ... 5 s apart
MAX_POLL_DELAY = 5.0
MISCONFIGURED_RETRY_AFTER_SECONDS = 30
LOGGED_MESSAGE_LENGTH = 500  # an upstream error message may be huge; a log line is not the place for all of it
MAX_REQUEST_SECONDS = 200  # a whole request: Azure's front end drops an HTTP request after 230 s
DEFAULT_MAX_DEQUEUE_COUNT = 5  # the host's own default when host.json sets none


class CancelService:
    """Cancels fine-tuning jobs on the allow-listed resources; one per process and configuration."""

    def __init__(self, settings: Settings, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self._sleep = sleep
        self.clients = {
            name: ResourceClient(settings, resource, sleep=sleep) for name, resource in settings.resources.items()
        }

    @property
    def api_keys(self) -> ApiKeySource:
        """The `default` resource's api-key source (api-key mode only)."""
        credentials = self.clients[DEFAULT_RESOURCE].credentials
        assert isinstance(credentials, ApiKeySource)
        return credentials

    def cancel(self, request: CancelRequest, *, deadline: float | None = None) -> ResultRecord:
        """Cancel one job and describe how it ended; never raises for an upstream or vault failure.

        `deadline` (monotonic) ends the cancel sooner than `UPSTREAM_DEADLINE_SECONDS` would, for a
        request that cancels many jobs within one time budget.
        """
        trace = CallTrace()
        own_deadline = time.monotonic() + self.settings.upstream_deadline_seconds
        deadline = own_deadline if deadline is None else min(deadline, own_deadline)
        try:
            record = self._cancel(request, trace, deadline)
        except CancelError as err:
            record = _failure_record(request, err)
        record.attempts = trace.attempts
        record.upstream_request_id = trace.upstream_request_id
        return record

    def _cancel(self, request: CancelRequest, trace: CallTrace, deadline: float) -> ResultRecord:
        job_id = request.job_id
        client = self.clients[request.resource]  # the name was checked against the allow-list
        reply = client.cancel_job(job_id, deadline=deadline, trace=trace)
        if 200 <= reply.status < 300:
            return _record(request, Outcome.CANCELLED, 200, job=_job_body(reply, job_id))
        if reply.status >= 500:  # 501, 505 ...: not retried here (section 6), but still a 503 (section 3)
            raise RetryableStatus(
                f"Azure OpenAI answered {reply.status}", status=reply.status, request_id=reply.request_id, retry_after=1
            )
        if reply.status in (400, 409):
            # Upstream refuses to cancel a finished job; a GET says whether that is the reason.
            current = client.get_job(job_id, deadline=deadline, trace=trace)
            job = current.body if current.status == 200 and is_job(current.body, job_id) else None
            state = job.get("status") if job else None
            if state == "cancelled":
                return _record(request, Outcome.ALREADY_TERMINAL, 200, job=job)
            if state in TERMINAL_STATES:
                error = {
                    "code": "unexpectedEntityState",
                    "message": f"job {job_id} has already {state}; a finished job cannot be cancelled",
                    "target": "job_id",
                }
                return _record(request, Outcome.ALREADY_TERMINAL, 409, job=job, error=error)
        return _record(request, Outcome.FAILED, reply.status, error=_upstream_error(reply))

    def wait_until_final(
        self, records: Sequence[ResultRecord], until: float, *, map_calls: Callable[..., Iterable[Any]] = map
    ) -> None:
        """Poll every cancelled job that is not final yet, all in the same rounds, until `until` (monotonic).

        Rounds are 0.5 s, 1 s, 2 s ... 5 s apart; `map_calls` may poll a round's jobs in parallel. Each
        record's `waited_seconds` is how long its job was waited for.
        """
        started = time.monotonic()
        pending = [record for record in records if _still_running(record)]
        delay = FIRST_POLL_DELAY
        while pending and time.monotonic() + delay < until:
            self._sleep(delay)
            delay = min(delay * 2, MAX_POLL_DELAY)
            list(map_calls(lambda record: self._poll(record, until), pending))
            now = time.monotonic()
            for record in pending:
                if not _still_running(record):
                    record.waited_seconds = now - started
            pending = [record for record in pending if _still_running(record)]
        waited = time.monotonic() - started
        still_pending = {id(record) for record in pending}
        for record in records:
            if record.waited_seconds is None:
                record.waited_seconds = waited if id(record) in still_pending else 0.0

    def _poll(self, record: ResultRecord, until: float) -> None:
        """One GET of the record's job; the record takes the job only when the answer is that job."""
        job_id = record.job_id or ""
        trace = CallTrace()
        try:
            reply = self.clients[record.resource or DEFAULT_RESOURCE].get_job(job_id, deadline=until, trace=trace)
        except CancelError as err:
            logger.info("waiting for %s: GET failed (%s); still waiting", job_id, err.message)
            reply = None
        record.attempts += trace.attempts
        record.upstream_request_id = trace.upstream_request_id or record.upstream_request_id
        if reply is not None and reply.status == 200 and is_job(reply.body, job_id):
            record.job = reply.body


def cancel_from_http(
    job_id: object,
    correlation_id: object,
    wait_seconds: object = None,
    *,
    resource: object = None,
    principal: tuple[str | None, str | None] = (None, None),
) -> ResultRecord:
    """The HTTP trigger's request: route's resource and job id, `x-correlation-id` header, `wait_seconds` query.

    `principal` is the `x-ms-client-principal-id` and `-name` headers: the record's `caller` when App Service
    Authentication is on (only then does the platform set them; otherwise anyone could).
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
        readable_job_id = err.job_id if err.target == "job_id" else shorten(str(job_id))
        return rejected_record(err, Trigger.HTTP, received_at, job_id=readable_job_id, caller=caller)
    [record] = cancel_requests([request], wait_seconds=request.wait_seconds)
    return record


def cancel_from_queue(body: bytes, *, dequeue_count: int | None, message_id: str | None = None) -> ResultRecord:
    """The queue trigger's message body, in any of the forms CONTRACT section 4 allows.

    The record's `request_id` is the queue message id, so a redelivered message's record
    can be told from another message's.
    """
    received_at = utc_now()
    try:
        request = parse_queue_message(
            body, dequeue_count=dequeue_count, request_id=message_id, resources=allowed_resources()
        )
    except InvalidRequest as err:
        return rejected_record(
            err, Trigger.QUEUE, received_at, job_id=err.job_id, dequeue_count=dequeue_count, request_id=message_id
        )
    [record] = cancel_requests([request], wait_seconds=request.wait_seconds)
    return record


class RetryLater(Exception):
    """Raised from the queue trigger so the host makes the message visible again and retries it."""


def handle_queue_message(
    body: bytes, *, dequeue_count: int | None, message_id: str | None, max_dequeue_count: int
) -> ResultRecord:
    """One message of the request queue, ended in one record on the results queue, or `RetryLater`.

    Retryable failures before the last delivery raise (no record); so does a record the results queue
    would not take, since the message's next delivery will write it (a cancelled job cancels again safely).
    """
    record = cancel_from_queue(body, dequeue_count=dequeue_count, message_id=message_id)
    attempt = f"message {message_id} attempt {dequeue_count} of {max_dequeue_count}"
    if should_retry_message(record, dequeue_count=dequeue_count, max_dequeue_count=max_dequeue_count):
        raise RetryLater(f"{attempt}: {record.error['message'] if record.error else record.outcome.value}")
    not_written = write_records([record])
    if not_written is not None:
        raise RetryLater(f"{attempt}: {not_written.message}") from not_written
    return record


def should_retry_message(record: ResultRecord, *, dequeue_count: int | None, max_dequeue_count: int) -> bool:
    """Whether the queue trigger raises (no record) so the host retries the message."""
    return record.retryable and (dequeue_count or 1) < max_dequeue_count


def max_dequeue_count(host_json: Path) -> int:
    """`extensions.queues.maxDequeueCount` from host.json: the single source of that number."""
    try:
        config = json.loads(host_json.read_text(encoding="utf-8"))
        return int(config.get("extensions", {}).get("queues", {}).get("maxDequeueCount", DEFAULT_MAX_DEQUEUE_COUNT))
    except FileNotFoundError:
        return DEFAULT_MAX_DEQUEUE_COUNT


class _ServiceHolder:
    """The process's CancelService, rebuilt only when the configuration it was built from changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._service: CancelService | None = None

    def current(self) -> CancelService:
        settings = load_settings()
        service = self._service
        if service is not None and service.settings is settings:
            return service
        with self._lock:
            if self._service is None or self._service.settings is not settings:
                self._service = CancelService(settings)
            return self._service


_services = _ServiceHolder()


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
    return shorten(value) if value is not None else None


def current_service() -> CancelService:
    """The cancel service for this process's settings; raises `SettingsError` for a bad setting."""
    return _services.current()


def cancel_requests(
    requests: Sequence[CancelRequest], *, wait_seconds: float, concurrency: int = 1
) -> list[ResultRecord]:
    """Cancel validated requests within one request's time budget, then wait for them together.

    Every cancel ends by `UPSTREAM_DEADLINE_SECONDS` after the first began, and the wait that follows
    lasts `wait_seconds` at most in all; neither runs past MAX_REQUEST_SECONDS, well inside the 230 s
    after which Azure's front end drops an HTTP request and inside host.json's functionTimeout.
    """
    try:
        service = current_service()
    except SettingsError as err:
        return [_log_end(_misconfigured_record(request, err)) for request in requests]
    started = time.monotonic()
    budget_ends = started + MAX_REQUEST_SECONDS
    deadline = min(started + service.settings.upstream_deadline_seconds, budget_ends)
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="cancel") as pool:
        map_calls = pool.map if concurrency > 1 else map
        records = list(map_calls(lambda request: service.cancel(request, deadline=deadline), requests))
        if wait_seconds > 0:
            service.wait_until_final(
                records, min(time.monotonic() + wait_seconds, budget_ends), map_calls=map_calls
            )
    for record in records:
        record.completed_at = utc_now()
        _log_end(record)
    return records


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


def _misconfigured_record(request: CancelRequest, err: SettingsError) -> ResultRecord:
    error = {
        "code": "serviceUnavailable",
        "message": f"the function app is misconfigured: {err}",
        "target": err.name,
    }
    record = _record(request, Outcome.FAILED, 503, error=error)
    record.retryable = True
    record.retry_after_seconds = MISCONFIGURED_RETRY_AFTER_SECONDS
    return record


def _record(
    request: CancelRequest,
    outcome: Outcome,
    status_code: int,
    *,
    job: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> ResultRecord:
    return ResultRecord(
        job_id=request.job_id,
        outcome=outcome,
        status_code=status_code,
        trigger=request.trigger,
        request_id=request.request_id,
        received_at=request.received_at,
        job=job,
        error=error,
        correlation_id=request.correlation_id,
        dequeue_count=request.dequeue_count,
        resource=request.resource,
        caller=request.caller,
    )


def rejected_record(
    err: InvalidRequest,
    trigger: Trigger,
    received_at: datetime,
    *,
    job_id: str | None,
    dequeue_count: int | None = None,
    request_id: str | None = None,
    caller: dict[str, str | None] | None = None,
) -> ResultRecord:
    record = ResultRecord(
        job_id=job_id,
        outcome=Outcome.REJECTED,
        status_code=400,
        trigger=trigger,
        request_id=request_id or str(uuid.uuid4()),
        received_at=received_at,
        error={"code": "invalidPayload", "message": err.message, "target": err.target},
        dequeue_count=dequeue_count,
        resource=err.resource,
        caller=caller,
    )
    _log_end(record)
    return record


def _failure_record(request: CancelRequest, err: CancelError) -> ResultRecord:
    """The record of a cancel that ended in one of the errors of `shared.errors`."""
    if isinstance(err, KeyRefused):
        code = "unauthorized" if err.status == 401 else "forbidden"
        record = _record(request, Outcome.FAILED, 502, error={"code": code, "message": err.message})
    elif isinstance(err, UnreadableBody):
        record = _record(request, Outcome.FAILED, 502, error={"code": "internalFailure", "message": err.message})
    elif isinstance(err, RetryableStatus) and err.status == 429:
        message = f"Azure OpenAI is throttling requests: {err.message}"
        record = _record(request, Outcome.FAILED, 429, error={"code": "tooManyRequests", "message": message})
    else:
        if isinstance(err, CredentialUnavailable):
            message = err.message
        else:
            message = f"Azure OpenAI is unavailable: {err.message}"
        record = _record(request, Outcome.FAILED, 503, error={"code": "serviceUnavailable", "message": message})
    record.retryable = err.retryable
    if err.retryable:
        record.retry_after_seconds = max(1, math.ceil(err.retry_after or 1))
    return record


def is_job(body: object, job_id: str) -> bool:
    """Whether an answer's body is the FineTuningJob asked for: its `id` is the job's, its `status` a string."""
    return isinstance(body, dict) and body.get("id") == job_id and isinstance(body.get("status"), str)


def _still_running(record: ResultRecord) -> bool:
    return record.outcome is Outcome.CANCELLED and (record.job or {}).get("status") not in TERMINAL_STATES


def _job_body(reply: UpstreamReply, job_id: str) -> dict[str, Any]:
    if not is_job(reply.body, job_id):
        raise UnreadableBody(
            _unexpected_body(reply, f"fine-tuning job {job_id}"), status=reply.status, request_id=reply.request_id
        )
    return reply.body


def _upstream_error(reply: UpstreamReply) -> dict[str, Any]:
    """Upstream's own `error` object, passed through as it came."""
    error = reply.body.get("error") if isinstance(reply.body, dict) else None
    if (
        not isinstance(error, dict)
        or not _non_empty_text(error.get("code"))
        or not _non_empty_text(error.get("message"))
    ):
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
