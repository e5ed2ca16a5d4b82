"""The host's and the worker's conversions the local runner applies (devstack/host_rules.py), as tables.

Each table names the source it follows; the rows are what Azure writes or passes for each input.
"""

from __future__ import annotations

import datetime
import json
import re

import azure.functions as func
import pytest
from azure.functions.meta import Datum
from azure.functions.queue import QueueMessageOutConverter

from devstack.host_rules import (
    dotnet_double,
    host_output_messages,
    is_json,
    newtonsoft_date,
    queue_trigger_metadata,
    worker_thread_count,
)
from devstack.runner import RunnerError, forwarded_body, http_response, queue_message_for_worker
from devstack.runner.routes import RouteTemplate

RECORD = json.dumps({"request_id": "r-1", "finished_at": "2024-05-01T12:00:00.540Z", "status_code": 200})


def host_writes(value: object) -> list[str]:
    """What the host writes to the queue for a value set on a `func.Out` queue output."""
    datum = QueueMessageOutConverter.encode(value, expected_type=None)
    return [message.decode("utf-8") for message in host_output_messages(datum)]


# host FunctionBinding.cs ReadAsEnumerable + BindAsyncCollectorAsync, GrpcMessageConversionExtensions.cs ToObject,
# Newtonsoft JToken.ToString() (Formatting.Indented) and DateTimeUtils.WriteDateTimeString.
@pytest.mark.parametrize(
    ("value", "written"),
    [
        # a JSON-looking str: parsed, re-written indented over lines, ISO times re-formatted
        (
            RECORD,
            ['{\n  "request_id": "r-1",\n  "finished_at": "2024-05-01T12:00:00.54Z",\n  "status_code": 200\n}'],
        ),
        ('{"t": "2024-05-01T12:00:00.000Z"}', ['{\n  "t": "2024-05-01T12:00:00Z"\n}']),
        ('{"t": "2024-05-01T12:00:00.1234567Z"}', ['{\n  "t": "2024-05-01T12:00:00.1234567Z"\n}']),
        ('{"t": "2024-05-01T12:00:00.12345678Z"}', ['{\n  "t": "2024-05-01T12:00:00.12345678Z"\n}']),  # not a date
        ('{"t": "2024-05-01T14:00:00+02:00"}', ['{\n  "t": "2024-05-01T12:00:00+00:00"\n}']),  # to local = UTC
        ('{"t": "2024-05-01T12:00:00"}', ['{\n  "t": "2024-05-01T12:00:00"\n}']),  # Unspecified
        ('{"t": "2024-02-30T12:00:00Z"}', ['{\n  "t": "2024-02-30T12:00:00Z"\n}']),  # no such day: a string
        ('{"t": "/Date(1714564800540)/"}', ['{\n  "t": "2024-05-01T12:00:00.54Z"\n}']),
        ('{"a":[],"o":{},"n":null,"b":true}', ['{\n  "a": [],\n  "o": {},\n  "n": null,\n  "b": true\n}']),
        ('{"l": [1, "x"]}', ['{\n  "l": [\n    1,\n    "x"\n  ]\n}']),
        (
            '{"f": 1.0, "g": 1e15, "h": 0.00001, "i": 1e2}',
            ['{\n  "f": 1.0,\n  "g": 1E+15,\n  "h": 1E-05,\n  "i": 100.0\n}'],
        ),
        ('{"big": 123456789012345678901234567890}', ['{\n  "big": 123456789012345678901234567890\n}']),
        # StringEscapeHandling.Default: non-ASCII as is, control characters and U+2028 escaped
        ('{"s": "\\u00e9\\u2028\\u0001\\t\\"/"}', ['{\n  "s": "é\\u2028\\u0001\\t\\"/"\n}']),
        ("  {}  ", ["{}"]),
        # a JSON array str: one message per element, each its JToken.ToString()
        (
            '["a", {"k": 1}, 2, true, null, "2024-05-01T12:00:00.540Z"]',
            ["a", '{\n  "k": 1\n}', "2", "True", "", "05/01/2024 12:00:00"],
        ),
        # not JSON-looking: as it is
        ("plain text", ["plain text"]),
        ('{"unterminated": 1', ['{"unterminated": 1']),
        # a list (TypedData.Json, DateParseHandling.None): element by element, verbatim
        (["a", RECORD], ["a", RECORD]),
        # bytes (TypedData.Bytes, byte[] collector): as they are
        (RECORD.encode("utf-8"), [RECORD]),
        # a QueueMessage (TypedData.Json of id and body): that JSON, indented
        (func.QueueMessage(body=b"hello"), ['{\n  "id": null,\n  "body": "hello"\n}']),
    ],
)
def test_the_host_writes_a_queue_output_as_newtonsoft_reads_and_rewrites_it(value: object, written: list[str]):
    assert host_writes(value) == written


