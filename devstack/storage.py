"""Local storage: Azurite's queue and blob services, the storage retry loop, and taking records off a queue.

- `Azurite` runs both services from node_modules, data in a temporary folder.
- `with_storage_retries` makes a storage call again while it fails transiently (Azurite restarting).
- `take_messages` receives and deletes a queue's messages: those waiting now, or until a count came;
  `parse_record` turns one into a record (a message that is not a JSON object is shown as text);
  `message_count` counts a queue's messages, invisible ones included.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.queue import QueueClient

from devstack.processes import READY_TIMEOUT_SECONDS, REPO_ROOT, ChildProcess, StackError
from shared.results_queue import development_storage_connection_string

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

AZURITE_QUEUE_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite-queue"
AZURITE_BLOB_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"
AZURITE_DEFAULT_PORT = 10001  # where `UseDevelopmentStorage=true` looks for the queue service
_AZURITE_READY = re.compile(r"successfully listens on (http://\S+)")

# An Azurite restart costs seconds: waits from 0.1 s doubling to 2 s, for at most STORAGE_RETRY_SECONDS.
STORAGE_RETRY_FIRST_WAIT = 0.1
STORAGE_RETRY_MAX_WAIT = 2.0
STORAGE_RETRY_SECONDS = 60.0
STORAGE_RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MESSAGES_PER_RECEIVE = 32  # the most one receive returns
POLL_SECONDS = 0.1  # how often take_messages asks again while it waits for `count`


class Azurite:
    """Azurite's queue and blob services from node_modules, data in a temporary folder that stop() removes.

    The queue service carries requests and records; the blob service holds the guard's claims
    (`shared/guard_store.py`), as the app's storage account does in Azure.
    """

    name = "Azurite"

    def __init__(self, *, log_path: Path, port: int = 0, host: str = "127.0.0.1") -> None:
        self._data_dir = Path(tempfile.mkdtemp(prefix="azurite-"))
        common = ["--location", str(self._data_dir), "--skipApiVersionCheck", "--disableTelemetry", "--silent"]
        # --skipApiVersionCheck: the storage SDKs speak a newer API version than Azurite knows.
        self._child = ChildProcess(
            self.name,
            [str(AZURITE_QUEUE_BIN), "--queueHost", host, "--queuePort", str(port), *common],
            log_path=log_path,
            ready=_AZURITE_READY,
        )
        self._blob_child = ChildProcess(
            f"{self.name} blob",
            [str(AZURITE_BLOB_BIN), "--blobHost", host, "--blobPort", "0", *common],
            log_path=log_path.with_name(f"{log_path.stem}-blob{log_path.suffix}"),
            ready=_AZURITE_READY,
        )
        self.queue_origin = ""
        self.blob_origin = ""
        self._first_log_path = log_path
        self._restarts = 0

    @property
    def log_path(self) -> Path:
        return self._child.log_path

    @property
    def pid(self) -> int:
        """The queue service's process id (for a benchmark's CPU accounting)."""
        assert self._child.process is not None, "not started"
        return self._child.process.pid

    @property
    def child(self) -> ChildProcess:
        """The queue service's process (the one the chaos run restarts)."""
        return self._child

    @property
    def connection_string(self) -> str:
        return development_storage_connection_string(self.queue_origin, blob_origin=self.blob_origin or None)

    def start(self) -> Azurite:
        for binary in (AZURITE_QUEUE_BIN, AZURITE_BLOB_BIN):
            if not binary.exists():
                raise StackError(self.name, "not installed: run `npm ci` in the repository (make does it for you)")
        self._child.start()
        self._blob_child.start()
        return self

    def wait_ready(self, *, timeout: float = READY_TIMEOUT_SECONDS) -> Azurite:
        self.queue_origin = self._child.wait_ready(timeout=timeout).group(1)
        if not self.blob_origin:
            self.blob_origin = self._blob_child.wait_ready(timeout=timeout).group(1)
        return self

    def stop(self) -> None:
        self._child.stop()
        self._blob_child.stop()
        shutil.rmtree(self._data_dir, ignore_errors=True)

    def restart(self, *, down_seconds: float = 0.0) -> Azurite:
        """Stop the queue service, wait `down_seconds`, start it again on the same port and data folder; wait
        until it serves. The blob service stays up.

        SIGTERM lets Azurite save its database, so the messages on its queues survive. The new process
        logs to `<log>-restart<n>.log` beside the first log, which is kept.
        """
        port = self.queue_origin.rsplit(":", 1)[1]  # the port it got, also when it was started with port 0
        self._child.stop()
        time.sleep(down_seconds)
        self._restarts += 1
        argv = list(self._child.argv)
        argv[argv.index("--queuePort") + 1] = port
        first_log = self._first_log_path
        log_path = first_log.with_name(f"{first_log.stem}-restart{self._restarts}{first_log.suffix}")
        self._child = ChildProcess(self.name, argv, log_path=log_path, ready=_AZURITE_READY).start()
        return self.wait_ready()

    def queue(self, name: str) -> QueueClient:
        """A client of one of this Azurite's queues."""
        return QueueClient.from_connection_string(self.connection_string, name)

    def create_queues(self, *names: str) -> None:
        for name in names:
            try:
                self.queue(name).create_queue()
            except ResourceExistsError:
                pass


