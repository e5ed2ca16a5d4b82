"""When to retry an upstream call and how long to wait first (CONTRACT section 6).

Modelled on openai-python's `_base_client.py`: named constants, `retry-after-ms` before
`retry-after`, and exponential backoff with jitter when the server gives no advice.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 60.0
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


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
