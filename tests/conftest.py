"""Fixtures: the emulators at the network boundary, the contract's settings, and the real handlers.

Handlers are found in `function_app.app` by trigger type, as the host finds them, and called
with real `func.HttpRequest` / `QueueMessage` objects. The app writes its records to a real
Azurite (one per session), on a results queue of the test's own; `drain_results()` takes them.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.functions.queue import QueueMessage
from azure.storage.queue import QueueClient

from devstack.keyvault_emulator import KeyVaultEmulator
from devstack.openai_sim import FineTuningSimulator
import shared.settings
from devstack.stack import Azurite

API_KEY = "sim-key-3b9d0c8e41f24a7f9d2e6c5b1a0f8e73"  # distinctive, so a leak is found by search
SECRET_NAME = "azure-openai-api-key"
CANCEL_ROUTE = "openai/fine_tuning/jobs/{job_id}/cancel"


@dataclass
class Output:
    """What a call wrote to the results queue: each message's text, exactly as the queue holds it."""

    values: list[str] = field(default_factory=list)

    @property
    def records(self) -> list[dict[str, Any]]:
        return [json.loads(message) for message in self.values]


def drain_results() -> Output:
    """Take every message off this test's results queue (named by the app settings in force)."""
    queue = QueueClient.from_connection_string(os.environ["AzureWebJobsStorage"], os.environ["CANCEL_RESULTS_QUEUE"])
    texts: list[str] = []
    while True:
        try:
            batch = list(queue.receive_messages(messages_per_page=32, max_messages=32, visibility_timeout=60))
        except ResourceNotFoundError:  # nothing was ever written
            batch = []
        if not batch:
            return Output(texts)
        for message in batch:
            texts.append(message.content)
            queue.delete_message(message)


def handler(trigger_type: str, route: str | None = None) -> Callable[..., Any]:
    """The user function whose trigger has this type (and, for HTTP, this route), as the host indexes it."""
    import function_app

    for function in function_app.app.get_functions():
        for binding in function.get_bindings():
            if binding.type == trigger_type and route in (None, getattr(binding, "route", None)):
                return function.get_user_function()
    raise LookupError(f"{trigger_type} {route}")


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
        **vault.environ(),
        "AZURE_OPENAI_ENDPOINT": simulator.endpoint,
        "AzureWebJobsStorage": azurite.connection_string,
        "UPSTREAM_TIMEOUT_SECONDS": "1",
        "UPSTREAM_MAX_RETRIES": "3",
        "UPSTREAM_DEADLINE_SECONDS": "20",
        "CANCEL_REQUESTS_QUEUE": "cancel-requests",
        "CANCEL_RESULTS_QUEUE": f"results-{uuid.uuid4().hex[:16]}",
    }
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    shared.settings.reset()  # the app reads its settings once; this test's are read on its first call
    return settings


@dataclass
class HttpCall:
    response: func.HttpResponse
    output: Output

    @property
    def body(self) -> Any:
        return json.loads(self.response.get_body())

    @property
    def record(self) -> dict[str, Any]:
        [record] = self.output.records
        return record


@dataclass
class QueueCall:
    output: Output
    raised: Exception | None = None

    @property
    def record(self) -> dict[str, Any]:
        [record] = self.output.records
        return record


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
