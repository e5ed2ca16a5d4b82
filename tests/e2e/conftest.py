"""End-to-end fixtures: one real Azurite per session, and the app in the local runner per test.

Each test gets its own request and result queues (unique names), the emulators of
tests/conftest.py (`simulator`, `vault`), and a runner whose host.json retry delays are cut
short with the runner's test knobs, so a five-attempt retry takes seconds, not minutes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.storage.queue import QueueClient

from devstack.environment import emulator_app_settings, steering_variables
from devstack.keyvault_emulator import KeyVaultEmulator
from devstack.openai_sim import FineTuningSimulator
from devstack.runner import FunctionsRunner, HostSettings, load_function_app
from devstack.storage import Azurite, message_count
from shared.settings import UPSTREAM_DEADLINE_SECONDS, UPSTREAM_TIMEOUT_SECONDS
from tests.support.handlers import FUNCTION_KEY
from tests.support.queues import RECORD_TIMEOUT_SECONDS, take_parsed, unique_queue_name

REPO_ROOT = Path(__file__).resolve().parents[2]
VISIBILITY_TIMEOUT_SECONDS = 1.0  # test knob: host.json says 30 s between attempts
MAX_POLLING_INTERVAL_SECONDS = 0.2  # test knob: host.json says 2 s


@pytest.fixture(scope="session")
def host_settings() -> HostSettings:
    return HostSettings.from_host_json(REPO_ROOT / "host.json")


@pytest.fixture(scope="session")
def cancel_app() -> func.FunctionApp:
    return load_function_app(REPO_ROOT)


@dataclass
class LocalApp:
    """The app running in the local runner, with its two queues."""

    runner: FunctionsRunner
    connection_string: str
    requests_queue: QueueClient
    results_queue: QueueClient

    @property
    def function_key(self) -> str:
        return self.runner.function_key

    @property
    def api_url(self) -> str:
        return self.runner.api_url

    def cancel_url(self, job_id: str) -> str:
        return f"{self.api_url}/openai/fine_tuning/jobs/{job_id}/cancel"

    def queue(self, name: str) -> QueueClient:
        return QueueClient.from_connection_string(self.connection_string, name)

    def enqueue(self, content: str) -> None:
        self.requests_queue.send_message(content)

    def wait_for_records(self, count: int, *, timeout: float = RECORD_TIMEOUT_SECONDS) -> list[dict[str, Any]]:
        """Take result records off the results queue until `count` came; fail after `timeout`."""
        return take_parsed(self.results_queue, count, timeout=timeout)

    def messages_left(self, queue: QueueClient | None = None) -> int:
        """Messages on the request queue (or another), invisible ones included."""
        return message_count(queue or self.requests_queue)


@pytest.fixture
def start_local_app(
    azurite: Azurite,
    host_settings: HostSettings,
    cancel_app: func.FunctionApp,
    simulator: FineTuningSimulator,
    vault: KeyVaultEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., LocalApp]]:
    """Start the app in the runner against the emulators and Azurite; extra app settings as keywords."""
    started: list[FunctionsRunner] = []
    for name in steering_variables(os.environ):  # the runner lays the settings over this process's environment
        monkeypatch.delenv(name)

    def start(**extra_settings: str) -> LocalApp:
        requests_queue, results_queue = unique_queue_name("requests"), unique_queue_name("results")
        settings = {
            **emulator_app_settings(
                key_vault=vault.environ(),
                openai_endpoint=simulator.endpoint,
                storage=azurite.connection_string,
                requests_queue=requests_queue,
                results_queue=results_queue,
            ),
            UPSTREAM_TIMEOUT_SECONDS: "5",
            UPSTREAM_DEADLINE_SECONDS: "20",
            **extra_settings,
        }
        azurite.create_queues(requests_queue)
        runner = FunctionsRunner(
            cancel_app,
            host_settings=host_settings,
            settings=settings,
            port=0,
            function_key=FUNCTION_KEY,
            visibility_timeout=VISIBILITY_TIMEOUT_SECONDS,
            max_polling_interval=MAX_POLLING_INTERVAL_SECONDS,
        ).start()
        started.append(runner)
        return LocalApp(
            runner=runner,
            connection_string=azurite.connection_string,
            requests_queue=azurite.queue(requests_queue),
            results_queue=azurite.queue(results_queue),
        )

    yield start
    for runner in started:
        runner.stop()
