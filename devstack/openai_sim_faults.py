"""The simulator's fault plan: which request misbehaves and how, and how many faults of each kind it caused.

Two sources, scripted first: faults for the next N matching requests (`fail_next`), and random ones
for chaos runs, each request failing with a probability, in one of FAULT_KINDS drawn from a seeded
generator (`set_rate`). The plan counts each fault it hands out by kind (`counts()`: a random fault
by its FAULT_KINDS name, a scripted one as "scripted"), so a run reads what was injected from the
simulator instead of guessing it back from the faults. `devstack/openai_sim.py` turns a fault into
the answer.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FAULT_KINDS = ("429", "429ms", "500", "503", "timeout", "drop")
SCRIPTED = "scripted"  # the kind under which scripted faults are counted
DEFAULT_TIMEOUT_DELAY = 2.0


@dataclass(frozen=True)
class Fault:
    """A deliberate misbehaviour applied to one request."""

    status: int | None = None
    headers: Mapping[str, str] | None = None
    body: Any = None
    delay: float | None = None
    drop: bool = False
    non_json: bool = False
    method: str | None = None
    path_suffix: str | None = None
    kind: str = SCRIPTED

    def matches(self, method: str, path: str) -> bool:
        """Tell whether this fault applies to a request."""
        return (self.method is None or self.method == method) and (
            self.path_suffix is None or path.endswith(self.path_suffix)
        )


def random_fault(kind: str, timeout_delay: float) -> Fault:
    """Build the fault for one of FAULT_KINDS."""
    if kind == "429":
        return Fault(status=429, headers={"retry-after": "1"}, kind=kind)
    if kind == "429ms":
        return Fault(status=429, headers={"retry-after-ms": "20", "retry-after": "1"}, kind=kind)
    if kind == "timeout":
        return Fault(delay=timeout_delay, kind=kind)
    if kind == "drop":
        return Fault(drop=True, kind=kind)
    return Fault(status=int(kind), kind=kind)


class FaultPlan:
    """The faults for the requests to come, scripted and random, and a count of those handed out by kind."""

    def __init__(
        self,
        rate: float = 0.0,
        *,
        seed: int | None = None,
        kinds: Sequence[str] = FAULT_KINDS,
        timeout_delay: float = DEFAULT_TIMEOUT_DELAY,
    ) -> None:
        self._lock = threading.Lock()
        self._scripted: list[list[Any]] = []  # [Fault, remaining] in FIFO order
        self._counts: Counter[str] = Counter()
        self._rate = 0.0
        self._random = random.Random()
        self._kinds: tuple[str, ...] = FAULT_KINDS
        self._timeout_delay = timeout_delay
        self.set_rate(rate, seed=seed, kinds=kinds, timeout_delay=timeout_delay)

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        delay: float | None = None,
        drop: bool = False,
        non_json: bool = False,
        method: str | None = None,
        path_suffix: str | None = None,
    ) -> None:
        """Misbehave on the next n requests matching method/path_suffix (FIFO after earlier faults)."""
        if n < 1:
            raise ValueError("n must be at least 1")
        if status is None and delay is None and not drop and not non_json:
            raise ValueError("a fault needs status, delay, drop or non_json")
        fault = Fault(
            status=status,
            headers=dict(headers) if headers else None,
            body=body,
            delay=delay,
            drop=drop,
            non_json=non_json,
            method=method.upper() if method else None,
            path_suffix=path_suffix,
        )
        with self._lock:
            self._scripted.append([fault, n])

    @property
    def pending(self) -> int:
        """Return how many scripted fault applications are still queued."""
        with self._lock:
            return sum(entry[1] for entry in self._scripted)

    def clear(self) -> None:
        """Forget all scripted faults."""
        with self._lock:
            self._scripted.clear()

    def set_rate(
        self,
        probability: float,
        *,
        seed: int | None = None,
        kinds: Sequence[str] = FAULT_KINDS,
        timeout_delay: float = DEFAULT_TIMEOUT_DELAY,
    ) -> None:
        """Apply a random fault of one of `kinds` to each request with this probability (0 turns it off)."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown or not kinds:
            raise ValueError(f"fault kinds must be among {FAULT_KINDS}")
        with self._lock:
            self._rate = probability
            self._random = random.Random(seed)
            self._kinds = tuple(kinds)
            self._timeout_delay = timeout_delay

    def take(self, method: str, path: str) -> Fault | None:
        """Pop the scripted fault for this request, or draw a random one; count it by kind."""
        if not self._scripted and not self._rate:
            return None
        with self._lock:
            fault = self._take_scripted(method, path)
            if fault is None and self._rate and self._random.random() < self._rate:
                fault = random_fault(self._random.choice(self._kinds), self._timeout_delay)
            if fault is not None:
                self._counts[fault.kind] += 1
            return fault

    def counts(self) -> dict[str, int]:
        """The faults handed out so far, by kind (FAULT_KINDS names, and "scripted")."""
        with self._lock:
            return dict(self._counts)

    def _take_scripted(self, method: str, path: str) -> Fault | None:
        for index, entry in enumerate(self._scripted):
            fault = entry[0]
            if fault.matches(method, path):
                entry[1] -= 1
                if entry[1] == 0:
                    del self._scripted[index]
                return fault
        return None
