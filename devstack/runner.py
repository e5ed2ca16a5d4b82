"""A local Functions runner: runs `function_app.app` unchanged on one machine, against Azurite.

A development tool that mirrors the documented behaviour of the Azure Functions host, not the
host itself (Core Tools cannot be installed here). It reads the functions, triggers and
bindings from the app object, serves HTTP triggers on `http://127.0.0.1:7071/<routePrefix>/...`
with function keys, and polls queue triggers with host.json's queue semantics: message
encoding, batch size and new-batch threshold, polling back-off, visibility timeout after a
failure, dequeue count, `<queue>-poison` once the count reaches maxDequeueCount, a processing
lease renewed while the function runs. Output bindings are written, and a trigger message deleted,
only when the function returns normally; storage calls are retried while storage is unreachable.
Between the function and the queues it applies the host's and the worker's conversions
(devstack/host_rules.py): output values re-serialized as the host writes them, trigger metadata
overwritten by a JSON message's fields, every invocation in one pool sized like the worker's.

Supported bindings: httpTrigger with its http output (`$return`), queueTrigger and queue outputs.
Not mirrored: functionTimeout (a Python thread cannot be stopped), identity-based storage
connections, `func.Context` parameters.

    python -m devstack.runner --port 7071 --function-key KEY   # environment = app settings
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hmac
import importlib.util
import inspect
import json
import logging
import os
import random
import re
import signal
import sys
import threading
import time
import typing
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote

import azure.functions as func
from azure.functions.timer import TimerRequest

import shared.settings  # the app's settings, read once per (worker) process: reset when the runner sets them

# Azurite's development account as the app itself reads `UseDevelopmentStorage=true` (one definition for both).
from shared.results_queue import development_storage_connection_string, expand_development_storage  # noqa: F401
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.functions.meta import Datum, get_binding_registry
from azure.functions.queue import QueueMessage, QueueMessageInConverter, QueueMessageOutConverter
from azure.storage.queue import QueueClient, QueueServiceClient

from devstack._http import BackgroundServer, EmulatorServer, QuietHandler
from devstack.host_rules import (
    host_metadata_datum,
    host_output_messages,
    queue_trigger_metadata,
    worker_thread_count,
)

logger = logging.getLogger("devstack.runner")  # also when run as __main__

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7071
FUNCTION_KEY_ENV = "LOCAL_FUNCTION_KEY"
DEFAULT_FUNCTION_KEY = "local-function-key"  # a development key, printed by `make run`

# Defaults of the host when host.json leaves a value out.
HOST_DEFAULT_ROUTE_PREFIX = "api"
HOST_DEFAULT_MESSAGE_ENCODING = "base64"
HOST_DEFAULT_MAX_DEQUEUE_COUNT = 5
HOST_DEFAULT_BATCH_SIZE = 16
HOST_DEFAULT_MAX_POLLING_INTERVAL = 60.0
MIN_POLLING_INTERVAL = 0.1  # the host polls this often right after it found messages
MAX_BATCH_SIZE = 32  # the storage service's limit for one Get Messages call
PROCESSING_LEASE_SECONDS = 600  # the host hides a message for 10 minutes while a function runs, renewed halfway
STOP_GRACE_SECONDS = 30.0  # how long stop() waits for running queue invocations
# Storage calls are retried by the runner, not by the SDK (whose retries wait 15 s and more), so a
# storage restart costs seconds: waits from 0.1 s doubling to 2 s, for at most STORAGE_RETRY_SECONDS.
STORAGE_RETRY_FIRST_WAIT = 0.1
STORAGE_RETRY_MAX_WAIT = 2.0
STORAGE_RETRY_SECONDS = 60.0  # far inside the processing lease, so a message being settled is not redelivered
STORAGE_RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

# Azurite's well-known development account: what `UseDevelopmentStorage=true` means.

_SETTING_REFERENCE = re.compile(r"%([^%]+)%")
_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{1,2}):(\d{1,2}(?:\.\d+)?)$")
_ROUTE_PARAMETER = re.compile(r"\{(\*{0,2})([A-Za-z_][A-Za-z0-9_]*)(?::([^}?=]+))?(\?)?(?:=[^}]*)?\}")
_CONSTRAINT_PATTERNS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "alpha": r"[A-Za-z]+",
    "bool": r"(?i:true|false)",
    "guid": r"[0-9A-Fa-f]{8}-?(?:[0-9A-Fa-f]{4}-?){3}[0-9A-Fa-f]{12}",
}
_ENCODED_SLASH = re.compile(r"%2[fF]")

_T = TypeVar("_T")


class RunnerError(Exception):
    """The app or its configuration cannot be run: an unresolved setting, an unsupported binding."""


# --- host.json -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostSettings:
    """The parts of host.json the runner honours, with the host's defaults filled in."""

    route_prefix: str = HOST_DEFAULT_ROUTE_PREFIX
    message_encoding: str = HOST_DEFAULT_MESSAGE_ENCODING
    max_dequeue_count: int = HOST_DEFAULT_MAX_DEQUEUE_COUNT
    visibility_timeout: float = 0.0
    batch_size: int = HOST_DEFAULT_BATCH_SIZE
    new_batch_threshold: int = HOST_DEFAULT_BATCH_SIZE // 2
    max_polling_interval: float = HOST_DEFAULT_MAX_POLLING_INTERVAL

    @classmethod
    def from_host_json(cls, path: Path) -> HostSettings:
        """Read `extensions.http` and `extensions.queues` of a host.json (all defaults if it is missing)."""
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except ValueError as err:
            raise RunnerError(f"{path} is not valid JSON: {err}") from err
        extensions = config.get("extensions") or {}
        http = extensions.get("http") or {}
        queues = extensions.get("queues") or {}
        batch_size = min(max(int(queues.get("batchSize", HOST_DEFAULT_BATCH_SIZE)), 1), MAX_BATCH_SIZE)
        encoding = str(queues.get("messageEncoding", HOST_DEFAULT_MESSAGE_ENCODING)).lower()
        if encoding not in ("base64", "none"):
            raise RunnerError(f"{path}: extensions.queues.messageEncoding must be base64 or none, not {encoding!r}")
        return cls(
            route_prefix=str(http.get("routePrefix", HOST_DEFAULT_ROUTE_PREFIX)).strip("/"),
            message_encoding=encoding,
            max_dequeue_count=max(int(queues.get("maxDequeueCount", HOST_DEFAULT_MAX_DEQUEUE_COUNT)), 1),
            visibility_timeout=timespan_seconds(queues.get("visibilityTimeout", "00:00:00")),
            batch_size=batch_size,
            new_batch_threshold=max(int(queues.get("newBatchThreshold", batch_size // 2)), 0),
            max_polling_interval=max(
                timespan_seconds(queues.get("maxPollingInterval", "00:01:00")), MIN_POLLING_INTERVAL
            ),
        )


def timespan_seconds(value: object) -> float:
    """A host.json TimeSpan (`[d.]hh:mm:ss[.fff]`) in seconds; a bare number means milliseconds, as in the host."""
    if isinstance(value, (int, float)):
        return float(value) / 1000.0
    match = _TIMESPAN.match(str(value).strip())
    if not match:
        raise RunnerError(f"host.json: {value!r} is not a TimeSpan like 00:00:30")
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


# --- settings and connections ------------------------------------------------------------------


def resolve_setting_references(value: str, settings: Mapping[str, str], *, where: str) -> str:
    """Replace each `%NAME%` by the app setting NAME; like the host, a missing setting is an error."""

    def setting(match: re.Match[str]) -> str:
        name = match.group(1)
        resolved = settings.get(name)
        if resolved is None or resolved == "":
            raise RunnerError(f"{where}: '%{name}%' does not resolve to a value (set the app setting {name})")
        return resolved

    return _SETTING_REFERENCE.sub(setting, value)


def storage_connection_string(connection: str, settings: Mapping[str, str]) -> str:
    """The connection string behind a binding's `connection` setting, `UseDevelopmentStorage=true` expanded."""
    value = settings.get(connection) or settings.get(f"AzureWebJobs{connection}")
    if not value:
        if any(name.startswith(connection + "__") for name in settings):
            raise RunnerError(
                f"the storage connection {connection} is identity-based ({connection}__*): the local runner "
                "needs a connection string (Azurite's, or a storage account's)"
            )
        raise RunnerError(f"the storage connection setting {connection} is not set")
    return expand_development_storage(value)


def is_transient_storage_error(err: AzureError) -> bool:
    """Whether a storage call may succeed if made again: no connection, no answer, or a 408/429/5xx."""
    if isinstance(err, (ServiceRequestError, ServiceResponseError)):
        return True
    return isinstance(err, HttpResponseError) and err.status_code in STORAGE_RETRYABLE_STATUSES


def with_storage_retries(
    operation: Callable[[], _T],
    *,
    what: str,
    give_up: threading.Event,
    seconds: float = STORAGE_RETRY_SECONDS,
) -> _T:
    """Make a storage call, again while it fails transiently, for up to `seconds` or until `give_up` is set.

    A call whose answer was lost (ServiceResponseError) may have been carried out: a repeated send can
    then write a message twice. That is the at-least-once of queue outputs; a call that never reached
    the service (ServiceRequestError: Azurite restarting) is repeated without that risk.
    """
    deadline = time.monotonic() + seconds
    wait = STORAGE_RETRY_FIRST_WAIT
    failures = 0
    while True:
        try:
            result = operation()
        except AzureError as err:
            if not is_transient_storage_error(err) or time.monotonic() + wait > deadline or give_up.is_set():
                raise
            failures += 1
            if failures == 1:
                logger.info("%s failed (%s); retrying until storage answers", what, _first_line(err))
            give_up.wait(wait * random.uniform(0.8, 1.2))
            wait = min(wait * 2, STORAGE_RETRY_MAX_WAIT)
            continue
        if failures:
            logger.info("%s succeeded after %d retries", what, failures)
        return result


class QueueClients:
    """One QueueServiceClient per connection string, and queues created once when a write needs them.

    The SDK's own retries are off: `with_storage_retries` retries with short waits, and stops
    when the runner stops (`close()` sets `closing`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._services: dict[str, QueueServiceClient] = {}
        self._created: set[tuple[str, str]] = set()
        self.closing = threading.Event()

    def queue(self, connection_string: str, name: str) -> QueueClient:
        with self._lock:
            service = self._services.get(connection_string)
            if service is None:
                service = QueueServiceClient.from_connection_string(connection_string, retry_total=0)
                self._services[connection_string] = service
        return service.get_queue_client(name)

    def retrying(self, operation: Callable[[], _T], *, what: str) -> _T:
        """`operation` with the runner's storage retries."""
        return with_storage_retries(operation, what=what, give_up=self.closing)

    def send(self, connection_string: str, name: str, content: str) -> None:
        """Send one message, creating the queue first if it does not exist (as the host's output binding does).

        Retried while storage is unreachable; raises once it has been for STORAGE_RETRY_SECONDS.
        """
        client = self.queue(connection_string, name)
        if (connection_string, name) not in self._created:
            try:
                self.retrying(client.create_queue, what=f"Creating queue '{name}'")
            except ResourceExistsError:
                pass
            with self._lock:
                self._created.add((connection_string, name))
        self.retrying(lambda: client.send_message(content), what=f"Writing a message to queue '{name}'")

    def close(self) -> None:
        self.closing.set()
        with self._lock:
            services, self._services = list(self._services.values()), {}
        for service in services:
            service.close()


# --- the app's functions ------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueOutput:
    """A queue output binding, its queue name and connection resolved."""

    arg_name: str
    queue_name: str
    connection_string: str


@dataclass(frozen=True)
class RouteTemplate:
    """An HTTP trigger route, matched like the host's (case-insensitive literals, `{name}` parameters)."""

    template: str
    pattern: re.Pattern[str]
    precedence: tuple[int, ...]

    @classmethod
    def parse(cls, template: str) -> RouteTemplate:
        segments = [segment for segment in template.strip("/").split("/")]
        regex, precedence = "", []
        for segment in segments:
            parameters = list(_ROUTE_PARAMETER.finditer(segment))
            if not parameters:
                regex += "/" + re.escape(segment)
                precedence.append(1)
                continue
            part, position, optional = "", 0, False
            for match in parameters:
                part += re.escape(segment[position : match.start()])
                catch_all, name, constraint, question = match.groups()
                if catch_all:
                    part += f"(?P<{name}>.*)"
                else:
                    part += f"(?P<{name}>{_CONSTRAINT_PATTERNS.get((constraint or '').split('(')[0], '[^/]+')})"
                optional = optional or bool(question) or bool(catch_all)
                position = match.end()
            part += re.escape(segment[position:])
            whole_segment = len(parameters) == 1 and parameters[0].span() == (0, len(segment))
            regex += f"(?:/{part})?" if optional and whole_segment else "/" + part
            if parameters[0].group(1):
                precedence.append(5)
            elif not whole_segment:
                precedence.append(2)
            else:
                precedence.append(3 if parameters[0].group(3) else 4)
        return cls(template, re.compile(regex + "/?", re.IGNORECASE), tuple(precedence))

    def match(self, path: str) -> dict[str, str] | None:
        """The route parameters if `path` (below the route prefix, starting with `/`) matches."""
        found = self.pattern.fullmatch(path)
        if found is None:
            return None
        return {name: value for name, value in found.groupdict().items() if value is not None}


@dataclass(frozen=True)
class LocalFunction:
    """One function of the app, as the runner invokes it."""

    name: str
    user_function: Callable[..., Any]
    trigger_type: str
    trigger_arg: str
    trigger: Mapping[str, Any]  # the trigger binding's dict representation, settings resolved
    queue_outputs: tuple[QueueOutput, ...]
    http_route: RouteTemplate | None = None
    http_methods: frozenset[str] | None = None  # None: every method
    auth_level: str = "function"
    trigger_queue: str = ""
    trigger_connection_string: str = ""
    has_return: bool = False  # a `$return` binding (an HTTP trigger's http output)
    timer_schedule: str = ""  # a timer trigger's six-field NCRONTAB expression


_indexed_apps: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()
_index_lock = threading.Lock()


def app_functions(app: func.FunctionApp) -> list[Any]:
    """`app.get_functions()`, asked once per app object (azure-functions refuses a second indexing)."""
    with _index_lock:
        functions = _indexed_apps.get(app)
        if functions is None:
            functions = app.get_functions()
            _indexed_apps[app] = functions
        return functions


def index_functions(app: func.FunctionApp, settings: Mapping[str, str]) -> list[LocalFunction]:
    """Read every function's trigger and bindings from the app, resolving `%SETTING%` names."""
    indexed = []
    for function in app_functions(app):
        name = function.get_function_name()
        trigger_arg, trigger_type, trigger = "", "", {}
        outputs: list[QueueOutput] = []
        has_return = False
        for binding in function.get_bindings():
            spec = binding.get_dict_repr()
            kind, arg = spec["type"], spec["name"]
            where = f"function '{name}', binding '{arg}'"
            if kind in ("httpTrigger", "queueTrigger", "timerTrigger"):
                trigger_arg, trigger_type = arg, kind
                trigger = {key: _resolved(value, settings, where) for key, value in spec.items()}
            elif kind == "queue":
                outputs.append(
                    QueueOutput(
                        arg_name=arg,
                        queue_name=resolve_setting_references(spec["queueName"], settings, where=where),
                        connection_string=storage_connection_string(
                            spec.get("connection") or "AzureWebJobsStorage", settings
                        ),
                    )
                )
            elif kind == "http" and arg == "$return":
                has_return = True
            else:
                raise RunnerError(f"{where}: the local runner does not support '{kind}' bindings")
        if not trigger_type:
            raise RunnerError(
                f"function '{name}' has no trigger the local runner supports (httpTrigger, queueTrigger, timerTrigger)"
            )
        user_function = function.get_user_function()
        bound = {trigger_arg, *(output.arg_name for output in outputs)}
        unbound = [p for p in inspect.signature(user_function).parameters if p not in bound]
        if unbound:
            raise RunnerError(
                f"function '{name}': parameter(s) {', '.join(unbound)} have no binding the runner supports"
            )
        check_annotations(
            name,
            user_function,
            {trigger_arg: (trigger_type, False), **{output.arg_name: ("queue", True) for output in outputs}},
        )
        common = dict(
            name=name,
            user_function=user_function,
            trigger_type=trigger_type,
            trigger_arg=trigger_arg,
            trigger=trigger,
            queue_outputs=tuple(outputs),
            has_return=has_return,
        )
        if trigger_type == "httpTrigger":
            methods = trigger.get("methods")
            indexed.append(
                LocalFunction(
                    **common,
                    http_route=RouteTemplate.parse(trigger.get("route") or name),
                    http_methods=frozenset(_enum_value(m).upper() for m in methods) if methods else None,
                    auth_level=_enum_value(trigger.get("authLevel") or "function").lower(),
                )
            )
        elif trigger_type == "timerTrigger":
            schedule = str(trigger.get("schedule") or "")
            NcrontabSchedule.parse(schedule, where=f"function '{name}'")  # refused at start, as the host does
            indexed.append(LocalFunction(**common, timer_schedule=schedule))
        else:
            indexed.append(
                LocalFunction(
                    **common,
                    trigger_queue=trigger["queueName"],
                    trigger_connection_string=storage_connection_string(
                        trigger.get("connection") or "AzureWebJobsStorage", settings
                    ),
                )
            )
    return indexed


def check_annotations(
    function_name: str, user_function: Callable[..., Any], bindings: Mapping[str, tuple[str, bool]]
) -> None:
    """Refuse the parameter annotations the Python worker refuses to load (its `Registry.add_function`).

    `bindings` maps each parameter to its binding type and whether it is an output. In Azure such a
    function fails to load, and with the v2 programming model so does every function of the app.
    """
    try:
        hints = typing.get_type_hints(user_function)
    except Exception as err:  # noqa: BLE001 - whatever fails here fails in the worker too
        raise RunnerError(f"function '{function_name}': its annotations cannot be evaluated ({err})") from err
    registry = get_binding_registry()
    for arg, (binding_type, is_output) in bindings.items():
        if arg not in hints:
            continue
        annotation = hints[arg]
        where = f"function '{function_name}', parameter '{arg}: {_annotation_text(annotation)}'"
        annotated_output = annotation is func.Out or typing.get_origin(annotation) is func.Out
        if annotated_output != is_output:
            direction = "an output binding: annotate it func.Out[...]" if is_output else "an input: not func.Out"
            raise RunnerError(f"{where}: the binding is {direction}")
        py_type = typing.get_args(annotation)[0] if annotated_output else annotation
        # The worker accepts classes and typing generics (typing.List[str]) only, not list[str]
        # (azure-functions-python-worker issue 1034).
        if not isinstance(py_type, type) and not isinstance(py_type, typing._GenericAlias):  # type: ignore[attr-defined]
            raise RunnerError(
                f"{where}: the Python worker refuses to load this annotation; use typing.List[...] "
                "instead of list[...] (builtin generics are not supported by azure-functions-python-worker)"
            )
        if py_type in (str, bytes):
            continue
        converter = registry.get(binding_type)
        check = converter.check_output_type_annotation if is_output else converter.check_input_type_annotation
        if not check(py_type):
            raise RunnerError(f"{where}: the Python worker does not accept this type for a '{binding_type}' binding")


def _annotation_text(annotation: Any) -> str:
    return (
        annotation.__name__
        if isinstance(annotation, type)
        else repr(annotation).replace("azure.functions._abc.", "func.")
    )


def _resolved(value: Any, settings: Mapping[str, str], where: str) -> Any:
    return resolve_setting_references(value, settings, where=where) if isinstance(value, str) else value


def _enum_value(value: Any) -> str:
    return str(getattr(value, "value", value))


def load_function_app(app_dir: Path) -> func.FunctionApp:
    """Import `function_app.py` from `app_dir`, as the Python worker does, and return its FunctionApp."""
    app_dir = app_dir.resolve()
    script = app_dir / "function_app.py"
    if not script.is_file():
        raise RunnerError(f"no function_app.py in {app_dir}")
    if str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))
    module: ModuleType | None = sys.modules.get("function_app")
    if module is None or Path(getattr(module, "__file__", "")).resolve() != script:
        spec = importlib.util.spec_from_file_location("function_app", script)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["function_app"] = module
        spec.loader.exec_module(module)
    apps = [value for value in vars(module).values() if isinstance(value, func.FunctionApp)]
    if len(apps) != 1:
        raise RunnerError(f"{script} must define exactly one FunctionApp, found {len(apps)}")
    return apps[0]


# --- invoking a function ------------------------------------------------------------------------


class OutputValue(func.Out):
    """What the function set on one output binding (the worker's `func.Out`)."""

    def __init__(self) -> None:
        self._value: Any = None

    def set(self, val: Any) -> None:
        self._value = val

    def get(self) -> Any:
        return self._value


class InvocationPool:
    """The Python worker's one thread pool: every sync invocation, HTTP or queue, runs in it.

    Worker `azure_functions_worker/dispatcher.py`: `__init__` makes one `_sync_call_tp` per process, sized
    by `_get_sync_tp_max_workers` (see `host_rules.worker_thread_count`), and `_handle__invocation_request`
    runs a sync function with `loop.run_in_executor(self._sync_call_tp, ...)` and a coroutine function
    (`fi.is_async`) on the worker's one event loop instead. Callers (HTTP connection threads, the queue
    listeners' dispatch threads, which stand for the host's side) wait here for a free worker thread.
    """

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="worker-sync")
        self._lock = threading.Lock()
        self._waiting = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def waiting(self) -> int:
        """Sync invocations submitted that wait for a free worker thread."""
        with self._lock:
            return self._waiting

    def call(self, user_function: Callable[..., Any], arguments: Mapping[str, Any]) -> Any:
        """Run one invocation in the worker's pool (or on its event loop) and return its result."""
        if inspect.iscoroutinefunction(user_function):
            return asyncio.run_coroutine_threadsafe(user_function(**arguments), self._event_loop()).result()
        with self._lock:
            self._waiting += 1
        try:
            future = self._executor.submit(self._run, user_function, arguments)
        except RuntimeError:
            with self._lock:
                self._waiting -= 1
            raise
        return future.result()

    def _run(self, user_function: Callable[..., Any], arguments: Mapping[str, Any]) -> Any:
        with self._lock:
            self._waiting -= 1
        return user_function(**arguments)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="worker-event-loop", daemon=True).start()
            return self._loop

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)


