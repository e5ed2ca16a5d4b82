"""The runner shows what Azure does that a kinder runner would hide, on small apps of the tests' own.

Output conversions (host FunctionBinding.cs ReadAsEnumerable), metadata taken over by a JSON message
(host Utility.cs ApplyBindingData), the worker's one thread pool (worker dispatcher.py
_get_sync_tp_max_workers), None from an HTTP function (worker bindings/meta.py get_datum) and a chunked
body (host GrpcMessageConversionExtensions.cs ToRpcHttp). The rules are in devstack/host_rules.py.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import threading
import time
import typing
from collections.abc import Iterator

import azure.functions as func
import pytest
import requests
from azure.storage.queue import QueueClient

from devstack.runner import FunctionsRunner
from devstack.storage import Azurite, message_count, take_messages
from tests.support.hosts import FAST_HOST as RUNNER_TEST_HOST
from tests.support.queues import take_parsed, unique_queue_name

pytestmark = pytest.mark.e2e

FAST_HOST = dataclasses.replace(RUNNER_TEST_HOST, max_dequeue_count=2)
RECORD = {"request_id": "r-1", "finished_at": "2024-05-01T12:00:00.540Z", "note": "café"}
POOL_SIZE = 2
HTTP_CALLS = QUEUE_CALLS = 3


class Seen:
    """What the test app's functions saw, and how many of them ran at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[tuple[str, int, bytes]] = []  # id, dequeue_count, body
        self.bodies: list[bytes] = []
        self.running = 0
        self.most_running = 0
        self.entered = 0
        self.release = threading.Event()

    def run_until_released(self) -> None:
        with self.lock:
            self.running += 1
            self.entered += 1
            self.most_running = max(self.most_running, self.running)
        try:
            assert self.release.wait(timeout=60), "the test never released the invocations"
        finally:
            with self.lock:
                self.running -= 1


