"""The chaos run: the whole local stack under injected faults, checked message by message.

Azurite (a child process, data on disk) and the Functions runner (a child process running
`function_app.py`) run as in `make run`; the Azure OpenAI simulator and the Key Vault emulator run
in this process, so faults can be switched on and off. A known mix of queue messages is enqueued
(running jobs as bare ids, JSON and base64; finished, missing and invalid ones) and some jobs are
cancelled over HTTP meanwhile. While they are processed the simulator fails a share of upstream
calls (429 with `retry-after` and with `retry-after-ms`, 500, 503, an answer later than the
timeout, a dropped connection), Key Vault is down for a window longer than the api-key cache, and
Azurite is stopped and started again on the same port and data folder.

Then every message and request is checked against the outcome expected for it: lost (no record),
duplicates (more than one record for one request id), poison-queue messages, records with an
unexpected outcome, running jobs the simulator does not show cancelled, and the api-key (and every
bearer token the identity emulator issued) searched in every record, HTTP response, log file and
line printed. The run stops by itself: when every message and request has its record, or when its
time limit is up (then it fails, saying how far it got).

    python -m devstack.chaos --messages 5000 --output docs/chaos/last-run.json    # make chaos
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import random
import re
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, TextIO

import requests
from azure.core.exceptions import AzureError, ResourceNotFoundError, ServiceRequestError
from azure.storage.queue import QueueClient

from devstack.keyvault_emulator import KeyVaultEmulator
from devstack.openai_sim import Fault, FineTuningSimulator
from devstack.runner import HostSettings
from devstack.stack import (
    LOCAL_GUARD_SCHEDULE,
    LOG_DIR,
    REPO_ROOT,
    Azurite,
    ChildProcess,
    StackError,
    runner_process,
    shown_path,
)
from shared.settings import GUARD_SCHEDULE

logger = logging.getLogger("devstack.chaos")

SECRET_NAME = "azure-openai-api-key"
REQUESTS_QUEUE = "cancel-requests"
RESULTS_QUEUE = "cancel-results"
POISON_QUEUE = REQUESTS_QUEUE + "-poison"
FUNCTION_KEY = "chaos-function-key"
DEFAULT_MESSAGES = 5000
DEFAULT_LOG_DIR = LOG_DIR / "chaos"
DEFAULT_SEED = 20261126

ENQUEUE_THREADS = 8
HTTP_THREADS = 4
HTTP_TRIES = 8  # a client's tries for one HTTP cancel that answers 429/500/503
HTTP_RETRY_WAIT_CAP = 2.0  # seconds: the client honours Retry-After up to this
HTTP_CLIENT_TIMEOUT = 90.0
STORAGE_RETRY_WAIT = 0.2  # the run's own Azurite clients retry this often while Azurite is away
COLLECT_VISIBILITY_SECONDS = 5  # records received by a poll whose answer the restart lost come back this soon
PROGRESS_EVERY_SECONDS = 5.0
THREAD_JOIN_SECONDS = 5.0  # the run's threads are daemons: stopping never waits longer for one

_STALE_KEY_WARNING = "using the api-key read earlier"


class ChaosError(Exception):
    """The chaos run could not be carried out (a part did not start, the time limit was passed)."""


# --- what is sent, and what each message should end in -------------------------------------------


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


# --- settings --------------------------------------------------------------------------------------


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

    def app_settings(self) -> dict[str, str]:
        return {
            "AZURE_OPENAI_KEY_SECRET_NAME": SECRET_NAME,
            "CANCEL_REQUESTS_QUEUE": REQUESTS_QUEUE,
            "CANCEL_RESULTS_QUEUE": RESULTS_QUEUE,
            "SECRET_CACHE_SECONDS": f"{self.secret_cache_seconds:g}",
            "UPSTREAM_TIMEOUT_SECONDS": f"{self.upstream_timeout_seconds:g}",
            "UPSTREAM_MAX_RETRIES": str(self.upstream_max_retries),
            "UPSTREAM_DEADLINE_SECONDS": f"{self.upstream_deadline_seconds:g}",
        }


# --- the parts the run drives -------------------------------------------------------------------


class FaultCountingSimulator(FineTuningSimulator):
    """The simulator, counting the faults it injects by kind (FAULT_KINDS names)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.faults_injected: Counter[str] = Counter()
        self._fault_count_lock = threading.Lock()

    def _take_fault(self, method: str, path: str) -> Fault | None:
        fault = super()._take_fault(method, path)
        if fault is not None:
            with self._fault_count_lock:
                self.faults_injected[_fault_kind(fault)] += 1
        return fault

    @property
    def upstream_requests(self) -> int:
        return sum(self.counts.values())


def _fault_kind(fault: Fault) -> str:
    if fault.drop:
        return "drop"
    if fault.delay:
        return "timeout"
    if fault.status == 429 and fault.headers and "retry-after-ms" in fault.headers:
        return "429ms"
    return str(fault.status)


