"""Reading Azurite queues in the end-to-end tests: poll with a deadline, never sleep for luck."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient

RECORD_TIMEOUT_SECONDS = 30.0


def take_messages(queue: QueueClient, count: int, *, timeout: float = RECORD_TIMEOUT_SECONDS) -> list[Any]:
    """Receive and delete messages until `count` came (JSON parsed where it parses)."""
    taken: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(taken) < count:
        try:
            messages = list(queue.receive_messages(messages_per_page=32, max_messages=32))
        except ResourceNotFoundError:
            messages = []
        for message in messages:
            taken.append(_parsed(message.content))
            queue.delete_message(message)
        if len(taken) >= count:
            break
        assert time.monotonic() < deadline, f"{len(taken)} of {count} messages on {queue.queue_name} after {timeout} s"
        time.sleep(0.1)
    return taken


def _parsed(content: str) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return content


def unique_queue_name(role: str) -> str:
    return f"e2e-{uuid.uuid4().hex[:12]}-{role}"


def message_count(queue: QueueClient) -> int:
    """Messages on a queue, invisible ones included; 0 for a queue nobody has written to."""
    try:
        return queue.get_queue_properties().approximate_message_count
    except ResourceNotFoundError:
        return 0
