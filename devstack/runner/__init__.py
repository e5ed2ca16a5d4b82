"""A local Functions runner: runs `function_app.app` unchanged on one machine, against Azurite.

A development tool that mirrors the documented behaviour of the Azure Functions host, not the host
itself (Core Tools cannot be installed here); docs/local-stack.md lists the rules it mirrors and
their sources. This package's public names; one module per concern:

- `host_config`: host.json's settings, `%NAME%` app settings, storage connections;
- `indexing`: the app's functions and bindings, refusing what the runner does not support;
- `routes`: HTTP trigger route templates; `http_front`: the HTTP server's routing, keys and answers;
- `admin`: the host's admin API (host status, `POST /admin/functions/{name}`, the master key);
- `invocation`: the worker's pool and outputs; `queue_listener`: queue triggers; `ncrontab`, `timers`: timers;
- `storage`: queue clients and storage retries; `functions_runner`: FunctionsRunner; `__main__`: the process.

    python -m devstack.runner --port 7071 --function-key KEY   # environment = app settings
"""

from __future__ import annotations

from devstack.runner.errors import RunnerError
from devstack.runner.functions_runner import (
    DEFAULT_FUNCTION_KEY,
    DEFAULT_HOST,
    DEFAULT_PORT,
    FUNCTION_KEY_ENV,
    MASTER_KEY_ENV,
    FunctionsRunner,
)
from devstack.runner.host_config import HostSettings, load_settings_file
from devstack.runner.http_front import forwarded_body, http_response
from devstack.runner.indexing import LocalFunction, index_functions, load_function_app
from devstack.runner.ncrontab import NcrontabSchedule
from devstack.runner.queue_listener import queue_message_for_worker

# Azurite's development account as the app itself reads `UseDevelopmentStorage=true` (one definition for both).
from shared.results_queue import development_storage_connection_string

__all__ = [
    "DEFAULT_FUNCTION_KEY",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "FUNCTION_KEY_ENV",
    "MASTER_KEY_ENV",
    "FunctionsRunner",
    "HostSettings",
    "LocalFunction",
    "NcrontabSchedule",
    "RunnerError",
    "development_storage_connection_string",
    "forwarded_body",
    "http_response",
    "index_functions",
    "load_function_app",
    "load_settings_file",
    "queue_message_for_worker",
]
