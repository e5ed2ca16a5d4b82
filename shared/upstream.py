"""The Azure OpenAI fine-tuning client: one `requests.Session` per process and the retry loop.

`UpstreamClient.send` makes one logical call: up to `UPSTREAM_MAX_RETRIES` retries for
connection errors, timeouts, 408, 429 and 5xx, waiting as `shared.retry` advises, never past
the cancel's deadline. A 429 with advice holds every caller of the resource through the resource's
`ResourcePacer`, so throttled callers take turns instead of retrying at once; waiting for a turn
is not a retry. Any other answer is returned to the caller to judge.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests
import urllib3
from requests.structures import CaseInsensitiveDict

from shared.errors import ConnectFailed, NoResponse, RetryableStatus, TimedOut, UnreadableBody
from shared.http_session import new_session, route_for
from shared.record_text import loads_bounded
from shared.redaction import redact_json, redact_text, request_secrets
from shared.retry import ResourcePacer, backoff_seconds, is_retryable_status, retry_after_seconds
from shared.settings import UPSTREAM_CONNECT_TIMEOUT_SECONDS, V1_API_VERSION, ResourceSettings, Settings

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # a FineTuningJob is a few KiB; anything past 1 MiB is not one
POOL_SIZE = 32  # above the queue trigger's batch size plus the HTTP trigger's concurrency
LOGGED_RESPONSE_HEADERS = ("apim-request-id", "x-request-id", "x-ms-region", "retry-after", "retry-after-ms")
MAX_REQUEST_ID_LENGTH = 200  # upstream's request id goes into every record: a hostile one must not fill it
_READ_CHUNK = 64 * 1024


@dataclass
class CallTrace:
    """What one cancel sent upstream, for its record: how many calls, and the last request id."""

    attempts: int = 0
    upstream_request_id: str | None = None


@dataclass
class UpstreamReply:
    """A non-retryable answer: its status, request id and JSON body (None when there was none)."""

    status: int
    body: Any
    request_id: str | None
    content_type: str = ""
    headers: dict[str, str] = field(default_factory=dict)


class UpstreamClient:
    """Calls `{endpoint}/openai/[v1/]fine_tuning/jobs/...` with a credential, retrying what is retryable."""

    def __init__(
        self,
        settings: Settings,
        resource: ResourceSettings,
        *,
        session: requests.Session | None = None,
        pacer: ResourcePacer | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        v1 = resource.api_version == V1_API_VERSION
        self._base = resource.endpoint + ("/openai/v1/fine_tuning/jobs" if v1 else "/openai/fine_tuning/jobs")
        self._params = {} if v1 else {"api-version": resource.api_version}  # v1 takes no api-version
        self._session = session or route_for(new_session(pool_size=POOL_SIZE, pool_connections=4), self._base)
        self.pacer = pacer or ResourcePacer()  # shared by every client of the resource (ResourceClient)
        self._sleep = sleep
        self._clock = clock

    def cancel_job(
        self, job_id: str, auth: Mapping[str, str], *, deadline: float, trace: CallTrace
    ) -> UpstreamReply:
        """POST .../jobs/{id}/cancel, with `auth` the credential's header (`api-key` or `Authorization`)."""
        return self.send("POST", f"{quote(job_id, safe='')}/cancel", auth, deadline=deadline, trace=trace)

    def get_job(self, job_id: str, auth: Mapping[str, str], *, deadline: float, trace: CallTrace) -> UpstreamReply:
        """GET .../jobs/{id}."""
        return self.send("GET", quote(job_id, safe=""), auth, deadline=deadline, trace=trace)

    def list_jobs(
        self, auth: Mapping[str, str], *, query: Mapping[str, str], deadline: float, trace: CallTrace
    ) -> UpstreamReply:
        """GET .../jobs?limit=&after=: one page of the jobs collection."""
        return self.send("GET", "", auth, query=query, deadline=deadline, trace=trace)

    def send(
        self,
        method: str,
        path: str,
        auth: Mapping[str, str],
        *,
        deadline: float,
        trace: CallTrace,
        query: Mapping[str, str] | None = None,
    ) -> UpstreamReply:
        """One logical call with retries; raises `NoResponse` or `RetryableStatus` when they run out.

        `path` follows `.../fine_tuning/jobs/` (empty: the collection itself); `query` joins `api-version`.
        """
        url = f"{self._base}/{path}" if path else self._base
        params = {**self._params, **query} if query else self._params
        headers = {**auth, "accept": "application/json"}
        max_retries = self._settings.upstream_max_retries
        has_turn = False  # a throttled caller's retry has its turn from the pacer already
        turn = self._clock()
        for retries_so_far in range(max_retries + 1):
            if not has_turn and deadline - self._clock() > 0:
                turn = self._wait_for_turn(deadline, trace)
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise TimedOut(f"deadline of {self._settings.upstream_deadline_seconds:g} s passed", retry_after=1)
            trace.attempts += 1
            sent_at = self._clock()
            try:
                reply = self._attempt(method, url, params, headers, remaining)
            except NoResponse as err:
                failure: NoResponse | RetryableStatus = err
                advised = None
                logger.info("%s %s attempt %d: %s", method, path, retries_so_far + 1, err.message)
            else:
                trace.upstream_request_id = reply.request_id
                if not is_retryable_status(reply.status):
                    self.pacer.let_through()
                    return reply
                advised = retry_after_seconds(reply.headers)
                failure = RetryableStatus(
                    f"Azure OpenAI answered {reply.status}",
                    status=reply.status,
                    request_id=reply.request_id,
                )
                logger.info(
                    "%s %s attempt %d: status %d, request id %s",
                    method,
                    path,
                    retries_so_far + 1,
                    reply.status,
                    reply.request_id,
                )
            wait = advised if advised is not None else backoff_seconds(retries_so_far)
            failure.retry_after = wait
            has_turn = advised is not None and isinstance(failure, RetryableStatus) and failure.status == 429
            if has_turn:  # every caller of the resource waits it out; this one's retry takes the next turn
                now = self._clock()
                latest = now if retries_so_far == max_retries else deadline
                wait = self.pacer.throttled(now, wait, sent_at=sent_at, turn=turn, latest=latest)
                turn = now + wait
            if retries_so_far == max_retries:
                raise failure
            if self._clock() + wait >= deadline:
                failure.message += f"; the next retry in {wait:.1f} s would pass the deadline"
                raise failure
            self._sleep(wait)
        raise AssertionError("unreachable: the loop returns or raises")

    def _wait_for_turn(self, deadline: float, trace: CallTrace) -> float:
        """Sleep until the resource's pacer lets this call start, and return that moment; a throttled resource
        whose turn comes too late for the deadline is reported as the 429 it is, with the wait as its advice."""
        now = self._clock()
        start = self.pacer.turn(now, latest=deadline)
        if start >= deadline:
            raise RetryableStatus(
                f"Azure OpenAI is throttling this resource; the next turn in {start - now:.1f} s would pass the "
                f"deadline",
                status=429,
                request_id=trace.upstream_request_id,
                retry_after=start - now,
            )
        if start > now:
            logger.debug("waiting %.3f s for a turn on a throttled resource", start - now)
            self._sleep(start - now)
        return start

    def _attempt(
        self, method: str, url: str, params: dict[str, str], headers: dict[str, str], remaining: float
    ) -> UpstreamReply:
        """One HTTP exchange, body read in full (capped) before the read timeout runs out."""
        read_timeout = min(self._settings.upstream_timeout_seconds, remaining)
        started = self._clock()
        try:
            response = self._session.request(
                method,
                url,
                params=params,
                headers=headers,
                timeout=(min(UPSTREAM_CONNECT_TIMEOUT_SECONDS, read_timeout), read_timeout),
                allow_redirects=False,
                stream=True,
            )
        except requests.Timeout as err:
            raise TimedOut(f"no answer within {read_timeout:g} s") from err
        except requests.RequestException as err:
            raise ConnectFailed(f"could not reach Azure OpenAI ({type(err).__name__})") from err
        secrets = request_secrets(headers)
        seen = CaseInsensitiveDict({name: redact_text(value, secrets) for name, value in response.headers.items()})
        request_id = (seen.get("apim-request-id") or seen.get("x-request-id") or "")[:MAX_REQUEST_ID_LENGTH] or None
        try:
            raw = self._read_body(response, started + read_timeout, request_id)
        except BaseException:
            response.close()  # drops a connection with unread bytes on it
            raise
        response.raw.release_conn()  # fully read: the connection goes back to the pool
        headers_seen = {name: seen[name] for name in LOGGED_RESPONSE_HEADERS if name in seen}
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s -> %d %s", method, url, response.status_code, headers_seen)
        if 300 <= response.status_code < 400:
            target = seen.get("location", "nowhere")
            raise UnreadableBody(
                f"Azure OpenAI answered a redirect ({response.status_code} to {target[:200]}), not followed",
                status=response.status_code,
                request_id=request_id,
            )
        return UpstreamReply(
            status=response.status_code,
            body=redact_json(_json_or_none(raw), secrets),
            request_id=request_id,
            content_type=seen.get("content-type", ""),
            headers=headers_seen,
        )

    def _read_body(self, response: requests.Response, read_by: float, request_id: str | None) -> bytes:
        """The body, at most MAX_BODY_BYTES, and only while time is left: a trickle cannot hold us."""
        chunks: list[bytes] = []
        size = 0
        try:
            while chunk := response.raw.read1(_READ_CHUNK, decode_content=True):
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise UnreadableBody(
                        f"Azure OpenAI answered {response.status_code} with a body over {MAX_BODY_BYTES} bytes",
                        status=response.status_code,
                        request_id=request_id,
                    )
                chunks.append(chunk)
                if self._clock() > read_by:
                    raise TimedOut("the answer did not arrive in full before the read timeout")
        except urllib3.exceptions.ReadTimeoutError as err:
            raise TimedOut("the answer did not arrive in full before the read timeout") from err
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise ConnectFailed("the connection broke while reading the answer") from err
        return b"".join(chunks)


def _json_or_none(raw: bytes) -> Any:
    """The parsed body when it is strict JSON, else None (empty, not JSON, not UTF-8, NaN, Infinity, 1e400)."""
    if not raw:
        return None
    try:
        return loads_bounded(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        return None


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise ValueError(f"{text[:20]} is beyond a float's range")
    return number
