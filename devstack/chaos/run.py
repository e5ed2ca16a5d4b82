"""One chaos run from start to end: starts the parts, drives the faults until every message has its record, stops.

Azurite and the Functions runner are child processes as in `make run`; the simulator and the Key
Vault emulator run in this process, so their faults can be switched on and off. `ChaosRun.run()`
returns the report (`devstack/chaos/judge.py`) and leaves nothing running.
"""

from __future__ import annotations

import logging
import random
import secrets
import sys
import time
from pathlib import Path
from typing import TextIO

from azure.core.exceptions import AzureError

from devstack.chaos.drivers import (
    AzuriteRestart,
    HttpCanceller,
    KeyVaultOutage,
    enqueue,
    runner_environ,
    start_runner,
    utc_iso,
)
from devstack.chaos.judge import Evidence, judge
from devstack.chaos.plan import (
    POISON_QUEUE,
    ChaosError,
    ChaosSettings,
    PlannedRequest,
    fault_plan,
    plan_http_cancels,
    plan_messages,
)
from devstack.chaos.report import ChaosReport, summary_lines
from devstack.chaos.storage import RecordCollector, storage_client, take_all
from devstack.environment import REQUESTS_QUEUE, RESULTS_QUEUE, SECRET_NAME
from devstack.keyvault_emulator import KeyVaultEmulator
from devstack.openai_sim import FineTuningSimulator
from devstack.processes import ChildProcess, StackError, shown_path
from devstack.storage import Azurite

logger = logging.getLogger("devstack.chaos")

PROGRESS_EVERY_SECONDS = 5.0


class Tee:
    """Writes to a stream and keeps every line, so what the run printed is searched for secrets too."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.lines: list[str] = []

    def say(self, line: str) -> None:
        self.lines.append(line)
        logger.info("%s", line)
        print(line, file=self._stream, flush=True)


class ChaosRun:
    """One chaos run; `run()` returns its report and leaves nothing running."""

    def __init__(self, settings: ChaosSettings, *, out: TextIO = sys.stdout) -> None:
        self.settings = settings
        self.out = Tee(out)
        self.api_key = f"chaos-key-{secrets.token_hex(16)}"  # distinctive, so a leak is found by search
        self._rng = random.Random(settings.seed)
        self._azurite: Azurite | None = None
        self._simulator: FineTuningSimulator | None = None
        self._vault: KeyVaultEmulator | None = None
        self._runner: ChildProcess | None = None
        self._collector: RecordCollector | None = None
        self._http: HttpCanceller | None = None
        self._outage: KeyVaultOutage | None = None
        self._restart: AzuriteRestart | None = None
        self._messages: list[PlannedRequest] = []
        self._http_planned: list[PlannedRequest] = []
        self._log_handler: logging.Handler | None = None
        self._saved_log_levels: dict[str, int] = {}
        self._deadline = 0.0
        self._api_url = ""
        self._waiting: set[str | None] = set()  # message ids without a record yet
        self._records_counted = 0
        self._progress_value = 0.0

    def run(self) -> ChaosReport:
        settings = self.settings
        started = time.monotonic()
        started_at = utc_iso()
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
        report = judge(
            self._evidence(poison, left), completed=completed, wall_seconds=time.monotonic() - started, problem=problem
        )
        report.started_at, report.finished_at = started_at, utc_iso()
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
        azurite = self._azurite = Azurite(log_path=settings.log_dir / "azurite.log").start()
        # The simulator's faults hit the runner's calls only: the jobs below are created directly.
        simulator = self._simulator = FineTuningSimulator(
            api_key=self.api_key, record_requests=False, faults=fault_plan(settings)
        ).start()
        vault = self._vault = KeyVaultEmulator().start()  # its CA bundle in a temporary folder of its own
        vault.set_secret(SECRET_NAME, self.api_key)
        azurite.wait_ready()
        azurite.create_queues(REQUESTS_QUEUE, RESULTS_QUEUE)
        self._outage = KeyVaultOutage(settings, vault, say)
        self._restart = AzuriteRestart(azurite, say, deadline=self._deadline)
        self._messages = plan_messages(simulator, settings.messages, self._rng)
        self._http_planned = plan_http_cancels(simulator, settings.http_count)
        enqueue(azurite.connection_string, self._messages, say)
        self._waiting = {planned.message_id for planned in self._messages}
        self._records_counted = 0
        self._collector = RecordCollector(azurite.connection_string).start()
        self._runner, self._api_url = start_runner(settings, runner_environ(settings, azurite, simulator, vault))
        say(f"  runner at {self._api_url}; faults on, processing")

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
        assert self._collector is not None and self._outage is not None and self._restart is not None
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
            self._outage.step(now, self._progress_value)
            if not self._restart.done and self._progress_value >= settings.azurite_restart_at:
                self._restart.restart(self._progress_value)
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
        assert self._collector is not None and self._http is not None and self._azurite is not None
        assert self._outage is not None and self._restart is not None
        if self._progress_value < 1.0 or not self._http.done or not self._restart.done or self._outage.ended is None:
            return False
        answered = [exchange.request_id for exchange in self._http.exchanges if exchange.request_id]
        if any(not self._collector.count_for(request_id) for request_id in answered):
            return False
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
            f"{sum(self._simulator.fault_counts().values())} faults in {sum(self._simulator.counts.values())} "
            "upstream calls"
        )

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
                poison = take_all(storage_client(azurite.connection_string, POISON_QUEUE))
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

    def _evidence(self, poison: list[str], left: int) -> Evidence:
        """What the run saw, for the judge."""
        outage = self._outage
        window = None
        if outage is not None and outage.started is not None:
            window = (outage.started, outage.ended if outage.ended is not None else float("inf"))
        return Evidence(
            settings=self.settings,
            api_key=self.api_key,
            messages=self._messages,
            http_planned=self._http_planned,
            records=self._collector.records if self._collector else [],
            exchanges=self._http.exchanges if self._http else [],
            printed=self.out.lines,
            simulator=self._simulator,
            issued_tokens=self._vault.issued_tokens if self._vault else [],
            collector_storage_errors=self._collector.storage_errors if self._collector else 0,
            outage=outage.figures if outage else {"seconds": self.settings.outage_seconds},
            outage_window=window,
            restart=self._restart.figures if self._restart else {},
            poison=poison,
            left=left,
        )


def run_chaos(settings: ChaosSettings, *, out: TextIO = sys.stdout, output: Path | None = None) -> ChaosReport:
    """Run the chaos run, print its figures, write them to `output` (JSON) and return them."""
    run = ChaosRun(settings, out=out)
    report = run.run()
    if output is not None:
        report.write(output)
        run.out.say(f"figures written to {shown_path(output)}")
    return report
