"""The runner itself: one FunctionsRunner puts indexing, the HTTP front, queue listeners and timers together.

`start()` lays the app settings over os.environ, indexes the app (refusing what it does not
support), and starts the HTTP server, one listener per queue trigger and the timer scheduler,
every invocation in one worker pool; `stop()` undoes it all.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

import azure.functions as func

import shared.settings  # the app's settings, read once per (worker) process: reset when the runner sets them
from devstack._http import BackgroundServer, EmulatorServer
from devstack.host_rules import worker_thread_count
from devstack.runner.admin import AdminApi, KeyRing, generate_master_key
from devstack.runner.errors import RunnerError
from devstack.runner.host_config import HostSettings
from devstack.runner.http_front import HttpFrontEnd, HttpHandler
from devstack.runner.indexing import LocalFunction, index_functions
from devstack.runner.invocation import InvocationPool
from devstack.runner.queue_listener import PROCESSING_LEASE_SECONDS, QueueListener
from devstack.runner.storage import QueueClients
from devstack.runner.timers import TimerScheduler

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7071
FUNCTION_KEY_ENV = "LOCAL_FUNCTION_KEY"
DEFAULT_FUNCTION_KEY = "local-function-key"  # a development key, printed by `make run`
MASTER_KEY_ENV = "LOCAL_MASTER_KEY"
STOP_GRACE_SECONDS = 30.0  # how long stop() waits for running queue invocations


class _EnvironmentLease:
    """Applies a runner's app settings to os.environ (the handlers read it) and restores it on stop."""

    _lock = threading.Lock()
    _holder: object | None = None

    def __init__(self, settings: Mapping[str, str]) -> None:
        self._settings = dict(settings)
        self._saved: dict[str, str | None] = {}

    def apply(self, owner: object) -> None:
        with _EnvironmentLease._lock:
            if _EnvironmentLease._holder is not None:
                raise RunnerError("another in-process runner with its own settings is running; stop it first")
            _EnvironmentLease._holder = owner
        self._saved = {name: os.environ.get(name) for name in self._settings}
        os.environ.update(self._settings)
        shared.settings.reset()  # as a worker process starting with these app settings would read them

    def restore(self) -> None:
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved = {}
        shared.settings.reset()
        with _EnvironmentLease._lock:
            _EnvironmentLease._holder = None