def invoke(function: LocalFunction, trigger_value: Any, pool: InvocationPool) -> tuple[Any, dict[str, Any]]:
    """Call the user function in the worker's pool; return its return value and its output bindings' values.

    A function without a `$return` binding that returns a value fails, as in the worker
    (`dispatcher.py` `_handle__invocation_request`: "without a $return binding returned a non-None value").
    """
    outputs = {output.arg_name: OutputValue() for output in function.queue_outputs}
    result = pool.call(function.user_function, {function.trigger_arg: trigger_value, **outputs})
    if result is not None and not function.has_return:
        raise RuntimeError(f"function {function.name!r} without a $return binding returned a non-None value")
    return result, {name: value.get() for name, value in outputs.items()}


def output_messages(value: Any) -> list[bytes]:
    """The queue messages an output value ends as: encoded as the worker encodes it (str, bytes, QueueMessage
    or a list of str/QueueMessage; anything else fails the invocation), then converted as the host converts
    it (`host_rules.host_output_messages`: a JSON-looking string re-serialized by Newtonsoft, a list element by
    element)."""
    if value is None:
        return []  # the function never set this output (dispatcher.py skips a None output)
    return host_output_messages(QueueMessageOutConverter.encode(value, expected_type=None))


@contextmanager
def _invocation_log(function: LocalFunction, reason: str) -> Iterator[str]:
    """The host's Executing/Executed lines around one invocation."""
    invocation_id = str(uuid.uuid4())
    started = time.monotonic()
    logger.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", function.name, reason, invocation_id)
    try:
        yield invocation_id
    except Exception:
        logger.exception(
            "Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms)",
            function.name,
            invocation_id,
            (time.monotonic() - started) * 1000,
        )
        raise
    logger.info(
        "Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)",
        function.name,
        invocation_id,
        (time.monotonic() - started) * 1000,
    )


