"""Properties of the real handlers over hostile input: job ids, headers, queue bodies, bulk bodies.

Hypothesis drives the handlers as the host would (real `HttpRequest` / `QueueMessage` objects)
against the fine-tuning simulator and the Key Vault emulator. Whatever comes in: no unhandled
exception, no 5xx, exactly one record per request or message, records as openapi.yaml describes
them, a bad input answered 400 with a `rejected` record and nothing sent to Key Vault or upstream,
and no upstream request outside `/openai/fine_tuning/jobs/<valid id>[/cancel]`.

The emulators are started once per test and shared by its examples (hence the suppressed
`function_scoped_fixture` health check); each example starts by clearing their logs and counters.
`SECRET_CACHE_SECONDS=0` makes every cancel read Key Vault, so "no Key Vault read" means "nothing
went out". Bugs that these properties found are kept as regression tests at the end.
"""

from __future__ import annotations

import base64
import json
import re
import string
from typing import Any

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from devstack.keyvault_emulator import KeyVaultEmulator
from devstack.openai_sim import FineTuningSimulator
from shared.bulk import MAX_JOB_IDS
from shared.records import (
    CORRELATION_ID_MAX_LENGTH,
    JOB_ID_PATTERN,
    MAX_WAIT_SECONDS,
    QUEUE_METADATA_NAMES,
    REJECTED_TEXT_MAX_LENGTH,
)
from tests.support.handlers import call_bulk
from tests.support.openapi import component_validator
from tests.support.properties import PROPERTY_SETTINGS

# Every upstream request must be one of these two, for a valid job id (CONTRACT section 6).
UPSTREAM_PATH = re.compile(r"^/openai/fine_tuning/jobs/(ftjob|ft)-[A-Za-z0-9]{1,64}(/cancel)?$")
# CONTRACT section 3, with a healthy upstream: what each job's state answers.
STATUS_BY_JOB_STATE = {"running": 200, "pending": 200, "cancelled": 200, "succeeded": 409, "failed": 409, None: 404}

# --- strategies -------------------------------------------------------------------------------------------

valid_job_ids = st.from_regex(JOB_ID_PATTERN, fullmatch=True)
# Near misses: a valid id with one character the contract names (slash, dot, ?, #, %, space, unicode) put in.
near_miss_job_ids = st.builds(
    lambda job_id, position, intruder: job_id[:position] + intruder + job_id[position:],
    valid_job_ids,
    st.integers(min_value=0, max_value=70),
    st.sampled_from(["/", ".", "..", "?", "#", "%", "%2F", " ", "\n", "\x00", "-", "_", "\u00e9", "\u0661"]),
)
too_long_job_ids = st.integers(min_value=65, max_value=400).map(lambda n: "ftjob-" + "a" * n)
any_text = st.text(max_size=300)
job_id_texts = st.one_of(valid_job_ids, st.one_of(near_miss_job_ids, too_long_job_ids, any_text))

printable_ascii = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=CORRELATION_ID_MAX_LENGTH)
correlation_ids = st.one_of(
    st.one_of(st.none(), printable_ascii),
    st.one_of(any_text, st.text(string.printable, min_size=120, max_size=140)),  # tabs, newlines, too long
)

wait_floats = st.floats(0, MAX_WAIT_SECONDS)
wait_texts = st.one_of(
    st.none(),
    st.sampled_from(["", "0", "0.0", "120", "120.0001", "-0", "-1", "1e2", "1e3", "nan", "inf", "-inf", "abc"]),
    st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), any_text),
)