def build_app(seen: Seen) -> func.FunctionApp:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.function_name("record_as_str")
    @app.route(route="record", methods=["POST"])
    @app.queue_output(arg_name="out", queue_name="%OUTPUT_QUEUE%", connection="AzureWebJobsStorage")
    def record_as_str(req: func.HttpRequest, out: func.Out[str]) -> func.HttpResponse:
        out.set(json.dumps(RECORD))
        return func.HttpResponse("set")

    @app.function_name("records_as_list")
    @app.route(route="records", methods=["POST"])
    @app.queue_output(arg_name="out", queue_name="%OUTPUT_QUEUE%", connection="AzureWebJobsStorage")
    def records_as_list(req: func.HttpRequest, out: func.Out[typing.List[str]]) -> func.HttpResponse:  # noqa: UP006
        out.set([json.dumps(RECORD), json.dumps({**RECORD, "request_id": "r-2"})])
        return func.HttpResponse("set")

    @app.function_name("note_metadata")
    @app.queue_trigger(arg_name="msg", queue_name="%METADATA_QUEUE%", connection="AzureWebJobsStorage")
    def note_metadata(msg: func.QueueMessage) -> None:
        with seen.lock:
            seen.messages.append((msg.id, msg.dequeue_count, msg.get_body()))

    @app.function_name("echo_body")
    @app.route(route="echo", methods=["POST"])
    def echo_body(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse(b"body:" + req.get_body())

    @app.function_name("returns_nothing")
    @app.route(route="nothing", methods=["GET"])
    def returns_nothing(req: func.HttpRequest) -> func.HttpResponse:
        return None  # type: ignore[return-value]

    @app.function_name("held_http")
    @app.route(route="held", methods=["POST"])
    def held_http(req: func.HttpRequest) -> func.HttpResponse:
        seen.run_until_released()
        return func.HttpResponse("done")

    @app.function_name("held_queue")
    @app.queue_trigger(arg_name="msg", queue_name="%HELD_QUEUE%", connection="AzureWebJobsStorage")
    @app.queue_output(arg_name="out", queue_name="%OUTPUT_QUEUE%", connection="AzureWebJobsStorage")
    def held_queue(msg: func.QueueMessage, out: func.Out[str]) -> None:
        seen.run_until_released()
        out.set("done " + msg.get_body().decode())

    return app


@pytest.fixture
def queues() -> dict[str, str]:
    names = ("OUTPUT_QUEUE", "METADATA_QUEUE", "HELD_QUEUE")
    return {name: unique_queue_name(name.split("_")[0].lower()) for name in names}


@pytest.fixture
def seen() -> Iterator[Seen]:
    seen = Seen()
    yield seen
    seen.release.set()  # never leave a worker thread waiting


@pytest.fixture
def runner(azurite: Azurite, seen: Seen, queues: dict[str, str]) -> Iterator[FunctionsRunner]:
    azurite.create_queues(queues["METADATA_QUEUE"], queues["HELD_QUEUE"])
    settings = {
        "AzureWebJobsStorage": azurite.connection_string,
        "PYTHON_THREADPOOL_THREAD_COUNT": str(POOL_SIZE),
        **queues,
    }
    runner = FunctionsRunner(build_app(seen), host_settings=FAST_HOST, settings=settings, port=0).start()
    yield runner
    seen.release.set()
    runner.stop()


def queue(azurite: Azurite, name: str) -> QueueClient:
    return QueueClient.from_connection_string(azurite.connection_string, name)


def raw_messages(azurite: Azurite, name: str, count: int) -> list[str]:
    """The messages' text as stored (take_parsed parses JSON, which would hide the formatting)."""
    return take_messages(queue(azurite, name), count=count, timeout=30)


def test_an_out_str_record_reaches_the_queue_as_newtonsoft_rewrote_it(
    azurite: Azurite, runner: FunctionsRunner, queues: dict[str, str]
):
    # host FunctionBinding.cs ReadAsEnumerable: a JSON-looking str is JToken.Parse'd and written as
    # JToken.ToString(): indented, and ".540Z" re-formatted by Newtonsoft's DateTimeUtils as ".54Z".
    assert requests.post(f"{runner.api_url}/record", timeout=10).status_code == 200

    [written] = raw_messages(azurite, queues["OUTPUT_QUEUE"], 1)

    assert written != json.dumps(RECORD)
    assert written == '{\n  "request_id": "r-1",\n  "finished_at": "2024-05-01T12:00:00.54Z",\n  "note": "café"\n}'
    assert json.loads(written)["finished_at"] != RECORD["finished_at"]


def test_an_out_list_of_str_reaches_the_queue_element_by_element_verbatim(
    azurite: Azurite, runner: FunctionsRunner, queues: dict[str, str]
):
    # worker QueueMessageOutConverter.encode sends a list as TypedData.Json; host ToObject reads it with
    # DateParseHandling.None and ReadAsEnumerable writes each JArray element's string as it is.
    assert requests.post(f"{runner.api_url}/records", timeout=10).status_code == 200

    written = raw_messages(azurite, queues["OUTPUT_QUEUE"], 2)

    assert sorted(written) == sorted([json.dumps(RECORD), json.dumps({**RECORD, "request_id": "r-2"})])


def test_a_json_message_overwrites_the_id_and_dequeue_count_the_function_sees(
    azurite: Azurite, runner: FunctionsRunner, seen: Seen, queues: dict[str, str]
):
    # host Utility.cs ApplyBindingData (case-insensitive: SDK Binder.cs), azure.functions queue.py
    # QueueMessageInConverter.decode
    client = queue(azurite, queues["METADATA_QUEUE"])
    sent = client.send_message('{"job_id": "ftjob-abc", "dequeueCount": 7, "id": "x"}')
    plain = client.send_message("ftjob-abc")

    deadline = time.monotonic() + 30
    while len(seen.messages) < 2:
        assert time.monotonic() < deadline, f"the function saw {seen.messages}"
        time.sleep(0.05)

    by_body = {body: (message_id, dequeue_count) for message_id, dequeue_count, body in seen.messages}
    assert by_body[b'{"job_id": "ftjob-abc", "dequeueCount": 7, "id": "x"}'] == ("x", 7)
    assert by_body[b"ftjob-abc"] == (plain.id, 1)
    assert sent.id != "x"
    # Settled with the real id and pop receipt: deleted once each function returned (the runner deletes after).
    deadline = time.monotonic() + 30
    while message_count(client) != 0:
        assert time.monotonic() < deadline, "a message was never deleted: settled with the overwritten id?"
        time.sleep(0.05)


def test_a_metadata_field_the_worker_cannot_read_fails_every_delivery_into_the_poison_queue(
    azurite: Azurite, runner: FunctionsRunner, seen: Seen, queues: dict[str, str]
):
    # azure.functions meta.py _parse_datetime: the host sends "InsertionTime" as "01/02/2024 00:00:00"
    # ((string)JToken of a date), which the worker cannot parse: the function never runs.
    body = '{"job_id": "ftjob-abc", "InsertionTime": "2024-01-02T00:00:00Z"}'
    queue(azurite, queues["METADATA_QUEUE"]).send_message(body)

    assert take_parsed(queue(azurite, queues["METADATA_QUEUE"] + "-poison"), 1) == [json.loads(body)]
    assert seen.messages == []


def test_at_most_python_threadpool_thread_count_invocations_run_at_once_across_http_and_queue(
    azurite: Azurite, runner: FunctionsRunner, seen: Seen, queues: dict[str, str]
):
    # worker dispatcher.py: one _sync_call_tp per process, sized by _get_sync_tp_max_workers, for every trigger
    assert runner.pool.max_workers == POOL_SIZE
    answers: list[int] = []
    callers = [
        threading.Thread(target=lambda: answers.append(requests.post(f"{runner.api_url}/held", timeout=90).status_code))
        for _ in range(HTTP_CALLS)
    ]
    for caller in callers:
        caller.start()
    for n in range(QUEUE_CALLS):
        queue(azurite, queues["HELD_QUEUE"]).send_message(f"message {n}")

    # Every invocation has arrived: POOL_SIZE run, the rest wait for a worker thread.
    deadline = time.monotonic() + 30
    while runner.pool.waiting + seen.entered < HTTP_CALLS + QUEUE_CALLS:
        assert time.monotonic() < deadline, f"{seen.entered} running, {runner.pool.waiting} waiting"
        time.sleep(0.05)
    assert (seen.entered, runner.pool.waiting) == (POOL_SIZE, HTTP_CALLS + QUEUE_CALLS - POOL_SIZE)

    seen.release.set()
    for caller in callers:
        caller.join(timeout=60)
    outputs = take_parsed(queue(azurite, queues["OUTPUT_QUEUE"]), QUEUE_CALLS)

    assert answers == [200] * HTTP_CALLS
    assert sorted(outputs) == [f"done message {n}" for n in range(QUEUE_CALLS)]
    assert seen.entered == HTTP_CALLS + QUEUE_CALLS
    assert seen.most_running == POOL_SIZE


def test_an_http_function_that_returns_none_answers_500(runner: FunctionsRunner):
    # azure.functions http.py HttpResponseConverter.encode: NotImplementedError -> worker get_datum TypeError
    response = requests.get(f"{runner.api_url}/nothing", timeout=10)

    assert (response.status_code, response.text) == (500, "")


def test_a_chunked_body_does_not_reach_the_function(runner: FunctionsRunner):
    # host GrpcMessageConversionExtensions.cs ToRpcHttp: the body is forwarded only when ContentLength > 0
    def chunks() -> Iterator[bytes]:
        yield b"hello"

    chunked = requests.post(f"{runner.api_url}/echo", data=chunks(), timeout=10)
    sized = requests.post(f"{runner.api_url}/echo", data=b"hello", timeout=10)

    assert chunked.request.headers.get("Transfer-Encoding") == "chunked"
    assert (chunked.status_code, chunked.text) == (200, "body:")
    assert (sized.status_code, sized.text) == (200, "body:hello")


def test_a_connection_stays_usable_after_a_chunked_body(runner: FunctionsRunner):
    connection = http.client.HTTPConnection("127.0.0.1", runner.port, timeout=10)
    try:
        connection.request("POST", "/api/echo", body=iter([b"hel", b"lo"]), encode_chunked=True)
        first = connection.getresponse()
        assert (first.status, first.read()) == (200, b"body:")
        connection.request("POST", "/api/echo", body=b"again")
        second = connection.getresponse()
        assert (second.status, second.read()) == (200, b"body:again")
    finally:
        connection.close()
