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
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from shared.api_key import ApiKeySource
from shared.errors import ApiKeyUnavailable, CancelError, KeyRefused, RetryableStatus, UnreadableBody
from shared.records import (
    CancelRequest,
    InvalidRequest,
    Outcome,
    ResultRecord,
    Trigger,
    parse_queue_message,
    utc_now,
    validate_correlation_id,
    validate_job_id,
    validate_wait_seconds,
)
from shared.settings import Settings, SettingsError, load_settings
from shared.upstream import CallTrace, UpstreamClient, UpstreamReply

logger = logging.getLogger(__name__)

TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
FIRST_POLL_DELAY = 0.5  # waiting for a cancel to take: GET after 0.5 s, 1 s, 2 s ... 5 s apart
MAX_POLL_DELAY = 5.0
MISCONFIGURED_RETRY_AFTER_SECONDS = 30
DEFAULT_MAX_DEQUEUE_COUNT = 5  # the host's own default when host.json sets none


class CancelService:
    """Cancels fine-tuning jobs with the api-key from Key Vault; one per process and configuration."""

    def __init__(self, settings: Settings, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self._sleep = sleep
        self.api_keys = ApiKeySource(
            vault_url=settings.key_vault_url,
            secret_name=settings.key_secret_name,
            cache_seconds=settings.secret_cache_seconds,
            verify_challenge_resource=settings.verify_challenge_resource,
        )
        self.upstream = UpstreamClient(settings, sleep=sleep)

    def cancel(self, request: CancelRequest) -> ResultRecord:
        """Cancel one job and describe how it ended; never raises for an upstream or vault failure."""
        trace = CallTrace()
        deadline = time.monotonic() + self.settings.upstream_deadline_seconds
        try:
            record = self._cancel(request, trace, deadline)
        except CancelError as err:
            record = _failure_record(request, err)
        if request.wait_seconds > 0:
            self._wait_until_final(record, request.wait_seconds, trace)
        record.attempts = trace.attempts
        record.upstream_request_id = trace.upstream_request_id
        _log_end(record)
        return record

    def _cancel(self, request: CancelRequest, trace: CallTrace, deadline: float) -> ResultRecord:
        job_id = request.job_id
        reply = self._with_api_key(lambda key: self.upstream.cancel_job(job_id, key, deadline=deadline, trace=trace))
        if 200 <= reply.status < 300:
            return _record(request, Outcome.CANCELLED, 200, job=_job_body(reply))
        if reply.status >= 500:  # 501, 505 ...: not retried here (section 6), but still a 503 (section 3)
            raise RetryableStatus(
                f"Azure OpenAI answered {reply.status}", status=reply.status, request_id=reply.request_id, retry_after=1
            )
        if reply.status in (400, 409):
            # Upstream refuses to cancel a finished job; a GET says whether that is the reason.
            current = self._with_api_key(lambda key: self.upstream.get_job(job_id, key, deadline=deadline, trace=trace))
            job = current.body if current.status == 200 and isinstance(current.body, dict) else None
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

    def _wait_until_final(self, record: ResultRecord, wait_seconds: float, trace: CallTrace) -> None:
        """Poll GET .../jobs/{id} with backoff until the job is final or the wait is over."""
        started = time.monotonic()
        until = started + wait_seconds
        delay = FIRST_POLL_DELAY
        while (
            record.outcome is Outcome.CANCELLED
            and (record.job or {}).get("status") not in TERMINAL_STATES
            and time.monotonic() + delay < until
        ):
            self._sleep(delay)
            delay = min(delay * 2, MAX_POLL_DELAY)
            try:
                reply = self._with_api_key(
                    lambda key: self.upstream.get_job(record.job_id or "", key, deadline=until, trace=trace)
                )
            except CancelError as err:
                logger.info("waiting for %s: GET failed (%s); still waiting", record.job_id, err.message)
                continue
            if reply.status == 200 and isinstance(reply.body, dict):
                record.job = reply.body
        record.waited_seconds = time.monotonic() - started

    def _with_api_key(self, call: Callable[[str], UpstreamReply]) -> UpstreamReply:
        """Make the call; on 401/403 read the key again from Key Vault and retry once."""
        api_key = self.api_keys.get()
        reply = call(api_key)
        if reply.status not in (401, 403):
            return reply
        logger.info("Azure OpenAI refused the api-key (%d); reading it again from Key Vault", reply.status)
        reply = call(self.api_keys.refresh(refused=api_key))
        if reply.status in (401, 403):
            raise KeyRefused(
                f"Azure OpenAI refused the function's api-key ({reply.status}) even after it was read again "
                f"from Key Vault secret '{self.settings.key_secret_name}': the secret must hold a current "
                f"key of {self.settings.openai_endpoint}",
                status=reply.status,
                request_id=reply.request_id,
            )
        return reply


def cancel_from_http(job_id: object, correlation_id: object, wait_seconds: object = None) -> ResultRecord:
    """The HTTP trigger's request: route's job id, `x-correlation-id` header, `wait_seconds` query."""
    received_at = utc_now()
    try:
        request = CancelRequest(
            job_id=validate_job_id(job_id),
            trigger=Trigger.HTTP,
            correlation_id=validate_correlation_id(correlation_id),
            wait_seconds=validate_wait_seconds(wait_seconds),
            received_at=received_at,
        )
    except InvalidRequest as err:
        readable_job_id = err.job_id if err.target == "job_id" else str(job_id)
        return rejected_record(err, Trigger.HTTP, received_at, job_id=readable_job_id)
    return cancel_request(request)


def cancel_from_queue(body: bytes, *, dequeue_count: int | None, message_id: str | None = None) -> ResultRecord:
    """The queue trigger's message body, in any of the forms CONTRACT section 4 allows.

    The record's `request_id` is the queue message id, so a redelivered message's record
    can be told from another message's.
    """
    received_at = utc_now()
    try:
        request = parse_queue_message(body, dequeue_count=dequeue_count, request_id=message_id)
    except InvalidRequest as err:
        return rejected_record(
            err, Trigger.QUEUE, received_at, job_id=err.job_id, dequeue_count=dequeue_count, request_id=message_id
        )
    return cancel_request(request)


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


def current_service() -> CancelService:
    """The cancel service for this process's settings; raises `SettingsError` for a bad setting."""
    return _services.current()


def cancel_request(request: CancelRequest) -> ResultRecord:
    """Cancel one validated request with the process's service (a record even when misconfigured)."""
    try:
        service = current_service()
    except SettingsError as err:
        error = {
            "code": "serviceUnavailable",
            "message": f"the function app is misconfigured: {err}",
            "target": err.name,
        }
        record = _record(request, Outcome.FAILED, 503, error=error)
        record.retryable = True
        record.retry_after_seconds = MISCONFIGURED_RETRY_AFTER_SECONDS
        _log_end(record)
        return record
    return service.cancel(request)


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
    )