# JSON values. Integers stay in float range and nesting stays shallow: beyond that the handlers raise
# today (the test_json_number_beyond_float_range_* and test_deeply_nested_json_* tests at the end).
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=50),
    valid_job_ids,
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@st.composite
def queue_bodies(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """A message body, and the job id it validly asks to cancel (None: not known to be valid)."""
    kind = draw(st.sampled_from(["bytes", "base64 bytes", "text", "bare id", "json", "valid json"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300)), None
    if kind == "base64 bytes":
        return base64.b64encode(draw(st.binary(max_size=200))), None
    if kind == "text":
        return draw(job_id_texts).encode("utf-8"), None
    if kind == "bare id":
        valid = draw(valid_job_ids)
        padding = st.sampled_from(["", " ", "\n", "\r\n"])
        body = (draw(padding) + valid + draw(padding)).encode()
    else:
        fields = draw(st.dictionaries(st.text(max_size=12), json_values, max_size=4))
        valid = None
        if kind == "valid json":
            # A field named like the trigger's metadata makes the message a rejected one (CONTRACT section 8).
            fields = {name: value for name, value in fields.items() if name.lower() not in QUEUE_METADATA_NAMES}
            valid = draw(valid_job_ids)
            fields["job_id"] = valid
            fields["correlation_id"] = draw(st.one_of(st.none(), printable_ascii))
            fields["wait_seconds"] = draw(st.one_of(st.none(), st.integers(0, MAX_WAIT_SECONDS), wait_floats))
        else:
            known_fields = st.sampled_from(["job_id", "correlation_id", "wait_seconds"])
            fields.update(draw(st.dictionaries(known_fields, json_values)))
        body = json.dumps(fields).encode()
    if draw(st.booleans()):
        body = base64.b64encode(body)
    return body, valid


bulk_items = st.one_of(valid_job_ids, st.sampled_from(["seeded"]), job_id_texts, json_values)
bulk_payloads = st.fixed_dictionaries(
    {"job_ids": st.lists(bulk_items, min_size=1, max_size=12)},
    optional={
        "correlation_id": st.one_of(st.none(), printable_ascii, json_values),
        "wait_seconds": st.one_of(st.none(), st.integers(0, 3), json_values),
        "unknown": json_values,
    },
)
bulk_bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda value: json.dumps(value).encode()),
    bulk_payloads.map(lambda payload: json.dumps(payload).encode()),
)

# --- fixtures and helpers ----------------------------------------------------------------------------------


@pytest.fixture
def emulators(app_settings: dict[str, str], monkeypatch: pytest.MonkeyPatch, simulator, vault):
    """The emulators behind the app, with every cancel reading Key Vault (nothing cached)."""
    monkeypatch.setenv("SECRET_CACHE_SECONDS", "0")
    return simulator, vault


def fresh(simulator: FineTuningSimulator, vault: KeyVaultEmulator) -> None:
    """Start an example with empty logs: what it finds there, it caused."""
    simulator.clear_faults()
    simulator.clear_requests()
    vault.reset_counts()


def assert_nothing_went_out(simulator: FineTuningSimulator, vault: KeyVaultEmulator) -> None:
    assert simulator.requests == [] and vault.read_count() == 0


def assert_upstream_paths_are_job_paths(simulator: FineTuningSimulator) -> None:
    for request in simulator.requests:
        assert UPSTREAM_PATH.fullmatch(request.path), f"{request.method} {request.path!r} sent upstream"


def assert_is_result_record(record: dict[str, Any], *, trigger: str) -> None:
    component_validator("ResultRecord").validate(record)
    assert record["trigger"] == trigger


def is_valid_correlation_id(value: str | None) -> bool:
    return value is None or (len(value) <= CORRELATION_ID_MAX_LENGTH and all(" " <= c <= "~" for c in value))


# --- the HTTP cancel route ----------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(job_id=job_id_texts, correlation_id=correlation_ids, wait_seconds=wait_texts)
@example(job_id="ftjob-a/../b", correlation_id=None, wait_seconds=None)
@example(job_id="ftjob-" + "a" * 64, correlation_id="x" * 129, wait_seconds="5")
def test_http_cancel_answers_any_request_with_one_record(
    emulators, call_http, job_id: str, correlation_id: str | None, wait_seconds: str | None
) -> None:
    simulator, vault = emulators
    fresh(simulator, vault)
    valid_id = JOB_ID_PATTERN.fullmatch(job_id) is not None
    state = (simulator.job(job_id) or {}).get("status") if valid_id else None

    call = call_http(job_id, **_http_input(correlation_id, wait_seconds))

    record = assert_one_answer_and_record(call, simulator)
    if record["outcome"] == "rejected":
        assert call.response.status_code == 400 and record["error"]["code"] == "invalidPayload"
        assert_nothing_went_out(simulator, vault)
        if record["error"]["target"] == "job_id":
            assert not valid_id
            assert record["job_id"] == job_id[:REJECTED_TEXT_MAX_LENGTH]
            assert job_id[:REJECTED_TEXT_MAX_LENGTH] in record["error"]["message"]
        elif record["error"]["target"] == "correlation_id":
            assert not is_valid_correlation_id(correlation_id or None)
        else:
            assert record["error"]["target"] == "wait_seconds"
    else:
        assert valid_id and is_valid_correlation_id(correlation_id or None) and _in_wait_range(wait_seconds)
        assert call.response.status_code == STATUS_BY_JOB_STATE[state]


