"""Timer triggers in the local runner: six-field NCRONTAB schedules, fired in UTC in the worker's pool."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import azure.functions as func
import pytest

from devstack.runner import FunctionsRunner, NcrontabSchedule, RunnerError
from tests.support.hosts import FAST_HOST


def moment(text: str) -> time.struct_time:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timetuple()


@pytest.mark.parametrize(
    ("schedule", "at", "fires"),
    [
        ("0 */5 * * * *", "2026-12-01T10:05:00", True),
        ("0 */5 * * * *", "2026-12-01T10:06:00", False),
        ("0 */5 * * * *", "2026-12-01T10:05:01", False),
        ("*/10 * * * * *", "2026-12-01T10:05:20", True),
        ("30 0 9-17 * * 1-5", "2026-12-01T12:00:30", True),  # a Tuesday
        ("30 0 9-17 * * 1-5", "2026-12-06T12:00:30", False),  # a Sunday (0)
        ("0 0 0 1 1,7 *", "2026-07-01T00:00:00", True),
    ],
)
def test_ncrontab_schedules(schedule: str, at: str, fires: bool) -> None:
    assert NcrontabSchedule.parse(schedule, where="t").matches(moment(at)) is fires


@pytest.mark.parametrize("schedule", ["", "* * * * *", "0 */5 * * * Mon", "61 * * * * *", "00:05:00"])
def test_schedules_the_runner_cannot_read_are_refused(schedule: str) -> None:
    with pytest.raises(RunnerError, match="timer schedule"):
        NcrontabSchedule.parse(schedule, where="t")


@pytest.mark.e2e
def test_a_timer_function_fires_on_its_schedule_with_a_timer_request() -> None:
    fired: list[object] = []
    twice = threading.Event()
    app = func.FunctionApp()

    @app.timer_trigger(arg_name="timer", schedule="%TEST_SCHEDULE%")
    def every_second(timer: func.TimerRequest) -> None:
        fired.append(timer)
        if len(fired) >= 2:
            twice.set()

    runner = FunctionsRunner(app, host_settings=FAST_HOST, settings={"TEST_SCHEDULE": "* * * * * *"}, port=0).start()
    try:
        assert twice.wait(timeout=30), f"fired {len(fired)} times in 30 s"
    finally:
        runner.stop()
    assert all(isinstance(timer, func.TimerRequest) and timer.past_due is False for timer in fired)
