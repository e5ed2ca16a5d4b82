"""Queue triggers: polls one queue as the host's queue listener does, and settles each message as the host does.

host.json's `extensions.queues`: batch size and new-batch threshold, polling back-off up to
maxPollingInterval, visibility timeout after a failure, `<queue>-poison` at maxDequeueCount, a
processing lease renewed halfway while the function runs (azure-webjobs-sdk `Extensions.Storage/Queues/
Listeners/QueueListener.cs`, `QueueProcessor.cs`). Storage calls ride out a storage restart.
"""

from __future__ import annotations

import base64
import binascii
import logging
import random
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.functions.meta import Datum
from azure.functions.queue import QueueMessage, QueueMessageInConverter

from devstack.host_rules import host_metadata_datum, queue_trigger_metadata
from devstack.runner.errors import RunnerError
from devstack.runner.host_config import MIN_POLLING_INTERVAL, HostSettings
from devstack.runner.indexing import LocalFunction
from devstack.runner.invocation import InvocationPool, invocation_log, invoke, write_outputs
from devstack.runner.storage import QueueClients
from devstack.storage import first_line

logger = logging.getLogger(__name__)

PROCESSING_LEASE_SECONDS = 600  # the host hides a message for 10 minutes while a function runs, renewed halfway


class _Lease:
    """A received message while its function runs: its current pop receipt, renewed halfway through the lease.

    Each storage call on the message changes its pop receipt, so they are made one at a time (`lock`).
    """

    def __init__(self, message: Any, seconds: float) -> None:
        self.message = message
        self.pop_receipt: str = message.pop_receipt
        self.seconds = seconds
        self.renew_at = time.monotonic() + seconds / 2
        self.lock = threading.Lock()
        self.held = True  # False once the message is being settled, or the lease was lost


