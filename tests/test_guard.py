"""The guard on the real handlers: sweep, kill switch and budget alerts, through the request queue.

Two simulators stand for two resources (`default` and `second`), Azurite holds the request queue
and the guard's claims, and every request the guard enqueues is then handed to the real queue
trigger, as the host would, so each ends in one record naming its rule.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from typing import Any

import azure.functions as func
import pytest
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequest
from azure.storage.queue import QueueClient

from devstack.openai_sim import FineTuningSimulator
from shared import guard
from shared.results_queue import development_storage_connection_string
from tests.support.guard import (
    ACTIVE,
    COMMON_BUDGET_ALERT,
    EXPECTED_RULES,
    HOUR,
    LEGACY_BUDGET_ALERT,
    METRIC_ALERT,
    POLICY,
    alert_with_id,
    seed_every_state,
)
from tests.support.handlers import drain_results, handler


@pytest.fixture
def guarded(app_settings, monkeypatch, azurite, second: FineTuningSimulator):
    """Two resources, the guard's storage (blob and queue), a request queue of the test's own."""
    connection = azurite.connection_string
    requests = f"guard-requests-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("AzureWebJobsStorage", connection)
    monkeypatch.setenv("CANCEL_REQUESTS_QUEUE", requests)
    monkeypatch.setenv("AZURE_OPENAI_RESOURCES", json.dumps({"second": {"endpoint": second.endpoint}}))
    monkeypatch.delenv("GUARD_POLICY", raising=False)
    queue = QueueClient.from_connection_string(connection, requests)
    queue.create_queue()  # the host creates its trigger's queue
    return queue


def set_policy(monkeypatch, **fields: Any) -> None:
    monkeypatch.setenv("GUARD_POLICY", json.dumps({**POLICY, **fields}))


def queued_requests(requests: QueueClient) -> list[dict[str, Any]]:
    """The cancel requests on the queue, left there (peeked)."""
    return [json.loads(message.content) for message in requests.peek_messages(max_messages=32)]


def deliver_all(requests: QueueClient) -> list[dict[str, Any]]:
    """Hand every request on the queue to the real queue trigger and delete it, as the host does; the records."""
    trigger = handler("queueTrigger")
    while batch := list(requests.receive_messages(max_messages=32, visibility_timeout=60)):
        for message in batch:
            trigger(msg=QueueMessage(id=message.id, body=message.content.encode(), dequeue_count=1, pop_receipt="x"))
            requests.delete_message(message)
    return drain_results().records


def cancels_seen(*sims: FineTuningSimulator) -> set[str]:
    return {r.path.split("/")[-2] for sim in sims for r in sim.requests if r.method == "POST"}


def listings_seen(*sims: FineTuningSimulator) -> int:
    return sum(1 for sim in sims for r in sim.requests if r.method == "GET" and r.path.endswith("/fine_tuning/jobs"))


def post(route: str, body: bytes | dict) -> tuple[int, dict[str, Any]]:
    request = func.HttpRequest(
        method="POST",
        url=f"http://localhost:7071/api/{route}",
        headers={"content-type": "application/json"},
        body=body if isinstance(body, bytes) else json.dumps(body).encode(),
    )
    response = handler("httpTrigger", route)(req=request)
    return response.status_code, json.loads(response.get_body())


# --- the sweep ---------------------------------------------------------------------------------


def test_a_sweep_over_two_resources_cancels_exactly_the_breakers_each_with_one_record(
    guarded, monkeypatch, simulator, second  # noqa: F811
):
    set_policy(monkeypatch)
    first_ids, second_ids = seed_every_state(simulator), seed_every_state(second)
    run = guard.sweep()
    assert run.enqueued == 2 * len(EXPECTED_RULES) and not run.incomplete and not run.dry_run
    expected = {
        (resource, ids[name], rule)
        for resource, ids in (("default", first_ids), ("second", second_ids))
        for name, rule in EXPECTED_RULES.items()
    }
    assert {(m["resource"], m["job_id"], m["correlation_id"]) for m in queued_requests(guarded)} == expected
    # A second sweep while those requests are pending enqueues nothing twice.
    again = guard.sweep()
    assert again.enqueued == 0 and again.already_pending == len(expected)
    assert len(queued_requests(guarded)) == len(expected)
    records = deliver_all(guarded)
    assert sorted((r["resource"], r["job_id"], r["correlation_id"]) for r in records) == sorted(expected)
    assert {r["outcome"] for r in records} == {"cancelled"}
    assert cancels_seen(simulator, second) == {job_id for _, job_id, _ in expected}  # no other cancel


def test_a_job_whose_request_was_handled_but_not_cancelled_is_enqueued_again(guarded, monkeypatch, simulator):
    set_policy(monkeypatch, resources=["default"])
    old = simulator.create_job(status="queued", created_at=int(time.time()) - 2 * HOUR)["id"]
    assert guard.sweep().enqueued == 1
    simulator.fail_next(10, status=400, body={"error": {"code": "invalidPayload", "message": "no"}}, method="POST")
    [record] = deliver_all(guarded)
    assert record["outcome"] == "failed" and record["job_id"] == old
    simulator.clear_faults()
    assert guard.sweep().enqueued == 1  # its record is written: the claim no longer holds


def test_a_listing_older_than_the_cancel_of_its_job_enqueues_nothing_again(guarded, monkeypatch, simulator):
    # A sweep lists, the queue trigger then cancels the job and writes its record, then the sweep claims:
    # the claim is stale (its message is gone), so the guard reads the job again before enqueuing it.
    set_policy(monkeypatch, resources=["default"])
    old = simulator.create_job(status="queued", created_at=int(time.time()) - 2 * HOUR)["id"]
    listed_before_the_cancel = {"object": "list", "data": simulator.jobs(), "has_more": False}
    assert guard.sweep().enqueued == 1
    [record] = deliver_all(guarded)
    assert record["outcome"] == "cancelled"
    simulator.fail_next(1, status=200, body=listed_before_the_cancel, method="GET", path_suffix="/fine_tuning/jobs")
    run = guard.sweep()
    assert run.would_cancel == (old,) and run.enqueued == 0
    assert queued_requests(guarded) == [] and sorted(cancels_seen(simulator)) == [old]
    gets = [r for r in simulator.requests if r.method == "GET" and r.path.endswith(f"/jobs/{old}")]
    assert len(gets) == 1  # the job was read again once, before anything was sent


def test_the_timer_trigger_sweeps(guarded, monkeypatch, simulator):
    set_policy(monkeypatch, resources=["default"])
    old = simulator.create_job(status="paused", created_at=int(time.time()) - HOUR)["id"]
    assert handler("timerTrigger")(timer=TimerRequest(past_due=False)) is None
    assert queued_requests(guarded) == [{"job_id": old, "resource": "default", "correlation_id": "guard:max-age-paused"}]


def test_a_dry_run_sweep_enqueues_nothing_and_says_what_it_would_cancel(guarded, monkeypatch, simulator, caplog):
    set_policy(monkeypatch, dry_run=True, resources=["default"])
    ids = seed_every_state(simulator)
    with caplog.at_level("INFO", logger="shared.guard"):
        run = guard.sweep()
    assert run.enqueued == 0 and run.dry_run
    assert set(run.would_cancel) == {ids[name] for name in EXPECTED_RULES}
    assert queued_requests(guarded) == [] and cancels_seen(simulator) == set()
    assert any("would_cancel" in line and ids["old-paused"] in line for line in caplog.messages)


def test_without_a_policy_the_sweep_lists_nothing(guarded, simulator, second):  # noqa: F811
    seed_every_state(simulator)
    run = guard.sweep()
    assert run.enqueued == 0 and run.would_cancel == ()
    assert listings_seen(simulator, second) == 0 and queued_requests(guarded) == []


def test_a_resource_that_stays_unavailable_is_reported_and_the_other_still_swept(
    guarded, monkeypatch, simulator, second  # noqa: F811
):
    set_policy(monkeypatch)
    ids = seed_every_state(second)
    simulator.fail_next(50, status=503, headers={"retry-after-ms": "1"}, method="GET")
    run = guard.sweep()
    [incomplete] = run.incomplete
    assert incomplete.resource == "default" and "503" in incomplete.problem
    assert {m["job_id"] for m in queued_requests(guarded)} == {ids[name] for name in EXPECTED_RULES}


# --- the kill switch ---------------------------------------------------------------------------


def test_the_kill_switch_enqueues_every_active_job_once(guarded, simulator, second):  # noqa: F811
    ids = seed_every_state(simulator)
    status, body = post("guard/cancel-active", {"resource": "default"})
    active = {ids[name] for name in ACTIVE} | {ids["exempt-old"]}  # no policy: nothing is exempt
    assert status == 202 and body["enqueued"] == len(active) and set(body["would_cancel"]) == active
    assert {(m["job_id"], m["correlation_id"]) for m in queued_requests(guarded)} == {
        (job_id, "guard:cancel-active") for job_id in active
    }
    status, again = post("guard/cancel-active", {"resource": "default"})
    assert status == 202 and again["enqueued"] == 0 and set(again["would_cancel"]) == active
    assert listings_seen(second) == 0  # narrowed to its resource


def test_the_kill_switch_by_state_group_with_the_policys_exemptions(guarded, monkeypatch, simulator):
    set_policy(monkeypatch)
    ids = seed_every_state(simulator)
    status, body = post("guard/cancel-active", {"states": ["waiting", "paused"], "resource": "default"})
    assert status == 202
    assert set(body["would_cancel"]) == {ids[n] for n in ("old-queued", "old-pending", "young-validating",
                                                          "old-paused", "young-resuming")}  # not exempt-old


def test_a_dry_run_kill_switch_enqueues_nothing(guarded, simulator):
    ids = seed_every_state(simulator)
    status, body = post("guard/cancel-active", {"dry_run": True, "states": ["running"]})
    assert status == 200 and body["enqueued"] == 0
    assert set(body["would_cancel"]) == {ids[n] for n in ("young-running", "old-running", "other-model")}
    assert queued_requests(guarded) == []


@pytest.mark.parametrize(
    ("body", "target"),
    [
        (b"{not json", "body"),
        (b"[]", "body"),
        ({"resource": "nowhere"}, "resource"),
        ({"states": []}, "states"),
        ({"states": ["Running"]}, "states"),
        ({"states": ["succeeded"]}, "states"),
        ({"dry_run": "true"}, "dry_run"),
        ({"job_ids": ["ftjob-1"]}, "job_ids"),
        (b" " * ((1 << 20) + 1), "body"),
    ],
)
def test_a_kill_switch_request_that_is_not_one_is_refused(guarded, simulator, body, target):
    simulator.create_job(status="running")
    status, answer = post("guard/cancel-active", body)
    assert status == 400 and answer["error"]["code"] == "invalidPayload" and answer["error"]["target"] == target
    assert listings_seen(simulator) == 0 and queued_requests(guarded) == []


# --- budget alerts -----------------------------------------------------------------------------


@pytest.mark.parametrize("schema", ["common", "legacy"])
def test_a_budget_alert_cancels_every_active_job_and_its_second_delivery_nothing(
    guarded, monkeypatch, simulator, second, schema  # noqa: F811
):
    set_policy(monkeypatch, on_budget_alert="cancel_active")
    alert = alert_with_id(COMMON_BUDGET_ALERT, str(uuid.uuid4())) if schema == "common" else copy.deepcopy(
        LEGACY_BUDGET_ALERT
    )
    if schema == "legacy":
        alert["data"]["BudgetName"] = f"fine-tuning-{uuid.uuid4().hex}"
    first_ids, second_ids = seed_every_state(simulator), seed_every_state(second)
    active = {ids[name] for ids in (first_ids, second_ids) for name in ACTIVE}  # exempt-old stays
    status, body = post("guard/budget-alert", alert)
    assert status == 202 and body["enqueued"] == len(active) and set(body["would_cancel"]) == active
    records = deliver_all(guarded)
    assert {r["job_id"] for r in records} == active and {r["correlation_id"] for r in records} == {"guard:budget-alert"}
    for sim, ids in ((simulator, first_ids), (second, second_ids)):  # new active jobs since
        ids["late"] = sim.create_job(status="queued")["id"]
    status, again = post("guard/budget-alert", alert)
    assert status == 202 and again == {"enqueued": 0, "would_cancel": []}
    assert queued_requests(guarded) == []


def test_a_new_budget_alert_acts_again(guarded, monkeypatch, simulator):
    set_policy(monkeypatch, on_budget_alert="cancel_active", resources=["default"])
    simulator.create_job(status="running")
    assert post("guard/budget-alert", alert_with_id(COMMON_BUDGET_ALERT, "a" + uuid.uuid4().hex))[1]["enqueued"] == 1
    deliver_all(guarded)
    late = simulator.create_job(status="queued")["id"]
    status, body = post("guard/budget-alert", alert_with_id(COMMON_BUDGET_ALERT, "b" + uuid.uuid4().hex))
    assert status == 202 and body["would_cancel"] == [late] and body["enqueued"] == 1


@pytest.mark.parametrize("policy", [None, {"on_budget_alert": "none"}])
def test_an_alert_without_a_policy_to_act_on_it_cancels_nothing(guarded, monkeypatch, simulator, second, policy):  # noqa: F811
    if policy is not None:
        monkeypatch.setenv("GUARD_POLICY", json.dumps(policy))
    seed_every_state(simulator)
    status, body = post("guard/budget-alert", alert_with_id(COMMON_BUDGET_ALERT, uuid.uuid4().hex))
    assert status == 202 and body == {"enqueued": 0, "would_cancel": []}
    assert listings_seen(simulator, second) == 0


def _without(alert: dict, *path: str) -> dict:
    alert = copy.deepcopy(alert)
    node = alert
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return alert


@pytest.mark.parametrize(
    ("body", "target"),
    [
        (METRIC_ALERT, "data.essentials.monitoringService"),
        ({**COMMON_BUDGET_ALERT, "schemaId": "Microsoft.Insights/activityLogs"}, "schemaId"),
        (_without(COMMON_BUDGET_ALERT, "data", "alertContext", "AlertCategory"), "data.alertContext.AlertCategory"),
        (_without(COMMON_BUDGET_ALERT, "data", "essentials", "alertId"), "data.essentials.alertId"),
        ({"schemaId": "AIP Budget Notification", "data": {}}, "data"),
        ({"schemaId": "AIP Budget Notification"}, "data"),
        (b"{\"schemaId\": ", "body"),
        (b"[1, 2]", "body"),
        (b"", "body"),
        (json.dumps({**LEGACY_BUDGET_ALERT, "pad": "x" * (1 << 20)}).encode(), "body"),
    ],
)
def test_anything_but_a_budget_alert_is_refused_and_cancels_nothing(guarded, monkeypatch, simulator, body, target):
    set_policy(monkeypatch, on_budget_alert="cancel_active")
    simulator.create_job(status="running")
    status, answer = post("guard/budget-alert", body)
    assert status == 400 and answer["error"]["code"] == "invalidPayload" and answer["error"]["target"] == target
    assert listings_seen(simulator) == 0 and queued_requests(guarded) == []


def test_when_blob_storage_is_down_nothing_is_enqueued_and_every_job_is_named(
    guarded, monkeypatch, azurite, simulator
):
    monkeypatch.setenv("AzureWebJobsStorage", development_storage_connection_string(azurite.queue_origin, blob_origin="http://127.0.0.1:9"))
    ids = [simulator.create_job(status="queued")["id"] for _ in range(3)]
    status, body = post("guard/cancel-active", {"resource": "default"})
    assert status == 202 and body["enqueued"] == 0 and set(body["would_cancel"]) == set(ids)
    assert [item.split(":")[0] for item in body["not_enqueued"]] == [f"default/{job_id}" for job_id in reversed(ids)]
    assert queued_requests(guarded) == []  # a claim is needed before any request is sent
