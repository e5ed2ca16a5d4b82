"""The app's handlers as the host indexes them, called with real `func` objects, and the records a call wrote.

The app writes its records to the results queue the app settings in force name (`app_settings` in
tests/conftest.py gives each test its own); `drain_results()` takes them off it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func
from azure.storage.queue import QueueClient

from devstack.environment import SECRET_NAME as SECRET_NAME  # the secret the Key Vault emulator holds API_KEY in
from devstack.storage import take_messages
from shared.settings import AZURE_WEB_JOBS_STORAGE, CANCEL_RESULTS_QUEUE

API_KEY = "sim-key-3b9d0c8e41f24a7f9d2e6c5b1a0f8e73"  # distinctive, so a leak is found by search
SECOND_KEY = "sim-key-second-5d1e9f0a7b2c4e6d8f0a1b3c5d7e9f01"  # the `second` resource's api-key
FUNCTION_KEY = "e2e-function-key"  # the function key of the end-to-end tests' runner
CANCEL_ROUTE = "openai/fine_tuning/jobs/{job_id}/cancel"
DRAIN_VISIBILITY_SECONDS = 60  # a record received is hidden this long while it is deleted


@dataclass
class Output:
    """What a call wrote to the results queue: each message's text, exactly as the queue holds it."""

    values: list[str] = field(default_factory=list)

    @property
    def records(self) -> list[dict[str, Any]]:
        return [json.loads(message) for message in self.values]


def drain_results() -> Output:
    """Take every message off this test's results queue (named by the app settings in force)."""
    queue = QueueClient.from_connection_string(os.environ[AZURE_WEB_JOBS_STORAGE], os.environ[CANCEL_RESULTS_QUEUE])
    return Output(take_messages(queue, visibility_timeout=DRAIN_VISIBILITY_SECONDS))


_indexing = threading.Lock()  # azure-functions' get_functions() is not safe to call from two threads at once


def handler(trigger_type: str, route: str | None = None) -> Callable[..., Any]:
    """The user function whose trigger has this type (and, for HTTP, this route), as the host indexes it."""
    import function_app

    with _indexing:
        functions = function_app.app.get_functions()
    for function in functions:
        for binding in function.get_bindings():
            if binding.type == trigger_type and route in (None, getattr(binding, "route", None)):
                return function.get_user_function()
    raise LookupError(f"{trigger_type} {route}")


def call_bulk(body: bytes | dict) -> tuple[func.HttpResponse, Output]:
    """POST /api/cancel (the bulk route) with `body`; its answer and the records it wrote."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = func.HttpRequest(method="POST", url="http://localhost:7071/api/cancel", headers={}, body=raw)
    response = handler("httpTrigger", "cancel")(req=request)
    return response, drain_results()


@dataclass
class HttpCall:
    """An HTTP trigger's answer and what it wrote."""

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
    """What a queue trigger wrote, and what it raised (the host's view: the function failed)."""

    output: Output
    raised: Exception | None = None

    @property
    def record(self) -> dict[str, Any]:
        [record] = self.output.records
        return record