def storage_client(connection_string: str, queue: str) -> QueueClient:
    """A queue client without the SDK's own retries (15 s apart): the run retries for itself."""
    return QueueClient.from_connection_string(connection_string, queue, retry_total=0)


def retry_storage(operation: Callable[[], Any], *, until: float, what: str) -> Any:
    """Run an Azurite call, again and again while Azurite is unreachable or restarting, until `until`."""
    while True:
        try:
            return operation()
        except ResourceNotFoundError:
            raise
        except AzureError as err:
            if time.monotonic() > until:
                raise ChaosError(f"{what}: Azurite still failing at the time limit ({type(err).__name__})") from err
            time.sleep(STORAGE_RETRY_WAIT)


@dataclass
class ReceivedRecord:
    """A record taken off the results queue, as text and parsed."""

    text: str
    record: dict[str, Any]
    received_at: float


class RecordCollector:
    """Takes the records off the results queue in a thread of its own, riding out Azurite's restart.

    A results message seen again (its delete was lost while Azurite restarted) is counted once: it
    is the same record, not a second one.
    """

    def __init__(self, connection_string: str) -> None:
        self._queue = storage_client(connection_string, RESULTS_QUEUE)
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self.records: list[ReceivedRecord] = []
        self.request_ids: Counter[str] = Counter()
        self.storage_errors = 0
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-records", daemon=True)

    def start(self) -> RecordCollector:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=THREAD_JOIN_SECONDS)

    def drain(self, *, timeout: float) -> None:
        """Wait until one receive found the results queue empty."""
        self._idle.clear()
        if not self._idle.wait(timeout):
            raise ChaosError(f"the results queue was not drained within {timeout:.0f} s")

    def count_for(self, request_id: str | None) -> int:
        with self._lock:
            return self.request_ids.get(request_id or "", 0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                messages = list(
                    self._queue.receive_messages(
                        messages_per_page=32, max_messages=32, visibility_timeout=COLLECT_VISIBILITY_SECONDS
                    )
                )
            except AzureError:
                self.storage_errors += 1
                self._stop.wait(STORAGE_RETRY_WAIT)
                continue
            for message in messages:
                self._take(message)
            if not messages:
                self._idle.set()
                self._stop.wait(0.05)

    def _take(self, message: Any) -> None:
        with self._lock:
            fresh = message.id not in self._seen
            if fresh:
                self._seen.add(message.id)
                try:
                    record = json.loads(message.content)
                except ValueError:
                    record = {"outcome": "(not JSON)"}
                record = record if isinstance(record, dict) else {"outcome": "(not a JSON object)"}
                self.records.append(ReceivedRecord(message.content, record, time.monotonic()))
                self.request_ids[str(record.get("request_id"))] += 1
        while not self._stop.is_set():
            try:
                self._queue.delete_message(message.id, message.pop_receipt)
                return
            except ResourceNotFoundError:
                return  # deleted by an earlier try whose answer was lost, or received again meanwhile
            except AzureError:
                self.storage_errors += 1
                self._stop.wait(STORAGE_RETRY_WAIT)


@dataclass
class HttpExchange:
    """One HTTP request of the run and what came back (status 0: no answer)."""

    planned: PlannedRequest
    status: int
    request_id: str | None
    text: str  # status line, headers and body as received, for the leak search


class HttpCanceller:
    """Cancels the HTTP jobs of the run through the function, as a client would: retries 429/5xx.

    Request i starts once the share i/count of the queue messages has a record, so HTTP requests
    arrive all through the run, outage and restart included.
    """

    def __init__(self, api_url: str, planned: Sequence[PlannedRequest], progress: Callable[[], float]) -> None:
        self._api_url = api_url
        self._planned = list(planned)
        self._progress = progress
        self._lock = threading.Lock()
        self._next = 0
        self.exchanges: list[HttpExchange] = []
        self.finished: list[PlannedRequest] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"chaos-http-{n}", daemon=True) for n in range(HTTP_THREADS)
        ]

    @property
    def done(self) -> bool:
        with self._lock:
            return len(self.finished) == len(self._planned)

    def start(self) -> HttpCanceller:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=THREAD_JOIN_SECONDS)

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            with self._lock:
                if self._next >= len(self._planned):
                    return
                index = self._next
                self._next += 1
            due = 0.9 * index / len(self._planned)
            while self._progress() < due and not self._stop.wait(0.05):
                pass
            if self._stop.is_set():
                return
            self._cancel(session, self._planned[index])
            with self._lock:
                self.finished.append(self._planned[index])

    def _cancel(self, session: requests.Session, planned: PlannedRequest) -> None:
        url = f"{self._api_url}/openai/fine_tuning/jobs/{planned.job_id}/cancel"
        headers = {"x-functions-key": FUNCTION_KEY, "x-correlation-id": planned.correlation_id or ""}
        for _ in range(HTTP_TRIES):
            exchange = self._post(session, url, headers, planned)
            with self._lock:
                self.exchanges.append(exchange)
            if exchange.status not in (0, 429, 500, 502, 503):
                return
            if self._stop.wait(min(_retry_after(exchange.text), HTTP_RETRY_WAIT_CAP)):
                return

    def _post(
        self, session: requests.Session, url: str, headers: Mapping[str, str], planned: PlannedRequest
    ) -> HttpExchange:
        try:
            response = session.post(url, headers=headers, timeout=HTTP_CLIENT_TIMEOUT)
        except requests.RequestException:
            return HttpExchange(planned, 0, None, "")
        head = [f"{response.status_code} {response.reason}", *(f"{k}: {v}" for k, v in response.headers.items())]
        text = "\n".join(head) + "\n" + response.text
        return HttpExchange(planned, response.status_code, response.headers.get("x-request-id"), text)


