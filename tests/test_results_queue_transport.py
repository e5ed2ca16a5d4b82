"""How the results queue's client reaches storage: its timeouts, the proxy settings, and what it logs.

Against a real Azurite, and a real socket that takes a connection and never answers.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator

import pytest

from devstack.storage import Azurite, take_messages
from shared import results_queue
from shared.results_queue import RecordNotWritten, ResultsQueue
from shared.sdk_logging import HTTP_LOGGING_POLICY_LOGGER, quiet_sdk_request_logs
from shared.settings import ResultsQueueSettings, StorageConnection
from tests.support.network import closed_port
from tests.support.queues import unique_queue_name

PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
NO_PROXY_VARIABLES = ("no_proxy", "NO_PROXY")


def results_queue_at(connection_string: str, name: str) -> ResultsQueue:
    return ResultsQueue(
        ResultsQueueSettings(name=name, time_to_live=-1, storage=StorageConnection(connection_string=connection_string))
    )


@pytest.fixture
def silent_storage() -> Iterator[str]:
    """A queue endpoint that accepts connections, reads what it is sent, and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            held.append(connection)  # kept open, never written to

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    try:
        yield results_queue.development_storage_connection_string(f"http://127.0.0.1:{port}")
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        listener.close()


def test_a_storage_service_that_never_answers_fails_the_write_after_the_read_timeout(
    silent_storage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Shortened so the test is quick; the transport's own default (300 s) would have held the invocation.
    monkeypatch.setattr(results_queue, "READ_TIMEOUT_SECONDS", 0.5)
    monkeypatch.setattr(results_queue, "SEND_RETRIES", 0)
    queue = results_queue_at(silent_storage, "never-answers")
    outcome: list[BaseException | None] = []

    def send() -> None:
        try:
            queue.send('{"schema_version":1}')
            outcome.append(None)
        except RecordNotWritten as err:
            outcome.append(err)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    sender.join(timeout=20)
    assert not sender.is_alive(), "the write was still waiting 20 s on a service that never answers"
    [err] = outcome
    assert isinstance(err, RecordNotWritten)
    assert "no answer" in err.message


def _proxies(monkeypatch: pytest.MonkeyPatch, *, proxy: str, no_proxy: str | None) -> None:
    for name in PROXY_VARIABLES + NO_PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    if no_proxy is not None:
        monkeypatch.setenv("NO_PROXY", no_proxy)


def test_records_go_through_the_proxy_the_environment_names(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> None:
    _proxies(monkeypatch, proxy=f"http://127.0.0.1:{closed_port()}", no_proxy=None)
    monkeypatch.setattr(results_queue, "SEND_RETRIES", 0)
    queue = results_queue_at(azurite.connection_string, unique_queue_name("via-proxy"))
    with pytest.raises(RecordNotWritten, match="no answer"):  # the proxy is down, so the write cannot get through
        queue.send('{"schema_version":1}')


def test_no_proxy_sends_records_straight_to_storage(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> None:
    _proxies(monkeypatch, proxy=f"http://127.0.0.1:{closed_port()}", no_proxy="127.0.0.1,localhost")
    name = unique_queue_name("no-proxy")
    results_queue_at(azurite.connection_string, name).send('{"schema_version":1,"n":1}')
    assert take_messages(azurite.queue(name), count=1, timeout=5) == ['{"schema_version":1,"n":1}']


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.names.append(record.name)


@pytest.fixture
def worker_logging() -> Iterator[_Collect]:
    """The root logger as the Python worker sets it in Azure: INFO, one handler that takes everything."""
    root, sdk = logging.getLogger(), logging.getLogger(HTTP_LOGGING_POLICY_LOGGER)
    level, sdk_level, handler = root.level, sdk.level, _Collect()
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        sdk.setLevel(sdk_level)


def test_a_record_write_logs_no_sdk_request_lines_at_the_workers_info_level(
    azurite: Azurite, worker_logging: _Collect
) -> None:
    name = unique_queue_name("quiet")
    logging.getLogger(HTTP_LOGGING_POLICY_LOGGER).setLevel(logging.NOTSET)
    results_queue_at(azurite.connection_string, name).send('{"schema_version":1}')
    assert worker_logging.names.count(HTTP_LOGGING_POLICY_LOGGER) >= 2  # request and response, at INFO

    worker_logging.names.clear()
    quiet_sdk_request_logs()  # what function_app does when the worker imports it
    results_queue_at(azurite.connection_string, name).send('{"schema_version":1}')
    assert HTTP_LOGGING_POLICY_LOGGER not in worker_logging.names


def test_the_function_app_quiets_the_sdk_request_logs_when_imported() -> None:
    import function_app  # noqa: F401 - importing it is what the worker does

    assert logging.getLogger(HTTP_LOGGING_POLICY_LOGGER).level == logging.WARNING
