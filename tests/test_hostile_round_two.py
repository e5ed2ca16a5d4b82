"""Issue 11, the red-team round: each class it found, as tables, on the real handlers.

2. the api-key echoed back by upstream; 3. a 200 that is not the job; 4. non-standard JSON from upstream;
5. one time budget for a bulk request's waits; 6. permanent answers the openai SDK will not retry;
7. input leniency, decided. (Class 1, characters a queue cannot hold: tests/test_records_on_the_queue.py.)
"""

from __future__ import annotations

import base64
import json
import logging
import textwrap
from urllib.parse import quote

import pytest

from devstack.openai_sim import FineTuningSimulator
from tests.support.handlers import API_KEY, call_bulk
from tests.support.records import assert_queue_safe, strict_loads

# --- 2. the key wins over pass-through ----------------------------------------------------------------------------

ERROR_ECHO = {"error": {"code": "badRequest", "message": f"request had api-key: {API_KEY}", "api-key": API_KEY}}
ECHOES = {
    "404-error-body": dict(status=404, body=ERROR_ECHO),
    "422-nested-field-name": dict(status=422, body={"error": {"code": "x", "message": "m", API_KEY: [API_KEY]}}),
    "redirect-location": dict(status=302, headers={"location": f"https://elsewhere/?api-key={API_KEY}"}, body=b""),
    "redirect-percent-encoded": dict(
        status=307, headers={"location": "https://elsewhere/?k=" + "".join(f"%{b:02X}" for b in API_KEY.encode())},
        body=b"",
    ),
    "content-type": dict(status=200, headers={"content-type": f"text/html; key={API_KEY}"}, body=b"<html>"),
    "apim-request-id": dict(status=404, headers={"apim-request-id": API_KEY}, body=ERROR_ECHO),
    "x-request-id": dict(status=404, headers={"x-request-id": f"id-{API_KEY}"}, body=ERROR_ECHO),
    "unicode-escaped-in-json": dict(
        status=404,
        body=('{"error": {"code": "x", "message": "' + "".join(f"\\u{ord(c):04x}" for c in API_KEY) + '"}}').encode(),
    ),
}


@pytest.mark.parametrize("echo", ECHOES.values(), ids=ECHOES.keys())
def test_key_echoed_by_upstream_reaches_no_answer_record_or_log(
    simulator: FineTuningSimulator, call_http, caplog, echo: dict
) -> None:
    simulator.fail_next(path_suffix="/cancel", **echo)
    with caplog.at_level(logging.DEBUG):
        call = call_http(simulator.create_job()["id"])
    assert simulator.requests[0].headers["api-key"] == API_KEY  # the key really was sent, and echoed
    seen = [call.response.get_body().decode(), json.dumps(dict(call.response.headers)), *call.output.values]
    seen += [record.getMessage() for record in caplog.records]
    assert not [text for text in seen if API_KEY in text or quote(API_KEY) in text]
    assert call.response.status_code >= 400


def test_key_echoed_in_a_200_job_body_is_redacted(simulator: FineTuningSimulator, call_http) -> None:
    job = simulator.create_job()
    simulator.fail_next(status=200, body={**job, "status": "cancelled", "echo": {"api-key": API_KEY}}, path_suffix="/cancel")
    call = call_http(job["id"])
    assert call.response.status_code == 200 and call.body["echo"] == {"api-key": "[REDACTED]"}
    assert API_KEY not in call.output.values[0]


# --- 3. a 200 that is not the job --------------------------------------------------------------------------------

NOT_A_JOB = {
    "empty-object": lambda job: {},
    "error-shaped": lambda job: {"error": {"code": "internalFailure", "message": "oops"}},
    "another-job": lambda job: {**job, "id": "ftjob-someoneelse"},
    "no-status": lambda job: {key: value for key, value in job.items() if key != "status"},
    "status-not-text": lambda job: {**job, "status": 7},
    "a-list": lambda job: [job],
}