def _retry_after(response_text: str) -> float:
    found = re.search(r"^retry-after: *(\d+(?:\.\d+)?)", response_text, re.IGNORECASE | re.MULTILINE)
    return float(found.group(1)) if found else 0.5


class Tee:
    """Writes to a stream and keeps every line, so what the run printed is searched for secrets too."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.lines: list[str] = []

    def say(self, line: str) -> None:
        self.lines.append(line)
        logger.info("%s", line)
        print(line, file=self._stream, flush=True)


# --- the secret search ---------------------------------------------------------------------------


def secret_forms(secret: str) -> list[str]:
    """The texts a leaked secret would show as: itself and its base64."""
    return [secret, base64.b64encode(secret.encode()).decode()]


def count_secrets(text: str, secrets_: Iterable[str]) -> int:
    """Occurrences of any of the secrets (in any of their forms) in a text."""
    return sum(text.count(form) for secret in secrets_ for form in secret_forms(secret) if form)


def search_log_files(log_dir: Path, secrets_: Sequence[str]) -> dict[str, int]:
    """Occurrences of the secrets in every `*.log` file below `log_dir`, by file name."""
    found = {}
    for path in sorted(log_dir.rglob("*.log")):
        text = path.read_bytes().decode("utf-8", errors="replace")
        found[str(path.relative_to(log_dir))] = count_secrets(text, secrets_)
    return found


# --- the run ----------------------------------------------------------------------------------------


@dataclass
class ChaosReport:
    """The figures of one run: what the JSON file holds."""

    completed: bool
    wall_seconds: float
    settings: dict[str, Any]
    sent: dict[str, Any]
    records: dict[str, Any]
    lost: int
    lost_request_ids: list[str]
    duplicates: int
    duplicates_identical: int  # the same record twice: a write whose answer was lost, repeated
    duplicate_request_ids: list[str]
    poison_queue_messages: int
    failed_retryable: int
    unexpected_records: int
    unexpected_examples: list[dict[str, Any]]
    uncancelled_jobs: int
    uncancelled_job_ids: list[str]
    leaks: dict[str, Any]
    faults: dict[str, Any]
    key_vault_outage: dict[str, Any]
    azurite_restart: dict[str, Any]
    http: dict[str, Any]
    deliveries: dict[str, int]
    failures: list[str] = field(default_factory=list)
    started_at: str = ""
    finished_at: str = ""

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> str:
        return json.dumps({"passed": self.passed, **asdict(self)}, indent=2) + "\n"

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(), encoding="utf-8")


class ChaosRun:
    """One chaos run; `run()` returns its report and leaves nothing running."""

    def __init__(self, settings: ChaosSettings, *, out: TextIO = sys.stdout) -> None:
        self.settings = settings
        self.out = Tee(out)
        self.api_key = f"chaos-key-{secrets.token_hex(16)}"  # distinctive, so a leak is found by search
        self._rng = random.Random(settings.seed)
        self._azurite: Azurite | None = None
        self._simulator: FaultCountingSimulator | None = None
        self._vault: KeyVaultEmulator | None = None
        self._runner: ChildProcess | None = None
        self._collector: RecordCollector | None = None
        self._http: HttpCanceller | None = None
        self._messages: list[PlannedRequest] = []
        self._http_planned: list[PlannedRequest] = []
        self._outage: dict[str, Any] = {"seconds": settings.outage_seconds}
        self._restart: dict[str, Any] = {}
        self._log_handler: logging.Handler | None = None
        self._saved_log_levels: dict[str, int] = {}
        self._deadline = 0.0
        self._api_url = ""
        self._waiting: set[str | None] = set()  # message ids without a record yet
        self._records_counted = 0
        self._progress_value = 0.0

    # --- driving ------------------------------------------------------------------------------

    def run(self) -> ChaosReport:
        settings = self.settings
        started = time.monotonic()
        started_at = _utc_iso()
        self._deadline = started + settings.time_limit
        self._prepare_log_dir()
        completed, problem = False, None
        try:
            self._start_parts()
            self._drive()
            completed = True
        except (ChaosError, StackError) as err:
            problem = str(err)
            self.out.say(f"chaos run stopped: {problem}")
        except KeyboardInterrupt:
            problem = "interrupted"
            self.out.say("chaos run interrupted")
        finally:
            poison, left = self._stop_parts()
        report = self._report(
            completed=completed,
            wall_seconds=time.monotonic() - started,
            poison=poison,
            left=left,
            problem=problem,
        )
        report.started_at, report.finished_at = started_at, _utc_iso()
        for line in summary_lines(report):
            self.out.say(line)
        self._detach_log()
        return report

    def _prepare_log_dir(self) -> None:
        log_dir = self.settings.log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        for old_log in log_dir.glob("*.log"):  # the last run's: the leak search reads this run's logs only
            old_log.unlink()
        handler = logging.FileHandler(log_dir / "chaos.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.INFO)
        self._saved_log_levels = {name: logging.getLogger(name).level for name in ("", "azure")}
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)
        logging.getLogger("azure").setLevel(logging.WARNING)  # the SDK logs every request at INFO
        self._log_handler = handler

    def _detach_log(self) -> None:
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
            self._log_handler.close()
        for name, level in self._saved_log_levels.items():
            logging.getLogger(name).setLevel(level)

    def _start_parts(self) -> None:
        settings, say = self.settings, self.out.say
        say(
            f"==> Chaos run: {settings.messages} queue messages, {settings.http_count} HTTP cancels, "
            f"{settings.fault_rate:.0%} upstream faults, Key Vault down {settings.outage_seconds:g} s, "
            f"Azurite restarted once; time limit {settings.time_limit:.0f} s; logs in {shown_path(settings.log_dir)}/"
        )
        self._azurite = Azurite(log_path=settings.log_dir / "azurite.log").start()
        self._simulator = FaultCountingSimulator(api_key=self.api_key, record_requests=False).start()
        self._vault = KeyVaultEmulator().start()  # its CA bundle in a temporary folder of its own
        self._vault.set_secret(SECRET_NAME, self.api_key)
        self._azurite.wait_ready()
        self._azurite.create_queues(REQUESTS_QUEUE, RESULTS_QUEUE)
        self._messages = plan_messages(self._simulator, settings.messages, self._rng)
        self._http_planned = plan_http_cancels(self._simulator, settings.http_count)
        self._enqueue()
        self._simulator.set_fault_rate(
            settings.fault_rate, seed=settings.seed, timeout_delay=settings.timeout_fault_delay
        )
        self._waiting = {planned.message_id for planned in self._messages}
        self._records_counted = 0
        self._collector = RecordCollector(self._azurite.connection_string).start()
        self._runner = self._start_runner()

    def _enqueue(self) -> None:
        assert self._azurite is not None
        connection_string = self._azurite.connection_string
        clients = threading.local()
        started = time.monotonic()

        def send(planned: PlannedRequest) -> None:
            if not hasattr(clients, "queue"):
                clients.queue = storage_client(connection_string, REQUESTS_QUEUE)
            for _ in range(20):
                try:
                    planned.message_id = clients.queue.send_message(planned.content).id
                    return
                except ServiceRequestError:  # never reached Azurite: safe to send again
                    time.sleep(STORAGE_RETRY_WAIT)
            raise ChaosError("could not enqueue the run's messages: Azurite does not answer")

        with ThreadPoolExecutor(max_workers=ENQUEUE_THREADS, thread_name_prefix="chaos-enqueue") as pool:
            list(pool.map(send, self._messages))
        self.out.say(f"  enqueued {len(self._messages)} messages in {time.monotonic() - started:.1f} s")

    def _start_runner(self) -> ChildProcess:
        assert self._azurite is not None and self._simulator is not None and self._vault is not None
        settings = self.settings
        environ = {
            name: value
            for name, value in os.environ.items()
            if name not in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_USERNAME")
        }
        environ.update(
            {
                **self._vault.environ(),
                **settings.app_settings(),
                "AZURE_OPENAI_ENDPOINT": self._simulator.endpoint,
                "AzureWebJobsStorage": self._azurite.connection_string,
                GUARD_SCHEDULE: LOCAL_GUARD_SCHEDULE,
            }
        )
        runner = runner_process(
            log_path=settings.log_dir / "runner.log",
            env=environ,
            options=[
                "--function-key",
                FUNCTION_KEY,
                "--visibility-timeout",
                f"{settings.visibility_timeout:g}",
                "--max-polling-interval",
                f"{settings.max_polling_interval:g}",
                "--processing-lease",
                f"{settings.processing_lease:g}",
            ],
        ).start()
        self._api_url = json.loads(runner.wait_ready().group(1))["api_url"]
        self.out.say(f"  runner at {self._api_url}; faults on, processing")
        return runner

    def progress(self) -> float:
        """The share of queue messages with at least one record (counted on from the last call)."""
        collector = self._collector
        if collector is None or not self._messages:
            return 0.0
        records = collector.records[self._records_counted :]
        self._records_counted += len(records)
        for received in records:
            self._waiting.discard(str(received.record.get("request_id")))
        return 1.0 - len(self._waiting) / len(self._messages)

    def _drive(self) -> None:
        assert self._collector is not None
        settings = self.settings
        self._http = HttpCanceller(self._api_url, self._http_planned, lambda: self._progress_value).start()
        next_report = time.monotonic() + PROGRESS_EVERY_SECONDS
        while True:
            now = time.monotonic()
            if now > self._deadline:
                raise ChaosError(
                    f"time limit of {settings.time_limit:.0f} s passed: {self._progress_value:.1%} of the queue "
                    f"messages have a record, {len(self._http.finished)}/{len(self._http_planned)} HTTP cancels done"
                )
            self._check_alive()
            self._progress_value = self.progress()
            self._key_vault_outage(now)
            if not self._restart and self._progress_value >= settings.azurite_restart_at:
                self._restart_azurite()
            if now >= next_report:
                self._say_progress()
                next_report = now + PROGRESS_EVERY_SECONDS
            if self._finished():
                break
            time.sleep(0.1)
        self._say_progress()
        self.out.say(f"  every message and request has its record; {settings.settle_seconds:g} s for late duplicates")
        time.sleep(settings.settle_seconds)

    def _finished(self) -> bool:
        assert self._collector is not None and self._http is not None
        if self._progress_value < 1.0 or not self._http.done or not self._restart or "ended_at" not in self._outage:
            return False
        answered = [exchange.request_id for exchange in self._http.exchanges if exchange.request_id]
        if any(not self._collector.count_for(request_id) for request_id in answered):
            return False
        assert self._azurite is not None
        try:  # nothing left, not even a message hidden for a later delivery that might write a duplicate
            left = storage_client(self._azurite.connection_string, REQUESTS_QUEUE).get_queue_properties()
        except AzureError:
            return False
        return left.approximate_message_count == 0

    def _check_alive(self) -> None:
        for part in (self._runner, self._azurite.child if self._azurite else None):
            if part is not None and part.exit_code() is not None:
                raise StackError(
                    part.name, f"stopped unexpectedly (exit code {part.exit_code()})", log_path=part.log_path
                )

    def _say_progress(self) -> None:
        assert self._collector is not None and self._http is not None and self._simulator is not None
        self.out.say(
            f"  {self._progress_value:6.1%} of queue messages have a record; {len(self._collector.records)} records, "
            f"{len(self._http.finished)}/{len(self._http_planned)} HTTP cancels, "
            f"{sum(self._simulator.faults_injected.values())} faults in {self._simulator.upstream_requests} "
            "upstream calls"
        )

    def _key_vault_outage(self, now: float) -> None:
        assert self._vault is not None
        outage = self._outage
        if "started_at" not in outage:
            # Down only once the app has read the key: the interesting case is an expired cache.
            if self._progress_value >= self.settings.key_vault_outage_at and self._vault.read_count(SECRET_NAME):
                self._vault.set_available(False)
                outage.update(started_at=_utc_iso(), _start=now, progress_at_start=round(self._progress_value, 3))
                self.out.say(f"  Key Vault down for {self.settings.outage_seconds:g} s")
        elif "ended_at" not in outage and now - outage["_start"] >= self.settings.outage_seconds:
            self._vault.set_available(True)
            outage.update(ended_at=_utc_iso(), _end=now)
            self.out.say("  Key Vault back")

    def _restart_azurite(self) -> None:
        assert self._azurite is not None
        depth_before = self._queue_depth()
        self.out.say(f"  restarting Azurite ({depth_before} messages on '{REQUESTS_QUEUE}')")
        started = time.monotonic()
        self._azurite.restart()
        downtime = time.monotonic() - started
        depth_after = self._queue_depth()
        self._restart = {
            "at": _utc_iso(),
            "progress_at_restart": round(self._progress_value, 3),
            "downtime_seconds": round(downtime, 2),
            "request_queue_depth_before": depth_before,
            "request_queue_depth_after": depth_after,
        }
        self.out.say(f"  Azurite back after {downtime:.1f} s ({depth_after} messages on '{REQUESTS_QUEUE}')")

    def _queue_depth(self) -> int:
        assert self._azurite is not None
        queue = storage_client(self._azurite.connection_string, REQUESTS_QUEUE)
        return retry_storage(
            lambda: queue.get_queue_properties().approximate_message_count, until=self._deadline, what="queue depth"
        )

    # --- stopping and counting ---------------------------------------------------------------------

    def _stop_parts(self) -> tuple[list[str], int]:
        """Stop everything; return the poison queue's messages and how many are left on the request queue."""
        poison: list[str] = []
        left = -1
        if self._http is not None:
            self._http.stop()
        if self._runner is not None:
            self._runner.stop()
        if self._vault is not None:
            self._vault.set_available(True)
        azurite = self._azurite
        if azurite is not None and azurite.child.exit_code() is None and azurite.queue_origin:
            if self._collector is not None:
                try:
                    self._collector.drain(timeout=10)
                except ChaosError as err:
                    self.out.say(f"  {err}")
            try:
                poison = _peek_all(storage_client(azurite.connection_string, POISON_QUEUE))
                left = (
                    storage_client(azurite.connection_string, REQUESTS_QUEUE)
                    .get_queue_properties()
                    .approximate_message_count
                )
            except AzureError as err:
                self.out.say(f"  could not read the queues at the end: {type(err).__name__}")
        if self._collector is not None:
            self._collector.stop()
        for part in (azurite, self._simulator, self._vault):
            if part is not None:
                part.stop()
        return poison, left

    def _report(
        self, *, completed: bool, wall_seconds: float, poison: list[str], left: int, problem: str | None
    ) -> ChaosReport:
        settings = self.settings
        collector, http, simulator, vault = self._collector, self._http, self._simulator, self._vault
        records = collector.records if collector else []
        exchanges = http.exchanges if http else []
        counts: Counter[str] = Counter(str(r.record.get("request_id")) for r in records)
        by_request_id: dict[str, list[dict[str, Any]]] = {}
        texts_by_request_id: dict[str, set[str]] = {}
        for received in records:
            request_id = str(received.record.get("request_id"))
            by_request_id.setdefault(request_id, []).append(received.record)
            texts_by_request_id.setdefault(request_id, set()).add(received.text)

        expected: dict[str, PlannedRequest] = {p.message_id: p for p in self._messages if p.message_id}
        for exchange in exchanges:
            if exchange.request_id:
                expected[exchange.request_id] = exchange.planned
        lost = [rid for rid in expected if not counts.get(rid)]
        duplicates = [rid for rid, n in counts.items() if n > 1]
        unknown = [rid for rid in counts if rid not in expected]

        judgement = judge_records(expected, by_request_id)
        uncancelled = self._uncancelled_jobs()
        secrets_ = [self.api_key]
        tokens = vault.issued_tokens if vault is not None else []
        leaks = {
            "api_key": self._leak_search(secrets_, records, exchanges),
            "bearer_tokens": self._leak_search(tokens, records, exchanges),
            "bearer_tokens_issued": len(tokens),
        }

        deliveries = Counter(str(r.record.get("dequeue_count")) for r in records if r.record.get("trigger") == "queue")
        faults_total = sum(simulator.faults_injected.values()) if simulator else 0
        upstream = simulator.upstream_requests if simulator else 0
        outage = {k: v for k, v in self._outage.items() if not k.startswith("_")}
        outage.update(self._outage_figures(records))
        http_statuses = Counter(str(e.status) for e in exchanges)

        report = ChaosReport(
            completed=completed,
            wall_seconds=round(wall_seconds, 1),
            settings={
                **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items() if k != "log_dir"},
                "http_cancels": settings.http_count,
                "key_vault_outage_seconds": settings.outage_seconds,
                "time_limit_seconds": settings.time_limit,
                "timeout_fault_delay_seconds": settings.timeout_fault_delay,
                "max_dequeue_count": HostSettings.from_host_json(REPO_ROOT / "host.json").max_dequeue_count,
                "log_dir": shown_path(settings.log_dir),
            },
            sent={
                "queue_messages": len([p for p in self._messages if p.message_id]),
                "by_kind": dict(Counter(p.kind.value for p in self._messages if p.message_id)),
                "http_cancels": len(self._http_planned),
                "http_requests": len(exchanges),
            },
            records={
                "received": len(records),
                "queue": sum(1 for r in records if r.record.get("trigger") == "queue"),
                "http": sum(1 for r in records if r.record.get("trigger") == "http"),
                "by_outcome": dict(Counter(str(r.record.get("outcome")) for r in records)),
                "running_jobs_reported_already_terminal": judgement.running_already_terminal,
                "unknown_request_ids": len(unknown),
                "request_queue_left": left,
                "collector_storage_errors": collector.storage_errors if collector else 0,
            },
            lost=len(lost),
            lost_request_ids=lost[:50],
            duplicates=len(duplicates),
            duplicates_identical=sum(1 for rid in duplicates if len(texts_by_request_id[rid]) == 1),
            duplicate_request_ids=duplicates[:50],
            poison_queue_messages=len(poison),
            failed_retryable=judgement.failed_retryable,
            unexpected_records=len(judgement.unexpected),
            unexpected_examples=judgement.unexpected[:20],
            uncancelled_jobs=len(uncancelled),
            uncancelled_job_ids=uncancelled[:50],
            leaks=leaks,
            faults={
                "upstream_requests": upstream,
                "injected": faults_total,
                "share": round(faults_total / upstream, 3) if upstream else 0.0,
                "by_kind": dict(sorted(simulator.faults_injected.items())) if simulator else {},
            },
            key_vault_outage=outage,
            azurite_restart=self._restart,
            http={
                "statuses": dict(sorted(http_statuses.items())),
                "cancels_ending_200": sum(
                    1 for p in self._http_planned if any(e.planned is p and e.status == 200 for e in exchanges)
                ),
            },
            deliveries=dict(sorted(deliveries.items())),
        )
        report.failures = _failures(report, problem, settings)
        return report

    def _uncancelled_jobs(self) -> list[str]:
        """The running jobs of the run that the simulator does not show cancelled."""
        simulator = self._simulator
        if simulator is None:
            return []
        uncancelled = []
        for planned in [*self._messages, *self._http_planned]:
            if planned.kind in RUNNING_KINDS and planned.job_id:
                job = simulator.job(planned.job_id)
                if job is None or job["status"] != "cancelled":
                    uncancelled.append(planned.job_id)
        return uncancelled

    def _leak_search(
        self, secrets_: Sequence[str], records: Sequence[ReceivedRecord], exchanges: Sequence[HttpExchange]
    ) -> dict[str, Any]:
        logs = search_log_files(self.settings.log_dir, secrets_) if secrets_ else {}
        found = {
            "records": sum(count_secrets(r.text, secrets_) for r in records),
            "responses": sum(count_secrets(e.text, secrets_) for e in exchanges),
            "logs": logs,
            "printed": sum(count_secrets(line, secrets_) for line in self.out.lines),
        }
        found["total"] = found["records"] + found["responses"] + sum(logs.values()) + found["printed"]
        return found

    def _outage_figures(self, records: Sequence[ReceivedRecord]) -> dict[str, Any]:
        outage = self._outage
        figures: dict[str, Any] = {}
        if "_start" in outage:
            end = outage.get("_end", float("inf"))
            during = [r for r in records if outage["_start"] <= r.received_at <= end]
            figures["records_during_outage"] = len(during)
            figures["key_vault_failures_in_records_during_outage"] = sum(
                1 for r in during if "Key Vault" in json.dumps(r.record.get("error") or {})
            )
        runner_log = self.settings.log_dir / "runner.log"
        if runner_log.exists():
            figures["stale_key_warnings_in_runner_log"] = runner_log.read_text(errors="replace").count(
                _STALE_KEY_WARNING
            )
        return figures


