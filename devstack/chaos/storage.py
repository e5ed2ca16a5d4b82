"""The chaos run's Azurite clients: queue clients that ride out a restart, and the record collector.

The run's own clients have the SDK's retries off (15 s apart) and retry for themselves while Azurite
is away (`retry_storage`). `RecordCollector` takes the records off the results queue in a thread of
its own; `take_all` empties a queue at the end. These are the run's only storage calls besides
sending the messages (`drivers.enqueue`).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.storage.queue import QueueClient

from devstack.chaos.plan import THREAD_JOIN_SECONDS, ChaosError
from devstack.environment import RESULTS_QUEUE
from devstack.storage import with_storage_retries

STORAGE_RETRY_WAIT = 0.2  # the run's own Azurite clients retry this often while Azurite is away
COLLECT_VISIBILITY_SECONDS = 5  # records received by a poll whose answer the restart lost come back this soon


def storage_client(connection_string: str, queue: str) -> QueueClient:
    """A queue client without the SDK's own retries (15 s apart): the run retries for itself."""
    return QueueClient.from_connection_string(connection_string, queue, retry_total=0)


def retry_storage(operation: Callable[[], Any], *, until: float, what: str) -> Any:
    """Run an Azurite call, again while it fails transiently (Azurite unreachable or restarting), until `until`."""
    try:
        return with_storage_retries(operation, what=what, seconds=max(0.0, until - time.monotonic()))
    except ResourceNotFoundError:
        raise
    except AzureError as err:
        raise ChaosError(f"{what}: Azurite still failing at the time limit ({type(err).__name__})") from err


@dataclass
class ReceivedRecord:
    """A record taken off the results queue, as text and parsed."""

    text: str
    record: dict[str, Any]
    received_at: float


class RecordCollector:
    """Takes the records off the results queue in a thread of its own, riding out Azurite's restart.

    A results message seen again (its delete was lost while Azurite restarted) is counted once: it
    is the same record, not a second one.
    """

    def __init__(self, connection_string: str) -> None:
        self._queue = storage_client(connection_string, RESULTS_QUEUE)
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self.records: list[ReceivedRecord] = []
        self.request_ids: Counter[str] = Counter()
        self.storage_errors = 0
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-records", daemon=True)

    def start(self) -> RecordCollector:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=THREAD_JOIN_SECONDS)

    def drain(self, *, timeout: float) -> None:
        """Wait until one receive found the results queue empty."""
        self._idle.clear()
        if not self._idle.wait(timeout):
            raise ChaosError(f"the results queue was not drained within {timeout:.0f} s")

    def count_for(self, request_id: str | None) -> int:
        with self._lock:
            return self.request_ids.get(request_id or "", 0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                messages = list(
                    self._queue.receive_messages(
                        messages_per_page=32, max_messages=32, visibility_timeout=COLLECT_VISIBILITY_SECONDS
                    )
                )
            except AzureError:
                self.storage_errors += 1
                self._stop.wait(STORAGE_RETRY_WAIT)
                continue
            for message in messages:
                self._take(message)
            if not messages:
                self._idle.set()
                self._stop.wait(0.05)

    def _take(self, message: Any) -> None:
        with self._lock:
            fresh = message.id not in self._seen
            if fresh:
                self._seen.add(message.id)
                try:
                    record = json.loads(message.content)
                except ValueError:
                    record = {"outcome": "(not JSON)"}
                record = record if isinstance(record, dict) else {"outcome": "(not a JSON object)"}
                self.records.append(ReceivedRecord(message.content, record, time.monotonic()))
                self.request_ids[str(record.get("request_id"))] += 1
        while not self._stop.is_set():
            try:
                self._queue.delete_message(message.id, message.pop_receipt)
                return
            except ResourceNotFoundError:
                return  # deleted by an earlier try whose answer was lost, or received again meanwhile
            except AzureError:
                self.storage_errors += 1
                self._stop.wait(STORAGE_RETRY_WAIT)


def take_all(queue: QueueClient) -> list[str]:
    """Every message on a queue (none for a queue nobody created), taken off it."""
    taken = []
    try:
        while True:
            messages = list(queue.receive_messages(messages_per_page=32, max_messages=32))
            if not messages:
                return taken
            for message in messages:
                taken.append(message.content)
                queue.delete_message(message)
    except ResourceNotFoundError:
        return taken
