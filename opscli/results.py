"""Reading the results queue: peek at the front, take records off, or follow it as records arrive.

- peek: non-destructive, but the service shows only the first 32 messages of a queue.
- take (`--delete`): receive, print, then delete; a record is deleted only once it was printed.
- browse (`--follow` without `--delete`): receive and *hold* each record (invisible to other
  readers for HOLD_SECONDS) so the next receive reaches past it, print it once, and put every held
  record back when the command ends. The only way to see more than 32 records without deleting
  them; it raises their dequeue count, and a record held longer than HOLD_SECONDS comes back by
  itself and is received again (not printed again).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from azure.storage.queue import QueueMessage

from opscli.queues import MAX_MESSAGES_PER_CALL, StorageQueue

HOLD_SECONDS = 120
TAKE_SECONDS = 30  # a taken record reappears after this if ftcancel dies before deleting it
FIRST_POLL_SECONDS = 1.0  # an idle follow polls after 1 s, 2 s, 4 s, then every 5 s
MAX_POLL_SECONDS = 5.0


@dataclass(frozen=True)
class ResultMessage:
    """A message of the results queue; `record` is None when it is not a JSON object, and `problem` says why."""

    message_id: str
    content: str
    record: dict[str, Any] | None
    problem: str | None = None

    @classmethod
    def of(cls, message: QueueMessage) -> ResultMessage:
        content, problem = _text(message.content)
        if problem is not None:
            return cls(message.id, content, None, problem)
        try:
            parsed = json.loads(content)
        except (ValueError, RecursionError):  # RecursionError: `[[[[...` nested deeper than the parser goes
            return cls(message.id, content, None, "not JSON")
        if not isinstance(parsed, dict):
            return cls(message.id, content, None, "JSON, but not an object")
        return cls(message.id, content, parsed)


def _text(content: object) -> tuple[str, str | None]:
    """The message's text, and what is wrong with it when it has none (bytes from a client with a decode policy)."""
    if isinstance(content, str):
        return content, None
    if isinstance(content, bytes):
        try:
            return content.decode("utf-8"), None
        except UnicodeDecodeError:
            return content.decode("utf-8", "backslashreplace"), "not UTF-8"
    return "", "empty"


def peek_records(queue: StorageQueue, limit: int | None) -> list[ResultMessage]:
    """The first records on the queue (at most 32), left where they are."""
    return [ResultMessage.of(message) for message in queue.peek(limit or MAX_MESSAGES_PER_CALL)]


class ResultsReader:
    """Receives records one by one; use as a context manager so held records are put back at the end.

    `settle(message)` after a record was printed: take mode deletes it, browse mode keeps holding it.
    """

    def __init__(
        self,
        queue: StorageQueue,
        *,
        delete: bool,
        follow: bool,
        limit: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.queue = queue
        self.delete = delete
        self.follow = follow
        self.limit = limit
        self._sleep = sleep
        self._held: dict[str, QueueMessage] = {}  # received, not deleted: latest pop receipt by message id
        self._seen: set[str] = set()
        self.not_put_back = 0

    def __enter__(self) -> ResultsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.put_back()

    def messages(self) -> Iterator[ResultMessage]:
        """Each message once, until the limit, or (without follow) until the queue has no new ones."""
        visibility = TAKE_SECONDS if self.delete else HOLD_SECONDS
        delivered = 0
        idle_wait = FIRST_POLL_SECONDS
        while self.limit is None or delivered < self.limit:
            wanted = MAX_MESSAGES_PER_CALL if self.limit is None else self.limit - delivered
            batch = self.queue.receive(wanted, visibility_timeout=visibility)
            fresh = [message for message in batch if message.id not in self._seen]
            for message in batch:
                self._held[message.id] = message
            for message in fresh:
                self._seen.add(message.id)
                delivered += 1
                yield ResultMessage.of(self._held[message.id])
            if len(batch) == min(wanted, MAX_MESSAGES_PER_CALL):
                idle_wait = FIRST_POLL_SECONDS
                continue  # a full batch: more may be waiting right now
            if not self.follow:
                if not fresh:
                    return
                continue  # until a receive finds nothing new
            if fresh:
                idle_wait = FIRST_POLL_SECONDS
            self._sleep(idle_wait)
            idle_wait = min(idle_wait * 2, MAX_POLL_SECONDS)

    def settle(self, message: ResultMessage) -> bool:
        """After the record was printed: delete it (take mode). False if it could not be deleted any more."""
        if not self.delete:
            return True
        held = self._held.pop(message.message_id, None)
        return held is not None and self.queue.delete(held)

    def put_back(self) -> None:
        """Make every held record visible again; counts those the caller's role could not put back."""
        held, self._held = list(self._held.values()), {}
        if held:
            self.not_put_back = self.queue.make_visible(held)
