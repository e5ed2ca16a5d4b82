"""The guard end to end: the timer trigger, the budget-alert route and the request queue, in the local runner.

The app runs with two resources (`default`, the simulator of tests/conftest.py, and `second`), and
a fast `GUARD_SCHEDULE` so sweeps run during the test. What tests/test_guard.py proves on the
handlers (rules, claims, refusals) is proved here on the host path: the runner fires the timer,
the queue trigger takes each guard request and writes its one record, and the simulators' request
logs show every cancel that was sent.
"""

from __future__ import annotations

import copy
import json
import re
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import requests

from devstack.openai_sim import FineTuningSimulator
from opscli.cli import main
from tests.support.guard import (
    ACTIVE,
    COMMON_BUDGET_ALERT,
    EXPECTED_RULES,
    LEGACY_BUDGET_ALERT,
    METRIC_ALERT,
    POLICY,
    alert_with_id,
    seed_every_state,
)

pytestmark = pytest.mark.e2e

FAST_SCHEDULE = "*/2 * * * * *"  # a sweep every two seconds
NOT_DURING_THE_TEST = "0 0 0 1 1 *"  # midnight on the first of January
EVENT_TIMEOUT_SECONDS = 90.0
SWEEP_LINE = re.compile(r"guard sweep: (\d+) enqueued, (\d+) already pending, (\d+) listings incomplete")
T = TypeVar("T")


def start_guarded(start_local_app, second: FineTuningSimulator, *, schedule: str, **policy: Any):  # noqa: F811
    return start_local_app(
        AZURE_OPENAI_RESOURCES=json.dumps({"second": {"endpoint": second.endpoint}}),
        GUARD_POLICY=json.dumps(policy),
        GUARD_SCHEDULE=schedule,
    )


def wait_until(condition: Callable[[], T], what: str, *, timeout: float = EVENT_TIMEOUT_SECONDS) -> T:
    """Poll until `condition()` is truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.1)
    return value


def sweep_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The summary line of every sweep that ended, in order."""
    return [r.getMessage() for r in list(caplog.records) if r.name == "shared.guard" and SWEEP_LINE.match(r.getMessage())]


def log_lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in list(caplog.records) if r.name == logger]


def more_sweeps(caplog: pytest.LogCaptureFixture, count: int) -> None:
    """Wait until `count` more sweeps have ended than have now."""
    seen = len(sweep_lines(caplog))
    wait_until(lambda: len(sweep_lines(caplog)) >= seen + count, f"{count} more sweeps")


def enqueued_by_sweeps(caplog: pytest.LogCaptureFixture) -> int:
    return sum(int(SWEEP_LINE.match(line).group(1)) for line in sweep_lines(caplog))


def cancels_sent(*sims: FineTuningSimulator) -> list[str]:
    """Every cancel POST the simulators received, one entry per request."""
    return sorted(r.path.split("/")[-2] for sim in sims for r in sim.requests if r.method == "POST")


def listings(sim: FineTuningSimulator) -> int:
    return sum(1 for r in sim.requests if r.method == "GET" and r.path.endswith("/fine_tuning/jobs"))


def breakers(*seeded: tuple[str, dict[str, str]]) -> set[tuple[str, str, str]]:
    """(resource, job id, rule) of every job the policy's rules cancel."""
    return {(resource, ids[name], rule) for resource, ids in seeded for name, rule in EXPECTED_RULES.items()}


def post(app, route: str, body: bytes | dict) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(
        f"{app.api_url}/{route}",
        data=data,
        headers={"x-functions-key": app.function_key, "content-type": "application/json"},
        timeout=60,
    )


# --- the timer trigger ---------------------------------------------------------------------------


