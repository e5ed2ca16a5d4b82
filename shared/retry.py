"""When to retry an upstream call, how long to wait first (CONTRACT section 6), and when a throttled resource
may be called again.

Modelled on openai-python's `src/openai/_base_client.py` (`_parse_retry_after_header`,
`_calculate_retry_timeout`): named constants, `retry-after-ms` before `retry-after`, and exponential
backoff with jitter when the server gives no advice. openai-python waits per request; `ResourcePacer`
adds what one process with many callers of one resource needs on top: a shared wait after a 429.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 60.0
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# After a 429, callers of the resource start one at a time, this far apart: the advised wait to begin with
# (at most MAX_PACING_SPACING), 10% longer on each 429 met while paced, 1% shorter on each call let through,
# and no pacing below 1 ms.
# (Measured against the simulator's token bucket at 25 and 50 requests/s, 24 callers: 1.1 calls per cancel
# at about R; 1.25 and 0.95 gave 1.2 calls at 0.8 R, a faster recovery 1.4 calls.)
# A 429 advising seconds holds every caller that long; pacing one call a second after it (the cap was 1 s) made
# the chaos run's random `retry-after: 1` faults drain 1.5 calls/s. 50 ms keeps the R=25/s pacing (40 ms).
MAX_PACING_SPACING = 0.05
PACING_TIGHTEN = 1.1
PACING_RELAX = 0.99
MIN_PACING_SPACING = 0.001


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUSES


def retry_after_seconds(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """The server's advised wait: `retry-after-ms`, else `retry-after` (seconds or HTTP date), capped.

    Returns None when neither header holds a usable value; `now` is epoch seconds for dates.
    """
    advised = _milliseconds(headers.get("retry-after-ms"))
    if advised is None:
        advised = _seconds_or_date(headers.get("retry-after"), now=now)
    if advised is None:
        return None
    return min(advised, MAX_RETRY_AFTER)


def backoff_seconds(retries_so_far: int, *, rand: float | None = None) -> float:
    """Exponential backoff from 0.5 s, capped at 8 s, less up to 25% jitter."""
    delay = min(INITIAL_RETRY_DELAY * 2.0**retries_so_far, MAX_RETRY_DELAY)
    return delay * (1 - 0.25 * (random.random() if rand is None else rand))


class ResourcePacer:
    """When the next call to one Azure OpenAI resource may start, shared by every caller in the process.

    Without it, each throttled caller waits out its own advised time and they all try again at once: one gets
    the token that came free, the rest are refused again and spend their retries within a fraction of a second.
    With it, a 429 advising `w` holds every caller of the resource (first attempts included) until `w` from
    now, then lets them start one at a time, `spacing` apart. The spacing starts at the advised wait (at most
    MAX_PACING_SPACING), grows on each 429 met by a call sent while paced and shrinks on each call let through,
    so the callers settle near the rate the resource allows and are no longer paced once it stops throttling.
    Times are monotonic.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next_start = -math.inf
        self._throttled_at = -math.inf
        self._last_turn = -math.inf  # the latest start handed out
        self._spacing = 0.0

    @property
    def spacing(self) -> float:
        """Seconds between the starts of consecutive calls; 0 when the resource is not paced."""
        return self._spacing

    def turn(self, now: float, *, latest: float) -> float:
        """The moment this caller may start; the turn is taken only when it comes before `latest`."""
        with self._lock:
            start = max(now, self._next_start)
            if self._spacing and start < latest:
                self._last_turn = start
                self._next_start = start + self._spacing
            return start

    def throttled(self, now: float, advised: float, *, sent_at: float, turn: float, latest: float) -> float:
        """The resource answered 429 advising `advised` seconds to a call sent at `sent_at` on its `turn`.

        Holds every caller. Returns the seconds until the refused caller's own retry, its turn taken when it
        comes before `latest`: exactly the advice (CONTRACT section 6) unless callers were given turns after
        its own, then after theirs. Only a call sent after the last 429 was known lengthens the spacing: the callers in
        flight then were not paced yet, and their refusals say nothing new.
        """
        with self._lock:
            if sent_at >= self._throttled_at:
                tightened = max(advised, self._spacing * PACING_TIGHTEN)
                self._spacing = min(tightened, MAX_PACING_SPACING) if tightened >= MIN_PACING_SPACING else 0.0
                self._throttled_at = now
            hold = now + advised
            start = hold if turn >= self._last_turn else max(self._next_start, hold)
            if start < latest:
                self._last_turn = start
                self._next_start = max(self._next_start, start + self._spacing)
            else:
                self._next_start = max(self._next_start, hold)
            return advised if start == hold else start - now

    def let_through(self) -> None:
        """A call was answered without throttling: the next callers may start a little closer together."""
        with self._lock:
            relaxed = self._spacing * PACING_RELAX
            self._spacing = relaxed if relaxed >= MIN_PACING_SPACING else 0.0


def _milliseconds(raw: str | None) -> float | None:
    number = _finite_non_negative(raw)
    return None if number is None else number / 1000


def _seconds_or_date(raw: str | None, *, now: float | None) -> float | None:
    number = _finite_non_negative(raw)
    if number is not None or raw is None:
        return number
    try:
        moment = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def _finite_non_negative(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        number = float(raw.strip())
    except ValueError:
        return None
    return number if 0 <= number < float("inf") else None