@settings(PROPERTY_SETTINGS, max_examples=100)
@given(
    job_id=valid_job_ids,
    state=st.sampled_from(list(STATUS_BY_JOB_STATE)),
    correlation_id=st.one_of(st.none(), printable_ascii),
    wait_seconds=st.one_of(st.none(), st.integers(0, MAX_WAIT_SECONDS).map(str), wait_floats.map("{:.3f}".format)),
)
def test_http_cancel_of_a_valid_request_answers_as_the_jobs_state_says(
    emulators, call_http, job_id: str, state: str | None, correlation_id: str | None, wait_seconds: str | None
) -> None:
    """CONTRACT section 3 with a healthy upstream: 200 for an active or cancelled job, 409 finished, 404 unknown."""
    simulator, vault = emulators
    fresh(simulator, vault)
    if state is not None:
        simulator.create_job(job_id=job_id, status=state)
    state = (simulator.job(job_id) or {}).get("status")  # an id drawn before may exist already

    call = call_http(job_id, **_http_input(correlation_id, wait_seconds))

    record = assert_one_answer_and_record(call, simulator)
    assert call.response.status_code == STATUS_BY_JOB_STATE[state]
    assert record["job_id"] == job_id and record["correlation_id"] == (correlation_id or None)
    assert record["attempts"] == len(simulator.requests) >= 1
    assert vault.read_count() >= 1  # nothing cached: so "no Key Vault read" above means nothing went out
    first = simulator.requests[0]
    assert (first.method, first.path) == ("POST", f"/openai/fine_tuning/jobs/{job_id}/cancel")
    assert ("waited_seconds" in record) == (float(wait_seconds or 0) > 0)


def _http_input(correlation_id: str | None, wait_seconds: str | None) -> dict[str, dict[str, str]]:
    return {
        "headers": {} if correlation_id is None else {"x-correlation-id": correlation_id},
        "params": {} if wait_seconds is None else {"wait_seconds": wait_seconds},
    }


def assert_one_answer_and_record(call: Any, simulator: FineTuningSimulator) -> dict[str, Any]:
    """The answer and its one record agree, the record is a ResultRecord, and nothing odd went upstream."""
    record = call.record  # exactly one
    event(f"{record['outcome']} {record['status_code']} {(record['error'] or {}).get('target', '')}")
    assert_is_result_record(record, trigger="http")
    assert call.response.status_code == record["status_code"] < 500
    assert call.response.mimetype == "application/json"
    assert call.response.headers["x-request-id"] == record["request_id"]
    assert call.body == ({"error": record["error"]} if record["error"] else record["job"])
    assert_upstream_paths_are_job_paths(simulator)
    return record


