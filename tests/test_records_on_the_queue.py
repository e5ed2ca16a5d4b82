"""What reaches the results queue, read back from a real Azurite: the text as written, whatever came in.

Issue 10 sections 2 to 4 (records byte for byte, metadata-named fields, the 64 KiB limit, time-to-live)
and issue 11 section 1 (characters a queue cannot hold), on all three triggers.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import timedelta

import azure.functions as func
import pytest
from azure.functions.queue import QueueMessage
from azure.storage.queue import QueueClient

from devstack.openai_sim import FineTuningSimulator
from shared.contract import RetryLater
from shared.record_text import KEPT_JOB_FIELDS
from shared.results_queue import development_storage_connection_string
from tests.support.handlers import call_bulk, drain_results, handler
from tests.support.network import closed_port
from tests.support.records import assert_queue_safe, strict_loads


def only_record_text() -> str:
    [text] = drain_results().values
    assert_queue_safe(text)
    return text


# --- records arrive as written (issue 10 section 2) ------------------------------------------------------------


def test_record_text_is_compact_json_with_times_as_written(simulator: FineTuningSimulator, call_http) -> None:
    call = call_http(simulator.create_job()["id"])
    [text] = call.output.values
    assert "\n" not in text and text.startswith('{"schema_version":1,"job_id":')
    record = json.loads(text)
    assert text == json.dumps(record, separators=(",", ":"), ensure_ascii=False)  # nothing re-formatted it
    assert len(record["received_at"]) == len("2026-11-26T17:00:00.123Z")


def test_records_never_expire_by_default(simulator: FineTuningSimulator, app_settings) -> None:
    _cancel_leaving_the_record(simulator.create_job()["id"])
    [message] = _peek()
    assert message.expires_on.year == 9999  # the queue service's "never" for a time-to-live of -1


def test_results_ttl_seconds_sets_the_records_time_to_live(
    simulator: FineTuningSimulator, app_settings, monkeypatch
) -> None:
    monkeypatch.setenv("RESULTS_TTL_SECONDS", "3600")
    _cancel_leaving_the_record(simulator.create_job()["id"])
    [message] = _peek()
    assert message.expires_on - message.inserted_on == timedelta(hours=1)


def _cancel_leaving_the_record(job_id: str) -> func.HttpResponse:
    request = func.HttpRequest(
        method="POST",
        url=f"http://localhost:7071/api/openai/fine_tuning/jobs/{job_id}/cancel",
        route_params={"job_id": job_id},
        body=b"",
    )
    return handler("httpTrigger", "openai/fine_tuning/jobs/{job_id}/cancel")(req=request)


def _peek() -> list:
    queue = QueueClient.from_connection_string(os.environ["AzureWebJobsStorage"], os.environ["CANCEL_RESULTS_QUEUE"])
    return list(queue.peek_messages(max_messages=32))


# --- a record that cannot be written (issue 10 section 4) -------------------------------------------------------


@pytest.fixture
def storage_down(monkeypatch) -> None:
    monkeypatch.setenv("AzureWebJobsStorage", development_storage_connection_string(f"http://127.0.0.1:{closed_port()}"))


def test_http_cancel_whose_record_cannot_be_written_answers_503_saying_so(
    simulator: FineTuningSimulator, app_settings, storage_down
) -> None:
    job = simulator.create_job(status="running")
    response = _cancel_leaving_the_record(job["id"])
    assert simulator.job(job["id"])["status"] == "cancelled"  # the cancel itself went through
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5" and response.headers["x-should-retry"] == "true"
    error = json.loads(response.get_body())["error"]
    assert error["code"] == "serviceUnavailable" and error["target"] == "results"
    assert "cancelled (200)" in error["message"] and "send the same request again" in error["message"]


def test_queue_message_whose_record_cannot_be_written_is_retried_by_the_host(
    simulator: FineTuningSimulator, app_settings, storage_down
) -> None:
    job_id = simulator.create_job()["id"]
    message = QueueMessage(id="m-1", body=job_id.encode(), dequeue_count=5, pop_receipt="r")  # the last delivery
    with pytest.raises(RetryLater, match="could not be written"):
        handler("queueTrigger")(msg=message)


# --- metadata-named fields (issue 10 section 3) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "field", ["Id", "id", "DequeueCount", "dequeueCount", "DEQUEUECOUNT", "PopReceipt", "InsertionTime",
              "ExpirationTime", "NextVisibleTime", "QueueTrigger", "queuetrigger"],
)
@pytest.mark.parametrize("encoded", [False, True], ids=["plain", "base64"])
def test_json_message_with_a_metadata_name_is_rejected_naming_it(
    simulator: FineTuningSimulator, vault, call_queue, field: str, encoded: bool
) -> None:
    job = simulator.create_job()
    body = json.dumps({"job_id": job["id"], field: 1})
    call = call_queue(base64.b64encode(body.encode()).decode() if encoded else body, dequeue_count=5)
    assert call.raised is None
    record = call.record
    assert record["outcome"] == "rejected" and record["status_code"] == 400 and record["attempts"] == 0
    assert record["error"]["target"] == field and field in record["error"]["message"]
    assert record["job_id"] == job["id"]
    assert simulator.requests == [] and vault.read_count() == 0
    assert simulator.job(job["id"])["status"] == "running"


def test_unknown_fields_that_are_not_metadata_names_are_still_ignored(simulator: FineTuningSimulator, call_queue):
    job = simulator.create_job()
    call = call_queue(json.dumps({"job_id": job["id"], "identity": "x", "count": 2, "pop": True}))
    assert call.record["outcome"] == "cancelled"


# --- the 64 KiB limit (issue 10 section 4) ------------------------------------------------------------------------

SIZES = {"100KiB": 100 * 1024, "900KiB": 900 * 1024}
FILLERS = {"ascii": "x", "multibyte": "\u20ac", "escaped": "\uffff"}  # 1, 3 and 6 bytes in the record


def _huge_job(job: dict, size: int, filler: str) -> dict:
    in_record = len(json.dumps(filler, ensure_ascii=False).encode("utf-8")) - 2  # 1, 3 and 6 bytes
    upstream = len(json.dumps(filler)) - 2  # the simulator sends \u escapes; its body must stay under our 1 MiB cap
    count = min(size // in_record, (1000 * 1024) // upstream)
    return {**job, "status": "cancelled", "error": {"code": "x", "message": filler * count}, "notes": [filler * 50] * 50}


@pytest.mark.parametrize("filler", FILLERS.values(), ids=FILLERS.keys())
@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_http_record_of_a_huge_job_fits_and_the_answer_is_whole(
    simulator: FineTuningSimulator, call_http, size: int, filler: str
) -> None:
    job = simulator.create_job()
    huge = _huge_job(job, size, filler)
    simulator.fail_next(status=200, body=huge, path_suffix="/cancel")
    call = call_http(job["id"])
    assert call.response.status_code == 200 and call.body == huge  # HTTP answers are not cut
    [text] = call.output.values
    assert_queue_safe(text)
    record = json.loads(text)
    assert record["truncated"] is True and record["outcome"] == "cancelled"
    assert {name: record["job"].get(name) for name in KEPT_JOB_FIELDS} == {name: huge.get(name) for name in KEPT_JOB_FIELDS}
    assert record["job"]["error"]["code"] == "x"


@pytest.mark.parametrize("filler", FILLERS.values(), ids=FILLERS.keys())
@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_queue_record_of_a_huge_error_body_fits(
    simulator: FineTuningSimulator, call_queue, size: int, filler: str
) -> None:
    job = simulator.create_job()
    body = {"error": {"code": "invalidRequest", "message": _huge_job(job, size, filler)["error"]["message"]}}
    simulator.fail_next(status=422, body=body, path_suffix="/cancel")
    call = call_queue(job["id"])
    [text] = call.output.values
    assert_queue_safe(text)
    record = json.loads(text)
    assert record["truncated"] is True and record["outcome"] == "failed" and record["status_code"] == 422
    assert record["error"]["code"] == "invalidRequest" and record["error"]["message"].startswith(filler * 10)


@pytest.mark.parametrize("filler", FILLERS.values(), ids=FILLERS.keys())
def test_bulk_records_of_huge_jobs_each_fit(simulator: FineTuningSimulator, app_settings, filler: str) -> None:
    jobs = [simulator.create_job() for _ in range(3)]
    for job in jobs:
        simulator.fail_next(status=200, body=_huge_job(job, SIZES["900KiB"], filler), path_suffix=f"{job['id']}/cancel")
    response, output = call_bulk({"job_ids": [job["id"] for job in jobs]})
    assert response.status_code == 200
    assert len(output.values) == 3
    for text in output.values:
        assert_queue_safe(text)
        assert json.loads(text)["truncated"] is True
    answered = json.loads(response.get_body())["results"]
    assert all("truncated" not in result for result in answered)  # the answer carries the whole records


def test_a_record_that_fits_says_nothing_of_truncation(simulator: FineTuningSimulator, call_http) -> None:
    call = call_http(simulator.create_job()["id"])
    assert "truncated" not in call.record


# --- characters a queue cannot hold (issue 11 section 1) ----------------------------------------------------------


@pytest.mark.parametrize("char", ["\uffff", "\ufffe"], ids=["U+FFFF", "U+FFFE"])
def test_route_job_id_with_a_character_a_queue_cannot_hold(call_http, char: str) -> None:
    call = call_http(f"ftjob-{char}abc")
    [text] = call.output.values
    assert_queue_safe(text)
    assert call.response.status_code == 400 and char in call.record["error"]["message"]  # still there, escaped
    assert f"\\u{ord(char):04x}" in text


@pytest.mark.parametrize("char", ["\ud800", "\udfff", "\uffff", "\x00"], ids=["D800", "DFFF", "FFFF", "NUL"])
def test_bulk_body_with_lone_surrogates_and_noncharacters(app_settings, char: str) -> None:
    body = json.dumps({"job_ids": [f"ftjob-{char}", "ftjob-" + char * 300]}).encode()  # \ud800 as a JSON escape
    response, output = call_bulk(body)
    assert response.status_code == 200
    strict_loads(response.get_body().decode("utf-8"))
    assert len(output.values) == 2
    for text in output.values:
        assert_queue_safe(text)
        assert json.loads(text)["outcome"] == "rejected"


@pytest.mark.parametrize("char", ["\uffff", "\ud800"], ids=["FFFF", "D800"])
def test_queue_messages_with_characters_a_queue_cannot_hold(call_queue, char: str) -> None:
    as_json = json.dumps({"job_id": f"ftjob-{char}"})  # \ud800 escaped in the message
    utf8 = f"ftjob-{char}".encode("utf-8", "surrogatepass")  # a lone surrogate is not UTF-8
    for body in (as_json, base64.b64encode(utf8).decode(), base64.b64encode(as_json.encode()).decode()):
        call = call_queue(body)
        assert call.raised is None
        assert_queue_safe(call.output.values[0])
        assert call.record["outcome"] == "rejected"


def test_results_queue_stays_readable_after_hostile_records(simulator: FineTuningSimulator, call_http) -> None:
    for hostile in ("ftjob-\uffff", "ftjob-\ufffe", "\ufffe" * 300):
        assert call_http(hostile).record["outcome"] == "rejected"
    # Azurite would answer 500 to every read from here on had any of them been stored raw.
    assert call_http(simulator.create_job()["id"]).record["outcome"] == "cancelled"
