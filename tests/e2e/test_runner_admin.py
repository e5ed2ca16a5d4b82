"""The host's admin API in the local runner: `POST /admin/functions/{name}` runs a non-HTTP function on demand,
`GET /admin/host/status` says the host runs.

Host `src/WebJobs.Script.WebHost/Controllers/FunctionsController.cs` `Invoke` (400 without a body, 404 for an
unknown name, else 202 while the function runs), behind the master key (`AuthenticationLevelHandler.cs`
`GetAuthorizationKeyInfoAsync`: `x-functions-key`, else `?code=`; `SecretManager.cs` `GetAuthorizationLevelAsync`:
the master key is Admin, which `AuthUtility.cs` `PrincipalHasAuthLevelClaim` lets through every route too).
Real HTTP against a runner on a test app of our own, with a timer function that never fires by itself.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import azure.functions as func
import pytest
import requests
from azure.storage.queue import QueueClient

from devstack.runner import FunctionsRunner
from devstack.storage import Azurite
from tests.support.hosts import FAST_HOST
from tests.support.queues import take_parsed, unique_queue_name

pytestmark = pytest.mark.e2e

NEVER = "0 0 0 1 1 *"  # midnight on 1 January: the timer does not fire by itself during a test
MASTER_KEY = "test-master-key"
FUNCTION_KEY = "test-function-key"
RUN_TIMEOUT_SECONDS = 30


class Runs:
    """What the test app's functions were called with, one entry per run."""

    def __init__(self) -> None:
        self.timers: queue.Queue[func.TimerRequest] = queue.Queue()
        self.messages: queue.Queue[func.QueueMessage] = queue.Queue()