@dataclass
class Judgement:
    """How the records compare with the plan."""

    failed_retryable: int = 0  # queue records `failed` + `retryable`: every delivery failed
    running_already_terminal: int = 0  # running jobs whose cancel's answer was lost: the retry found them cancelled
    unexpected: list[dict[str, Any]] = field(default_factory=list)


def judge_records(
    expected: Mapping[str, PlannedRequest], by_request_id: Mapping[str, list[dict[str, Any]]]
) -> Judgement:
    judgement = Judgement()
    for request_id, planned in expected.items():
        for record in by_request_id.get(request_id, []):
            if record.get("outcome") == "failed" and record.get("retryable") is True:
                judgement.failed_retryable += record.get("trigger") == "queue"
                continue
            problem = record_problem(planned, record)
            if problem:
                judgement.unexpected.append({"request_id": request_id, "kind": planned.kind.value, "problem": problem})
            elif planned.kind in RUNNING_KINDS and record.get("outcome") == "already_terminal":
                judgement.running_already_terminal += 1
    return judgement


def record_problem(planned: PlannedRequest, record: Mapping[str, Any]) -> str | None:
    """What is wrong with a record for this request, or None."""
    outcome = (record.get("outcome"), record.get("status_code"))
    if outcome not in planned.expected:
        return f"outcome {outcome[0]} {outcome[1]}, expected one of {sorted(planned.expected)}"
    if planned.kind is not Kind.INVALID and record.get("job_id") != planned.job_id:
        return f"job_id {record.get('job_id')!r}, expected {planned.job_id!r}"
    if planned.correlation_id and record.get("correlation_id") != planned.correlation_id:
        return f"correlation_id {record.get('correlation_id')!r}, expected {planned.correlation_id!r}"
    if planned.kind in RUNNING_KINDS and (record.get("job") or {}).get("status") != "cancelled":
        return f"job status {(record.get('job') or {}).get('status')!r} in a {outcome[0]} record"
    return None


