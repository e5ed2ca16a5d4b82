"""Bulk cancel: many job ids in one request, cancelled with bounded concurrency.

A repeated id is cancelled once and reported at each of its positions; every invalid id gets
its own `rejected` record; the body itself must be a JSON object with a `job_ids` list. The
cancels share one time budget, and `wait_seconds` bounds the waiting of all of them together.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from shared.record_text import loads_bounded
from shared.records import (
    CancelRequest,
    InvalidRequest,
    ResultRecord,
    Trigger,
    cut_for_record,
    utc_now,
    validate_correlation_id,
    validate_job_id,
    validate_resource,
    validate_wait_seconds,
)
from shared.triggers import allowed_resources, caller_of, cancel_requests, rejected_record

MAX_JOB_IDS = 100
BULK_CONCURRENCY = 8


@dataclass(frozen=True)
class BulkResult:
    """The answer to a bulk request: its status, per-position records, and what goes on the queue."""

    status_code: int
    records: list[ResultRecord]  # one per position of `job_ids`
    error: dict[str, str] | None = None

    @property
    def queued(self) -> list[ResultRecord]:
        """One record per distinct job id (a repeated id was cancelled once)."""
        unique: dict[int, ResultRecord] = {id(record): record for record in self.records}
        return list(unique.values())


def cancel_many(body: bytes, *, principal: tuple[str | None, str | None] = (None, None)) -> BulkResult:
    """Read `{"job_ids": [...], "resource": ..., "correlation_id": ..., "wait_seconds": ...}`; cancel each id.

    An item is a job id, or `{"job_id": ..., "resource": ...}` to name its own resource (else the body's,
    else `default`), so one call can span resources.
    """
    received_at = utc_now()
    caller = caller_of(principal)
    allowed = allowed_resources()
    try:
        job_ids, correlation_id, wait_seconds, resource = _read_body(body, allowed)
    except InvalidRequest as err:
        record = rejected_record(err, Trigger.HTTP, received_at, job_id=None, caller=caller)
        return BulkResult(400, [record], error=record.error)
    by_key: dict[object, ResultRecord] = {}
    requests: dict[object, CancelRequest] = {}
    for position, item in enumerate(job_ids):
        key = _key(item, position, resource)
        if key in by_key or key in requests:
            continue
        raw_job_id, raw_resource = (item.get("job_id"), item.get("resource", resource)) if isinstance(item, dict) else (
            item,
            resource,
        )
        try:
            requests[key] = CancelRequest(
                resource=validate_resource(raw_resource, allowed),  # before the job id
                job_id=validate_job_id(raw_job_id),
                trigger=Trigger.HTTP,
                correlation_id=correlation_id,
                wait_seconds=wait_seconds,
                caller=caller,
                received_at=received_at,
            )
        except InvalidRequest as err:
            job_id_seen = err.job_id if err.target == "job_id" else (raw_job_id if isinstance(raw_job_id, str) else None)
            by_key[key] = rejected_record(
                err, Trigger.HTTP, received_at, job_id=job_id_seen, caller=caller, correlation_id=correlation_id
            )
    cancelled = cancel_requests(list(requests.values()), wait_seconds=wait_seconds, concurrency=BULK_CONCURRENCY)
    by_key.update(zip(requests, cancelled, strict=True))
    records = [by_key[_key(item, position, resource)] for position, item in enumerate(job_ids)]
    return BulkResult(200, records)


def _key(item: object, position: int, resource: str) -> object:
    """(resource, job id) of a string or an object item, de-duplicated by value; anything else is its own item."""
    if isinstance(item, str):
        return (resource, item)
    if isinstance(item, dict) and isinstance(item.get("job_id"), str) and isinstance(item.get("resource", ""), str):
        return (item.get("resource", resource), item["job_id"])
    return position


def _read_body(body: bytes, allowed: Collection[str] | None) -> tuple[list[object], str | None, float, str]:
    try:
        payload = loads_bounded(body.decode("utf-8-sig"))  # a leading byte order mark is ignored
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError  # RecursionError: nested too deeply
        raise InvalidRequest(
            f"body must be a JSON object like {{\"job_ids\": [...]}}: '{cut_for_record(body.decode('utf-8', 'replace'))}'",
            target="body",
        ) from err
    if not isinstance(payload, dict) or not isinstance(payload.get("job_ids"), list):
        raise InvalidRequest('body must be a JSON object with a "job_ids" list', target="job_ids")
    job_ids = payload["job_ids"]
    if not job_ids or len(job_ids) > MAX_JOB_IDS:
        raise InvalidRequest(f"job_ids must hold 1 to {MAX_JOB_IDS} ids; it holds {len(job_ids)}", target="job_ids")
    return (
        job_ids,
        validate_correlation_id(payload.get("correlation_id")),
        validate_wait_seconds(payload.get("wait_seconds")),
        validate_resource(payload.get("resource"), allowed),
    )