def _in_wait_range(wait_seconds: str | None) -> bool:
    """A query's wait_seconds is accepted when it is a number in JSON's syntax from 0 to 120 (no spaces, no '_')."""
    if not wait_seconds:
        return True
    json_number = re.fullmatch(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?", wait_seconds)
    return bool(json_number) and 0 <= float(wait_seconds) <= MAX_WAIT_SECONDS


# --- the queue trigger ----------------------------------------------------------------------------------------


@settings(PROPERTY_SETTINGS, max_examples=300)
@given(message=queue_bodies())
@example(message=(b"", None))
@example(message=(b"\xff\xfe\x00", None))
@example(message=(base64.b64encode(b'{"job_id": "ftjob-abc"}'), "ftjob-abc"))
@example(message=(b'{"job_id": "ftjob-abc", "correlation_id": "\\t"}', None))
@example(message=(b'{"ID": null, "job_id": "ftjob-0"}', None))  # found by hypothesis: a metadata name, rejected
def test_queue_message_ends_in_exactly_one_record(emulators, call_queue, message: tuple[bytes, str | None]) -> None:
    simulator, vault = emulators
    fresh(simulator, vault)
    body, valid_job_id = message

    call = call_queue(body)

    assert call.raised is None, f"the function raised {call.raised!r}: retried, then poisoned without a record"
    record = call.record  # exactly one
    event(f"{record['outcome']} {record['status_code']} {(record['error'] or {}).get('target', '')}")
    assert_is_result_record(record, trigger="queue")
    assert record["dequeue_count"] == 1 and record["status_code"] < 500
    assert_upstream_paths_are_job_paths(simulator)
    if record["outcome"] == "rejected":
        assert valid_job_id is None, f"{body!r} asks validly to cancel {valid_job_id}"
        assert_nothing_went_out(simulator, vault)
    else:
        assert record["job_id"] is not None and JOB_ID_PATTERN.fullmatch(record["job_id"])
        assert valid_job_id in (None, record["job_id"])
        assert [r.method for r in simulator.requests][:1] == ["POST"]


# --- the bulk route ---------------------------------------------------------------------------------------------


@settings(PROPERTY_SETTINGS, max_examples=150)
@given(body=bulk_bodies)
@example(body=json.dumps({"job_ids": ["../x"] * MAX_JOB_IDS}).encode())
@example(body=json.dumps({"job_ids": ["ftjob-a"] * (MAX_JOB_IDS + 1)}).encode())
@example(body=json.dumps({"job_ids": ["seeded", "seeded", "ftjob-a.b", 7, None, {"id": 1}]}).encode())
def test_bulk_answers_200_with_a_record_per_position_or_400(emulators, body: bytes) -> None:
    simulator, vault = emulators
    fresh(simulator, vault)
    seeded = simulator.create_job(status="running")["id"]
    body = body.replace(b'"seeded"', json.dumps(seeded).encode())

    response, output = call_bulk(body)

    assert response.status_code in (200, 400) and response.mimetype == "application/json"
    answer = json.loads(response.get_body())
    event(f"{response.status_code} " + " ".join(sorted({r["outcome"] for r in answer.get("results", [])})))
    assert_upstream_paths_are_job_paths(simulator)
    for record in output.records:
        assert_is_result_record(record, trigger="http")
    if response.status_code == 400:
        [record] = output.records
        assert answer == {"error": record["error"]} and record["outcome"] == "rejected"
        assert response.headers["x-request-id"] == record["request_id"]
        assert_nothing_went_out(simulator, vault)
        return
    job_ids = json.loads(body)["job_ids"]
    results = answer["results"]
    assert len(results) == len(job_ids)
    for item, result in zip(job_ids, results):
        assert_is_result_record(result, trigger="http")
        if isinstance(item, str) and JOB_ID_PATTERN.fullmatch(item):
            assert result["job_id"] == item and result["outcome"] != "rejected"
        else:
            assert result["outcome"] == "rejected", f"{item!r} was not rejected"
            assert result["job_id"] == (item[:REJECTED_TEXT_MAX_LENGTH] if isinstance(item, str) else None), item
    # A repeated id is cancelled once and reported at each position; each distinct record is queued once.
    valid_ids = {item for item in job_ids if isinstance(item, str) and JOB_ID_PATTERN.fullmatch(item)}
    cancels = [r.path for r in simulator.requests if r.method == "POST"]
    assert sorted(cancels) == sorted(f"/openai/fine_tuning/jobs/{job_id}/cancel" for job_id in valid_ids)
    queued = [record["request_id"] for record in output.records]
    assert len(queued) == len(set(queued)) and set(queued) == {result["request_id"] for result in results}


# --- bugs these properties found, fixed: kept as regression tests ---------------------------------------------

DEEP = 100_000  # nesting levels; Python's json gives up (RecursionError) past about a thousand


def test_deeply_nested_json_in_a_queue_message_is_rejected(emulators, call_queue) -> None:
    call = call_queue(b'{"job_id": ' + b"[" * DEEP + b"]" * DEEP + b"}")
    assert call.raised is None
    assert call.record["outcome"] == "rejected"


def test_deeply_nested_json_in_a_bulk_body_is_rejected(emulators) -> None:
    response, output = call_bulk(b'{"job_ids": ' + b"[" * DEEP + b"]" * DEEP + b"}")
    assert response.status_code == 400 and output.records[0]["outcome"] == "rejected"


def test_json_number_beyond_float_range_is_rejected_in_a_bulk_body(emulators) -> None:
    response, output = call_bulk(b'{"job_ids": ["ftjob-a"], "wait_seconds": 1' + b"0" * 400 + b"}")
    assert response.status_code == 400 and output.records[0]["error"]["target"] == "wait_seconds"


def test_bulk_string_and_non_string_with_the_same_json_text_get_their_own_records(emulators) -> None:
    response, output = call_bulk(json.dumps({"job_ids": ["1", 1, "null", None]}).encode())
    results = json.loads(response.get_body())["results"]
    assert [result["job_id"] for result in results] == ["1", None, "null", None]
    assert len(output.records) == 4


def test_json_number_beyond_float_range_is_rejected_in_a_queue_message(emulators, call_queue) -> None:
    call = call_queue(b'{"job_id": "ftjob-a", "wait_seconds": 1' + b"0" * 400 + b"}")
    assert call.raised is None
    assert call.record["error"]["target"] == "wait_seconds"