def _failures(report: ChaosReport, problem: str | None, settings: ChaosSettings) -> list[str]:
    failures = []
    if problem:
        failures.append(problem)
    if report.lost:
        failures.append(f"{report.lost} message(s) or request(s) without a record")
    if report.poison_queue_messages:
        failures.append(f"{report.poison_queue_messages} message(s) on the poison queue")
    if report.uncancelled_jobs:
        failures.append(f"{report.uncancelled_jobs} running job(s) not cancelled in the simulator")
    if report.unexpected_records:
        failures.append(f"{report.unexpected_records} record(s) with an unexpected outcome")
    for secret in ("api_key", "bearer_tokens"):
        if report.leaks[secret]["total"]:
            failures.append(f"{report.leaks[secret]['total']} occurrence(s) of the {secret.replace('_', ' ')}")
    if report.completed and report.faults["share"] < 0.30:
        failures.append(f"only {report.faults['share']:.1%} of upstream calls failed; the run asks for 30% or more")
    if report.completed and not report.key_vault_outage.get("ended_at"):
        failures.append("Key Vault was never down")
    return failures


def _peek_all(queue: QueueClient) -> list[str]:
    """Every message on a queue (none for a queue nobody created), taken off it."""
    taken = []
    try:
        while True:
            messages = list(queue.receive_messages(messages_per_page=32, max_messages=32))
            if not messages:
                return taken
            for message in messages:
                taken.append(message.content)
                queue.delete_message(message)
    except ResourceNotFoundError:
        return taken


