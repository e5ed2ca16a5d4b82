"""Fixtures: the emulators at the network boundary, the contract's settings, and the real handlers.

Handlers are found in `function_app.app` by trigger type, as the host finds them, and called
with real `func.HttpRequest` / `QueueMessage` objects (tests/support/handlers.py). The app writes
its records to a real Azurite (one per session), on a results queue of the test's own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import azure.functions as func
import pytest
from azure.functions.queue import QueueMessage

import shared.settings
from devstack.environment import emulator_app_settings, steering_variables
from devstack.keyvault_emulator import KeyVaultEmulator
from devstack.openai_sim import FineTuningSimulator
from devstack.storage import Azurite
from shared.settings import UPSTREAM_DEADLINE_SECONDS, UPSTREAM_MAX_RETRIES, UPSTREAM_TIMEOUT_SECONDS
from tests.support.handlers import (
    API_KEY,
    CANCEL_ROUTE,
    SECOND_KEY,
    SECRET_NAME,
    HttpCall,
    QueueCall,
    drain_results,
    handler,
)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """One real Azurite for the whole session: the app writes records to it, the runner tests listen on it."""
    server = Azurite(log_path=tmp_path_factory.mktemp("azurite") / "azurite.log").start()
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def vault_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vault")


@pytest.fixture
def simulator() -> Iterator[FineTuningSimulator]:
    with FineTuningSimulator(api_key=API_KEY) as sim:
        yield sim


@pytest.fixture
def vault(vault_workdir: Path) -> Iterator[KeyVaultEmulator]:
    with KeyVaultEmulator(workdir=vault_workdir) as emulator:
        emulator.set_secret(SECRET_NAME, API_KEY)
        emulator.reset_counts()
        yield emulator


@pytest.fixture
def app_settings(
    monkeypatch: pytest.MonkeyPatch, simulator: FineTuningSimulator, vault: KeyVaultEmulator, azurite: Azurite
) -> dict[str, str]:
    """The contract's settings pointing at the emulators, tuned so retries take milliseconds."""
    settings = {
        **emulator_app_settings(
            key_vault=vault.environ(),
            openai_endpoint=simulator.endpoint,
            storage=azurite.connection_string,
            results_queue=f"results-{uuid.uuid4().hex[:16]}",
        ),
        UPSTREAM_TIMEOUT_SECONDS: "1",
        UPSTREAM_MAX_RETRIES: "3",
        UPSTREAM_DEADLINE_SECONDS: "20",
    }
    for name in steering_variables(os.environ):
        monkeypatch.delenv(name)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    shared.settings.reset()  # the app reads its settings once; this test's are read on its first call
    return settings


@pytest.fixture
def call_http(app_settings: dict[str, str]) -> Callable[..., HttpCall]:
    cancel = handler("httpTrigger", CANCEL_ROUTE)

    def call(
        job_id: str, *, headers: dict[str, str] | None = None, body: bytes = b"", params: dict[str, str] | None = None
    ) -> HttpCall:
        request = func.HttpRequest(
            method="POST",
            url=f"http://localhost:7071/api/openai/fine_tuning/jobs/{job_id}/cancel",
            headers=headers or {},
            params={"api-version": "2024-10-21", **(params or {})},
            route_params={"job_id": job_id},
            body=body,
        )
        response = cancel(req=request)
        return HttpCall(response, drain_results())

    return call


@pytest.fixture
def call_queue(app_settings: dict[str, str]) -> Callable[..., QueueCall]:
    cancel = handler("queueTrigger")

    def call(body: bytes | str, *, dequeue_count: int = 1, message_id: str | None = None) -> QueueCall:
        message = QueueMessage(
            id=message_id or str(uuid.uuid4()),
            body=body.encode() if isinstance(body, str) else body,
            dequeue_count=dequeue_count,
            pop_receipt="receipt",
        )
        try:
            cancel(msg=message)
        except Exception as err:  # noqa: BLE001 - the host's view: the function raised
            return QueueCall(drain_results(), err)
        return QueueCall(drain_results())

    return call


@pytest.fixture
def second(vault: KeyVaultEmulator) -> Iterator[FineTuningSimulator]:
    """A second resource's simulator, its api-key in Key Vault as `azure-openai-api-key-second`."""
    with FineTuningSimulator(api_key=SECOND_KEY) as sim:
        vault.set_secret("azure-openai-api-key-second", SECOND_KEY)
        vault.reset_counts()
        yield sim
