"""CONTRACT section 6: which answers are retried and how long we wait first, as tables."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from shared.retry import (
    INITIAL_RETRY_DELAY,
    MAX_RETRY_AFTER,
    MAX_RETRY_DELAY,
    backoff_seconds,
    is_retryable_status,
    retry_after_seconds,
)

NOW = datetime(2026, 11, 26, 17, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "7"}, 0.25),  # ms wins
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "120"}, MAX_RETRY_AFTER),  # capped at 60 s
        ({"retry-after-ms": "90000"}, MAX_RETRY_AFTER),
        ({"retry-after": format_datetime(NOW + timedelta(seconds=12), usegmt=True)}, 12.0),
        ({"retry-after": format_datetime(NOW - timedelta(seconds=12), usegmt=True)}, 0.0),  # past date: now
        ({"retry-after": format_datetime(NOW + timedelta(hours=1), usegmt=True)}, MAX_RETRY_AFTER),
        ({"retry-after-ms": "soon", "retry-after": "3"}, 3.0),  # unusable ms falls back to seconds
        ({"retry-after": "-5"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "tomorrow-ish"}, None),
        ({"retry-after": ""}, None),
        ({}, None),
    ],
)
def test_retry_after_table(headers: dict[str, str], expected: float | None) -> None:
    advised = retry_after_seconds(headers, now=NOW.timestamp())
    if expected is None:
        assert advised is None
    else:
        assert advised == pytest.approx(expected)


@pytest.mark.parametrize(
    ("retries_so_far", "rand", "expected"),
    [
        (0, 0.0, INITIAL_RETRY_DELAY),
        (1, 0.0, 1.0),
        (2, 0.0, 2.0),
        (3, 0.0, 4.0),
        (4, 0.0, MAX_RETRY_DELAY),
        (10, 0.0, MAX_RETRY_DELAY),  # capped at 8 s
        (0, 1.0, INITIAL_RETRY_DELAY * 0.75),  # jitter takes off at most a quarter
        (10, 1.0, MAX_RETRY_DELAY * 0.75),
    ],
)
def test_backoff_table(retries_so_far: int, rand: float, expected: float) -> None:
    assert backoff_seconds(retries_so_far, rand=rand) == pytest.approx(expected)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_statuses(status: int) -> None:
    assert is_retryable_status(status)


@pytest.mark.parametrize("status", [200, 400, 401, 403, 404, 409, 422, 501, 505])
def test_statuses_that_are_not_retried(status: int) -> None:
    assert not is_retryable_status(status)