# --- HTTP triggers --------------------------------------------------------------------------------


class _HttpHandler(QuietHandler):
    """Hands every request to the runner; one thread per connection, whose invocation waits for the worker's pool."""

    server: EmulatorServer

    def _dispatch(self) -> None:
        self.server.app.handle_http(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch


class HttpFrontEnd:
    """Routes `/<routePrefix>/...` to the app's HTTP triggers, checks function keys, builds HttpRequests."""

    def __init__(
        self,
        functions: Sequence[LocalFunction],
        *,
        route_prefix: str,
        function_key: str,
        queues: QueueClients,
        pool: InvocationPool,
    ) -> None:
        self._pool = pool
        http_functions = [f for f in functions if f.http_route is not None]
        self._functions = sorted(http_functions, key=lambda f: f.http_route.precedence)  # type: ignore[union-attr]
        self._prefix = "/" + route_prefix if route_prefix else ""
        self._function_key = function_key
        self._queues = queues

    def handle_http(self, handler: QuietHandler) -> None:
        raw_path, _, raw_query = handler.path.partition("?")
        body = forwarded_body(handler.headers.get("Content-Length"), handler.read_body())
        path = _decoded_path(raw_path)
        if path.rstrip("/") == "/admin/host/status":
            handler.send_json(200, {"state": "Running", "version": "local-runner"})
            return
        function, route_params = self._route(handler.command, path)
        if function is None:
            handler.send_raw(404, b"", content_type="text/plain")
            return
        query = _query_params(raw_query)
        if function.auth_level != "anonymous" and not self._has_key(handler, query):
            handler.send_raw(401, b"", content_type="text/plain")
            return
        request = func.HttpRequest(
            method=handler.command,
            url=f"http://{handler.headers.get('host') or '127.0.0.1'}{handler.path}",
            headers=_request_headers(handler),
            params=query,
            route_params=route_params,
            body=body,
        )
        status, headers, content_type, response_body = self._invoke(function, request)
        handler.send_raw(status, b"" if handler.command == "HEAD" else response_body, headers, content_type)

    def _route(self, method: str, path: str) -> tuple[LocalFunction | None, dict[str, str]]:
        prefix = self._prefix
        if prefix:
            if not path.lower().startswith(prefix.lower() + "/"):
                return None, {}
            path = path[len(prefix) :]
        for function in self._functions:
            if function.http_methods is not None and method.upper() not in function.http_methods:
                continue
            params = function.http_route.match(path)  # type: ignore[union-attr]
            if params is not None:
                return function, params
        return None, {}

    def _has_key(self, handler: QuietHandler, query: Mapping[str, str]) -> bool:
        offered = handler.headers.get("x-functions-key") or query.get("code") or ""
        return hmac.compare_digest(offered.encode("utf-8"), self._function_key.encode("utf-8"))

    def _invoke(
        self, function: LocalFunction, request: func.HttpRequest
    ) -> tuple[int, list[tuple[str, str]], str, bytes]:
        """Run the function; a failure answers 500 with no body and writes no output, as the host does."""
        try:
            with _invocation_log(function, "This function was programmatically called via the host APIs."):
                result, outputs = invoke(function, request, self._pool)
                response = _http_response(result)
                write_outputs(self._queues, function, outputs)
        except Exception:  # noqa: BLE001 - reported by _invocation_log; the caller gets the host's 500
            return 500, [], "text/plain", b""
        return response


def _first_line(err: Exception) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0]


