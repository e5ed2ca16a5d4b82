"""Reading Azurite queues in the end-to-end tests: poll with a deadline, never sleep for luck."""

from __future__ import annotations

import json
import uuid
from typing import Any

from azure.storage.queue import QueueClient

from devstack import storage
from devstack.storage import message_count as message_count  # the e2e tests import it from here

RECORD_TIMEOUT_SECONDS = 30.0


def take_messages(queue: QueueClient, count: int, *, timeout: float = RECORD_TIMEOUT_SECONDS) -> list[Any]:
    """Receive and delete messages until `count` came (JSON parsed where it parses); fail after `timeout`."""
    try:
        texts = storage.take_messages(queue, count=count, timeout=timeout)
    except TimeoutError as err:
        raise AssertionError(str(err)) from err
    return [_parsed(text) for text in texts]


def _parsed(content: str) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return content


def unique_queue_name(role: str) -> str:
    return f"e2e-{uuid.uuid4().hex[:12]}-{role}"
