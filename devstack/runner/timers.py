"""Timer triggers: fires each timer function in UTC on the seconds its NCRONTAB schedule names."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence

from azure.functions.timer import TimerRequest

from devstack.runner.indexing import LocalFunction
from devstack.runner.invocation import InvocationPool, invocation_log, invoke, write_outputs
from devstack.runner.ncrontab import NcrontabSchedule
from devstack.runner.storage import QueueClients


def timer_request() -> TimerRequest:
    """What the worker's `TimerRequestConverter` (`azure.functions` timer.py) builds for an on-time fire.

    The timer extension binds the same `TimerInfo` when the function is run on demand through the admin
    API: azure-webjobs-sdk-extensions `Extensions/Timers/Bindings/TimerTriggerBinding.cs` `BindAsync`
    makes a new `TimerInfo(schedule, status)` whenever the value given is not a TimerInfo.
    """
    return TimerRequest(past_due=False)


class TimerScheduler:
    """Fires the app's timer triggers in UTC, each second that their schedule names, in the worker's pool.

    Outputs are written when the function returns normally, as for every trigger."""

    def __init__(
        self, functions: Sequence[LocalFunction], pool: InvocationPool, queues: QueueClients, *, base64_encode: bool
    ) -> None:
        self._timers = [
            (function, NcrontabSchedule.parse(function.timer_schedule, where=function.name)) for function in functions
        ]
        self._pool = pool
        self._queues = queues
        self._base64_encode = base64_encode
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
        with contextlib.suppress(Exception), invocation_log(function, "Timer fired"):
            _, outputs = invoke(function, timer_request(), self._pool)
            write_outputs(self._queues, function, outputs, base64_encode=self._base64_encode)
