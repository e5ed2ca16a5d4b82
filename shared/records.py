"""Job ids, cancel requests as they arrive, and the result record of CONTRACT sections 2, 4 and 5."""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from shared.record_text import fitted_record_text, loads_bounded
from shared.settings import DEFAULT_RESOURCE

JOB_ID_PATTERN = re.compile(r"(ftjob|ft)-[A-Za-z0-9]{1,64}")  # use with fullmatch
CORRELATION_ID_MAX_LENGTH = 128
MAX_WAIT_SECONDS = 120
REJECTED_TEXT_MAX_LENGTH = 200
SCHEMA_VERSION = 1

_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")  # use with fullmatch
_JSON_NUMBER = re.compile(r"-?[0-9]{1,16}(\.[0-9]{1,32})?([eE][+-]?[0-9]{1,4})?")  # JSON number syntax; fullmatch
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/]+={0,2}")  # use with fullmatch
_LINE_BREAKS = re.compile(r"[\r\n]+")
# The queue trigger's metadata. The host copies a JSON message's top-level fields over these, case-insensitively
# (azure-functions-host src/WebJobs.Script/Utility.cs, ApplyBindingData), and the worker builds the
# QueueMessage from them (azure-functions azure/functions/queue.py, QueueMessageInConverter.decode).
QUEUE_METADATA_NAMES = frozenset(
    name.lower()
    for name in ("Id", "DequeueCount", "PopReceipt", "InsertionTime", "ExpirationTime", "NextVisibleTime", "QueueTrigger")
)


class Outcome(str, Enum):
    """How one cancel request ended."""

    CANCELLED = "cancelled"
    ALREADY_TERMINAL = "already_terminal"
    REJECTED = "rejected"
    FAILED = "failed"


class Trigger(str, Enum):
    """Which trigger received the request."""

    HTTP = "http"
    QUEUE = "queue"


class InvalidRequest(Exception):
    """The request cannot be served as sent: a bad job id, correlation id or message."""

    def __init__(
        self, message: str, *, target: str, job_id: str | None = None, resource: str | None = DEFAULT_RESOURCE
    ) -> None:
        super().__init__(message)
        self.message = message
        self.target = target
        self.job_id = job_id
        self.resource = resource  # the resource as the request named it (cut), for the rejected record