def test_a_json_looking_string_newtonsoft_cannot_read_fails_the_output():
    # JToken.Parse throws in ReadAsEnumerable: the invocation fails (Python's parser is stricter still).
    with pytest.raises(ValueError):
        host_writes("{not json}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("{}", True), (" [1] ", True), ('{"a": 1', False), ("1", False), ('"{}"', False), ("", False), (None, False)],
)
def test_is_json_is_the_hosts_first_and_last_character_check(text: str | None, expected: bool):
    # host src/WebJobs.Script/Utility.cs IsJson
    assert is_json(text) is expected


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (-0.0, "-0"),
        (1.5, "1.5"),
        (100.0, "100"),
        (0.1, "0.1"),
        (0.0001, "0.0001"),
        (0.00001, "1E-05"),
        (1e14, "100000000000000"),
        (1e15, "1E+15"),
        (123456789012345.0, "123456789012345"),
        (1234567890123456.7, "1234567890123456.8"),
        (1.2345678901234568e17, "1.2345678901234568E+17"),
        (-2.5e-10, "-2.5E-10"),
    ],
)
def test_doubles_are_written_as_dotnet_writes_them(value: float, text: str):
    # .NET Core 3.0+ double.ToString("R", InvariantCulture), which Newtonsoft's JsonConvert.ToString uses
    assert dotnet_double(value) == text


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("2024-05-01T12:00:00.540Z", "2024-05-01T12:00:00.54Z"),
        ("2024-05-01T12:00:00z", "2024-05-01T12:00:00Z"),
        ("2024-05-01T24:00:00Z", "2024-05-02T00:00:00Z"),
        ("2024-05-01T10:00:00-0230", "2024-05-01T12:30:00+00:00"),
        ("2024-05-01T12:00:00+05", "2024-05-01T07:00:00+00:00"),
        ("2024-05-01 12:00:00Z", None),
        ("2024-05-01T12:00Z", None),
        ("2024-13-01T12:00:00Z", None),
        ("2024-05-01T12:00:60Z", None),
    ],
)
def test_strings_newtonsoft_reads_as_dates(text: str, iso: str | None):
    # Newtonsoft Utilities/DateTimeUtils.cs TryParseDateTime, Utilities/DateTimeParser.cs Parse
    date = newtonsoft_date(text)
    assert (date.iso() if date else None) == iso


REAL_METADATA = {
    "Id": "real-id",
    "DequeueCount": 3,
    "InsertionTime": datetime.datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=datetime.timezone.utc),
    "ExpirationTime": datetime.datetime(2030, 1, 9, 3, 4, 5, tzinfo=datetime.timezone.utc),
    "NextVisibleTime": datetime.datetime(2030, 1, 2, 3, 14, 5, tzinfo=datetime.timezone.utc),
    "PopReceipt": "real-receipt",
    "QueueTrigger": "…",
}