def _decoded_path(raw_path: str) -> str:
    """The path with percent-escapes decoded except `%2F`, which stays inside its segment (as in ASP.NET Core)."""
    return "%2F".join(unquote(piece) for piece in _ENCODED_SLASH.split(raw_path))


def _query_params(raw_query: str) -> dict[str, str]:
    """Query parameters; repeated names are joined with commas, like the host's StringValues."""
    params: dict[str, list[str]] = {}
    for name, value in parse_qsl(raw_query, keep_blank_values=True):
        params.setdefault(name, []).append(value)
    return {name: ",".join(values) for name, values in params.items()}


def _request_headers(handler: QuietHandler) -> dict[str, str]:
    headers: dict[str, list[str]] = {}
    for name, value in handler.headers.items():
        headers.setdefault(name.lower(), []).append(value)
    return {name: ", ".join(values) for name, values in headers.items()}


def forwarded_body(content_length: str | None, body: bytes) -> bytes:
    """The body the function sees: the host forwards one only when Content-Length is above 0, so a chunked
    body (no Content-Length) arrives empty. Host `src/WebJobs.Script.Grpc/MessageExtensions/
    GrpcMessageConversionExtensions.cs` `ToRpcHttp`: `if (request.Body != null && request.ContentLength > 0)`.
    The runner still reads the chunks, to keep the connection usable."""
    try:
        return body if content_length is not None and int(content_length) > 0 else b""
    except ValueError:
        return b""


