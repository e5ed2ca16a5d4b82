"""Queue drain: N cancel messages waiting in Azurite, drained by the app in the local runner.

`python -m bench.drain` is one run's child process: it queues the job ids it is given (noting
when each was sent), starts `devstack.runner.FunctionsRunner` on the real `function_app.app` with
host.json's queue settings (batch size and new-batch threshold overridable) and the worker's one
thread pool (`PYTHON_THREADPOOL_THREAD_COUNT` from its environment, as the worker reads it), waits
until every message has a record on the results queue or none came for a while, and prints one
JSON line: messages/s, time in queue (a record's `completed_at` minus the send), outcomes,
duplicates and lost messages. The parent (`drain_runs`) owns the simulator, which answers
with latency and under a rate limit, counts its cancels, and judges each run against its bound.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ENQUEUE_THREADS = 8
POLL_SECONDS = 0.25
RECEIVE_VISIBILITY_SECONDS = 600  # records read once at the end stay hidden while the rest are read


@dataclass(frozen=True)
class DrainConfig:
    """One drain run: how many messages, the worker's pool, host.json's batch settings, the upstream."""

    label: str
    messages: int
    threads: int = 32
    batch_size: int = 16
    new_batch_threshold: int = 8
    rate_limit: float | None = None  # requests/s for the whole resource; None: no limit
    visibility_timeout: float = 30.0  # host.json's; a smoke run shortens it

    @property
    def in_flight(self) -> int:
        """Invocations the host and worker allow at once: min(pool threads, batchSize + newBatchThreshold)."""
        return min(self.threads, self.batch_size + self.new_batch_threshold)

    def bound(self, mean_latency: float) -> tuple[float, str]:
        """The drain rate this configuration cannot beat, and what sets it."""
        concurrency = self.in_flight / mean_latency
        if self.rate_limit is not None and self.rate_limit < concurrency:
            return self.rate_limit, "rate limit R"
        return concurrency, "concurrency (in flight / mean latency)"


class WorkerLogHandler(logging.Handler):
    """Formats every log record, as the worker's `AsyncLoggingHandler.emit` does before sending it to the host
    (azure-functions-python-worker `azure_functions_worker/dispatcher.py`), and counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.records = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)
        self.records += 1


def log_like_the_worker() -> WorkerLogHandler:
    """The root logger at INFO with one handler, as `Dispatcher.dispatch_forever` sets it up in Azure."""
    handler = WorkerLogHandler()
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    return handler


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]


def parse_time(text: str) -> float:
    """Epoch seconds of a record's `...Z` timestamp."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def drain_summary(
    records: Sequence[Mapping[str, Any]], sent_at: Mapping[str, float], started: float
) -> dict[str, Any]:
    """What a drain delivered: rate from the runner's start to the last record, time in queue, losses."""
    first: dict[str, Mapping[str, Any]] = {}
    for record in records:
        job_id = record.get("job_id")
        if job_id in sent_at and (job_id not in first or record["completed_at"] < first[job_id]["completed_at"]):
            first[job_id] = record
    completed = {job_id: parse_time(record["completed_at"]) for job_id, record in first.items()}
    waits = [completed[job_id] - sent_at[job_id] for job_id in completed]
    seconds = max(completed.values()) - started if completed else 0.0
    # Invocation time, from the handler's start (`received_at`) to its record; by Little's law its sum over
    # the drain is the mean number of invocations in flight.
    busy = [parse_time(record["completed_at"]) - parse_time(record["received_at"]) for record in records]
    return {
        "messages": len(sent_at),
        "records": len(records),
        "distinct_jobs": len(first),
        "duplicates": len(records) - len(first),
        "lost": len(sent_at) - len(first),
        "outcomes": dict(Counter(str(record.get("outcome")) for record in first.values())),
        "dequeue_counts": dict(Counter(str(record.get("dequeue_count")) for record in first.values())),
        "attempts_in_records": sum(int(record.get("attempts") or 0) for record in records),
        "drain_seconds": seconds,
        "invocation_ms": {
            "mean": statistics.fmean(busy) * 1000 if busy else None,
            "p50": percentile(busy, 0.50) * 1000 if busy else None,
        },
        "mean_in_flight": sum(busy) / seconds if seconds > 0 else 0.0,
        "messages_per_second": len(first) / seconds if seconds > 0 else 0.0,
        "time_in_queue_s": {
            "p50": percentile(waits, 0.50) if waits else None,
            "p99": percentile(waits, 0.99) if waits else None,
            "max": max(waits) if waits else None,
        },
    }


