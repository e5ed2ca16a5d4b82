"""How fast the simulator answers and how much it lets through: the benchmarks' latency and rate limit.

`Latency` is each answer's time, a fixed part plus a long-tailed random part; `RateLimit` throttles
the resource with 429 and `retry-after-ms` once a token bucket of requests runs dry.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

THROTTLED_MESSAGE = "Requests to the fine-tuning API have exceeded the rate limit of your resource. Please retry later."


@dataclass(frozen=True)
class Latency:
    """How long an answer takes, in seconds: `fixed` plus a lognormal part, so that the median is `median`.

    The lognormal part (median `median - fixed`, shape `sigma`) gives the long tail a real service has.
    """

    fixed: float = 0.0
    median: float = 0.0
    sigma: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.fixed <= self.median or self.sigma < 0:
            raise ValueError("latency needs 0 <= fixed <= median and sigma >= 0")

    @property
    def mean(self) -> float:
        """The expected answer time: fixed plus the lognormal part's mean."""
        return self.fixed + (self.median - self.fixed) * math.exp(self.sigma**2 / 2)

    def draw(self, rand: random.Random) -> float:
        """One answer's time."""
        spread = self.median - self.fixed
        return self.fixed + (rand.lognormvariate(math.log(spread), self.sigma) if spread > 0 else 0.0)


class RateLimit:
    """A per-resource request limit: a token bucket of `burst` tokens refilled at `rate` a second.

    A request that finds no token is refused with 429 and told, in `retry-after-ms`, when the next
    token is due; refused requests take no token, so every client told the same wait races again.
    """

    def __init__(self, rate: float, *, burst: float | None = None, clock: Callable[[], float] = time.monotonic):
        if rate <= 0 or (burst is not None and burst < 1):
            raise ValueError("a rate limit needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)  # a second's worth, like a per-second limit
        self._clock = clock
        self._tokens = self.burst
        self._refilled = clock()
        self._lock = threading.Lock()

    def take(self) -> float | None:
        """Take a token: None when the request may pass, else the seconds until a token is due."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.rate)
            self._refilled = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return None
            return (1.0 - self._tokens) / self.rate


def throttled_response_headers(wait: float) -> dict[str, str]:
    """Azure OpenAI's 429 advice: `retry-after-ms`, and `retry-after` in whole seconds (at least 1)."""
    milliseconds = max(1, math.ceil(wait * 1000))
    return {"retry-after-ms": str(milliseconds), "retry-after": str(max(1, math.ceil(wait)))}


def latency_from_milliseconds(median_ms: float, fixed_ms: float | None = None, sigma: float = 0.5) -> Latency | None:
    """A Latency from milliseconds, the fixed part a third of the median unless given; None for a median of 0."""
    if median_ms <= 0:
        return None
    fixed = median_ms / 3 if fixed_ms is None else fixed_ms
    return Latency(fixed=fixed / 1000, median=median_ms / 1000, sigma=sigma)
