"""Invoking a function as the Python worker does: one thread pool, `func.Out` values, outputs after success.

Also the host's Executing/Executed log lines around each invocation, and the queue messages an
output value ends as (devstack/host_rules.py).
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import azure.functions as func
from azure.functions.queue import QueueMessageOutConverter

from devstack.host_rules import host_output_messages
from devstack.runner.indexing import LocalFunction
from devstack.runner.storage import QueueClients

logger = logging.getLogger(__name__)


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
def invocation_log(function: LocalFunction, reason: str) -> Iterator[str]:
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