# host Utility.cs ApplyBindingData (case-insensitive binding data: SDK Binder.cs), then the worker's
# azure.functions queue.py QueueMessageInConverter.decode on the result.
@pytest.mark.parametrize(
    ("fields", "seen"),
    [
        ({}, {"id": "real-id", "dequeue_count": 3, "pop_receipt": "real-receipt"}),
        ({"DequeueCount": 1}, {"id": "real-id", "dequeue_count": 1}),
        ({"dequeueCount": 1}, {"dequeue_count": 1}),
        ({"DEQUEUECOUNT": "1"}, {"dequeue_count": 1}),
        ({"id": "x"}, {"id": "x", "dequeue_count": 3}),
        ({"Id": 7}, {"id": "7"}),
        ({"Id": {"a": 1}}, {"id": "{'a': 1}"}),  # a JObject, sent as JSON, str()-ed by the worker
        ({"PopReceipt": "p"}, {"pop_receipt": "p"}),
        (
            {"InsertionTime": "01/02/2024 00:00:00Z"},
            {"insertion_time": datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc)},
        ),
        ({"DequeueCount": None}, {"dequeue_count": 3}),  # null values are skipped
        ({"DequeueCount": [1]}, {"dequeue_count": 3}),  # arrays are skipped
        ({"QueueTrigger": "q", "job_id": "ftjob-1"}, {"id": "real-id", "dequeue_count": 3}),
    ],
)
def test_a_json_message_overwrites_the_metadata_the_function_sees(fields: dict, seen: dict):
    msg = queue_message_for_worker(json.dumps({"job_id": "ftjob-abc", **fields}).encode(), REAL_METADATA)

    assert {name: getattr(msg, name) for name in seen} == seen
    assert msg.insertion_time is not None and msg.expiration_time is not None


@pytest.mark.parametrize(
    "fields",
    [
        {"DequeueCount": "x"},
        {"DequeueCount": True},  # (string)JToken gives "True"
        {"DequeueCount": 1.5},
        {"InsertionTime": "2024-01-02T00:00:00Z"},  # read as a date, sent as "01/02/2024 00:00:00"
        {"ExpirationTime": "soon"},
        {"nextvisibletime": 5},
    ],
)
def test_a_metadata_field_the_worker_cannot_convert_fails_the_invocation(fields: dict):
    # azure.functions meta.py _decode_typed_data / _parse_datetime raise ValueError before the function runs
    with pytest.raises(ValueError):
        queue_message_for_worker(json.dumps(fields).encode(), REAL_METADATA)


@pytest.mark.parametrize("body", [b"ftjob-abc", b'["DequeueCount", 1]', b'{"DequeueCount": 1', b"\xff{}"])
def test_a_message_that_is_no_json_object_leaves_the_metadata_alone(body: bytes):
    real = {"DequeueCount": Datum(type="json", value="3")}

    assert queue_trigger_metadata(body, real) == real


@pytest.mark.parametrize(
    ("setting", "cpus", "threads"),
    [
        (None, 1, 5),  # ThreadPoolExecutor's default: min(32, cpu + 4)
        (None, 2, 6),
        (None, 64, 32),
        ("32", 1, 32),
        ("2", 8, 2),
        ("100", 1, 100),  # no maximum on Python 3.9+
        ("0", 1, 5),  # below PYTHON_THREADPOOL_THREAD_COUNT_MIN: a warning, the default
        ("-3", 2, 6),
        ("many", 1, 5),  # not an integer: a warning, the default
    ],
)
def test_the_worker_sizes_its_thread_pool(setting: str | None, cpus: int, threads: int):
    # worker azure_functions_worker/dispatcher.py _get_sync_tp_max_workers, constants.py
    environ = {} if setting is None else {"PYTHON_THREADPOOL_THREAD_COUNT": setting}

    assert worker_thread_count(environ, cpu_count=cpus) == threads