def test_sweeps_cancel_exactly_the_breakers_of_two_resources_each_once_with_one_record(
    start_local_app, simulator, second, caplog  # noqa: F811
):
    expected = breakers(("default", seed_every_state(simulator)), ("second", seed_every_state(second)))
    for sim in (simulator, second):  # each cancel takes a while: the next sweeps run while they are pending
        sim.fail_next(len(EXPECTED_RULES), delay=3.0, method="POST")
    with caplog.at_level("INFO", logger="shared"):
        app = start_guarded(start_local_app, second, schedule=FAST_SCHEDULE, **POLICY)
        wait_until(
            lambda: [line for line in sweep_lines(caplog) if int(SWEEP_LINE.match(line).group(2)) > 0],
            "sweep that found the first sweep's requests pending",
        )
        records = app.wait_for_records(len(expected), timeout=EVENT_TIMEOUT_SECONDS)
        wait_until(lambda: app.messages_left() == 0, "empty request queue")
        more_sweeps(caplog, 2)  # sweeps after the last record: the jobs are cancelled, nothing is enqueued
    assert sorted((r["resource"], r["job_id"], r["correlation_id"]) for r in records) == sorted(expected)
    assert {r["outcome"] for r in records} == {"cancelled"} and {r["trigger"] for r in records} == {"queue"}
    assert cancels_sent(simulator, second) == sorted(job_id for _, job_id, _ in expected)  # no other cancel, none twice
    assert enqueued_by_sweeps(caplog) == len(expected)
    assert app.messages_left(app.results_queue) == 0


def test_a_dry_run_sweep_sends_no_cancel_and_logs_what_it_would_cancel(
    start_local_app, simulator, second, caplog  # noqa: F811
):
    expected = breakers(("default", seed_every_state(simulator)), ("second", seed_every_state(second)))
    with caplog.at_level("INFO", logger="shared"):
        app = start_guarded(start_local_app, second, schedule=FAST_SCHEDULE, **POLICY, dry_run=True)
        more_sweeps(caplog, 2)
    line = sweep_lines(caplog)[-1]
    assert line.startswith("guard sweep: 0 enqueued") and "(dry run)" in line
    assert set(json.loads(line.split("would_cancel ", 1)[1])) == {job_id for _, job_id, _ in expected}
    assert cancels_sent(simulator, second) == [] and enqueued_by_sweeps(caplog) == 0
    assert app.messages_left() == 0 and app.messages_left(app.results_queue) == 0


def test_a_sweep_against_throttled_unavailable_and_endless_listings_ends_says_so_and_loses_nothing(
    start_local_app, simulator, second, caplog  # noqa: F811
):
    now = int(time.time())
    for _ in range(2100):  # more than a sweep lists (20 pages of 100): to the guard, a listing that never ends
        simulator.create_job(status="succeeded", created_at=now - 100 * 3600)
    expected = breakers(("default", seed_every_state(simulator)), ("second", seed_every_state(second)))
    # Every attempt at the first two listings of `second` fails (3 retries each): one sweep on 429, one on 503.
    second.fail_next(4, status=429, headers={"retry-after-ms": "1"}, method="GET", path_suffix="/fine_tuning/jobs")
    second.fail_next(4, status=503, headers={"retry-after-ms": "1"}, method="GET", path_suffix="/fine_tuning/jobs")
    with caplog.at_level("INFO", logger="shared"):
        app = start_guarded(start_local_app, second, schedule=FAST_SCHEDULE, **POLICY)
        records = app.wait_for_records(len(expected), timeout=EVENT_TIMEOUT_SECONDS)
        more_sweeps(caplog, 2)
    listing_log = log_lines(caplog, "shared.guard_listing")
    assert any("resource second is incomplete" in line and "429" in line for line in listing_log)
    assert any("resource second is incomplete" in line and "503" in line for line in listing_log)
    assert any("resource default is incomplete" in line and "stopped after 20 pages" in line for line in listing_log)
    assert all(int(SWEEP_LINE.match(line).group(3)) >= 1 for line in sweep_lines(caplog))  # default never completes
    assert second.pending_faults == 0  # the sweeps after the faults listed `second` in full
    assert sorted((r["resource"], r["job_id"], r["correlation_id"]) for r in records) == sorted(expected)
    assert cancels_sent(simulator, second) == sorted(job_id for _, job_id, _ in expected)
    assert enqueued_by_sweeps(caplog) == len(expected)


# --- budget alerts -------------------------------------------------------------------------------