class QueueListener:
    """Polls one queue trigger's queue and runs its messages in a thread pool, as the host's queue listener does."""

    def __init__(
        self,
        function: LocalFunction,
        *,
        host: HostSettings,
        queues: QueueClients,
        visibility_timeout: float,
        max_polling_interval: float,
        pool: InvocationPool,
        processing_lease: float = PROCESSING_LEASE_SECONDS,
    ) -> None:
        self.function = function
        self._worker_pool = pool
        self._host = host
        self._queues = queues
        self._visibility_timeout = visibility_timeout
        self._lease_seconds = max(int(round(processing_lease)), 2)
        self._leases: dict[str, _Lease] = {}
        self._leases_lock = threading.Lock()
        self._max_polling_interval = max(max_polling_interval, MIN_POLLING_INTERVAL)
        self._queue = queues.queue(function.trigger_connection_string, function.trigger_queue)
        self._poison_name = f"{function.trigger_queue}-poison"
        # The host's side: up to batchSize + newBatchThreshold messages in flight, each waiting for the worker.
        self._concurrency = host.batch_size + host.new_batch_threshold
        self._pool = ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix=f"queue-{function.name}")
        self._stop = threading.Event()
        self._slots = threading.Condition()
        self._running = 0
        self._thread = threading.Thread(target=self._poll_loop, name=f"listener-{function.name}", daemon=True)
        self._renewer = threading.Thread(target=self._renew_loop, name=f"leases-{function.name}", daemon=True)
        self._missing_queue_reported = False
        self._failed_polls = 0

    def start(self) -> None:
        self._thread.start()
        self._renewer.start()

    def stop(self, grace: float) -> None:
        """Stop polling, then wait up to `grace` seconds for running invocations."""
        self._stop.set()
        with self._slots:
            self._slots.notify_all()
        self._thread.join(timeout=5)
        deadline = time.monotonic() + grace
        with self._slots:
            while self._running and time.monotonic() < deadline:
                self._slots.wait(timeout=max(deadline - time.monotonic(), 0.01))
        self._pool.shutdown(wait=False)

    def _poll_loop(self) -> None:
        interval = MIN_POLLING_INTERVAL
        while not self._stop.is_set():
            with self._slots:
                # A new batch is fetched once running messages drop to newBatchThreshold.
                while self._running > self._host.new_batch_threshold and not self._stop.is_set():
                    self._slots.wait(timeout=1.0)
            if self._stop.is_set():
                return
            try:
                messages = self._receive()
            except Exception as err:  # noqa: BLE001 - the poller outlives storage failures: it backs off, polls again
                self._poll_failed(err)
                messages = []
            for message in messages:
                with self._slots:
                    self._running += 1
                self._pool.submit(self._process, message).add_done_callback(self._release_slot)
            if len(messages) == self._host.batch_size:
                interval = MIN_POLLING_INTERVAL
                continue
            if messages:
                interval = MIN_POLLING_INTERVAL
            self._stop.wait(interval)
            if not messages:
                # Randomised exponential back-off up to maxPollingInterval, as the host's.
                interval = min(interval * 2 * random.uniform(0.8, 1.2), self._max_polling_interval)

    def _release_slot(self, _future: Future[None]) -> None:
        with self._slots:
            self._running -= 1
            self._slots.notify_all()

    def _receive(self) -> list[Any]:
        try:
            pages = self._queue.receive_messages(
                messages_per_page=self._host.batch_size,
                max_messages=self._host.batch_size,
                visibility_timeout=self._lease_seconds,
            )
            messages = list(pages)
        except ResourceNotFoundError:
            if not self._missing_queue_reported:
                logger.info("Queue '%s' does not exist yet; polling until it does", self.function.trigger_queue)
                self._missing_queue_reported = True
            return []
        self._missing_queue_reported = False
        if self._failed_polls:
            logger.info(
                "Polling queue '%s' works again after %d failed polls", self.function.trigger_queue, self._failed_polls
            )
            self._failed_polls = 0
        return messages

    def _poll_failed(self, err: Exception) -> None:
        """Say once per outage that polling fails (the loop backs off up to maxPollingInterval meanwhile)."""
        self._failed_polls += 1
        if self._failed_polls == 1:
            logger.warning(
                "Polling queue '%s' failed: %s; polling again with back-off until it answers",
                self.function.trigger_queue,
                first_line(err),
            )

    def _process(self, message: Any) -> None:
        """One message: invoke, then delete (success), hide for visibilityTimeout, or move to the poison queue."""
        function = self.function
        lease = self._hold(message)
        try:
            if message.dequeue_count > self._host.max_dequeue_count:
                # A message that failed its last attempt without being moved (the runner stopped).
                self._move_to_poison(message, self._settle(lease))
                return
            reason = f"New queue message detected on '{function.trigger_queue}'."
            try:
                with invocation_log(function, reason) as invocation_id:
                    logger.info(
                        "Trigger Details: MessageId: %s, DequeueCount: %d, InsertedOn: %s (invocation %s)",
                        message.id,
                        message.dequeue_count,
                        message.inserted_on,
                        invocation_id,
                    )
                    _, outputs = invoke(function, self._queue_message(message), self._worker_pool)
                    # Retried while storage is away (a restart); the invocation fails only if it stays away.
                    write_outputs(
                        self._queues, function, outputs, base64_encode=self._host.message_encoding == "base64"
                    )
            except Exception:  # noqa: BLE001 - logged by invocation_log; the message's fate follows
                self._after_failure(message, self._settle(lease))
                return
            self._delete(message, self._settle(lease))
        except Exception:  # noqa: BLE001 - a storage failure here leaves the message to reappear after its lease
            logger.exception("Could not settle message %s on queue '%s'", message.id, function.trigger_queue)
        finally:
            self._settle(lease)

    def _hold(self, message: Any) -> _Lease:
        lease = _Lease(message, self._lease_seconds)
        with self._leases_lock:
            self._leases[message.id] = lease
        return lease

    def _settle(self, lease: _Lease) -> str:
        """Stop renewing a message's lease; return its current pop receipt, for the call that settles it."""
        with lease.lock:
            lease.held = False
            pop_receipt = lease.pop_receipt
        with self._leases_lock:
            self._leases.pop(lease.message.id, None)
        return pop_receipt

    def _renew_loop(self) -> None:
        """Renew the lease of each message whose function still runs, halfway through it (as the host does)."""
        tick = min(1.0, self._lease_seconds / 4)
        while not self._queues.closing.wait(tick):
            if self._stop.is_set() and not self._leases:
                return
            now = time.monotonic()
            with self._leases_lock:
                due = [lease for lease in self._leases.values() if lease.renew_at <= now]
            for lease in due:
                self._renew(lease)

    def _renew(self, lease: _Lease) -> None:
        message = lease.message
        with lease.lock:
            if not lease.held:
                return
            try:
                renewed = self._queues.retrying(
                    lambda: self._queue.update_message(message.id, lease.pop_receipt, visibility_timeout=lease.seconds),
                    what=f"Renewing the lease of message {message.id}",
                )
            except ResourceNotFoundError:
                # The lease ran out (storage was away too long) or a renewal's answer was lost: the
                # message will be delivered again, and its delete here will find it gone.
                lease.held = False
                logger.warning("Message %s: its lease was lost; it will be delivered again", message.id)
                return
            except Exception as err:  # noqa: BLE001 - tried again on the next tick, while the lease lasts
                logger.warning("Renewing the lease of message %s failed: %s", message.id, first_line(err))
                lease.renew_at = time.monotonic() + 1.0
                return
            lease.pop_receipt = renewed.pop_receipt
            lease.renew_at = time.monotonic() + lease.seconds / 2

    def _delete(self, message: Any, pop_receipt: str) -> None:
        """Delete a settled message, retrying while storage is away; one already gone counts as deleted."""
        try:
            self._queues.retrying(
                lambda: self._queue.delete_message(message.id, pop_receipt),
                what=f"Deleting message {message.id}",
            )
        except ResourceNotFoundError:
            # An earlier try was carried out but its answer lost, or the lease ran out and another
            # poll holds the message now (it will be delivered again).
            logger.info("Message %s was no longer on queue '%s' to delete", message.id, self.function.trigger_queue)

    def _queue_message(self, message: Any) -> QueueMessage:
        content = message.content
        body = content.encode("utf-8") if isinstance(content, str) else bytes(content or b"")
        if self._host.message_encoding == "base64":
            try:
                body = base64.b64decode(body, validate=True)
            except (binascii.Error, ValueError) as err:
                raise RunnerError(
                    f"message {message.id} is not base64 text, and host.json's messageEncoding is base64"
                ) from err
        return queue_message_for_worker(
            body,
            {
                "QueueTrigger": body.decode("utf-8", "replace"),
                "Id": message.id,
                "DequeueCount": message.dequeue_count,
                "ExpirationTime": message.expires_on,
                "InsertionTime": message.inserted_on,
                "NextVisibleTime": message.next_visible_on,
                "PopReceipt": message.pop_receipt,
            },
        )

    def _after_failure(self, message: Any, pop_receipt: str) -> None:  # the real dequeue count, as the host
        if message.dequeue_count >= self._host.max_dequeue_count:
            self._move_to_poison(message, pop_receipt)
            return
        try:
            self._queues.retrying(
                lambda: self._queue.update_message(
                    message.id, pop_receipt, visibility_timeout=int(round(self._visibility_timeout))
                ),
                what=f"Making message {message.id} visible again",
            )
        except ResourceNotFoundError:
            # An earlier try was carried out (the pop receipt changed), or the lease ran out: either
            # way the message becomes visible again by itself.
            logger.info("Message %s: its visibility was already changed", message.id)

    def _move_to_poison(self, message: Any, pop_receipt: str) -> None:
        logger.warning(
            "Message has reached MaxDequeueCount of %d. Moving message to queue '%s'.",
            self._host.max_dequeue_count,
            self._poison_name,
        )
        self._queues.send(self.function.trigger_connection_string, self._poison_name, message.content)
        self._delete(message, pop_receipt)


def queue_message_for_worker(body: bytes, binding_data: Mapping[str, Any]) -> QueueMessage:
    """The func.QueueMessage the function gets: built by the worker's own converter (`azure.functions` queue.py
    `QueueMessageInConverter.decode`) from the trigger metadata the host sends, in which the message's top-level
    JSON fields have replaced the real values (`host_rules.queue_trigger_metadata`). A field the converter
    cannot read (`"DequeueCount": "x"`) fails the invocation, as in the worker. The runner settles the
    message with the real id, pop receipt and dequeue count, as the host does."""
    real = {name: host_metadata_datum(value) for name, value in binding_data.items() if value is not None}
    metadata = queue_trigger_metadata(body, real)
    return QueueMessageInConverter.decode(Datum(type="bytes", value=body), trigger_metadata=metadata)
