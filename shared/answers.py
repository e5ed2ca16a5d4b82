"""What the HTTP triggers answer for their records: status, JSON body and headers (CONTRACT section 3).

Every answer of 400 or above says whether a retry can help, in the way the openai SDK reads it: a
permanent one carries `x-should-retry: false` (else the SDK retries 408, 409, 429 and 5xx by itself,
cancelling again and writing more records), a retryable one `x-should-retry: true` and `Retry-After`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.record_text import strict_json
from shared.records import ResultRecord
from shared.results_queue import RecordNotWritten

RECORD_NOT_WRITTEN_RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True)
class HttpAnswer:
    """An HTTP answer: status, body (strict JSON text) and headers."""

    status_code: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)


def record_answer(
    record: ResultRecord, not_written: RecordNotWritten | None = None, *, retry_after: float | None = None
) -> HttpAnswer:
    """The answer for one record: the job or the error, or 503 when the record could not be written.

    `retry_after` is the wait (seconds) a retryable ending advises; `Retry-After` is it in whole seconds, 1 at least.
    """
    headers = {"x-request-id": record.request_id}
    if not_written is not None:
        return _record_not_written(record, not_written, headers)
    body = {"error": record.error} if record.error is not None else record.job
    return HttpAnswer(record.status_code, strict_json(body), _retry_headers(record, headers, retry_after))


def bulk_answer(
    status_code: int,
    records: Sequence[ResultRecord],
    *,
    error: dict[str, Any] | None,
    not_written: RecordNotWritten | None = None,
) -> HttpAnswer:
    """The answer of `POST /api/cancel`: `{"results": [...]}` in input order, or the body's error."""
    if error is not None:
        headers = _retry_headers(records[0], {"x-request-id": records[0].request_id})
        if not_written is not None:
            return _record_not_written(records[0], not_written, headers)
        return HttpAnswer(status_code, strict_json({"error": error}), headers)
    results = [record.to_dict() for record in records]
    if not_written is not None:
        message = f"{_written_notice(not_written)}; the results below say what happened to each job"
        body = {"error": {"code": "serviceUnavailable", "message": message, "target": "results"}, "results": results}
        return HttpAnswer(503, strict_json(body), _not_written_headers({}))
    return HttpAnswer(status_code, strict_json({"results": results}))


def _retry_headers(record: ResultRecord, headers: dict[str, str], retry_after: float | None = None) -> dict[str, str]:
    if record.status_code < 400:
        return headers
    if not record.retryable:
        return {**headers, "x-should-retry": "false"}
    return {**headers, "Retry-After": str(max(1, math.ceil(retry_after or 1))), "x-should-retry": "true"}


def _record_not_written(record: ResultRecord, err: RecordNotWritten, headers: dict[str, str]) -> HttpAnswer:
    outcome = f"the request ended {record.outcome.value} ({record.status_code}) for job {record.job_id}"
    message = f"{outcome}, but {_written_notice(err)}"
    body = {"error": {"code": "serviceUnavailable", "message": message, "target": "results"}}
    return HttpAnswer(503, strict_json(body), _not_written_headers(headers))


def _written_notice(err: RecordNotWritten) -> str:
    return (
        f"{err.message}; send the same request again to have it recorded "
        "(cancelling a job that is already cancelled is safe and answers with the job)"
    )


def _not_written_headers(headers: dict[str, str]) -> dict[str, str]:
    return {**headers, "Retry-After": str(RECORD_NOT_WRITTEN_RETRY_AFTER_SECONDS), "x-should-retry": "true"}