def _http_response(result: Any) -> tuple[int, list[tuple[str, str]], str, bytes]:
    """Status, headers, content type and body of what an HTTP function returned (as the Python worker converts it).

    `azure.functions` http.py `HttpResponseConverter.encode` takes a str or an HttpResponse and raises
    NotImplementedError for anything else (None, bytes), which the worker's `bindings/meta.py` `get_datum` turns
    into a TypeError: the invocation fails, and the host answers 500.
    """
    if isinstance(result, func.HttpResponse):
        headers = [(name, value) for name, value in result.headers.items()]
        content_type = next((value for name, value in headers if name.lower() == "content-type"), None)
        if content_type is None:
            content_type = result.mimetype
            if result.mimetype.startswith("text/"):
                content_type += f"; charset={result.charset}"
        kept = [(n, v) for n, v in headers if n.lower() not in ("content-type", "content-length")]
        return result.status_code, kept, content_type, result.get_body() or b""
    if isinstance(result, str):
        return 200, [], "text/plain; charset=utf-8", result.encode("utf-8")
    raise TypeError(
        f'unable to encode outgoing TypedData: unsupported type "http" for Python type "{type(result).__name__}"'
    )


def write_outputs(
    queues: QueueClients, function: LocalFunction, values: Mapping[str, Any], *, base64_encode: bool = False
) -> None:
    """Send what the function set on its queue outputs; runs only after it returned normally."""
    for output in function.queue_outputs:
        for message in output_messages(values.get(output.arg_name)):
            # With messageEncoding none the message is the bytes read as UTF-8 (as .NET's BinaryData.ToString()).
            content = (
                base64.b64encode(message).decode("ascii") if base64_encode else message.decode("utf-8", "replace")
            )
            queues.send(output.connection_string, output.queue_name, content)


