"""The cancel service: cancels one job on an allow-listed resource, and waits for cancels to take.

It asks upstream, confirms a refusal with a GET, and ends each cancel as `shared.contract` tables it.
Its clock, sleep and Key Vault reader are constructor arguments, so a test can pass its own; the
process has one service, built from its settings (`current_service`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from shared.api_key import ApiKeySource, OpenSecretReader, key_vault_secret_reader
from shared.built_once import BuiltOnce
from shared.contract import Ending, error_ending, is_final, is_job, needs_confirmation, reply_ending
from shared.errors import CancelError
from shared.records import CancelRequest, ResultRecord, utc_now
from shared.resource_client import ResourceClient
from shared.settings import DEFAULT_RESOURCE, Settings, load_settings
from shared.upstream import CallTrace

logger = logging.getLogger(__name__)

FIRST_POLL_DELAY = 0.5  # waiting for a cancel to take: GET after 0.5 s, 1 s, 2 s ... 5 s apart
MAX_POLL_DELAY = 5.0


@dataclass(frozen=True)
class Cancelling:
    """One request's cancel so far: how it ends, the upstream calls it took, how long it waited for the job."""

    request: CancelRequest
    ending: Ending
    attempts: int = 0
    upstream_request_id: str | None = None
    waited_seconds: float | None = None  # only when the request asked to wait

    def record(self) -> ResultRecord:
        """The request's result record, completed now."""
        request, ending = self.request, self.ending
        return ResultRecord(
            job_id=request.job_id,
            outcome=ending.outcome,
            status_code=ending.status_code,
            trigger=request.trigger,
            request_id=request.request_id,
            received_at=request.received_at,
            job=ending.job,
            error=ending.error,
            retryable=ending.retryable,
            correlation_id=request.correlation_id,
            upstream_request_id=self.upstream_request_id,
            attempts=self.attempts,
            dequeue_count=request.dequeue_count,
            completed_at=utc_now(),
            resource=request.resource,
            caller=request.caller,
            waited_seconds=self.waited_seconds,
        )


class CancelService:
    """Cancels fine-tuning jobs on the allow-listed resources; one per process and configuration."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        secret_reader: OpenSecretReader = key_vault_secret_reader,
    ) -> None:
        self.settings = settings
        self.clock = clock  # monotonic seconds: every deadline given to the service is on this clock
        self._sleep = sleep
        self.clients = {
            name: ResourceClient(settings, resource, sleep=sleep, clock=clock, secret_reader=secret_reader)
            for name, resource in settings.resources.items()
        }

    @property
    def api_keys(self) -> ApiKeySource:
        """The `default` resource's api-key source (api-key mode only)."""
        credentials = self.clients[DEFAULT_RESOURCE].credentials
        assert isinstance(credentials, ApiKeySource)
        return credentials

    def cancel(self, request: CancelRequest, *, deadline: float | None = None) -> ResultRecord:
        """Cancel one job and record how it ended; never raises for an upstream or vault failure."""
        return self.start(request, deadline=deadline).record()

    def start(self, request: CancelRequest, *, deadline: float | None = None) -> Cancelling:
        """Cancel one job; how it ended, before any wait for it to take.

        `deadline` (on `clock`) ends the cancel sooner than `UPSTREAM_DEADLINE_SECONDS` would, for a
        request that cancels many jobs within one time budget.
        """
        trace = CallTrace()
        own_deadline = self.clock() + self.settings.upstream_deadline_seconds
        deadline = own_deadline if deadline is None else min(deadline, own_deadline)
        client = self.clients[request.resource]  # the name was checked against the allow-list
        try:
            reply = client.cancel_job(request.job_id, deadline=deadline, trace=trace)
            current = None
            if needs_confirmation(reply):
                current = client.get_job(request.job_id, deadline=deadline, trace=trace)
            ending = reply_ending(reply, request.job_id, current=current)
        except CancelError as err:
            ending = error_ending(err)
        return Cancelling(request, ending, attempts=trace.attempts, upstream_request_id=trace.upstream_request_id)

    def wait_until_final(
        self, cancels: Sequence[Cancelling], until: float, *, map_calls: Callable[..., Iterable[Any]] = map
    ) -> list[Cancelling]:
        """Poll every cancelled job that is not final yet, all in the same rounds, until `until` (on `clock`).

        Rounds are 0.5 s, 1 s, 2 s ... 5 s apart; `map_calls` may poll a round's jobs in parallel. Each
        cancel's `waited_seconds` is how long its job was waited for.
        """
        started = self.clock()
        ended = list(cancels)
        waited: list[float | None] = [0.0 if is_final(cancel.ending) else None for cancel in ended]
        pending = [index for index, seconds in enumerate(waited) if seconds is None]
        delay = FIRST_POLL_DELAY
        while pending and self.clock() + delay < until:
            self._sleep(delay)
            delay = min(delay * 2, MAX_POLL_DELAY)
            polled = list(map_calls(lambda index: self._poll(ended[index], until), pending))
            now = self.clock()
            for index, cancel in zip(pending, polled, strict=True):
                ended[index] = cancel
                if is_final(cancel.ending):
                    waited[index] = now - started
            pending = [index for index in pending if waited[index] is None]
        given_up = self.clock() - started
        return [
            replace(cancel, waited_seconds=given_up if seconds is None else seconds)
            for cancel, seconds in zip(ended, waited, strict=True)
        ]

    def _poll(self, cancel: Cancelling, until: float) -> Cancelling:
        """One GET of the cancel's job; the ending takes the job only when the answer is that job."""
        job_id = cancel.request.job_id
        trace = CallTrace()
        try:
            reply = self.clients[cancel.request.resource].get_job(job_id, deadline=until, trace=trace)
        except CancelError as err:
            logger.info("waiting for %s: GET failed (%s); still waiting", job_id, err.message)
            reply = None
        ending = cancel.ending
        if reply is not None and reply.status == 200 and is_job(reply.body, job_id):
            ending = replace(ending, job=reply.body)
        return replace(
            cancel,
            ending=ending,
            attempts=cancel.attempts + trace.attempts,
            upstream_request_id=trace.upstream_request_id or cancel.upstream_request_id,
        )


_service = BuiltOnce(CancelService)


def current_service() -> CancelService:
    """The process's cancel service, built from its settings on first use; raises `SettingsError` for a bad one."""
    return _service.get(load_settings())
