"""The local runner's host semantics, on small apps of the tests' own: poison queue, encodings, routes, outputs."""

from __future__ import annotations

import base64
import threading
import typing
from collections.abc import Iterator

import azure.functions as func
import pytest
import requests
from azure.storage.queue import QueueClient

from devstack.runner import FunctionsRunner, HostSettings, RunnerError, index_functions
from devstack.storage import Azurite, message_count
from tests.support.hosts import FAST_HOST
from tests.support.queues import take_parsed, unique_queue_name

pytestmark = pytest.mark.e2e



CONCURRENT_CALLS = 3


class Calls:
    """What the test app's functions were called with."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # Passed only when CONCURRENT_CALLS invocations wait at it together.
        self.http_rendezvous = threading.Barrier(CONCURRENT_CALLS, timeout=15)
        self.queue_rendezvous = threading.Barrier(CONCURRENT_CALLS, timeout=15)
        self.dequeue_counts: list[int] = []
        self.bodies: list[bytes] = []

    def add(self, msg: func.QueueMessage) -> None:
        with self.lock:
            self.dequeue_counts.append(msg.dequeue_count)
            self.bodies.append(msg.get_body())


def build_app(calls: Calls) -> func.FunctionApp:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.function_name("always_fails")
    @app.queue_trigger(arg_name="msg", queue_name="%FAILING_QUEUE%", connection="AzureWebJobsStorage")
    @app.queue_output(arg_name="out", queue_name="%OUTPUT_QUEUE%", connection="AzureWebJobsStorage")
    def always_fails(msg: func.QueueMessage, out: func.Out[str]) -> None:
        calls.add(msg)
        out.set("written although the function failed")
        raise RuntimeError("this function always fails")

    @app.function_name("shout")
    @app.queue_trigger(arg_name="msg", queue_name="%SHOUT_QUEUE%", connection="AzureWebJobsStorage")
    @app.queue_output(arg_name="out", queue_name="%OUTPUT_QUEUE%", connection="AzureWebJobsStorage")
    def shout(msg: func.QueueMessage, out: func.Out[str]) -> None:
        calls.add(msg)
        out.set(msg.get_body().decode("utf-8").upper())

    @app.function_name("rendezvous_queue")
    @app.queue_trigger(arg_name="msg", queue_name="%RENDEZVOUS_QUEUE%", connection="AzureWebJobsStorage")
    @app.queue_output(arg_name="out", queue_name="%OUTPUT_QUEUE%", connection="AzureWebJobsStorage")
    def rendezvous_queue(msg: func.QueueMessage, out: func.Out[str]) -> None:
        calls.queue_rendezvous.wait()
        out.set(f"{msg.get_body().decode()} dequeue {msg.dequeue_count}")

    @app.function_name("rendezvous_http")
    @app.route(route="rendezvous", methods=["POST"])
    def rendezvous_http(req: func.HttpRequest) -> func.HttpResponse:
        calls.http_rendezvous.wait()
        return func.HttpResponse("met")

    @app.function_name("item")
    @app.route(route="items/{id:int}/{name?}", methods=["GET"])
    @app.queue_output(arg_name="out", queue_name="%OUTPUT_QUEUE%", connection="AzureWebJobsStorage")
    def item(req: func.HttpRequest, out: func.Out[str]) -> func.HttpResponse:
        if req.params.get("fail"):
            out.set("written although the function failed")
            raise RuntimeError("asked to fail")
        out.set(f"item {req.route_params['id']}")
        return func.HttpResponse(
            f"{req.route_params.get('id')}|{req.route_params.get('name')}|{req.params.get('q')}", status_code=201
        )

    @app.function_name("secret")
    @app.route(route="secret", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
    def secret(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("opened")

    return app


@pytest.fixture
def queues() -> dict[str, str]:
    names = ("FAILING_QUEUE", "SHOUT_QUEUE", "RENDEZVOUS_QUEUE", "OUTPUT_QUEUE")
    return {name: unique_queue_name(name.split("_")[0].lower()) for name in names}


@pytest.fixture
def calls() -> Calls:
    return Calls()


def start(azurite: Azurite, calls: Calls, queues: dict[str, str], host: HostSettings) -> FunctionsRunner:
    azurite.create_queues(queues["FAILING_QUEUE"], queues["SHOUT_QUEUE"], queues["RENDEZVOUS_QUEUE"])
    settings = {"AzureWebJobsStorage": azurite.connection_string, **queues}
    return FunctionsRunner(build_app(calls), host_settings=host, settings=settings, port=0, function_key="k").start()


@pytest.fixture
def runner(azurite: Azurite, calls: Calls, queues: dict[str, str]) -> Iterator[FunctionsRunner]:
    runner = start(azurite, calls, queues, FAST_HOST)
    yield runner
    runner.stop()


def queue(azurite: Azurite, name: str) -> QueueClient:
    return QueueClient.from_connection_string(azurite.connection_string, name)


def test_a_message_that_keeps_failing_goes_to_the_poison_queue_after_max_dequeue_count(
    azurite: Azurite, runner: FunctionsRunner, calls: Calls, queues: dict[str, str]
):
    queue(azurite, queues["FAILING_QUEUE"]).send_message("payload that fails")

    [poisoned] = take_parsed(queue(azurite, queues["FAILING_QUEUE"] + "-poison"), 1)

    assert poisoned == "payload that fails"
    assert calls.dequeue_counts == [1, 2, 3]
    assert message_count(queue(azurite, queues["FAILING_QUEUE"])) == 0
    assert message_count(queue(azurite, queues["OUTPUT_QUEUE"])) == 0  # outputs only on success


def test_outputs_are_written_when_the_function_returns_normally(
    azurite: Azurite, runner: FunctionsRunner, calls: Calls, queues: dict[str, str]
):
    queue(azurite, queues["SHOUT_QUEUE"]).send_message("hello")

    assert take_parsed(queue(azurite, queues["OUTPUT_QUEUE"]), 1) == ["HELLO"]
    assert calls.bodies == [b"hello"]
    assert message_count(queue(azurite, queues["SHOUT_QUEUE"])) == 0


def test_base64_message_encoding_decodes_triggers_and_encodes_outputs(
    azurite: Azurite, calls: Calls, queues: dict[str, str]
):
    base64_host = HostSettings(**{**FAST_HOST.__dict__, "message_encoding": "base64"})
    runner = start(azurite, calls, queues, base64_host)
    try:
        queue(azurite, queues["SHOUT_QUEUE"]).send_message(base64.b64encode(b"hello").decode())

        [output] = take_parsed(queue(azurite, queues["OUTPUT_QUEUE"]), 1)
    finally:
        runner.stop()
    assert calls.bodies == [b"hello"]
    assert base64.b64decode(output) == b"HELLO"


@pytest.mark.parametrize(
    ("method", "path", "status", "body"),
    [
        ("GET", "/api/items/12/pen?q=blue", 201, "12|pen|blue"),
        ("GET", "/api/ITEMS/12", 201, "12|None|None"),
        ("GET", "/api/items/twelve", 404, ""),  # {id:int}
        ("POST", "/api/items/12", 404, ""),  # methods=["GET"]
        ("GET", "/items/12", 404, ""),  # routePrefix
        ("GET", "/api/items/12?fail=1", 500, ""),
        ("GET", "/api/secret", 401, ""),
        ("GET", "/api/secret?code=k", 200, "opened"),
    ],
)
def test_http_routes_methods_keys_and_failures_answer_like_the_host(
    runner: FunctionsRunner, method: str, path: str, status: int, body: str
):
    response = requests.request(method, runner.base_url + path, timeout=10)

    assert (response.status_code, response.text) == (status, body)


def test_a_failed_http_invocation_writes_no_output(azurite: Azurite, runner: FunctionsRunner, queues: dict[str, str]):
    assert requests.get(f"{runner.api_url}/items/3?fail=1", timeout=10).status_code == 500
    assert requests.get(f"{runner.api_url}/items/4", timeout=10).status_code == 201

    assert take_parsed(queue(azurite, queues["OUTPUT_QUEUE"]), 1) == ["item 4"]
    assert message_count(queue(azurite, queues["OUTPUT_QUEUE"])) == 0


def test_an_unresolved_setting_stops_the_runner_from_starting(azurite: Azurite, calls: Calls):
    settings = {"AzureWebJobsStorage": azurite.connection_string}
    runner = FunctionsRunner(build_app(calls), host_settings=FAST_HOST, settings=settings, port=0)

    with pytest.raises(RunnerError, match="%[A-Z_]+_QUEUE%. does not resolve to a value"):
        runner.start()


def test_http_requests_run_concurrently(runner: FunctionsRunner):
    answers: list[int] = []

    def call() -> None:
        answers.append(requests.post(f"{runner.api_url}/rendezvous", timeout=30).status_code)

    callers = [threading.Thread(target=call) for _ in range(CONCURRENT_CALLS)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()

    assert answers == [200] * CONCURRENT_CALLS  # one at a time, the rendezvous would break: 500s


def test_a_batch_of_messages_runs_concurrently(azurite: Azurite, runner: FunctionsRunner, queues: dict[str, str]):
    for n in range(CONCURRENT_CALLS):
        queue(azurite, queues["RENDEZVOUS_QUEUE"]).send_message(f"message {n}")

    outputs = take_parsed(queue(azurite, queues["OUTPUT_QUEUE"]), CONCURRENT_CALLS)

    assert sorted(outputs) == [f"message {n} dequeue 1" for n in range(CONCURRENT_CALLS)]


@pytest.mark.parametrize(
    ("annotation", "loads"),
    [
        (func.Out[str], True),
        (func.Out[bytes], True),
        (func.Out[typing.List[str]], True),  # noqa: UP006 - the worker needs typing.List
        (func.Out[list[str]], False),  # azure-functions-python-worker#1034: fails to load in Azure
        (func.Out[int], False),
        (str, False),  # an output binding needs func.Out
    ],
)
def test_output_annotations_the_python_worker_refuses_stop_the_runner(annotation: object, loads: bool):
    app = func.FunctionApp()

    def handler(msg: func.QueueMessage, out: func.Out[str]) -> None:
        out.set(msg.get_body().decode())

    handler.__annotations__["out"] = annotation
    app.function_name("annotated")(
        app.queue_trigger(arg_name="msg", queue_name="in-queue", connection="AzureWebJobsStorage")(
            app.queue_output(arg_name="out", queue_name="out-queue", connection="AzureWebJobsStorage")(handler)
        )
    )
    settings = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}

    if loads:
        [function] = index_functions(app, settings)
        assert function.name == "annotated"
    else:
        with pytest.raises(RunnerError, match="function 'annotated', parameter 'out"):
            index_functions(app, settings)