# --- queue triggers -------------------------------------------------------------------------------


class _Lease:
    """A received message while its function runs: its current pop receipt, renewed halfway through the lease.

    Each storage call on the message changes its pop receipt, so they are made one at a time (`lock`).
    """

    def __init__(self, message: Any, seconds: float) -> None:
        self.message = message
        self.pop_receipt: str = message.pop_receipt
        self.seconds = seconds
        self.renew_at = time.monotonic() + seconds / 2
        self.lock = threading.Lock()
        self.held = True  # False once the message is being settled, or the lease was lost


class QueueListener:
    """Polls one queue trigger's queue and runs its messages in a thread pool, as the host's queue listener does."""

    def __init__(
        self,
        function: LocalFunction,
        *,
        host: HostSettings,
        queues: QueueClients,
        visibility_timeout: float,
        max_polling_interval: float,
        pool: InvocationPool,
        processing_lease: float = PROCESSING_LEASE_SECONDS,
    ) -> None:
        self.function = function
        self._worker_pool = pool
        self._host = host
        self._queues = queues
        self._visibility_timeout = visibility_timeout
        self._lease_seconds = max(int(round(processing_lease)), 2)
        self._leases: dict[str, _Lease] = {}
        self._leases_lock = threading.Lock()
        self._max_polling_interval = max(max_polling_interval, MIN_POLLING_INTERVAL)
        self._queue = queues.queue(function.trigger_connection_string, function.trigger_queue)
        self._poison_name = f"{function.trigger_queue}-poison"
        # The host's side: up to batchSize + newBatchThreshold messages in flight, each waiting for the worker.
        self._concurrency = host.batch_size + host.new_batch_threshold
        self._pool = ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix=f"queue-{function.name}")
        self._stop = threading.Event()
        self._slots = threading.Condition()
        self._running = 0
        self._thread = threading.Thread(target=self._poll_loop, name=f"listener-{function.name}", daemon=True)
        self._renewer = threading.Thread(target=self._renew_loop, name=f"leases-{function.name}", daemon=True)
        self._missing_queue_reported = False
        self._failed_polls = 0

    def start(self) -> None:
        self._thread.start()
        self._renewer.start()

    def stop(self, grace: float) -> None:
        """Stop polling, then wait up to `grace` seconds for running invocations."""
        self._stop.set()
        with self._slots:
            self._slots.notify_all()
        self._thread.join(timeout=5)
        deadline = time.monotonic() + grace
        with self._slots:
            while self._running and time.monotonic() < deadline:
                self._slots.wait(timeout=max(deadline - time.monotonic(), 0.01))
        self._pool.shutdown(wait=False)

    def _poll_loop(self) -> None:
        interval = MIN_POLLING_INTERVAL
        while not self._stop.is_set():
            with self._slots:
                # A new batch is fetched once running messages drop to newBatchThreshold.
                while self._running > self._host.new_batch_threshold and not self._stop.is_set():
                    self._slots.wait(timeout=1.0)
            if self._stop.is_set():
                return
            try:
                messages = self._receive()
            except Exception as err:  # noqa: BLE001 - the poller outlives storage failures: it backs off, polls again
                self._poll_failed(err)
                messages = []
            for message in messages:
                with self._slots:
                    self._running += 1
                self._pool.submit(self._process, message).add_done_callback(self._release_slot)
            if len(messages) == self._host.batch_size:
                interval = MIN_POLLING_INTERVAL
                continue
            if messages:
                interval = MIN_POLLING_INTERVAL
            self._stop.wait(interval)
            if not messages:
                # Randomised exponential back-off up to maxPollingInterval, as the host's.
                interval = min(interval * 2 * random.uniform(0.8, 1.2), self._max_polling_interval)

    def _release_slot(self, _future: Future[None]) -> None:
        with self._slots:
            self._running -= 1
            self._slots.notify_all()

    def _receive(self) -> list[Any]:
        try:
            pages = self._queue.receive_messages(
                messages_per_page=self._host.batch_size,
                max_messages=self._host.batch_size,
                visibility_timeout=self._lease_seconds,
            )
            messages = list(pages)
        except ResourceNotFoundError:
            if not self._missing_queue_reported:
                logger.info("Queue '%s' does not exist yet; polling until it does", self.function.trigger_queue)
                self._missing_queue_reported = True
            return []
        self._missing_queue_reported = False
        if self._failed_polls:
            logger.info(
                "Polling queue '%s' works again after %d failed polls", self.function.trigger_queue, self._failed_polls
            )
            self._failed_polls = 0
        return messages

    def _poll_failed(self, err: Exception) -> None:
        """Say once per outage that polling fails (the loop backs off up to maxPollingInterval meanwhile)."""
        self._failed_polls += 1
        if self._failed_polls == 1:
            logger.warning(
                "Polling queue '%s' failed: %s; polling again with back-off until it answers",
                self.function.trigger_queue,
                _first_line(err),
            )

    def _process(self, message: Any) -> None:
        """One message: invoke, then delete (success), hide for visibilityTimeout, or move to the poison queue."""
        function = self.function
        lease = self._hold(message)
        try:
            if message.dequeue_count > self._host.max_dequeue_count:
                # A message that failed its last attempt without being moved (the runner stopped).
                self._move_to_poison(message, self._settle(lease))
                return
            reason = f"New queue message detected on '{function.trigger_queue}'."
            try:
                with _invocation_log(function, reason) as invocation_id:
                    logger.info(
                        "Trigger Details: MessageId: %s, DequeueCount: %d, InsertedOn: %s (invocation %s)",
                        message.id,
                        message.dequeue_count,
                        message.inserted_on,
                        invocation_id,
                    )
                    _, outputs = invoke(function, self._queue_message(message), self._worker_pool)
                    # Retried while storage is away (a restart); the invocation fails only if it stays away.
                    write_outputs(
                        self._queues, function, outputs, base64_encode=self._host.message_encoding == "base64"
                    )
            except Exception:  # noqa: BLE001 - logged by _invocation_log; the message's fate follows
                self._after_failure(message, self._settle(lease))
                return
            self._delete(message, self._settle(lease))
        except Exception:  # noqa: BLE001 - a storage failure here leaves the message to reappear after its lease
            logger.exception("Could not settle message %s on queue '%s'", message.id, function.trigger_queue)
        finally:
            self._settle(lease)

    def _hold(self, message: Any) -> _Lease:
        lease = _Lease(message, self._lease_seconds)
        with self._leases_lock:
            self._leases[message.id] = lease
        return lease

    def _settle(self, lease: _Lease) -> str:
        """Stop renewing a message's lease; return its current pop receipt, for the call that settles it."""
        with lease.lock:
            lease.held = False
            pop_receipt = lease.pop_receipt
        with self._leases_lock:
            self._leases.pop(lease.message.id, None)
        return pop_receipt

    def _renew_loop(self) -> None:
        """Renew the lease of each message whose function still runs, halfway through it (as the host does)."""
        tick = min(1.0, self._lease_seconds / 4)
        while not self._queues.closing.wait(tick):
            if self._stop.is_set() and not self._leases:
                return
            now = time.monotonic()
            with self._leases_lock:
                due = [lease for lease in self._leases.values() if lease.renew_at <= now]
            for lease in due:
                self._renew(lease)

    def _renew(self, lease: _Lease) -> None:
        message = lease.message
        with lease.lock:
            if not lease.held:
                return
            try:
                renewed = self._queues.retrying(
                    lambda: self._queue.update_message(message.id, lease.pop_receipt, visibility_timeout=lease.seconds),
                    what=f"Renewing the lease of message {message.id}",
                )
            except ResourceNotFoundError:
                # The lease ran out (storage was away too long) or a renewal's answer was lost: the
                # message will be delivered again, and its delete here will find it gone.
                lease.held = False
                logger.warning("Message %s: its lease was lost; it will be delivered again", message.id)
                return
            except Exception as err:  # noqa: BLE001 - tried again on the next tick, while the lease lasts
                logger.warning("Renewing the lease of message %s failed: %s", message.id, _first_line(err))
                lease.renew_at = time.monotonic() + 1.0
                return
            lease.pop_receipt = renewed.pop_receipt
            lease.renew_at = time.monotonic() + lease.seconds / 2

    def _delete(self, message: Any, pop_receipt: str) -> None:
        """Delete a settled message, retrying while storage is away; one already gone counts as deleted."""
        try:
            self._queues.retrying(
                lambda: self._queue.delete_message(message.id, pop_receipt),
                what=f"Deleting message {message.id}",
            )
        except ResourceNotFoundError:
            # An earlier try was carried out but its answer lost, or the lease ran out and another
            # poll holds the message now (it will be delivered again).
            logger.info("Message %s was no longer on queue '%s' to delete", message.id, self.function.trigger_queue)

    def _queue_message(self, message: Any) -> QueueMessage:
        content = message.content
        body = content.encode("utf-8") if isinstance(content, str) else bytes(content or b"")
        if self._host.message_encoding == "base64":
            try:
                body = base64.b64decode(body, validate=True)
            except (binascii.Error, ValueError) as err:
                raise RunnerError(
                    f"message {message.id} is not base64 text, and host.json's messageEncoding is base64"
                ) from err
        return queue_message_for_worker(
            body,
            {
                "QueueTrigger": body.decode("utf-8", "replace"),
                "Id": message.id,
                "DequeueCount": message.dequeue_count,
                "ExpirationTime": message.expires_on,
                "InsertionTime": message.inserted_on,
                "NextVisibleTime": message.next_visible_on,
                "PopReceipt": message.pop_receipt,
            },
        )

    def _after_failure(self, message: Any, pop_receipt: str) -> None:  # the real dequeue count, as the host
        if message.dequeue_count >= self._host.max_dequeue_count:
            self._move_to_poison(message, pop_receipt)
            return
        try:
            self._queues.retrying(
                lambda: self._queue.update_message(
                    message.id, pop_receipt, visibility_timeout=int(round(self._visibility_timeout))
                ),
                what=f"Making message {message.id} visible again",
            )
        except ResourceNotFoundError:
            # An earlier try was carried out (the pop receipt changed), or the lease ran out: either
            # way the message becomes visible again by itself.
            logger.info("Message %s: its visibility was already changed", message.id)

    def _move_to_poison(self, message: Any, pop_receipt: str) -> None:
        logger.warning(
            "Message has reached MaxDequeueCount of %d. Moving message to queue '%s'.",
            self._host.max_dequeue_count,
            self._poison_name,
        )
        self._queues.send(self.function.trigger_connection_string, self._poison_name, message.content)
        self._delete(message, pop_receipt)


