"""What the chaos run does to the stack: sends the messages and HTTP cancels, takes Key Vault down, restarts Azurite.

`enqueue` sends the planned queue messages; `start_runner` starts the Functions runner pointed at
the emulators; `HttpCanceller` cancels jobs over HTTP as a client would, all through the run;
`KeyVaultOutage` and `AzuriteRestart` switch their fault on when the run has got far enough, and
keep the figures the report shows.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import requests
from azure.core.exceptions import ServiceRequestError

from devstack.chaos.plan import (
    FUNCTION_KEY,
    THREAD_JOIN_SECONDS,
    ChaosError,
    ChaosSettings,
    PlannedRequest,
)
from devstack.chaos.storage import STORAGE_RETRY_WAIT, retry_storage, storage_client
from devstack.environment import REQUESTS_QUEUE, SECRET_NAME, child_environ, emulator_app_settings
from devstack.keyvault_emulator import KeyVaultEmulator
from devstack.openai_sim import FineTuningSimulator
from devstack.processes import ChildProcess, runner_process
from devstack.storage import Azurite
from shared.retry import retry_after_seconds

ENQUEUE_THREADS = 8
HTTP_THREADS = 4
HTTP_TRIES = 8  # a client's tries for one HTTP cancel that answers 429/500/503
HTTP_RETRY_WAIT_CAP = 2.0  # seconds: the client honours Retry-After up to this
HTTP_NO_ADVICE_WAIT = 0.5  # seconds: the client's wait when the answer gives no Retry-After
HTTP_CLIENT_TIMEOUT = 90.0

Say = Callable[[str], None]


def utc_iso() -> str:
    """Now, as the report's timestamps show it."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def enqueue(connection_string: str, planned: Sequence[PlannedRequest], say: Say) -> None:
    """Send the queue messages, in threads; each one's queue id becomes its `message_id`."""
    clients = threading.local()
    started = time.monotonic()

    def send(message: PlannedRequest) -> None:
        if not hasattr(clients, "queue"):
            clients.queue = storage_client(connection_string, REQUESTS_QUEUE)
        for _ in range(20):
            try:
                message.message_id = clients.queue.send_message(message.content).id
                return
            except ServiceRequestError:  # never reached Azurite: safe to send again
                time.sleep(STORAGE_RETRY_WAIT)
        raise ChaosError("could not enqueue the run's messages: Azurite does not answer")

    with ThreadPoolExecutor(max_workers=ENQUEUE_THREADS, thread_name_prefix="chaos-enqueue") as pool:
        list(pool.map(send, planned))
    say(f"  enqueued {len(planned)} messages in {time.monotonic() - started:.1f} s")


def runner_environ(
    settings: ChaosSettings, azurite: Azurite, simulator: FineTuningSimulator, vault: KeyVaultEmulator
) -> dict[str, str]:
    """The runner's environment: this process's, without what steers Azure credentials, pointed at the emulators."""
    return child_environ(
        {
            **emulator_app_settings(
                key_vault=vault.environ(), openai_endpoint=simulator.endpoint, storage=azurite.connection_string
            ),
            "SECRET_CACHE_SECONDS": f"{settings.secret_cache_seconds:g}",
            "UPSTREAM_TIMEOUT_SECONDS": f"{settings.upstream_timeout_seconds:g}",
            "UPSTREAM_MAX_RETRIES": str(settings.upstream_max_retries),
            "UPSTREAM_DEADLINE_SECONDS": f"{settings.upstream_deadline_seconds:g}",
        }
    )


def start_runner(settings: ChaosSettings, environ: Mapping[str, str]) -> tuple[ChildProcess, str]:
    """Start the Functions runner with the run's knobs; return it and its API's URL once it serves."""
    runner = runner_process(
        log_path=settings.log_dir / "runner.log",
        env=dict(environ),
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
    return runner, json.loads(runner.wait_ready().group(1))["api_url"]


@dataclass
class HttpExchange:
    """One HTTP request of the run and what came back (status 0: no answer)."""

    planned: PlannedRequest
    status: int
    request_id: str | None
    headers: Mapping[str, str]  # as received (case-insensitive for an answer)
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
            advised = retry_after_seconds(exchange.headers)
            if self._stop.wait(min(HTTP_NO_ADVICE_WAIT if advised is None else advised, HTTP_RETRY_WAIT_CAP)):
                return

    def _post(
        self, session: requests.Session, url: str, headers: Mapping[str, str], planned: PlannedRequest
    ) -> HttpExchange:
        try:
            response = session.post(url, headers=headers, timeout=HTTP_CLIENT_TIMEOUT)
        except requests.RequestException:
            return HttpExchange(planned, 0, None, {}, "")
        head = [f"{response.status_code} {response.reason}", *(f"{k}: {v}" for k, v in response.headers.items())]
        text = "\n".join(head) + "\n" + response.text
        return HttpExchange(planned, response.status_code, response.headers.get("x-request-id"), response.headers, text)


class KeyVaultOutage:
    """Key Vault down once, for `settings.outage_seconds`, from when enough messages have a record."""

    def __init__(self, settings: ChaosSettings, vault: KeyVaultEmulator, say: Say) -> None:
        self._settings = settings
        self._vault = vault
        self._say = say
        self.figures: dict[str, Any] = {"seconds": settings.outage_seconds}
        self.started: float | None = None  # monotonic times
        self.ended: float | None = None

    def step(self, now: float, progress: float) -> None:
        """Go down, or come back, if it is time."""
        if self.started is None:
            # Down only once the app has read the key: the interesting case is an expired cache.
            if progress >= self._settings.key_vault_outage_at and self._vault.read_count(SECRET_NAME):
                self._vault.set_available(False)
                self.started = now
                self.figures.update(started_at=utc_iso(), progress_at_start=round(progress, 3))
                self._say(f"  Key Vault down for {self._settings.outage_seconds:g} s")
        elif self.ended is None and now - self.started >= self._settings.outage_seconds:
            self._vault.set_available(True)
            self.ended = now
            self.figures.update(ended_at=utc_iso())
            self._say("  Key Vault back")


class AzuriteRestart:
    """Azurite stopped and started again once, on the same port and data folder, with the queue depths around it."""

    def __init__(self, azurite: Azurite, say: Say, *, deadline: float) -> None:
        self._azurite = azurite
        self._say = say
        self._deadline = deadline
        self.figures: dict[str, Any] = {}

    @property
    def done(self) -> bool:
        return bool(self.figures)

    def restart(self, progress: float) -> None:
        depth_before = self.queue_depth()
        self._say(f"  restarting Azurite ({depth_before} messages on '{REQUESTS_QUEUE}')")
        started = time.monotonic()
        self._azurite.restart()
        downtime = time.monotonic() - started
        depth_after = self.queue_depth()
        self.figures = {
            "at": utc_iso(),
            "progress_at_restart": round(progress, 3),
            "downtime_seconds": round(downtime, 2),
            "request_queue_depth_before": depth_before,
            "request_queue_depth_after": depth_after,
        }
        self._say(f"  Azurite back after {downtime:.1f} s ({depth_after} messages on '{REQUESTS_QUEUE}')")

    def queue_depth(self) -> int:
        queue = storage_client(self._azurite.connection_string, REQUESTS_QUEUE)
        return retry_storage(
            lambda: queue.get_queue_properties().approximate_message_count, until=self._deadline, what="queue depth"
        )