class FunctionsRunner:
    """Runs a FunctionApp's HTTP, queue and timer triggers locally; `start()`/`stop()`, or use it as a context manager.

    `settings` are app settings laid over os.environ while the runner runs (the app reads os.environ;
    one such runner per process at a time). `visibility_timeout` and `max_polling_interval` override
    host.json's values: a test knob, so a retry test does not wait 30 s per attempt. `processing_lease`
    (the host's: 600 s) is one too: how long messages whose receive answer was lost stay hidden.
    `master_key` opens the admin API (`POST /admin/functions/{name}`) and every function route; one is
    generated when none is given.
    """

    def __init__(
        self,
        app: func.FunctionApp,
        *,
        host_settings: HostSettings,
        settings: Mapping[str, str] | None = None,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        function_key: str = DEFAULT_FUNCTION_KEY,
        master_key: str | None = None,
        visibility_timeout: float | None = None,
        max_polling_interval: float | None = None,
        processing_lease: float = PROCESSING_LEASE_SECONDS,
    ) -> None:
        if not function_key:
            raise RunnerError("the function key must not be empty")
        self.app = app
        self.host_settings = host_settings
        self._environment = _EnvironmentLease(settings) if settings else None
        self._address = (host, port)
        self.function_key = function_key
        self.master_key = master_key or generate_master_key()  # the admin API's key, as the host's master key
        if self.master_key == function_key:
            raise RunnerError("the master key must differ from the function key")
        self._visibility_timeout = (
            host_settings.visibility_timeout if visibility_timeout is None else visibility_timeout
        )
        self._max_polling_interval = (
            host_settings.max_polling_interval if max_polling_interval is None else max_polling_interval
        )
        self._processing_lease = processing_lease
        self._queues = QueueClients()
        self._server: BackgroundServer | None = None
        self._listeners: list[QueueListener] = []
        self._pool: InvocationPool | None = None
        self._timers: TimerScheduler | None = None
        self.functions: list[LocalFunction] = []

    @property
    def port(self) -> int:
        assert self._server is not None, "the runner is not started"
        return self._server.port

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>`; HTTP triggers are below `base_url + '/' + routePrefix`."""
        return f"http://{self._address[0]}:{self.port}"

    @property
    def pool(self) -> InvocationPool:
        """The worker's thread pool every invocation runs in."""
        assert self._pool is not None, "the runner is not started"
        return self._pool

    @property
    def api_url(self) -> str:
        prefix = self.host_settings.route_prefix
        return f"{self.base_url}/{prefix}" if prefix else self.base_url

    def start(self) -> FunctionsRunner:
        if self._environment is not None:
            self._environment.apply(self)
        try:
            self.functions = index_functions(self.app, os.environ)
            self._pool = InvocationPool(worker_thread_count(os.environ))
            base64_encode = self.host_settings.message_encoding == "base64"
            keys = KeyRing(function_key=self.function_key, master_key=self.master_key)
            admin = AdminApi(
                self.functions, keys=keys, pool=self._pool, queues=self._queues, base64_encode=base64_encode
            )
            front_end = HttpFrontEnd(
                self.functions,
                route_prefix=self.host_settings.route_prefix,
                keys=keys,
                admin=admin,
                queues=self._queues,
                pool=self._pool,
                base64_encode=base64_encode,
            )
            try:
                server = EmulatorServer(self._address, HttpHandler, app=front_end)
            except OSError as err:
                host, port = self._address
                raise RunnerError(
                    f"cannot listen on http://{host}:{port} ({err.strerror}); is another runner or `func start` "
                    "using it? Choose another port (--port, or FUNCTIONS_PORT for make run)"
                ) from err
            self._server = BackgroundServer(server, "functions-http")
            self._timers = TimerScheduler(
                [function for function in self.functions if function.trigger_type == "timerTrigger"],
                self._pool,
                self._queues,
                base64_encode=base64_encode,
            )
            self._listeners = [
                QueueListener(
                    function,
                    host=self.host_settings,
                    queues=self._queues,
                    visibility_timeout=self._visibility_timeout,
                    max_polling_interval=self._max_polling_interval,
                    pool=self._pool,
                    processing_lease=self._processing_lease,
                )
                for function in self.functions
                if function.trigger_type == "queueTrigger"
            ]
        except BaseException:
            if self._pool is not None:
                self._pool.shutdown()
            if self._environment is not None:
                self._environment.restore()
            raise
        self._server.start()
        for listener in self._listeners:
            listener.start()
        self._timers.start()
        return self

    def stop(self, *, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop serving and polling, wait for running queue invocations, restore os.environ."""
        if self._server is not None:
            self._server.stop()
        if self._timers is not None:
            self._timers.stop()
        for listener in self._listeners:
            listener.stop(grace)
        if self._pool is not None:
            self._pool.shutdown()
        self._queues.close()
        if self._environment is not None:
            self._environment.restore()

    def __enter__(self) -> FunctionsRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def describe(self) -> list[str]:
        """One line per function, like `func start` prints them."""
        lines = []
        for function in self.functions:
            if function.http_route is not None:
                methods = ",".join(sorted(function.http_methods)) if function.http_methods else "GET,POST,..."
                lines.append(f"{function.name}: [{methods}] {self.api_url}/{function.http_route.template}")
            elif function.trigger_type == "timerTrigger":
                lines.append(f"{function.name}: timerTrigger on '{function.timer_schedule}'")
            else:
                lines.append(f"{function.name}: queueTrigger on '{function.trigger_queue}'")
        return lines
