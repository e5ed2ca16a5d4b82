"""Bulk cancel: many job ids in one request, cancelled with bounded concurrency.

A repeated id is cancelled once and reported at each of its positions; every invalid id gets
its own `rejected` record; the body itself must be a JSON object with a `job_ids` list. The
cancels share one time budget, and `wait_seconds` bounds the waiting of all of them together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from shared.cancel import cancel_requests, rejected_record
from shared.records import (
    CancelRequest,
    InvalidRequest,
    ResultRecord,
    Trigger,
    shorten,
    utc_now,
    validate_correlation_id,
    validate_job_id,
    validate_wait_seconds,
)

MAX_JOB_IDS = 100
BULK_CONCURRENCY = 8


@dataclass
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


def cancel_many(body: bytes) -> BulkResult:
    """Read `{"job_ids": [...], "correlation_id": ..., "wait_seconds": ...}` and cancel each id."""
    received_at = utc_now()
    try:
        job_ids, correlation_id, wait_seconds = _read_body(body)
    except InvalidRequest as err:
        record = rejected_record(err, Trigger.HTTP, received_at, job_id=None)
        return BulkResult(400, [record], error=record.error)
    by_job_id: dict[object, ResultRecord] = {}
    requests: dict[object, CancelRequest] = {}
    for position, raw in enumerate(job_ids):
        key = _key(raw, position)
        if key in by_job_id or key in requests:
            continue
        try:
            requests[key] = CancelRequest(
                job_id=validate_job_id(raw),
                trigger=Trigger.HTTP,
                correlation_id=correlation_id,
                wait_seconds=wait_seconds,
                received_at=received_at,
            )
        except InvalidRequest as err:
            by_job_id[key] = rejected_record(err, Trigger.HTTP, received_at, job_id=err.job_id)
            by_job_id[key].correlation_id = correlation_id
    cancelled = cancel_requests(list(requests.values()), wait_seconds=wait_seconds, concurrency=BULK_CONCURRENCY)
    by_job_id.update(zip(requests, cancelled, strict=True))
    records = [by_job_id[_key(raw, position)] for position, raw in enumerate(job_ids)]
    return BulkResult(200, records)


def _key(raw: object, position: int) -> object:
    """Strings are de-duplicated by value; anything else is its own item (never a job id)."""
    return raw if isinstance(raw, str) else position


def _read_body(body: bytes) -> tuple[list[object], str | None, float]:
    try:
        payload = json.loads(body.decode("utf-8-sig"))  # a leading byte order mark is ignored
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError  # RecursionError: nested too deeply
        raise InvalidRequest(
            f"body must be a JSON object like {{\"job_ids\": [...]}}: '{shorten(body.decode('utf-8', 'replace'))}'",
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
    )