def build_app(runs: Runs) -> func.FunctionApp:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

    @app.function_name("sweep")
    @app.timer_trigger(arg_name="timer", schedule="%SWEEP_SCHEDULE%")
    @app.queue_output(arg_name="out", queue_name="%OUTPUT_QUEUE%", connection="AzureWebJobsStorage")
    def sweep(timer: func.TimerRequest, out: func.Out[str]) -> None:
        runs.timers.put(timer)
        out.set("swept")

    @app.function_name("work")
    @app.queue_trigger(arg_name="msg", queue_name="%WORK_QUEUE%", connection="AzureWebJobsStorage")
    @app.queue_output(arg_name="out", queue_name="%OUTPUT_QUEUE%", connection="AzureWebJobsStorage")
    def work(msg: func.QueueMessage, out: func.Out[str]) -> None:
        runs.messages.put(msg)
        out.set("worked " + msg.get_body().decode())

    @app.function_name("hello")
    @app.route(route="hello", methods=["GET"])
    def hello(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("hello")

    return app


@pytest.fixture
def output_queue(azurite: Azurite) -> QueueClient:
    return QueueClient.from_connection_string(azurite.connection_string, unique_queue_name("output"))


@pytest.fixture
def runs() -> Runs:
    return Runs()


@pytest.fixture
def runner(azurite: Azurite, runs: Runs, output_queue: QueueClient) -> Iterator[FunctionsRunner]:
    settings = {
        "AzureWebJobsStorage": azurite.connection_string,
        "SWEEP_SCHEDULE": NEVER,
        "WORK_QUEUE": unique_queue_name("work"),
        "OUTPUT_QUEUE": output_queue.queue_name,
    }
    runner = FunctionsRunner(
        build_app(runs),
        host_settings=FAST_HOST,
        settings=settings,
        port=0,
        function_key=FUNCTION_KEY,
        master_key=MASTER_KEY,
    ).start()
    yield runner
    runner.stop()


def admin_invoke(runner: FunctionsRunner, name: str, body: object, **kwargs: object) -> requests.Response:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return requests.post(f"{runner.base_url}/admin/functions/{name}", data=data, timeout=10, **kwargs)


def test_the_master_key_runs_a_timer_function_on_demand_which_writes_its_outputs(
    runner: FunctionsRunner, runs: Runs, output_queue: QueueClient
):
    answer = admin_invoke(runner, "sweep", {"input": ""}, headers={"x-functions-key": MASTER_KEY})

    assert (answer.status_code, answer.text) == (202, "")
    timer = runs.timers.get(timeout=RUN_TIMEOUT_SECONDS)
    assert isinstance(timer, func.TimerRequest) and timer.past_due is False  # TimerTriggerBinding.BindAsync
    assert take_parsed(output_queue, 1) == ["swept"]


def test_the_master_key_in_the_code_query_and_the_function_name_in_any_case_run_it_too(
    runner: FunctionsRunner, runs: Runs
):
    answer = admin_invoke(runner, "SWEEP", {}, params={"code": MASTER_KEY})

    assert answer.status_code == 202
    assert runs.timers.get(timeout=RUN_TIMEOUT_SECONDS).past_due is False


def test_a_queue_function_run_on_demand_gets_the_input_as_a_message_of_its_own(
    runner: FunctionsRunner, runs: Runs, output_queue: QueueClient
):
    answer = admin_invoke(runner, "work", {"input": "by hand"}, headers={"x-functions-key": MASTER_KEY})

    assert answer.status_code == 202
    msg = runs.messages.get(timeout=RUN_TIMEOUT_SECONDS)
    # StringToStorageQueueMessageConverter: new CloudQueueMessage(input), no id, dequeue count 0
    assert (msg.get_body(), msg.id, msg.dequeue_count) == (b"by hand", None, 0)
    assert take_parsed(output_queue, 1) == ["worked by hand"]


@pytest.mark.parametrize(
    ("name", "body", "key", "status"),
    [
        ("sweep", {"input": ""}, None, 401),  # no key: the AdminAuthLevel policy challenges
        ("sweep", {"input": ""}, "not-a-key", 401),
        ("sweep", {"input": ""}, FUNCTION_KEY, 403),  # a function key authenticates, but is not Admin
        ("nobody", {"input": ""}, MASTER_KEY, 404),  # GetFunctionOrNull
        ("sweep", "not json", MASTER_KEY, 400),  # no FunctionInvocation: BadRequest
        ("sweep", "[1]", MASTER_KEY, 400),
        ("sweep", {"input": 5}, MASTER_KEY, 400),  # the runner reads a string input only
        ("hello", {"input": ""}, MASTER_KEY, 400),  # not mirrored: the runner runs HTTP functions by route only
    ],
)
def test_admin_invocations_the_host_refuses(runner: FunctionsRunner, name: str, body: object, key: str, status: int):
    headers = {"x-functions-key": key} if key else {}

    assert admin_invoke(runner, name, body, headers=headers).status_code == status


def test_an_http_function_refused_on_the_admin_api_is_named_in_the_answer(runner: FunctionsRunner):
    answer = admin_invoke(runner, "hello", {"input": ""}, headers={"x-functions-key": MASTER_KEY})

    assert "'hello' is an HTTP function" in answer.text


@pytest.mark.parametrize(("key", "status"), [(None, 401), ("not-a-key", 401), (FUNCTION_KEY, 403), (MASTER_KEY, 200)])
def test_the_host_status_answers_the_master_key_only(runner: FunctionsRunner, key: str | None, status: int):
    # Host `Controllers/HostController.cs` `GetHostStatus`: [Authorize(Policy = PolicyNames.AdminAuthLevelOrInternal)].
    headers = {"x-functions-key": key} if key else {}
    answer = requests.get(f"{runner.base_url}/admin/host/status", headers=headers, timeout=10)

    assert answer.status_code == status
    if status == 200:
        assert answer.json()["state"] == "Running"


@pytest.mark.parametrize(("key", "status"), [(None, 401), (FUNCTION_KEY, 200), (MASTER_KEY, 200)])
def test_the_master_key_opens_function_routes_as_the_function_key_does(runner: FunctionsRunner, key, status):
    headers = {"x-functions-key": key} if key else {}

    assert requests.get(f"{runner.api_url}/hello", headers=headers, timeout=10).status_code == status


APP_SOURCE = textwrap.dedent(
    """
    import azure.functions as func

    app = func.FunctionApp()


    @app.function_name("sweep")
    @app.timer_trigger(arg_name="timer", schedule="%SWEEP_SCHEDULE%")
    @app.queue_output(arg_name="out", queue_name="%OUTPUT_QUEUE%", connection="AzureWebJobsStorage")
    def sweep(timer: func.TimerRequest, out: func.Out[str]) -> None:
        out.set("swept by the process")
    """
)


def test_the_runner_process_generates_a_master_key_and_prints_it_in_its_ready_line(
    tmp_path: Path, azurite: Azurite, output_queue: QueueClient
):
    (tmp_path / "function_app.py").write_text(APP_SOURCE, encoding="utf-8")
    (tmp_path / "host.json").write_text('{"version": "2.0"}', encoding="utf-8")
    environment = {
        **os.environ,
        "AzureWebJobsStorage": azurite.connection_string,
        "SWEEP_SCHEDULE": NEVER,
        "OUTPUT_QUEUE": output_queue.queue_name,
    }
    environment.pop("LOCAL_MASTER_KEY", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack.runner", "--app-dir", str(tmp_path), "--port", "0"],
        cwd=Path(__file__).resolve().parents[2],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ready = read_ready_line(process)
        assert len(ready["master_key"]) >= 32

        answer = requests.post(
            f"{ready['url']}/admin/functions/sweep",
            json={"input": ""},
            headers={"x-functions-key": ready["master_key"]},
            timeout=10,
        )

        assert answer.status_code == 202
        # The host's output binding base64-encodes (host.json leaves messageEncoding at its default).
        [written] = take_parsed(output_queue, 1)
        assert written == "c3dlcHQgYnkgdGhlIHByb2Nlc3M="  # base64 of "swept by the process"
    finally:
        process.terminate()
        process.wait(timeout=30)


def read_ready_line(process: subprocess.Popen[str]) -> dict[str, object]:
    """The JSON of the process's `runner ready {...}` line, read with a deadline."""
    lines: queue.Queue[str] = queue.Queue()

    def forward() -> None:
        for line in process.stdout or ():
            lines.put(line)

    threading.Thread(target=forward, daemon=True).start()
    seen = []
    while True:
        line = lines.get(timeout=RUN_TIMEOUT_SECONDS)
        seen.append(line)
        if line.startswith("runner ready "):
            return json.loads(line.removeprefix("runner ready "))
        assert process.poll() is None, "".join(seen)