def rejected_record(
    err: InvalidRequest,
    trigger: Trigger,
    received_at: datetime,
    *,
    job_id: str | None,
    dequeue_count: int | None = None,
    request_id: str | None = None,
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
        if isinstance(err, ApiKeyUnavailable):
            message = err.message
        else:
            message = f"Azure OpenAI is unavailable: {err.message}"
        record = _record(request, Outcome.FAILED, 503, error={"code": "serviceUnavailable", "message": message})
    record.retryable = err.retryable
    if err.retryable:
        record.retry_after_seconds = max(1, math.ceil(err.retry_after or 1))
    return record


def _job_body(reply: UpstreamReply) -> dict[str, Any]:
    if not isinstance(reply.body, dict):
        raise UnreadableBody(
            _unexpected_body(reply, "a fine-tuning job"), status=reply.status, request_id=reply.request_id
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
    content_type = reply.content_type or "no content type"
    return f"Azure OpenAI answered {reply.status} with {content_type} ({kind}), not {expected}"


def _log_end(record: ResultRecord) -> None:
    logger.log(
        logging.WARNING if record.outcome is Outcome.FAILED else logging.INFO,
        "cancel %s: %s (%d) after %d upstream call(s); request %s, upstream request %s; %s",
        record.job_id,
        record.outcome.value,
        record.status_code,
        record.attempts,
        record.request_id,
        record.upstream_request_id,
        record.error["message"] if record.error else "ok",
    )