def _utc_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def summary_lines(report: ChaosReport) -> list[str]:
    """The figures of a run as the lines `make chaos` prints."""
    leaks = report.leaks["api_key"]
    logs = ", ".join(f"{name} {n}" for name, n in leaks["logs"].items())
    lines = [
        "",
        f"  sent                  {report.sent['queue_messages']} queue messages, {report.sent['http_requests']} "
        f"HTTP requests ({report.sent['http_cancels']} HTTP cancels)",
        f"  records received      {report.records['received']} ({report.records['queue']} queue, "
        f"{report.records['http']} http)",
        "  outcomes              "
        + ", ".join(f"{outcome} {n}" for outcome, n in sorted(report.records["by_outcome"].items()))
        + f" ({report.records['running_jobs_reported_already_terminal']} running jobs already_terminal: "
        "the answer to their cancel came too late, the retry found them cancelled)",
        f"  lost                  {report.lost}",
        f"  duplicates            {report.duplicates} ({report.duplicates_identical} the same record written twice, "
        f"{report.duplicates - report.duplicates_identical} from a second delivery)",
        f"  poison queue          {report.poison_queue_messages}",
        f"  failed, retryable     {report.failed_retryable} (every delivery failed; a record, not a loss)",
        f"  unexpected outcomes   {report.unexpected_records}",
        f"  uncancelled jobs      {report.uncancelled_jobs}",
        f"  api-key occurrences   {leaks['total']} (records {leaks['records']}, responses {leaks['responses']}, "
        f"printed {leaks['printed']}, logs: {logs})",
        f"  bearer tokens         {report.leaks['bearer_tokens']['total']} occurrences of "
        f"{report.leaks['bearer_tokens_issued']} issued",
        f"  upstream faults       {report.faults['injected']} of {report.faults['upstream_requests']} calls "
        f"({report.faults['share']:.1%}): " + ", ".join(f"{kind} {n}" for kind, n in report.faults["by_kind"].items()),
        f"  Key Vault outage      {report.key_vault_outage.get('seconds', 0):g} s, "
        f"{report.key_vault_outage.get('records_during_outage', 0)} records meanwhile, "
        f"{report.key_vault_outage.get('stale_key_warnings_in_runner_log', 0)} stale-key warnings",
        f"  Azurite restart       {report.azurite_restart.get('downtime_seconds', '-')} s down, "
        f"{report.azurite_restart.get('request_queue_depth_before', '-')} messages queued before, "
        f"{report.azurite_restart.get('request_queue_depth_after', '-')} after",
        "  deliveries            " + ", ".join(f"{n}x: {count}" for n, count in report.deliveries.items()),
        f"  wall time             {report.wall_seconds:.1f} s",
        "",
    ]
    if report.passed:
        lines.append("PASSED: nothing lost, nothing leaked, every running job cancelled.")
    else:
        lines.append("FAILED: " + "; ".join(report.failures))
    return lines