@pytest.mark.parametrize(
    ("content_length", "body", "forwarded"),
    [("5", b"hello", b"hello"), (None, b"hello", b""), ("0", b"", b""), ("x", b"", b"")],
)
def test_the_host_forwards_a_body_only_with_a_content_length_above_zero(
    content_length: str | None, body: bytes, forwarded: bytes
):
    # host GrpcMessageConversionExtensions.cs ToRpcHttp: request.ContentLength > 0 (a chunked body has none)
    assert forwarded_body(content_length, body) == forwarded


@pytest.mark.parametrize("returned", [None, b"bytes", 42])
def test_an_http_function_returning_no_str_or_httpresponse_fails(returned: object):
    # azure.functions http.py HttpResponseConverter.encode raises NotImplementedError; worker bindings/meta.py
    # get_datum turns it into TypeError: the invocation fails, the host answers 500.
    with pytest.raises(TypeError, match="unable to encode outgoing TypedData"):
        http_response(returned)


# ASP.NET Core Template/TemplateMatcher.cs (literals OrdinalIgnoreCase), Constraints/IntRouteConstraint.cs; the
# runner keeps what function_app.py's routes use (devstack/runner/routes.py).
@pytest.mark.parametrize(
    ("template", "path", "params"),
    [
        ("openai/fine_tuning/jobs/{job_id}/cancel", "/openai/fine_tuning/jobs/ftjob-1/cancel", {"job_id": "ftjob-1"}),
        ("openai/fine_tuning/jobs/{job_id}/cancel", "/OpenAI/Fine_Tuning/JOBS/ftjob-1/cancel/", {"job_id": "ftjob-1"}),
        ("openai/fine_tuning/jobs/{job_id}/cancel", "/openai/fine_tuning/jobs//cancel", None),  # empty segment
        ("openai/fine_tuning/jobs/{job_id}/cancel", "/openai/fine_tuning/jobs/a/b/cancel", None),
        ("resources/{resource}/jobs/{job_id}", "/resources/r%2Fx/jobs/j", {"resource": "r%2Fx", "job_id": "j"}),
        ("health", "/health", {}),
        ("health", "/healthz", None),
        ("items/{id:int}/{name?}", "/items/12/pen", {"id": "12", "name": "pen"}),
        ("items/{id:int}/{name?}", "/items/-12", {"id": "-12"}),
        ("items/{id:int}/{name?}", "/items/twelve", None),
    ],
)
def test_routes_match_as_the_host_matches_them(template: str, path: str, params: dict | None):
    assert RouteTemplate.parse(template).match(path) == params


@pytest.mark.parametrize(
    ("template", "feature"),
    [
        ("files/{*path}", "a catch-all parameter"),
        ("items/{id=1}", "a default value"),
        ("items/{id:guid}", "route constraint ':guid'"),
        ("items/{id}.json", "a complex segment"),
        ("items/{a}-{b}", "a complex segment"),
        ("items/{{literal}}", "escaped braces"),
        ("items/{name?}/more", "only the last segment may be optional"),
    ],
)
def test_route_features_the_runner_does_not_support_are_refused_by_name(template: str, feature: str):
    with pytest.raises(RunnerError, match=re.escape(feature)):
        RouteTemplate.parse(template, where="function 'f'")


@pytest.mark.parametrize(
    ("returned", "answer"),
    [
        ("plain", (200, [], "text/plain; charset=utf-8", b"plain")),
        (func.HttpResponse("x", status_code=201), (201, [], "text/plain; charset=utf-8", b"x")),
        (func.HttpResponse(b"{}", mimetype="application/json"), (200, [], "application/json", b"{}")),
        (
            func.HttpResponse("", headers={"Content-Type": "text/csv", "Retry-After": "3"}),
            (200, [("Retry-After", "3")], "text/csv", b""),
        ),
    ],
)
def test_an_http_answer_is_what_the_azure_functions_converter_encodes(returned: object, answer: tuple):
    # azure.functions http.py HttpResponseConverter.encode: content-type from mimetype and charset when unset
    assert http_response(returned) == answer