# --- the child process -------------------------------------------------------------------------


def _enqueue(connection_string: str, queue_name: str, job_ids: Sequence[str]) -> dict[str, float]:
    """Send one plain job-id message per job (several senders at once); each job's send time."""
    from azure.storage.queue import QueueClient

    queue = QueueClient.from_connection_string(connection_string, queue_name)
    queue.create_queue()
    sent_at: dict[str, float] = {}

    def send(job_id: str) -> None:
        sent_at[job_id] = time.time()
        queue.send_message(job_id)

    with ThreadPoolExecutor(ENQUEUE_THREADS) as senders:
        list(senders.map(send, job_ids))
    return sent_at


def _read_records(queue: Any) -> list[dict[str, Any]]:
    """Every record on the results queue (each message hidden once read, so each is read once)."""
    records = []
    while True:
        page = list(
            queue.receive_messages(messages_per_page=32, max_messages=32, visibility_timeout=RECEIVE_VISIBILITY_SECONDS)
        )
        if not page:
            return records
        records.extend(json.loads(message.content) for message in page)


def drain(config: DrainConfig, job_ids: Sequence[str], environ: Mapping[str, str], *, stall_seconds: float) -> dict:
    """Queue the jobs, run the app until every one has a record (or none came for `stall_seconds`)."""
    from azure.storage.queue import QueueClient

    from devstack.runner import FunctionsRunner, HostSettings, load_function_app
    from devstack.storage import message_count

    connection_string = environ["AzureWebJobsStorage"]
    requests_queue, results_queue = (f"drain-{uuid.uuid4().hex[:10]}-{role}" for role in ("requests", "results"))
    sent_at = _enqueue(connection_string, requests_queue, job_ids)
    results = QueueClient.from_connection_string(connection_string, results_queue)
    results.create_queue()
    host = replace(
        HostSettings.from_host_json(REPO / "host.json"),
        batch_size=config.batch_size,
        new_batch_threshold=config.new_batch_threshold,
    )
    runner = FunctionsRunner(
        load_function_app(REPO),
        host_settings=host,
        settings={
            "CANCEL_REQUESTS_QUEUE": requests_queue,
            "CANCEL_RESULTS_QUEUE": results_queue,
            "PYTHON_THREADPOOL_THREAD_COUNT": str(config.threads),
        },
        port=0,
        visibility_timeout=config.visibility_timeout,
    )
    logs = log_like_the_worker()
    cpu_before, started = time.process_time(), time.time()
    runner.start()
    pool_threads = runner.pool.max_workers
    count, last_change = 0, time.monotonic()
    while count < len(job_ids) and time.monotonic() - last_change < stall_seconds:
        time.sleep(POLL_SECONDS)
        now_count = message_count(results)
        if now_count != count:
            count, last_change = now_count, time.monotonic()
    ended = time.time()
    by_role = thread_cpu_by_role()  # before stop(): the pools' threads end with it
    runner.stop(grace=5)
    cpu = time.process_time() - cpu_before
    summary = drain_summary(_read_records(results), sent_at, started)
    for queue in (results, QueueClient.from_connection_string(connection_string, requests_queue)):
        queue.delete_queue()  # Azurite's every call costs more the more messages it holds: leave none to the next run
    return {
        **summary,
        "runner_cpu_ms_per_message_by_role": {
            role: seconds * 1000 / max(1, summary["distinct_jobs"]) for role, seconds in by_role.items()
        },
        "pool_threads": pool_threads,
        "wall_seconds": ended - started,
        "runner_cpu_ms_per_message": cpu * 1000 / max(1, summary["distinct_jobs"]),
        "runner_cpu_share": cpu / max(ended - started, 1e-9),
        "log_records_per_message": logs.records / max(1, summary["distinct_jobs"]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.drain", description=__doc__)
    parser.add_argument("--config", required=True, help="DrainConfig as JSON")
    parser.add_argument("--jobs", type=Path, required=True, help="JSON list of job ids to queue")
    parser.add_argument("--stall-seconds", type=float, default=90.0)
    args = parser.parse_args(argv)
    config = DrainConfig(**json.loads(args.config))
    job_ids = json.loads(args.jobs.read_text(encoding="utf-8"))
    print(json.dumps(drain(config, job_ids, os.environ, stall_seconds=args.stall_seconds)), flush=True)
    return 0


# --- the parent: one child per configuration ---------------------------------------------------


def storage_ceiling(connection_string: str, *, threads: int, writes: int, azurite_pid: int) -> dict[str, float]:
    """Record-sized messages/s Azurite takes from `threads` writers at once in this process, their median time,
    and what each write costs Azurite's CPU and this process's (the storage SDK), on an empty queue."""
    from shared.results_queue import new_queue_client
    from shared.settings import StorageConnection

    # The app's own client for its records (its connection pool holds the worker's 32 threads' calls).
    queue = new_queue_client(StorageConnection(connection_string=connection_string), f"ceiling-{uuid.uuid4().hex[:10]}", None)
    queue.create_queue()
    body = json.dumps({"schema_version": 1, "job": {"id": "ftjob-" + "0" * 32, "status": "cancelled"}, "pad": "x" * 500})

    def write(_: int) -> float:
        started = time.monotonic()
        queue.send_message(body)
        return time.monotonic() - started

    started, client_before, azurite_before = time.monotonic(), time.process_time(), process_cpu_seconds(azurite_pid)
    with ThreadPoolExecutor(threads) as writers:
        times = list(writers.map(write, range(writes)))
    seconds = time.monotonic() - started
    client_cpu, azurite_cpu = time.process_time() - client_before, process_cpu_seconds(azurite_pid) - azurite_before
    queue.delete_queue()
    return {
        "threads": threads,
        "writes_per_second": writes / seconds,
        "median_ms": statistics.median(times) * 1000,
        "client_cpu_ms_per_write": client_cpu * 1000 / writes,
        "azurite_cpu_ms_per_write": azurite_cpu * 1000 / writes,
    }


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a live process has used so far."""
    return _stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def _stat_cpu_seconds(stat: Path) -> float:
    """utime + stime (fields 14 and 15) of a Linux `/proc/.../stat` file, in seconds."""
    fields = stat.read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Which side of Azure's split a runner thread stands for, by its name's prefix (devstack/runner/).
THREAD_ROLES = (
    ("worker-", "worker"),  # the Python worker's pool: our function, its upstream call and its record write
    ("queue-", "host"),  # the host's queue listener (.NET in Azure): receive, invocation hand-off, delete
    ("listener-", "host"),
    ("leases-", "host"),
)


def thread_cpu_by_role() -> dict[str, float]:
    """CPU seconds the live threads of this process have used, summed by role: worker, host, other."""
    totals = {"worker": 0.0, "host": 0.0, "other": 0.0}
    for thread in threading.enumerate():
        try:
            seconds = _stat_cpu_seconds(Path(f"/proc/self/task/{thread.native_id}/stat"))
        except OSError:  # the thread ended meanwhile
            continue
        role = next((role for prefix, role in THREAD_ROLES if thread.name.startswith(prefix)), "other")
        totals[role] += seconds
    return totals


def cpu_per_message(result: Mapping[str, Any], azurite_cpu: float, simulator_cpu: float, cores: int) -> dict:
    """CPU ms each process spent per drained message, and the drain rate those costs allow on `cores` cores."""
    messages = max(1, result["distinct_jobs"])
    costs = {
        "runner": result["runner_cpu_ms_per_message"],
        "azurite": azurite_cpu * 1000 / messages,
        "simulator": simulator_cpu * 1000 / messages,
    }
    total = sum(costs.values())
    return {"ms_per_message": costs, "total_ms": total, "bound": cores * 1000 / total if total else float("inf")}


def storage_op_costs(
    connection_string: str, *, azurite_pid: int, backlogs: Sequence[int], operations: int = 320
) -> list[dict[str, float]]:
    """Azurite's CPU ms per Get Messages (of 16), Put Message and Delete Message, with `backlog` other messages
    waiting in the queue. Azurite finds a message by scanning its store (its `LokiQueueMetadataStore.js`
    `deleteMessage` and `clearExpiredMessages`, called on every operation), so each costs more the more it holds."""
    from azure.storage.queue import QueueClient

    body = json.dumps({"job_id": "ftjob-" + "0" * 32})
    costs = []
    for backlog in backlogs:
        queue = QueueClient.from_connection_string(connection_string, f"costs-{uuid.uuid4().hex[:10]}")
        queue.create_queue()
        with ThreadPoolExecutor(ENQUEUE_THREADS) as senders:
            list(senders.map(queue.send_message, [body] * (backlog + operations)))
        before = process_cpu_seconds(azurite_pid)
        received = []
        while len(received) < operations:
            received += list(queue.receive_messages(messages_per_page=16, max_messages=16, visibility_timeout=600))
        after_receive = process_cpu_seconds(azurite_pid)
        for _ in received:
            queue.send_message(body)
        after_send = process_cpu_seconds(azurite_pid)
        for message in received:
            queue.delete_message(message)
        after_delete = process_cpu_seconds(azurite_pid)
        queue.delete_queue()
        costs.append(
            {
                "backlog": backlog,
                "operations": len(received),
                "receive_16_ms": (after_receive - before) * 1000 / (len(received) / 16),
                "send_ms": (after_send - after_receive) * 1000 / len(received),
                "delete_ms": (after_delete - after_send) * 1000 / len(received),
            }
        )
    return costs


def drain_runs(
    configs: Sequence[DrainConfig],
    *,
    simulator: Any,
    latency: Any,
    run_child: Callable[[DrainConfig, list[str]], dict[str, Any]],
    azurite_pid: int,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Each configuration in a fresh runner process against `simulator` answering with `latency`.

    `simulator` serves from threads of this process, which otherwise only waits for the child, so this
    process's CPU during a run is the simulator's; Azurite's is read from its process (`azurite_pid`).
    """
    from devstack.openai_sim import RateLimit

    runs = []
    simulator.latency = latency
    for config in configs:
        job_ids = [simulator.create_job(status="running")["id"] for _ in range(config.messages)]
        simulator.rate_limit = RateLimit(config.rate_limit) if config.rate_limit else None
        cancels_before = simulator.counts.get(("POST", "cancel"), 0)
        azurite_before, simulator_before = process_cpu_seconds(azurite_pid), time.process_time()
        try:
            result = run_child(config, job_ids)
        finally:
            simulator.rate_limit = None
        azurite_cpu = process_cpu_seconds(azurite_pid) - azurite_before
        simulator_cpu = time.process_time() - simulator_before
        calls = simulator.counts.get(("POST", "cancel"), 0) - cancels_before
        bound, bound_kind = config.bound(latency.mean)
        result.update(
            cpu=cpu_per_message(result, azurite_cpu, simulator_cpu, os.cpu_count() or 1),
            config=asdict(config),
            in_flight=config.in_flight,
            mean_latency_ms=latency.mean * 1000,
            bound=bound,
            bound_kind=bound_kind,
            of_bound=result["messages_per_second"] / bound,
            upstream_calls=calls,
            calls_per_message=calls / config.messages,
        )
        runs.append(result)
        log(
            f"  drain {config.label:<22} {result['messages_per_second']:7.1f} msg/s = {result['of_bound']:.2f} x bound "
            f"{bound:6.1f} ({bound_kind.split(' ')[0]}); in queue p50 {result['time_in_queue_s']['p50']:.1f} s "
            f"p99 {result['time_in_queue_s']['p99']:.1f} s; {result['calls_per_message']:.2f} calls/msg; "
            f"lost {result['lost']}, duplicates {result['duplicates']}; runner CPU "
            f"{result['runner_cpu_ms_per_message']:.1f} ms/msg, all processes {result['cpu']['total_ms']:.1f} ms/msg "
            f"(a CPU bound of {result['cpu']['bound']:.0f} msg/s)"
        )
    simulator.latency = None
    return runs


if __name__ == "__main__":
    sys.exit(main())
