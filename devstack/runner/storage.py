"""The runner's storage calls: one queue client per connection, retried while storage is unreachable.

Storage calls are retried by the runner (`devstack.storage.with_storage_retries`), not by the SDK (whose
retries wait 15 s and more), so a storage restart costs seconds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from azure.core.exceptions import (
    ResourceExistsError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.queue import QueueClient, QueueServiceClient

from devstack.storage import with_storage_retries
from shared.http_session import new_session, route_for

# Connections kept per storage account: each message a listener holds (batchSize + newBatchThreshold, batchSize at
# most 32: host_config.MAX_BATCH_SIZE) settles with a call of its own, and several listeners may share the account.
# The SDK's default transport keeps 10 and opens a new connection for every call beyond them; the host's .NET
# HttpClient keeps what it opens.
POOL_SIZE = 96

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


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
                session = new_session(pool_size=POOL_SIZE)
                service = QueueServiceClient.from_connection_string(
                    connection_string, retry_total=0, transport=RequestsTransport(session=session, session_owner=True)
                )
                route_for(session, service.url)
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