@pytest.mark.parametrize("make_body", NOT_A_JOB.values(), ids=NOT_A_JOB.keys())
def test_200_that_is_not_the_job_is_the_502_row(simulator: FineTuningSimulator, call_http, make_body) -> None:
    job = simulator.create_job()
    simulator.fail_next(status=200, body=make_body(job), path_suffix="/cancel")
    call = call_http(job["id"])
    assert call.response.status_code == 502 and call.record["outcome"] == "failed"
    assert call.record["error"]["code"] == "internalFailure" and f"fine-tuning job {job['id']}" in call.record["error"]["message"]
    assert call.response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("make_body", NOT_A_JOB.values(), ids=NOT_A_JOB.keys())
def test_queue_message_answered_200_not_a_job_records_failure_not_cancelled(
    simulator: FineTuningSimulator, call_queue, make_body
) -> None:
    job = simulator.create_job()
    simulator.fail_next(status=200, body=make_body(job), path_suffix="/cancel")
    assert call_queue(job["id"]).record["outcome"] == "failed"


def test_confirming_get_that_is_not_the_job_changes_nothing(simulator: FineTuningSimulator, call_http) -> None:
    job = simulator.create_job(status="succeeded")
    simulator.fail_next(status=200, body={"id": job["id"]}, method="GET")  # no status: not a job
    call = call_http(job["id"])
    assert call.record["outcome"] == "failed" and call.record["job"] is None  # upstream's own refusal, passed on
    assert call.response.status_code == 400


def test_wait_poll_that_is_not_the_job_changes_nothing(simulator: FineTuningSimulator, call_http) -> None:
    simulator.cancel_delay = 60
    job = simulator.create_job()
    simulator.fail_next(2, status=200, body={"error": {"code": "x", "message": "y"}}, method="GET")
    call = call_http(job["id"], params={"wait_seconds": "1"})
    assert call.record["outcome"] == "cancelled" and call.record["job"]["id"] == job["id"]


# --- 4. strict JSON out ------------------------------------------------------------------------------------------

NON_STANDARD = {
    "NaN": b'{"id": "%s", "status": "cancelled", "trained_tokens": NaN}',
    "Infinity": b'{"id": "%s", "status": "cancelled", "trained_tokens": Infinity}',
    "-Infinity": b'{"id": "%s", "status": "cancelled", "seed": -Infinity}',
    "1e400": b'{"id": "%s", "status": "cancelled", "trained_tokens": 1e400}',
}


@pytest.mark.parametrize("template", NON_STANDARD.values(), ids=NON_STANDARD.keys())
@pytest.mark.parametrize("status", [200, 404])
def test_upstream_body_that_is_not_strict_json_is_the_502_row(
    simulator: FineTuningSimulator, call_http, template: bytes, status: int
) -> None:
    job = simulator.create_job()
    simulator.fail_next(status=status, body=template % job["id"].encode(), path_suffix="/cancel")
    call = call_http(job["id"])
    assert call.response.status_code == 502 and call.record["error"]["code"] == "internalFailure"
    strict_loads(call.response.get_body().decode())
    assert_queue_safe(call.output.values[0])


def test_huge_integers_pass_as_written(simulator: FineTuningSimulator, call_http) -> None:
    job = simulator.create_job()
    big = 10**300
    simulator.fail_next(status=200, body=b'{"id": "%s", "status": "cancelled", "n": %d}' % (job["id"].encode(), big),
                        path_suffix="/cancel")
    call = call_http(job["id"])
    assert call.response.status_code == 200 and call.body["n"] == big and call.record["job"]["n"] == big


# --- 5. one time budget for a request's waits --------------------------------------------------------------------


def test_bulk_waits_for_all_jobs_in_the_same_rounds(simulator: FineTuningSimulator, app_settings) -> None:
    simulator.cancel_delay = 600  # never final while we wait
    ids = [simulator.create_job()["id"] for _ in range(9)]  # one more than the bulk concurrency of 8
    response, output = call_bulk({"job_ids": ids, "wait_seconds": 2})
    assert response.status_code == 200
    gets = [request.path.rsplit("/", 1)[-1] for request in simulator.requests if request.method == "GET"]
    rounds_so_far = dict.fromkeys(ids, 0)
    round_of_each_get = []
    for job_id in gets:
        rounds_so_far[job_id] += 1
        round_of_each_get.append(rounds_so_far[job_id])
    # All of round 1 before any of round 2: the wait is the request's, not each job's in waves of 8.
    assert round_of_each_get == sorted(round_of_each_get) and set(rounds_so_far.values()) == {max(round_of_each_get)}
    waited = {record["waited_seconds"] for record in output.records}
    assert len(waited) == 1 and 0 < waited.pop() <= 2 + 1  # 2 s asked for; the last round's GETs may end after it


