"""The local runner's storage robustness: an Azurite restart mid-batch, and leases renewed while functions run."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import azure.functions as func
import pytest
from azure.storage.queue import QueueClient

from devstack.runner import FunctionsRunner, HostSettings
from devstack.storage import Azurite, message_count
from tests.support.queues import take_parsed

pytestmark = pytest.mark.e2e

AZURITE_DOWN_SECONDS = 2.0
LEASE_SECONDS = 2  # the runner's processing lease in the lease test (the host's is 10 minutes)


@pytest.fixture
def own_azurite(tmp_path: Path) -> Iterator[Azurite]:
    """An Azurite of this test's own: the session's is shared, and this one is restarted."""
    server = Azurite(log_path=tmp_path / "azurite.log").start()
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def test_runner_writes_each_output_once_and_settles_each_message_when_azurite_restarts_mid_batch(
    own_azurite: Azurite,
):
    gate = threading.Event()
    started = threading.Semaphore(0)
    app = func.FunctionApp()

    @app.function_name("echo")
    @app.queue_trigger(arg_name="msg", queue_name="in-queue", connection="AzureWebJobsStorage")
    @app.queue_output(arg_name="out", queue_name="out-queue", connection="AzureWebJobsStorage")
    def echo(msg: func.QueueMessage, out: func.Out[str]) -> None:
        started.release()
        gate.wait(30)  # every invocation returns while Azurite is down: outputs and deletes must wait for it
        out.set(msg.get_body().decode())

    own_azurite.create_queues("in-queue", "out-queue")
    requests_queue = QueueClient.from_connection_string(own_azurite.connection_string, "in-queue")
    sent = [f"message {n}" for n in range(8)]
    for body in sent:
        requests_queue.send_message(body)
    host = HostSettings(message_encoding="none", batch_size=8, new_batch_threshold=4, max_polling_interval=0.2)
    settings = {
        "AzureWebJobsStorage": own_azurite.connection_string,
        "PYTHON_THREADPOOL_THREAD_COUNT": str(len(sent)),  # the whole batch at once (the worker's default: cpu + 4)
    }
    runner = FunctionsRunner(app, host_settings=host, settings=settings, port=0).start()
    try:
        for _ in sent:  # the whole batch is running
            assert started.acquire(timeout=10)
        first = own_azurite.child.process
        assert first is not None
        released: list[float] = []

        def release_once_azurite_is_down() -> None:
            first.wait(timeout=15)
            released.append(time.monotonic())
            gate.set()

        threading.Thread(target=release_once_azurite_is_down, daemon=True).start()
        # From this thread: a child started by a thread that then ends gets SIGTERM (PR_SET_PDEATHSIG).
        own_azurite.restart(down_seconds=AZURITE_DOWN_SECONDS)
        serving_again = time.monotonic()  # restart() returns once Azurite answers (its start-up is slower under load)

        # A client of its own: one from before the restart would first wait out the SDK's 15 s retry.
        outputs_queue = QueueClient.from_connection_string(own_azurite.connection_string, "out-queue")
        outputs = take_parsed(outputs_queue, len(sent), timeout=20)
        settled_after = time.monotonic() - serving_again
        while message_count(requests_queue) and time.monotonic() < released[0] + 20:
            time.sleep(0.1)
    finally:
        runner.stop()

    assert sorted(outputs) == sorted(sent)
    assert message_count(outputs_queue) == 0  # each once: a write that never reached Azurite is safe to repeat
    assert message_count(requests_queue) == 0  # every message deleted, none waiting for its lease to run out
    assert message_count(QueueClient.from_connection_string(own_azurite.connection_string, "in-queue-poison")) == 0
    # The runner tries again at most 2 s apart, so the batch settles within seconds of Azurite answering again;
    # the SDK's own retries would have waited 15 s or more. Counted from then, not from the release, so that a slow
    # Azurite start on a loaded machine does not count against the runner.
    assert settled_after < 8


def test_runner_renews_the_lease_of_a_message_whose_function_outlasts_it(own_azurite: Azurite):
    calls: list[int] = []
    app = func.FunctionApp()

    @app.function_name("slow")
    @app.queue_trigger(arg_name="msg", queue_name="slow-queue", connection="AzureWebJobsStorage")
    @app.queue_output(arg_name="out", queue_name="out-queue", connection="AzureWebJobsStorage")
    def slow(msg: func.QueueMessage, out: func.Out[str]) -> None:
        calls.append(msg.dequeue_count)
        time.sleep(LEASE_SECONDS * 2.5)  # past the lease twice: without renewals it is delivered again meanwhile
        out.set("done")

    own_azurite.create_queues("slow-queue", "out-queue")
    requests_queue = QueueClient.from_connection_string(own_azurite.connection_string, "slow-queue")
    requests_queue.send_message("take your time")
    host = HostSettings(message_encoding="none", batch_size=1, new_batch_threshold=1, max_polling_interval=0.2)
    runner = FunctionsRunner(
        app,
        host_settings=host,
        settings={"AzureWebJobsStorage": own_azurite.connection_string},
        port=0,
        processing_lease=LEASE_SECONDS,
    ).start()
    try:
        outputs_queue = QueueClient.from_connection_string(own_azurite.connection_string, "out-queue")
        outputs = take_parsed(outputs_queue, 1, timeout=20)
        time.sleep(LEASE_SECONDS)  # a redelivery would have started by now
    finally:
        runner.stop()

    assert outputs == ["done"]
    assert calls == [1]
    assert message_count(requests_queue) == 0