# --- retries --------------------------------------------------------------------------------------------


def is_transient_storage_error(err: AzureError) -> bool:
    """Whether a storage call may succeed if made again: no connection, no answer, or a 408/429/5xx."""
    if isinstance(err, (ServiceRequestError, ServiceResponseError)):
        return True
    return isinstance(err, HttpResponseError) and err.status_code in STORAGE_RETRYABLE_STATUSES


def with_storage_retries(
    operation: Callable[[], _T],
    *,
    what: str,
    seconds: float = STORAGE_RETRY_SECONDS,
    give_up: threading.Event | None = None,
) -> _T:
    """Make a storage call, again while it fails transiently, for up to `seconds` or until `give_up` is set.

    A call whose answer was lost (ServiceResponseError) may have been carried out: a repeated send can
    then write a message twice. That is the at-least-once of queue outputs; a call that never reached
    the service (ServiceRequestError: Azurite restarting) is repeated without that risk.
    """
    stop = give_up or threading.Event()
    deadline = time.monotonic() + seconds
    wait = STORAGE_RETRY_FIRST_WAIT
    failures = 0
    while True:
        try:
            result = operation()
        except AzureError as err:
            if not is_transient_storage_error(err) or time.monotonic() + wait > deadline or stop.is_set():
                raise
            failures += 1
            if failures == 1:
                logger.info("%s failed (%s); retrying until storage answers", what, first_line(err))
            stop.wait(wait * random.uniform(0.8, 1.2))
            wait = min(wait * 2, STORAGE_RETRY_MAX_WAIT)
            continue
        if failures:
            logger.info("%s succeeded after %d retries", what, failures)
        return result


def first_line(err: Exception) -> str:
    """The first line of an error's text, for a one-line log entry."""
    return (str(err).splitlines() or [type(err).__name__])[0]


# --- taking records ---------------------------------------------------------------------------------------


def take_messages(
    queue: QueueClient, *, count: int | None = None, timeout: float = 0.0, visibility_timeout: int | None = None
) -> list[str]:
    """Receive and delete messages, returning their texts: every one waiting now (`count` None), or until
    `count` came, asking again every POLL_SECONDS; TimeoutError when they have not after `timeout` seconds.

    A queue nobody has written to yet holds no messages. `visibility_timeout` hides each received message
    for that long (the service's default is 30 s) until it is deleted.
    """
    taken: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            batch = list(
                queue.receive_messages(
                    messages_per_page=MESSAGES_PER_RECEIVE,
                    max_messages=MESSAGES_PER_RECEIVE,
                    visibility_timeout=visibility_timeout,
                )
            )
        except ResourceNotFoundError:
            batch = []
        for message in batch:
            taken.append(message.content)
            queue.delete_message(message)
        if count is None:
            if not batch:
                return taken
            continue
        if len(taken) >= count:
            return taken
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{len(taken)} of {count} messages on {queue.queue_name} after {timeout:g} s")
        time.sleep(POLL_SECONDS)


def message_count(queue: QueueClient) -> int:
    """Messages on a queue, invisible ones included; 0 for a queue nobody has written to."""
    try:
        return queue.get_queue_properties().approximate_message_count
    except ResourceNotFoundError:
        return 0


def parse_record(text: str) -> dict[str, Any]:
    """A result record from a message's text; a message that is not a JSON object becomes a record saying so."""
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    return record if isinstance(record, dict) else {"outcome": "(not a record)", "error": {"message": text}}
