"""The runner's storage calls: one queue client per connection, retried while storage is unreachable.

Storage calls are retried by the runner, not by the SDK (whose retries wait 15 s and more), so a
storage restart costs seconds: waits from 0.1 s doubling to 2 s, for at most STORAGE_RETRY_SECONDS.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.queue import QueueClient, QueueServiceClient

logger = logging.getLogger(__name__)

STORAGE_RETRY_FIRST_WAIT = 0.1
STORAGE_RETRY_MAX_WAIT = 2.0
STORAGE_RETRY_SECONDS = 60.0  # far inside the processing lease, so a message being settled is not redelivered
STORAGE_RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

_T = TypeVar("_T")


def first_line(err: Exception) -> str:
    """The first line of an error's text, for a one-line log entry."""
    return (str(err).splitlines() or [type(err).__name__])[0]


def is_transient_storage_error(err: AzureError) -> bool:
    """Whether a storage call may succeed if made again: no connection, no answer, or a 408/429/5xx."""
    if isinstance(err, (ServiceRequestError, ServiceResponseError)):
        return True
    return isinstance(err, HttpResponseError) and err.status_code in STORAGE_RETRYABLE_STATUSES


def with_storage_retries(
    operation: Callable[[], _T],
    *,
    what: str,
    give_up: threading.Event,
    seconds: float = STORAGE_RETRY_SECONDS,
) -> _T:
    """Make a storage call, again while it fails transiently, for up to `seconds` or until `give_up` is set.

    A call whose answer was lost (ServiceResponseError) may have been carried out: a repeated send can
    then write a message twice. That is the at-least-once of queue outputs; a call that never reached
    the service (ServiceRequestError: Azurite restarting) is repeated without that risk.
    """
    deadline = time.monotonic() + seconds
    wait = STORAGE_RETRY_FIRST_WAIT
    failures = 0
    while True:
        try:
            result = operation()
        except AzureError as err:
            if not is_transient_storage_error(err) or time.monotonic() + wait > deadline or give_up.is_set():
                raise
            failures += 1
            if failures == 1:
                logger.info("%s failed (%s); retrying until storage answers", what, first_line(err))
            give_up.wait(wait * random.uniform(0.8, 1.2))
            wait = min(wait * 2, STORAGE_RETRY_MAX_WAIT)
            continue
        if failures:
            logger.info("%s succeeded after %d retries", what, failures)
        return result


class QueueClients:
    """One QueueServiceClient per connection string, and queues created once when a write needs them.

    The SDK's own retries are off: `with_storage_retries` retries with short waits, and stops
    when the runner stops (`close()` sets `closing`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._services: dict[str, QueueServiceClient] = {}
        self._created: set[tuple[str, str]] = set()
        self.closing = threading.Event()

    def queue(self, connection_string: str, name: str) -> QueueClient:
        with self._lock:
            service = self._services.get(connection_string)
            if service is None:
                service = QueueServiceClient.from_connection_string(connection_string, retry_total=0)
                self._services[connection_string] = service
        return service.get_queue_client(name)

    def retrying(self, operation: Callable[[], _T], *, what: str) -> _T:
        """`operation` with the runner's storage retries."""
        return with_storage_retries(operation, what=what, give_up=self.closing)

    def send(self, connection_string: str, name: str, content: str) -> None:
        """Send one message, creating the queue first if it does not exist (as the host's output binding does).

        Retried while storage is unreachable; raises once it has been for STORAGE_RETRY_SECONDS.
        """
        client = self.queue(connection_string, name)
        if (connection_string, name) not in self._created:
            try:
                self.retrying(client.create_queue, what=f"Creating queue '{name}'")
            except ResourceExistsError:
                pass
            with self._lock:
                self._created.add((connection_string, name))
        self.retrying(lambda: client.send_message(content), what=f"Writing a message to queue '{name}'")

    def close(self) -> None:
        self.closing.set()
        with self._lock:
            services, self._services = list(self._services.values()), {}
        for service in services:
            service.close()