def queue_message_for_worker(body: bytes, binding_data: Mapping[str, Any]) -> QueueMessage:
    """The func.QueueMessage the function gets: built by the worker's own converter (`azure.functions` queue.py
    `QueueMessageInConverter.decode`) from the trigger metadata the host sends, in which the message's top-level
    JSON fields have replaced the real values (`host_rules.queue_trigger_metadata`). A field the converter
    cannot read (`"DequeueCount": "x"`) fails the invocation, as in the worker. The runner settles the
    message with the real id, pop receipt and dequeue count, as the host does."""
    real = {name: host_metadata_datum(value) for name, value in binding_data.items() if value is not None}
    metadata = queue_trigger_metadata(body, real)
    return QueueMessageInConverter.decode(Datum(type="bytes", value=body), trigger_metadata=metadata)


# --- the runner -----------------------------------------------------------------------------------


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


class NcrontabSchedule:
    """A six-field NCRONTAB expression (`{second} {minute} {hour} {day} {month} {day-of-week}`), as the host's
    timer trigger reads it (azure-webjobs-sdk-extensions `TimerTriggerAttribute`, NCrontab `CrontabSchedule`):
    `*`, `a`, `a-b`, `*/n`, `a-b/n` and lists. Names (`Mon`, `Jan`) and TimeSpan schedules are refused here.
    """

    _RANGES = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6))

    def __init__(self, fields: tuple[frozenset[int], ...]) -> None:
        self._fields = fields

    @classmethod
    def parse(cls, expression: str, *, where: str) -> NcrontabSchedule:
        parts = expression.split()
        if len(parts) != 6:
            raise RunnerError(f"{where}: timer schedule '{expression}' is not six NCRONTAB fields")
        try:
            return cls(tuple(cls._field(part, low, high) for part, (low, high) in zip(parts, cls._RANGES, strict=True)))
        except ValueError as err:
            raise RunnerError(f"{where}: timer schedule '{expression}' is not one the local runner reads") from err

    @staticmethod
    def _field(text: str, low: int, high: int) -> frozenset[int]:
        values: set[int] = set()
        for item in text.split(","):
            span, _, step = item.partition("/")
            first, last = (low, high) if span == "*" else (int(span.split("-")[0]), int(span.split("-")[-1]))
            if not low <= first <= last <= high:
                raise ValueError(item)
            values.update(range(first, last + 1, int(step) if step else 1))
        return frozenset(values)

    def matches(self, moment: time.struct_time) -> bool:
        second, minute, hour, day, month, weekday = self._fields
        return (
            moment.tm_sec in second
            and moment.tm_min in minute
            and moment.tm_hour in hour
            and moment.tm_mday in day
            and moment.tm_mon in month
            and (moment.tm_wday + 1) % 7 in weekday  # NCRONTAB: Sunday is 0
        )