def test_bulk_cancels_share_one_deadline(simulator: FineTuningSimulator, app_settings, monkeypatch) -> None:
    monkeypatch.setenv("UPSTREAM_DEADLINE_SECONDS", "1")
    monkeypatch.setenv("UPSTREAM_TIMEOUT_SECONDS", "0.4")
    monkeypatch.setenv("UPSTREAM_MAX_RETRIES", "0")
    ids = [simulator.create_job()["id"] for _ in range(40)]  # five waves of 8
    simulator.fail_next(40, delay=0.6, path_suffix="/cancel")  # each cancel times out after 0.4 s at the least
    response, output = call_bulk({"job_ids": ids})
    messages = [record["error"]["message"] for record in output.records]
    # Wave k starts 0.4 (k - 1) s in at the earliest, so the fourth and fifth start past the request's one
    # deadline and end at once; with a deadline per job they would each have waited their own 0.4 s.
    assert sum("deadline of 1 s passed" in message for message in messages) >= 8
    assert all(record["retryable"] for record in output.records)


# --- 6. answers the openai SDK understands -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "status", "should_retry"),
    [
        ("finished", 409, "false"),
        ("unknown", 404, "false"),
        ("invalid-id", 400, "false"),
        ("refused-key", 502, "false"),
        ("throttled", 429, "true"),
        ("unavailable", 503, "true"),
    ],
)
def test_every_error_answer_says_whether_to_retry(
    simulator: FineTuningSimulator, vault, call_http, setup: str, status: int, should_retry: str
) -> None:
    job_id = {"invalid-id": "ftjob-a.b", "unknown": "ftjob-nobody"}.get(setup) or simulator.create_job(
        status="succeeded" if setup == "finished" else "running"
    )["id"]
    if setup == "refused-key":
        vault.set_secret("azure-openai-api-key", "not-the-key")
    if setup in ("throttled", "unavailable"):
        simulator.fail_next(10, status=429 if setup == "throttled" else 503, headers={"retry-after-ms": "1"})
    call = call_http(job_id)
    assert call.response.status_code == status
    assert call.response.headers["x-should-retry"] == should_retry
    assert ("Retry-After" in call.response.headers) == (should_retry == "true")


def test_success_carries_no_retry_advice(simulator: FineTuningSimulator, call_http) -> None:
    call = call_http(simulator.create_job()["id"])
    assert "x-should-retry" not in call.response.headers and "Retry-After" not in call.response.headers


# --- 7. input leniency, decided ----------------------------------------------------------------------------------


def _wrapped(text: str, line_end: str) -> str:
    return line_end.join(textwrap.wrap(base64.b64encode(text.encode()).decode(), 76)) + line_end


@pytest.mark.parametrize("line_end", ["\n", "\r\n"], ids=["gnu-base64", "mime"])
def test_line_wrapped_base64_is_accepted(simulator: FineTuningSimulator, call_queue, line_end: str) -> None:
    job = simulator.create_job()
    long_json = json.dumps({"job_id": job["id"], "correlation_id": "c" * 100})  # over 76 columns once encoded
    assert call_queue(_wrapped(long_json, line_end)).record["outcome"] == "cancelled"


@pytest.mark.parametrize("form", ["bare", "json", "base64-of-bom-json"])
def test_byte_order_mark_before_a_message_is_ignored(simulator: FineTuningSimulator, call_queue, form: str) -> None:
    job = simulator.create_job()
    text = job["id"] if form == "bare" else json.dumps({"job_id": job["id"]})
    body = ("\ufeff" + text).encode() if form != "base64-of-bom-json" else base64.b64encode(("\ufeff" + text).encode())
    assert call_queue(body).record["outcome"] == "cancelled"


def test_byte_order_mark_before_a_bulk_body_is_ignored(simulator: FineTuningSimulator, app_settings) -> None:
    job = simulator.create_job()
    response, output = call_bulk(b"\xef\xbb\xbf" + json.dumps({"job_ids": [job["id"]]}).encode())
    assert response.status_code == 200 and output.records[0]["outcome"] == "cancelled"