def oversized(alert: dict) -> bytes:
    return json.dumps({**alert, "pad": "x" * (1 << 20)}).encode()


def without_category(alert: dict) -> dict:
    alert = copy.deepcopy(alert)
    del alert["data"]["alertContext"]["AlertCategory"]
    return alert


REFUSED_ALERTS = [
    (METRIC_ALERT, "data.essentials.monitoringService"),
    (without_category(COMMON_BUDGET_ALERT), "data.alertContext.AlertCategory"),
    (b'{"schemaId": "azureMonitorCommonAlertSchema", "data": ', "body"),
    (oversized(LEGACY_BUDGET_ALERT), "body"),
]


def test_budget_alerts_cancel_every_active_job_and_anything_else_is_refused(
    start_local_app, simulator, second  # noqa: F811
):
    seeded = (("default", seed_every_state(simulator)), ("second", seed_every_state(second)))
    app = start_guarded(
        start_local_app, second, schedule=NOT_DURING_THE_TEST, on_budget_alert="cancel_active", exempt_suffixes=["keep"]
    )
    for body, target in REFUSED_ALERTS:
        answer = post(app, "guard/budget-alert", body)
        error = answer.json()["error"]
        assert answer.status_code == 400 and answer.headers["x-should-retry"] == "false"
        assert (error["code"], error["target"]) == ("invalidPayload", target)
    assert listings(simulator) == listings(second) == 0 and app.messages_left() == 0

    common = alert_with_id(COMMON_BUDGET_ALERT, uuid.uuid4().hex)  # as Azure Monitor sends it, a fresh alert id
    active = {(resource, ids[name]) for resource, ids in seeded for name in ACTIVE}  # exempt-old stays
    answer = post(app, "guard/budget-alert", common)
    assert answer.status_code == 202 and answer.json()["enqueued"] == len(active)
    records = app.wait_for_records(len(active))
    assert {(r["resource"], r["job_id"]) for r in records} == active
    assert {(r["correlation_id"], r["outcome"]) for r in records} == {("guard:budget-alert", "cancelled")}
    again = post(app, "guard/budget-alert", common)  # the action group delivers it a second time
    assert again.status_code == 202 and again.json() == {"enqueued": 0, "would_cancel": []}

    late = {("default", simulator.create_job(status="queued")["id"]), ("second", second.create_job(status="paused")["id"])}
    legacy = copy.deepcopy(LEGACY_BUDGET_ALERT)
    legacy["data"]["BudgetName"] = f"fine-tuning-{uuid.uuid4().hex}"
    answer = post(app, "guard/budget-alert", legacy)
    assert answer.status_code == 202 and answer.json()["enqueued"] == len(late)
    records = app.wait_for_records(len(late))
    assert {(r["resource"], r["job_id"], r["correlation_id"]) for r in records} == {
        (resource, job_id, "guard:budget-alert") for resource, job_id in late
    }
    assert cancels_sent(simulator, second) == sorted(job_id for _, job_id in active | late)


# --- the kill switch, from ftcancel --------------------------------------------------------------


def test_ftcancel_guard_cancel_active_cancels_the_running_jobs_of_one_resource(
    start_local_app, simulator, second, capsys  # noqa: F811
):
    seeded = seed_every_state(second)
    seed_every_state(simulator)
    app = start_guarded(start_local_app, second, schedule=NOT_DURING_THE_TEST, exempt_suffixes=["keep"])
    running = {seeded[name] for name in ("young-running", "old-running", "other-model")}
    argv = ["guard", "cancel-active", "--url", app.api_url, "--key", app.function_key, "--resource", "second",
            "--states", "running"]
    assert main([*argv, "--dry-run"]) == 0
    assert set(capsys.readouterr().out.split()) == running and app.messages_left() == 0
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert set(out.split()) == running and f"enqueued {len(running)} cancel requests" in err
    records = app.wait_for_records(len(running))
    assert {(r["resource"], r["job_id"], r["correlation_id"]) for r in records} == {
        ("second", job_id, "guard:cancel-active") for job_id in running
    }
    assert cancels_sent(simulator) == [] and cancels_sent(second) == sorted(running)