def run_chaos(settings: ChaosSettings, *, out: TextIO = sys.stdout, output: Path | None = None) -> ChaosReport:
    """Run the chaos run, print its figures, write them to `output` (JSON) and return them."""
    run = ChaosRun(settings, out=out)
    report = run.run()
    if output is not None:
        report.write(output)
        run.out.say(f"figures written to {shown_path(output)}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.chaos", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=DEFAULT_MESSAGES, help="queue messages (default 5000)")
    parser.add_argument("--http-cancels", type=int, help="HTTP cancels during the run (default: messages/25, >= 10)")
    parser.add_argument("--fault-rate", type=float, default=ChaosSettings.fault_rate)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument(
        "--key-vault-outage", type=float, metavar="SECONDS", help="default: 6 s, 15 s past 1000 messages"
    )
    parser.add_argument("--time-limit", type=float, metavar="SECONDS", help="default: 60 s + 0.12 s per message")
    parser.add_argument("--log-dir", type=Path, default=DEFAULT_LOG_DIR)
    parser.add_argument("--output", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    settings = ChaosSettings(
        messages=args.messages,
        http_cancels=args.http_cancels,
        fault_rate=args.fault_rate,
        seed=args.seed,
        key_vault_outage_seconds=args.key_vault_outage,
        time_limit_seconds=args.time_limit,
        log_dir=args.log_dir.resolve(),
    )
    report = run_chaos(settings, output=args.output)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
