"""How much `make bench` measures: `FULL` (`make bench`), `SMOKE` (inside `make test`), and the drain's configurations."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from bench.cases import CASES
from bench.drain import DrainConfig

THROUGHPUT_CASES = tuple(case for case in CASES if case != "naive-entra")  # that one only starts cold (Entra mode)
# What one run can measure; `python -m bench.run --only PART...` measures some and keeps the rest from the last run.
PARTS = ("throughput", "drain", "cold-start")


@dataclass(frozen=True)
class Plan:
    """How much to measure; `FULL` is `make bench`, `SMOKE` the run inside `make test`."""

    cases: tuple[str, ...] = THROUGHPUT_CASES
    concurrency: tuple[int, ...] = (1, 16)
    cancels: int = 2000  # timed cancels per run
    naive_cancels: int = 400  # the naive script is ~40x slower: 400 a run, 2,000 over 5 repetitions
    repetitions: int = 5
    warmup_per_thread: int = 20
    naive_warmup_per_thread: int = 1
    ceiling_cancels: int = 6000
    cold_starts: int = 12
    importtime_samples: int = 3
    cache_period_seconds: float = 1.0
    cache_check_seconds: float = 4.0
    profile_cases: tuple[str, ...] = ("raw", "ours", "ours-service", "sdk")
    profile_cancels: int = 1000
    seed: int = 6
    # Queue drain (bench/drain.py): the upstream answers in `drain_median_ms` (a third fixed, the rest lognormal).
    drain_median_ms: float = 150.0
    # The shipped configuration's backlog. 5,000 (the figure) did not drain within 20 minutes on Azurite
    # here (Azurite near a core, the runner idle), while 600 drained in 15 s: kept below that cliff until it is found.
    drain_messages: int = 1000
    drain_seconds_per_run: float = 8.0  # every other configuration: this long at its bound, at least 200 messages
    drain_min_messages: int = 200
    drain_threads: tuple[int, ...] = (5, 16, 32)
    drain_batches: tuple[tuple[int, int], ...] = ((8, 4), (16, 8), (16, 16), (32, 16))
    drain_rates: tuple[float, ...] = (25.0, 50.0, 100.0)
    drain_visibility_seconds: float = 30.0  # host.json's visibilityTimeout
    storage_backlogs: tuple[int, ...] = (0, 1000, 3000)  # Azurite's cost per call measured with these many waiting
    storage_operations: int = 320  # calls of each kind timed per backlog

    def drain_configs(self, mean_latency: float) -> list[DrainConfig]:
        """The shipped configuration first, then pool sizes, batch settings and rate limits around it."""
        shipped = DrainConfig(
            "shipped: 32 threads, 16+8", self.drain_messages, visibility_timeout=self.drain_visibility_seconds
        )

        def sized(label: str, **knobs: Any) -> DrainConfig:
            config = replace(shipped, label=label, **knobs)
            bound, _ = config.bound(mean_latency)
            return replace(config, messages=max(self.drain_min_messages, int(bound * self.drain_seconds_per_run)))

        configs = [shipped]
        configs += [
            sized(f"{threads} threads, 16+8", threads=threads) for threads in self.drain_threads if threads != 32
        ]
        configs += [
            sized(f"32 threads, {batch}+{threshold}", batch_size=batch, new_batch_threshold=threshold)
            for batch, threshold in self.drain_batches
            if (batch, threshold) != (16, 8)
        ]
        configs += [sized(f"shipped, R={rate:g}/s", rate_limit=rate) for rate in self.drain_rates]
        return configs

    def timed_cancels(self, case: str) -> int:
        return self.naive_cancels if case == "naive" else self.cancels

    def warmup(self, case: str, concurrency: int) -> int:
        per_thread = self.naive_warmup_per_thread if case == "naive" else self.warmup_per_thread
        return per_thread * concurrency


FULL = Plan()
SMOKE = Plan(
    concurrency=(1, 4),
    cancels=30,
    naive_cancels=4,
    repetitions=1,
    warmup_per_thread=2,
    ceiling_cancels=200,
    cold_starts=1,
    importtime_samples=1,
    cache_period_seconds=0.3,
    cache_check_seconds=0.8,
    profile_cases=("ours",),
    profile_cancels=30,
    drain_median_ms=20.0,
    drain_messages=40,
    drain_seconds_per_run=0.1,
    drain_min_messages=20,
    drain_threads=(5, 32),
    drain_batches=((16, 8),),
    drain_rates=(50.0,),
    drain_visibility_seconds=1.0,
    storage_backlogs=(0, 50),
    storage_operations=32,
)