class TimerScheduler:
    """Fires the app's timer triggers in UTC, each second that their schedule names, in the worker's pool."""

    def __init__(self, functions: Sequence[LocalFunction], pool: InvocationPool) -> None:
        self._timers = [
            (function, NcrontabSchedule.parse(function.timer_schedule, where=function.name)) for function in functions
        ]
        self._pool = pool
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="timers", daemon=True)

    def start(self) -> None:
        if self._timers:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        second = int(time.time())
        while not self._stop.wait(max(0.0, second + 1 - time.time())):
            second += 1
            moment = time.gmtime(second)
            for function, schedule in self._timers:
                if schedule.matches(moment):
                    self._fire(function)

    def _fire(self, function: LocalFunction) -> None:
        with contextlib.suppress(Exception), _invocation_log(function, "Timer fired"):
            invoke(function, TimerRequest(past_due=False), self._pool)  # what the worker's TimerRequestConverter builds


class FunctionsRunner:
    """Runs a FunctionApp's HTTP and queue triggers locally; `start()`/`stop()`, or use it as a context manager.

    `settings` are app settings laid over os.environ while the runner runs (the app reads os.environ;
    one such runner per process at a time). `visibility_timeout` and `max_polling_interval` override
    host.json's values: a test knob, so a retry test does not wait 30 s per attempt. `processing_lease`
    (the host's: 600 s) is one too: how long messages whose receive answer was lost stay hidden.
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
            front_end = HttpFrontEnd(
                self.functions,
                route_prefix=self.host_settings.route_prefix,
                function_key=self.function_key,
                queues=self._queues,
                pool=self._pool,
            )
            try:
                server = EmulatorServer(self._address, _HttpHandler, app=front_end)
            except OSError as err:
                host, port = self._address
                raise RunnerError(
                    f"cannot listen on http://{host}:{port} ({err.strerror}); is another runner or `func start` "
                    "using it? Choose another port (--port, or FUNCTIONS_PORT for make run)"
                ) from err
            self._server = BackgroundServer(server, "functions-http")
            self._timers = TimerScheduler(
                [function for function in self.functions if function.trigger_type == "timerTrigger"], self._pool
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
            else:
                lines.append(f"{function.name}: queueTrigger on '{function.trigger_queue}'")
        return lines


# --- command line ---------------------------------------------------------------------------------


def load_settings_file(path: Path) -> dict[str, str]:
    """The `Values` of a local.settings.json."""
    try:
        values = json.loads(path.read_text(encoding="utf-8")).get("Values") or {}
    except (OSError, ValueError) as err:
        raise RunnerError(f"cannot read {path}: {err}") from err
    return {str(name): str(value) for name, value in values.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.runner",
        description="Run function_app.py locally against Azurite: a development tool that mirrors the "
        "Functions host's behaviour, not the host. App settings come from the environment.",
    )
    parser.add_argument("--app-dir", type=Path, default=Path.cwd(), help="folder of function_app.py and host.json")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument(
        "--function-key",
        default=os.environ.get(FUNCTION_KEY_ENV) or DEFAULT_FUNCTION_KEY,
        help=f"key for auth level FUNCTION routes (default: ${FUNCTION_KEY_ENV} or {DEFAULT_FUNCTION_KEY})",
    )
    parser.add_argument(
        "--settings-file", type=Path, help="a local.settings.json whose Values fill in settings the environment lacks"
    )
    parser.add_argument(
        "--visibility-timeout", type=float, metavar="SECONDS", help="test knob: overrides host.json's visibilityTimeout"
    )
    parser.add_argument(
        "--max-polling-interval",
        type=float,
        metavar="SECONDS",
        help="test knob: overrides host.json's maxPollingInterval",
    )
    parser.add_argument(
        "--processing-lease",
        type=float,
        default=PROCESSING_LEASE_SECONDS,
        metavar="SECONDS",
        help="test knob: how long a received message stays hidden, renewed halfway (the host's: 600)",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)  # the SDKs log every request at INFO

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        if args.settings_file:
            for name, value in load_settings_file(args.settings_file).items():
                os.environ.setdefault(name, value)
        runner = FunctionsRunner(
            load_function_app(args.app_dir),
            host_settings=HostSettings.from_host_json(args.app_dir / "host.json"),
            host=args.host,
            port=args.port,
            function_key=args.function_key,
            visibility_timeout=args.visibility_timeout,
            max_polling_interval=args.max_polling_interval,
            processing_lease=args.processing_lease,
        ).start()
    except (RunnerError, OSError) as err:
        print(f"runner: {err}", file=sys.stderr, flush=True)
        return 1
    print("Functions:", flush=True)
    for line in runner.describe():
        print("    " + line, flush=True)
    print(
        "runner ready " + json.dumps({"url": runner.base_url, "api_url": runner.api_url, "port": runner.port}),
        flush=True,
    )
    try:
        stop.wait()
    finally:
        runner.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