@dataclass(frozen=True)
class CancelRequest:
    """One validated request to cancel one job."""

    job_id: str
    trigger: Trigger
    correlation_id: str | None = None
    dequeue_count: int | None = None
    wait_seconds: float = 0.0
    resource: str = DEFAULT_RESOURCE
    caller: dict[str, str | None] | None = None
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    received_at: datetime = field(default_factory=lambda: utc_now())


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def format_time(moment: datetime) -> str:
    """UTC, ISO 8601 with milliseconds and `Z`."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def cut_for_record(text: str) -> str:
    """Text a request sent, cut to at most 200 characters as a record keeps it (rejected text, caller headers)."""
    return text[:REJECTED_TEXT_MAX_LENGTH]


def validate_job_id(job_id: object) -> str:
    """Return the job id if it matches CONTRACT section 2, else raise `InvalidRequest`."""
    if isinstance(job_id, str) and JOB_ID_PATTERN.fullmatch(job_id):
        return job_id
    shown = job_id if isinstance(job_id, str) else json.dumps(job_id)
    raise InvalidRequest(
        f"'{cut_for_record(shown)}' is not a fine-tuning job id (expected ftjob-<letters and digits>)",
        target="job_id",
        job_id=cut_for_record(job_id) if isinstance(job_id, str) else None,
    )


def validate_correlation_id(correlation_id: object) -> str | None:
    """Return the correlation id (None when absent or empty), else raise `InvalidRequest`."""
    if correlation_id is None or correlation_id == "":
        return None
    if (
        isinstance(correlation_id, str)
        and len(correlation_id) <= CORRELATION_ID_MAX_LENGTH
        and _PRINTABLE_ASCII.fullmatch(correlation_id)
    ):
        return correlation_id
    raise InvalidRequest(
        f"correlation id must be at most {CORRELATION_ID_MAX_LENGTH} printable ASCII characters",
        target="correlation_id",
    )


def validate_resource(resource: object, allowed: Collection[str] | None) -> str:
    """The resource a request names (absent: `default`), if it is on the allow-list; else `InvalidRequest`.

    `allowed` is None only while the settings cannot be read; the request then ends as misconfigured anyway.
    """
    if resource is None:
        resource = DEFAULT_RESOURCE
    if isinstance(resource, str) and (allowed is None or resource in allowed):
        return resource
    shown = cut_for_record(resource) if isinstance(resource, str) else None
    raise InvalidRequest(
        f"resource '{shown}' is not one this app cancels jobs on (its allow-list: AZURE_OPENAI_RESOURCES)"
        if shown is not None
        else "resource must be the name of an allow-listed resource",
        target="resource",
        resource=shown,
    )


def validate_wait_seconds(wait_seconds: object, *, from_query: bool = False) -> float:
    """Seconds to wait for the job to reach a final state after a cancel: 0 (absent) to 120.

    In JSON (a bulk body, a queue message) a JSON number; a string such as "5" is refused there.
    In a query string, which is text, a number in JSON's syntax (ASCII digits, optional fraction
    and exponent; no spaces, underscores or other scripts' digits).
    """
    if wait_seconds is None or (from_query and wait_seconds == ""):
        return 0.0
    seconds = -1.0
    if from_query and isinstance(wait_seconds, str) and _JSON_NUMBER.fullmatch(wait_seconds):
        seconds = float(wait_seconds)
    elif isinstance(wait_seconds, (int, float)) and not isinstance(wait_seconds, bool):
        try:
            seconds = float(wait_seconds)
        except OverflowError:  # an integer beyond float range
            seconds = -1.0
    if not 0 <= seconds <= MAX_WAIT_SECONDS:
        kind = "a number" if from_query else "a JSON number (not a string)"
        raise InvalidRequest(f"wait_seconds must be {kind} from 0 to {MAX_WAIT_SECONDS}", target="wait_seconds")
    return seconds


def parse_queue_message(
    body: bytes,
    *,
    dequeue_count: int | None,
    request_id: str | None = None,
    resources: Collection[str] | None = None,
) -> CancelRequest:
    """Read a queue message body: a bare job id or a JSON object, either optionally base64-encoded.

    A leading UTF-8 byte order mark is ignored, and base64 may be wrapped over lines (GNU `base64`, MIME).
    Raises `InvalidRequest` carrying whatever job id could be read, for the rejected record.
    """
    try:
        text = body.decode("utf-8-sig").strip()
    except UnicodeDecodeError as err:
        raise InvalidRequest(
            f"message is not UTF-8 text: '{cut_for_record(body.decode('utf-8', 'replace'))}'", target="message"
        ) from err
    unwrapped = _LINE_BREAKS.sub("", text)
    if _BASE64_TEXT.fullmatch(unwrapped):  # base64 text holds neither "-" nor "{": unambiguous
        text = _base64_decoded(unwrapped) or text
    if text.startswith("{"):
        request = _parse_json_message(text, dequeue_count=dequeue_count, resources=resources)
    else:
        validate_resource(None, resources)  # a bare id means `default`, which must be on the allow-list
        request = CancelRequest(job_id=validate_job_id(text), trigger=Trigger.QUEUE, dequeue_count=dequeue_count)
    return replace(request, request_id=request_id) if request_id else request


def _base64_decoded(text: str) -> str | None:
    """The UTF-8 text that `text` encodes in base64, or None when it encodes none."""
    try:
        return base64.b64decode(text, validate=True).decode("utf-8-sig").strip()
    except (binascii.Error, ValueError):
        return None


def _parse_json_message(text: str, *, dequeue_count: int | None, resources: Collection[str] | None) -> CancelRequest:
    try:
        message = loads_bounded(text)
    except (ValueError, RecursionError) as err:  # RecursionError: nested too deeply
        raise InvalidRequest(f"message is not valid JSON: '{cut_for_record(text)}'", target="message") from err
    if not isinstance(message, dict) or "job_id" not in message:
        raise InvalidRequest(f"JSON message needs a \"job_id\" field: '{cut_for_record(text)}'", target="job_id")
    raw_job_id = message["job_id"]
    readable_job_id = cut_for_record(raw_job_id) if isinstance(raw_job_id, str) else None
    for name in message:
        if name.lower() in QUEUE_METADATA_NAMES:
            raise InvalidRequest(
                f"field '{cut_for_record(name)}' has the name of the queue message's own metadata, which the Functions host "
                "replaces with the field's value, so this message's delivery count cannot be trusted: remove the field",
                target=name,
                job_id=readable_job_id,
                resource=_readable_resource(message.get("resource")),
            )
    try:
        resource = validate_resource(message.get("resource"), resources)  # before the job id
    except InvalidRequest as err:
        raise InvalidRequest(err.message, target=err.target, job_id=readable_job_id, resource=err.resource) from err
    try:
        job_id = validate_job_id(raw_job_id)
        correlation_id = validate_correlation_id(message.get("correlation_id"))
        wait_seconds = validate_wait_seconds(message.get("wait_seconds"))
    except InvalidRequest as err:
        job_id_seen = err.job_id if err.target == "job_id" else raw_job_id
        raise InvalidRequest(err.message, target=err.target, job_id=job_id_seen, resource=resource) from err
    return CancelRequest(
        job_id=job_id,
        trigger=Trigger.QUEUE,
        correlation_id=correlation_id,
        dequeue_count=dequeue_count,
        wait_seconds=wait_seconds,
        resource=resource,
    )


def _readable_resource(resource: object) -> str | None:
    """The resource as a rejected record shows it: the name given (cut), `default` when none, else null."""
    if resource is None:
        return DEFAULT_RESOURCE
    return cut_for_record(resource) if isinstance(resource, str) else None


@dataclass(frozen=True)
class ResultRecord:
    """One record on the results queue (CONTRACT section 5), built whole when its request has ended."""

    job_id: str | None
    outcome: Outcome
    status_code: int
    trigger: Trigger
    request_id: str
    received_at: datetime
    job: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    retryable: bool = False
    correlation_id: str | None = None
    upstream_request_id: str | None = None
    attempts: int = 0
    dequeue_count: int | None = None
    completed_at: datetime = field(default_factory=utc_now)
    resource: str | None = DEFAULT_RESOURCE
    caller: dict[str, str | None] | None = None
    waited_seconds: float | None = None  # only when the request asked to wait

    def to_dict(self) -> dict[str, Any]:
        """The record's JSON shape, fields in the contract's order (the job is not copied)."""
        shaped = {
            "schema_version": SCHEMA_VERSION,
            "job_id": self.job_id,
            "outcome": self.outcome.value,
            "job": self.job,
            "error": self.error,
            "status_code": self.status_code,
            "retryable": self.retryable,
            "trigger": self.trigger.value,
            "correlation_id": self.correlation_id,
            "request_id": self.request_id,
            "upstream_request_id": self.upstream_request_id,
            "attempts": self.attempts,
            "dequeue_count": self.dequeue_count,
            "received_at": format_time(self.received_at),
            "completed_at": format_time(self.completed_at),
            "resource": self.resource,
            "caller": self.caller,
        }
        if self.waited_seconds is not None:
            shaped["waited_seconds"] = round(self.waited_seconds, 3)
        return shaped

    def to_json(self) -> str:
        """The record's text on the results queue: strict, queue-safe JSON of at most 64 KiB (`shared.record_text`)."""
        return fitted_record_text(self.to_dict())
