"""The chaos run's plan: how big and how hostile the run is, what is sent, and what each message must end in.

`ChaosSettings` holds the run's size, its fault rate, when Key Vault goes down and Azurite restarts,
and its time limit. `plan_messages` and `plan_http_cancels` make the mix of queue messages and HTTP
cancels (creating their jobs in the simulator), each a `PlannedRequest` with the outcomes its record
may have; `fault_plan` is what the simulator is told to fail.
"""

from __future__ import annotations

import base64
import json
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from devstack.environment import REQUESTS_QUEUE
from devstack.openai_sim import FaultPlan, FineTuningSimulator
from devstack.stack import LOG_DIR

POISON_QUEUE = REQUESTS_QUEUE + "-poison"
FUNCTION_KEY = "chaos-function-key"
DEFAULT_MESSAGES = 5000
DEFAULT_LOG_DIR = LOG_DIR / "chaos"
DEFAULT_SEED = 20261126
THREAD_JOIN_SECONDS = 5.0  # the run's threads are daemons: stopping never waits longer for one


class ChaosError(Exception):
    """The chaos run could not be carried out (a part did not start, the time limit was passed)."""


class Kind(str, Enum):
    """One kind of request of the mix, with the record it must end in."""

    RUNNING = "running job, bare id"
    RUNNING_JSON = "running job, JSON with correlation id"
    RUNNING_BASE64 = "running job, base64"
    CANCELLED = "already cancelled job"
    SUCCEEDED = "succeeded job"
    FAILED = "failed job"
    MISSING = "no such job"
    INVALID = "invalid message"
    HTTP = "running job, over HTTP"


RUNNING_KINDS = frozenset({Kind.RUNNING, Kind.RUNNING_JSON, Kind.RUNNING_BASE64, Kind.HTTP})

# (outcome, status_code) a record may have, besides `failed` + `retryable` after every delivery failed.
EXPECTED_OUTCOMES: dict[Kind, frozenset[tuple[str, int]]] = {
    # `already_terminal` 200: a cancel accepted upstream whose answer came too late (timeout fault).
    **{kind: frozenset({("cancelled", 200), ("already_terminal", 200)}) for kind in RUNNING_KINDS},
    Kind.CANCELLED: frozenset({("already_terminal", 200)}),
    Kind.SUCCEEDED: frozenset({("already_terminal", 409)}),
    Kind.FAILED: frozenset({("already_terminal", 409)}),
    Kind.MISSING: frozenset({("failed", 404)}),
    Kind.INVALID: frozenset({("rejected", 400)}),
}

# Shares of the queue messages; running jobs as bare ids take what is left.
MIX: dict[Kind, float] = {
    Kind.RUNNING_JSON: 0.20,
    Kind.RUNNING_BASE64: 0.10,
    Kind.CANCELLED: 0.08,
    Kind.SUCCEEDED: 0.06,
    Kind.FAILED: 0.02,
    Kind.MISSING: 0.04,
    Kind.INVALID: 0.10,
}
_JOB_STATUS = {
    Kind.RUNNING: "running",
    Kind.RUNNING_JSON: "running",
    Kind.RUNNING_BASE64: "running",
    Kind.HTTP: "running",
    Kind.CANCELLED: "cancelled",
    Kind.SUCCEEDED: "succeeded",
    Kind.FAILED: "failed",
}

# Invalid messages, each made unique by its number n: not an id, bad JSON, bad fields, base64 of junk.
_INVALID_MESSAGES: tuple[Callable[[int], str], ...] = (
    lambda n: f"ftjob_{n:05d}",
    lambda n: f"ftjob-abc/{n}",
    lambda n: "ftjob-" + "x" * 65 + str(n),
    lambda n: f"not a job id {n}",
    lambda n: json.dumps({"job_id": n}),
    lambda n: json.dumps({"correlation_id": f"chaos-no-job-{n}"}),
    lambda n: '{"job_id": "ftjob-unclosed' + str(n),
    lambda n: json.dumps({"job_id": f"ftjob-valid{n}", "correlation_id": "x" * 129}),
    lambda n: json.dumps({"job_id": f"ftjob-valid{n}", "wait_seconds": 500}),
    lambda n: base64.b64encode(f"hello {n}".encode()).decode(),
)