def test_wait_seconds_as_a_json_string_is_refused_in_json(simulator: FineTuningSimulator, call_queue, app_settings):
    job = simulator.create_job()
    record = call_queue(json.dumps({"job_id": job["id"], "wait_seconds": "5"})).record
    assert record["outcome"] == "rejected" and record["error"]["target"] == "wait_seconds"
    response, output = call_bulk({"job_ids": [job["id"]], "wait_seconds": "5"})
    assert response.status_code == 400 and json.loads(response.get_body())["error"]["target"] == "wait_seconds"
    assert simulator.job(job["id"])["status"] == "running"


def test_wait_seconds_in_a_query_string_is_text(simulator: FineTuningSimulator, call_http) -> None:
    call = call_http(simulator.create_job()["id"], params={"wait_seconds": "0.5"})
    assert call.response.status_code == 200 and "waited_seconds" in call.record


# --- properties over text and bodies (classes 1 to 4) -------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.support.properties import PROPERTY_SETTINGS as ALL_PROPERTY_SETTINGS  # noqa: E402

PROPERTY_SETTINGS = settings(ALL_PROPERTY_SETTINGS, max_examples=60)  # each example makes several requests
# Every code point, surrogates and noncharacters included, with the ones queues refuse drawn often.
any_code_point = st.one_of(
    st.characters(min_codepoint=0, max_codepoint=0x10FFFF, categories=None),
    st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff", "\ufffe", "\uffff", "\x00", "\u2028", "\ufeff"]),
)
hostile_text = st.text(alphabet=any_code_point, max_size=400)
json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), hostile_text,
    st.just(API_KEY), st.just(f"echo {API_KEY} echo"),
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.one_of(st.lists(children, max_size=6), st.dictionaries(hostile_text, children, max_size=6)),
    max_leaves=30,
)


def assert_one_clean_record(texts: list[str]) -> dict:
    assert len(texts) == 1
    [text] = texts
    assert_queue_safe(text)
    assert API_KEY not in text
    return json.loads(text)


@PROPERTY_SETTINGS
@given(text=hostile_text)
def test_any_text_as_a_job_id_ends_in_one_clean_record_per_request(
    text: str, simulator: FineTuningSimulator, call_http, call_queue, app_settings
) -> None:
    simulator.clear_requests()
    if "/" not in text:  # a route segment reaches the worker as UTF-8: no lone surrogates there
        call = call_http(text.encode("utf-8", "replace").decode("utf-8"))
        assert_one_clean_record(call.output.values)
        strict_loads(call.response.get_body().decode("utf-8"))
    response, output = call_bulk(json.dumps({"job_ids": [text]}).encode())  # \ud800 arrives as a JSON escape
    assert response.status_code in (200, 400)
    assert_one_clean_record(output.values)
    strict_loads(response.get_body().decode("utf-8"))
    for body in (json.dumps({"job_id": text}), base64.b64encode(text.encode("utf-8", "surrogatepass")).decode()):
        queued = call_queue(body)
        assert queued.raised is None
        assert_one_clean_record(queued.output.values)


@PROPERTY_SETTINGS
@given(body=json_values, status=st.sampled_from([200, 400, 404, 409, 422]), as_job=st.booleans())
def test_any_upstream_json_ends_in_one_strict_record_without_the_key(
    body: object, status: int, as_job: bool, simulator: FineTuningSimulator, call_http
) -> None:
    simulator.clear_requests()
    job = simulator.create_job()
    if as_job:
        body = {"id": job["id"], "status": "cancelled", "extra": body} if status == 200 else {
            "error": {"code": "x", "message": "m", "extra": body}
        }
    raw = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")  # NaN, Infinity, lone surrogates as sent
    simulator.fail_next(status=status, body=raw, path_suffix="/cancel", method="POST")
    call = call_http(job["id"])
    record = assert_one_clean_record(call.output.values)
    answer = call.response.get_body().decode("utf-8")
    strict_loads(answer)
    assert API_KEY not in answer and API_KEY not in json.dumps(dict(call.response.headers))
    assert record["status_code"] == call.response.status_code
    if record["outcome"] == "cancelled":
        assert record["job"]["id"] == job["id"] and isinstance(record["job"]["status"], str)
