"""Reading Azurite queues in the end-to-end tests: poll with a deadline, never sleep for luck."""

from __future__ import annotations

import json
import uuid
from typing import Any

from azure.storage.queue import QueueClient

from devstack import storage

RECORD_TIMEOUT_SECONDS = 30.0


def take_parsed(queue: QueueClient, count: int, *, timeout: float = RECORD_TIMEOUT_SECONDS) -> list[Any]:
    """`devstack.storage.take_messages` until `count` came, each JSON-parsed where it parses; fails the test after `timeout`."""
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