@dataclass
class PlannedRequest:
    """One queue message or HTTP cancel of the run, and what it must end in."""

    kind: Kind
    content: str  # the queue message as sent; for HTTP, the job id
    job_id: str | None
    correlation_id: str | None = None
    message_id: str | None = None  # the queue's id once sent: the record's request_id

    @property
    def expected(self) -> frozenset[tuple[str, int]]:
        return EXPECTED_OUTCOMES[self.kind]


def plan_messages(simulator: FineTuningSimulator, count: int, rng: random.Random) -> list[PlannedRequest]:
    """The queue messages of a run, in random order, their jobs created in the simulator."""
    counts = {kind: int(count * share) for kind, share in MIX.items()}
    counts[Kind.RUNNING] = count - sum(counts.values())
    planned = []
    for kind, how_many in counts.items():
        for n in range(how_many):
            planned.append(_planned_message(simulator, kind, n))
    rng.shuffle(planned)
    return planned


def _planned_message(simulator: FineTuningSimulator, kind: Kind, n: int) -> PlannedRequest:
    if kind is Kind.INVALID:
        return PlannedRequest(kind, _INVALID_MESSAGES[n % len(_INVALID_MESSAGES)](n), job_id=None)
    if kind is Kind.MISSING:
        job_id = f"ftjob-missing{n:05d}{secrets.token_hex(4)}"
    else:
        job_id = simulator.create_job(status=_JOB_STATUS[kind])["id"]
    if kind is Kind.RUNNING_JSON:
        correlation_id = f"chaos-{n:05d}"
        return PlannedRequest(
            kind, json.dumps({"job_id": job_id, "correlation_id": correlation_id}), job_id, correlation_id
        )
    if kind is Kind.RUNNING_BASE64:
        text = job_id if n % 2 else json.dumps({"job_id": job_id})
        return PlannedRequest(kind, base64.b64encode(text.encode()).decode(), job_id)
    return PlannedRequest(kind, job_id, job_id)


def plan_http_cancels(simulator: FineTuningSimulator, count: int) -> list[PlannedRequest]:
    """Running jobs cancelled over HTTP during the run, each with its own correlation id."""
    planned = []
    for n in range(count):
        job_id = simulator.create_job(status="running")["id"]
        planned.append(PlannedRequest(Kind.HTTP, job_id, job_id, f"chaos-http-{n:04d}"))
    return planned


@dataclass(frozen=True)
class ChaosSettings:
    """How big the run is, how hostile, and how long it may take."""

    messages: int = DEFAULT_MESSAGES
    http_cancels: int | None = None  # default: one for every 25 messages, at least 10
    fault_rate: float = 0.35  # share of upstream calls that fail on purpose
    seed: int = DEFAULT_SEED
    upstream_timeout_seconds: float = 1.0
    upstream_max_retries: int = 3
    upstream_deadline_seconds: float = 20.0
    secret_cache_seconds: float = 2.0
    key_vault_outage_seconds: float | None = None  # default: 6 s up to 1,000 messages, else 15 s
    key_vault_outage_at: float = 0.15  # share of queue messages with a record when Key Vault goes down
    azurite_restart_at: float = 0.45  # share of queue messages with a record when Azurite is restarted
    visibility_timeout: float = 1.0  # runner knob: host.json's is 30 s between deliveries
    max_polling_interval: float = 0.2  # runner knob: host.json's is 2 s
    processing_lease: float = 10.0  # runner knob: the host's is 600 s, which a receive lost in the restart would cost
    settle_seconds: float = 3.0  # after the last record: time for a late duplicate to show
    time_limit_seconds: float | None = None  # default: 60 s + 0.12 s per message
    log_dir: Path = DEFAULT_LOG_DIR

    @property
    def http_count(self) -> int:
        return self.http_cancels if self.http_cancels is not None else max(10, self.messages // 25)

    @property
    def outage_seconds(self) -> float:
        if self.key_vault_outage_seconds is not None:
            return self.key_vault_outage_seconds
        return 6.0 if self.messages <= 1000 else 15.0

    @property
    def time_limit(self) -> float:
        return self.time_limit_seconds if self.time_limit_seconds is not None else 60.0 + 0.12 * self.messages

    @property
    def timeout_fault_delay(self) -> float:
        """How late the simulator's "timeout" fault answers: just past the read timeout."""
        return self.upstream_timeout_seconds + 0.5


def fault_plan(settings: ChaosSettings) -> FaultPlan:
    """The simulator's random faults: `fault_rate` of the calls, every kind in equal shares, seeded."""
    return FaultPlan(settings.fault_rate, seed=settings.seed, timeout_delay=settings.timeout_fault_delay)
