"""One timed run of one case in a fresh process: `python -m bench.worker CASE --concurrency N --jobs FILE`.

The jobs file holds `{"warmup": [...], "timed": [...]}` job ids. All threads run the warm-up
together (for our function, that is the cold-cache burst that must cause one Key Vault read),
then start the timed cancels at one barrier. Prints one JSON line with the run's figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.cases import CASES, Case, build_case


def percentiles_ms(latencies: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99 and max of latencies given in seconds, in milliseconds."""
    if len(latencies) < 2:
        only = latencies[0] * 1000 if latencies else 0.0
        return {"p50": only, "p90": only, "p99": only, "max": only}
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "p50": cuts[49] * 1000,
        "p90": cuts[89] * 1000,
        "p99": cuts[98] * 1000,
        "max": max(latencies) * 1000,
    }


def measure(case: Case, warmup: Sequence[str], timed: Sequence[str], *, concurrency: int) -> dict[str, Any]:
    """Warm up, then cancel every timed job with `concurrency` threads; the run's figures."""
    phases: list[Iterator[str]] = [iter(warmup), iter(timed)]  # shared: list iterators are atomic under the GIL
    barrier = threading.Barrier(concurrency + 1)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    failures: list[str] = []

    def work(slot: int) -> None:
        try:
            cancel = case.thread_cancel()
        except Exception as err:  # noqa: BLE001 - reported; the others must not wait for this thread
            failures.append(f"thread set-up: {type(err).__name__}: {err}"[:300])
            barrier.abort()
            return
        timed_latencies = latencies[slot]
        for phase, jobs in enumerate(phases):
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                return
            for job_id in jobs:
                started = time.perf_counter()
                try:
                    cancel(job_id)
                except Exception as err:  # noqa: BLE001 - counted and reported; the run is then invalid
                    failures.append(f"{type(err).__name__}: {err}"[:300])
                    continue
                if phase == 1:
                    timed_latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=work, args=(slot,), daemon=True) for slot in range(concurrency)]
    for thread in threads:
        thread.start()
    span_started = time.perf_counter()
    try:
        barrier.wait()  # warm-up starts
        barrier.wait()  # every thread has finished its warm-up: the timed cancels start
    except threading.BrokenBarrierError:
        pass  # a thread could not set up: reported in failures
    started, cpu_started = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.join()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    merged = [latency for slot in latencies for latency in slot]
    return {
        "cancels": len(merged),
        "seconds": seconds,
        "cancels_per_second": len(merged) / seconds if seconds > 0 else 0.0,
        "latency_ms": percentiles_ms(merged),
        "client_cpu_us_per_cancel": cpu_seconds / len(merged) * 1e6 if merged else 0.0,
        "span_seconds": time.perf_counter() - span_started,
        "failures": len(failures),
        "first_failure": failures[0] if failures else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__)
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--jobs", type=Path, required=True, help='JSON file {"warmup": [...], "timed": [...]}')
    args = parser.parse_args(argv)
    jobs = json.loads(args.jobs.read_text(encoding="utf-8"))
    case = build_case(args.case)
    result = measure(case, jobs["warmup"], jobs["timed"], concurrency=args.concurrency)
    print(json.dumps({"case": args.case, "concurrency": args.concurrency, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
