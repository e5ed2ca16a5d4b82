"""`make demo`: the whole app on this machine, in one command that ends by itself.

Starts the local stack with its two Azure OpenAI resources: `default` (api-key from Key Vault) and
`keyless` (key access disabled: the app signs in with its identity). On `default` it creates three
fine-tuning jobs, cancels one through the function's HTTP route, enqueues a running job's id, an
already-cancelled job's id and an invalid message. On `keyless` (two jobs seeded at start) it cancels
one through the resource route and enqueues the other with `"resource": "keyless"`; one message names a
resource the app does not know. It waits for the seven result records, prints them as a table (with
their `resource` column) and stops everything. Exit code 0 when every record is what the contract
promises; otherwise 1, naming the failed part.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import requests
from azure.storage.queue import QueueClient

from devstack.processes import StackError, shown_path
from devstack.stack import (
    API_VERSION,
    DEFAULT_RESOURCE,
    KEYLESS_RESOURCE,
    LOG_DIR,
    LocalStack,
    ignore_signals,
    interrupt_on_signals,
    report_failure,
)
from devstack.storage import parse_record, take_messages

RESULTS_TIMEOUT_SECONDS = 60.0
INVALID_MESSAGE = "ftjob_0042"  # a typo: job ids have a dash
UNKNOWN_RESOURCE = "nowhere"
KEYLESS_JOBS = ("ftjob-keyless1", "ftjob-keyless2")  # seeded in the keyless simulator: no api-key creates them
EXPECTED = [  # (trigger, resource, outcome) of the seven records, in the order the requests are made
    ("http", DEFAULT_RESOURCE, "cancelled"),
    ("http", KEYLESS_RESOURCE, "cancelled"),
    ("queue", DEFAULT_RESOURCE, "cancelled"),
    ("queue", DEFAULT_RESOURCE, "already_terminal"),
    ("queue", DEFAULT_RESOURCE, "rejected"),
    ("queue", KEYLESS_RESOURCE, "cancelled"),
    ("queue", UNKNOWN_RESOURCE, "rejected"),
]


def say(line: str) -> None:
    print(line, flush=True)


def create_job(endpoint: str, api_key: str, training_file: str) -> dict[str, Any]:
    """POST /openai/fine_tuning/jobs on the simulator, as a client of Azure OpenAI would."""
    response = requests.post(
        f"{endpoint}/openai/fine_tuning/jobs",
        params={"api-version": API_VERSION},
        headers={"api-key": api_key},
        json={"model": "gpt-4o-mini-2024-07-18", "training_file": training_file},
        timeout=10,
    )
    if response.status_code != 201:
        raise StackError(
            "Azure OpenAI simulator", f"creating a job answered {response.status_code}: {response.text[:200]}"
        )
    return response.json()


def cancel_upstream(endpoint: str, api_key: str, job_id: str) -> None:
    """Cancel a job at the simulator directly, as if someone had done it in the portal."""
    response = requests.post(
        f"{endpoint}/openai/fine_tuning/jobs/{job_id}/cancel",
        params={"api-version": API_VERSION},
        headers={"api-key": api_key},
        timeout=10,
    )
    if response.status_code != 200:
        raise StackError("Azure OpenAI simulator", f"cancelling {job_id} answered {response.status_code}")


def run_demo(stack: LocalStack) -> list[dict[str, Any]]:
    say(f"==> Starting the local stack (logs in {shown_path(stack.log_dir)}/)")
    info = stack.start()

    say("\n==> Creating three fine-tuning jobs in the Azure OpenAI simulator")
    jobs = [create_job(info.openai_endpoint, stack.api_key, f"file-demo{n}") for n in (1, 2, 3)]
    by_http, by_queue, already_cancelled = (job["id"] for job in jobs)
    cancel_upstream(info.openai_endpoint, stack.api_key, already_cancelled)
    for job, note in zip(
        jobs, ("cancelled over HTTP below", "cancelled through the queue", "cancelled at Azure OpenAI already")
    ):
        say(f"  {job['id']}  {note}")

    keyless_by_http, keyless_by_queue = info.keyless_jobs
    seeded = ", ".join(info.keyless_jobs)
    say(f"\n==> Two running jobs on the resource '{KEYLESS_RESOURCE}' (seeded at start): {seeded}")

    cancel_over_http(stack, f"{info.functions_url}/openai/fine_tuning/jobs/{by_http}/cancel", info.function_key)
    cancel_over_http(
        stack,
        f"{info.functions_url}/resources/{KEYLESS_RESOURCE}/openai/fine_tuning/jobs/{keyless_by_http}/cancel",
        info.function_key,
    )

    requests_queue = QueueClient.from_connection_string(info.storage_connection_string, info.requests_queue)
    messages = (
        (by_queue, "a running job"),
        (
            json.dumps({"job_id": already_cancelled, "correlation_id": "demo-already-cancelled"}),
            "a job that is already cancelled",
        ),
        (INVALID_MESSAGE, "not a job id: an underscore for the dash"),
        (
            json.dumps({"job_id": keyless_by_queue, "resource": KEYLESS_RESOURCE}),
            f"a running job on '{KEYLESS_RESOURCE}'",
        ),
        (json.dumps({"job_id": keyless_by_queue, "resource": UNKNOWN_RESOURCE}), "a resource the app does not know"),
    )
    say(f"\n==> Enqueueing {len(messages)} messages on '{info.requests_queue}'")
    for message, note in messages:
        requests_queue.send_message(message)
        say(f"  {message}   ({note})")

    say(f"\n==> Waiting for the {len(EXPECTED)} result records on '{info.results_queue}'")
    records = wait_for_records(stack, info.storage_connection_string, info.results_queue, count=len(EXPECTED))
    say("")
    say(format_records(records))
    return records


def cancel_over_http(stack: LocalStack, url: str, function_key: str) -> None:
    """POST a cancel route of the function, as a client with a function key does; print the answer."""
    say(f"\n==> Cancelling over HTTP:  POST {url}")
    try:
        response = requests.post(url, headers={"x-functions-key": function_key}, timeout=90)
    except requests.RequestException as err:
        raise StackError("Functions runner", f"the HTTP cancel failed ({err})", log_path=stack.runner.log_path) from err  # type: ignore[union-attr]
    say(f"  HTTP {response.status_code} {response.reason}   x-request-id: {response.headers.get('x-request-id')}")
    body = (
        json.dumps(response.json(), indent=2) if "json" in response.headers.get("content-type", "") else response.text
    )
    say("\n".join("  " + line for line in body.splitlines()))


def wait_for_records(stack: LocalStack, connection_string: str, queue_name: str, *, count: int) -> list[dict[str, Any]]:
    """Take records off the results queue until `count` have come, showing progress; StackError after the deadline."""
    queue = QueueClient.from_connection_string(connection_string, queue_name)
    records: list[dict[str, Any]] = []
    started = time.monotonic()
    shown = -1
    while len(records) < count:
        stack.check_alive()
        records.extend(parse_record(text) for text in take_messages(queue))
        waited = time.monotonic() - started
        if len(records) != shown:
            say(f"  {len(records)}/{count} records after {waited:.1f} s")
            shown = len(records)
        if waited > RESULTS_TIMEOUT_SECONDS:
            raise StackError(
                "Functions runner",
                f"only {len(records)} of {count} result records after {RESULTS_TIMEOUT_SECONDS:.0f} s",
                log_path=stack.runner.log_path if stack.runner else None,
            )
        if len(records) < count:
            time.sleep(0.2)
    return records


def format_records(records: Sequence[Mapping[str, Any]]) -> str:
    """The demo's records as a plain-text table, oldest first, with the trigger that wrote each (ftcancel's table,
    made for one trigger's records at a time, has no such column)."""
    columns = ("received (UTC)", "trigger", "resource", "job id", "outcome", "status", "dequeue", "detail")
    rows = []
    for record in sorted(records, key=lambda r: r.get("received_at") or ""):
        error = record.get("error") or {}
        job = record.get("job") or {}
        detail = error.get("message") or (f"job status: {job.get('status')}" if job else "")
        dequeue_count = record.get("dequeue_count") or "-"
        rows.append(
            (
                (record.get("received_at") or "")[11:23],
                record.get("trigger") or "",
                record.get("resource") or "-",
                record.get("job_id") or "(none)",
                record.get("outcome") or "",
                str(record.get("status_code", "")),
                str(dequeue_count),
                _cut(detail, 60),
            )
        )
    widths = [
        max(len(column), *(len(row[i]) for row in rows)) if rows else len(column) for i, column in enumerate(columns)
    ]
    lines = ["  ".join(text.ljust(width) for text, width in zip(columns, widths)).rstrip()]
    lines.append("  ".join("-" * width for width in widths))
    lines.extend("  ".join(text.ljust(width) for text, width in zip(row, widths)).rstrip() for row in rows)
    return "\n".join(lines)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def unexpected(records: list[dict[str, Any]]) -> str | None:
    """What differs from the seven outcomes the contract promises, or None when all is well."""
    seen = sorted((record.get("trigger"), record.get("resource"), record.get("outcome")) for record in records)
    return None if seen == sorted(EXPECTED) else f"expected records {sorted(EXPECTED)}, got {seen}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo", description=__doc__)
    parser.add_argument("--log-dir", type=Path, default=LOG_DIR / "demo", help="where the parts' logs go")
    args = parser.parse_args(argv)
    started = time.monotonic()
    stack = LocalStack(log_dir=args.log_dir, keyless_jobs=KEYLESS_JOBS, report=lambda line: say("  " + line))
    interrupt_on_signals()
    try:
        records = run_demo(stack)
        problem = unexpected(records)
    except StackError as err:
        report_failure("demo failed", err)
        return 1
    except KeyboardInterrupt:
        print("\ndemo interrupted", file=sys.stderr)
        return 130
    finally:
        ignore_signals()
        say("\n==> Stopping the local stack")
        stack.stop()
    if problem:
        print(f"demo failed: {problem}; logs: {shown_path(stack.log_dir)}/", file=sys.stderr)
        return 1
    count = len(EXPECTED)
    took = time.monotonic() - started
    say(f"Done in {took:.1f} s: {count} requests on two resources, {count} records, everything stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
