"""Two Azure OpenAI resources from one app, end to end (issue 15, CONTRACT section 8 `AZURE_OPENAI_RESOURCES`).

The app runs in the local runner with `default` (the keyed simulator of tests/conftest.py, api-key
from Key Vault) and `keyless` (a second simulator with key access disabled, taking only the identity
endpoint's tokens). Job `ftjob-same` exists on both, so only the simulators' request logs can tell
which resource a cancel went to.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

from devstack.keyvault_emulator import KeyVaultEmulator
from devstack.openai_sim import FineTuningSimulator
from shared.entra_token import COGNITIVE_SERVICES_SCOPE

pytestmark = pytest.mark.e2e

AUDIENCE = COGNITIVE_SERVICES_SCOPE.removesuffix("/.default")
SAME = "ftjob-same"  # on both resources


@pytest.fixture
def keyless(vault: KeyVaultEmulator) -> Iterator[FineTuningSimulator]:
    """The second resource: refuses every api-key, takes tokens the identity endpoint issued for Cognitive Services."""
    with FineTuningSimulator(
        api_key="never-given-to-anyone",
        key_access_disabled=True,
        token_verifier=lambda token: vault.verify_token(token, audience=AUDIENCE),
    ) as sim:
        yield sim


@pytest.fixture
def two_resources(start_local_app, keyless: FineTuningSimulator):
    resources = {"keyless": {"endpoint": keyless.endpoint, "auth": "entra"}}
    return start_local_app(AZURE_OPENAI_RESOURCES=json.dumps(resources))


def seed(simulator: FineTuningSimulator, *job_ids: str) -> None:
    for job_id in job_ids:
        simulator.create_job(job_id=job_id, status="running")


def cancels_sent(simulator: FineTuningSimulator) -> list[str]:
    """The job ids of the cancel POSTs a simulator received, in order."""
    return [r.path.split("/")[-2] for r in simulator.requests if r.method == "POST" and r.path.endswith("/cancel")]


def credentials_used(simulator: FineTuningSimulator) -> set[str]:
    """How the app signed each request to a simulator: `api-key` or `bearer`."""
    return {"api-key" if "api-key" in r.headers else r.headers.get("authorization", "").split(" ")[0].lower()
            for r in simulator.requests}


def by_job_and_resource(records: list[dict]) -> dict[tuple[str, str], dict]:
    return {(record["job_id"], record["resource"]): record for record in records}


def test_one_bulk_call_spanning_two_resources_cancels_each_job_on_its_own_resource(
    two_resources, simulator: FineTuningSimulator, keyless: FineTuningSimulator
):
    seed(simulator, "ftjob-default1", SAME)
    seed(keyless, "ftjob-keyless1", SAME)
    body = {
        "resource": "keyless",  # for the string items
        "job_ids": [
            "ftjob-keyless1",
            {"job_id": "ftjob-default1", "resource": "default"},
            {"job_id": SAME, "resource": "default"},
            SAME,
        ],
    }

    response = requests.post(
        f"{two_resources.api_url}/cancel", json=body, headers={"x-functions-key": two_resources.function_key}, timeout=60
    )

    assert response.status_code == 200, response.text
    answered = response.json()["results"]
    assert [(row["job_id"], row["resource"], row["outcome"]) for row in answered] == [
        ("ftjob-keyless1", "keyless", "cancelled"),
        ("ftjob-default1", "default", "cancelled"),
        (SAME, "default", "cancelled"),
        (SAME, "keyless", "cancelled"),
    ]
    assert sorted(cancels_sent(simulator)) == ["ftjob-default1", SAME]
    assert sorted(cancels_sent(keyless)) == ["ftjob-keyless1", SAME]
    assert (credentials_used(simulator), credentials_used(keyless)) == ({"api-key"}, {"bearer"})
    records = by_job_and_resource(two_resources.wait_for_records(4))
    assert sorted(records) == sorted((row["job_id"], row["resource"]) for row in answered)
    assert {record["outcome"] for record in records.values()} == {"cancelled"}
    assert {record["trigger"] for record in records.values()} == {"http"}


def test_one_queue_batch_spanning_two_resources_cancels_each_job_on_its_own_resource(
    two_resources, simulator: FineTuningSimulator, keyless: FineTuningSimulator
):
    seed(simulator, "ftjob-default2", SAME)
    seed(keyless, "ftjob-keyless2", SAME)

    for message in (
        "ftjob-default2",  # a bare id means default
        json.dumps({"job_id": "ftjob-keyless2", "resource": "keyless"}),
        json.dumps({"job_id": SAME, "resource": "keyless"}),
        json.dumps({"job_id": SAME}),
    ):
        two_resources.enqueue(message)
    records = by_job_and_resource(two_resources.wait_for_records(4))

    assert sorted(records) == [("ftjob-default2", "default"), ("ftjob-keyless2", "keyless"), (SAME, "default"),
                               (SAME, "keyless")]
    assert {(record["trigger"], record["outcome"]) for record in records.values()} == {("queue", "cancelled")}
    assert sorted(cancels_sent(simulator)) == ["ftjob-default2", SAME]
    assert sorted(cancels_sent(keyless)) == ["ftjob-keyless2", SAME]
    assert (credentials_used(simulator), credentials_used(keyless)) == ({"api-key"}, {"bearer"})
    assert {simulator.job(job)["status"] for job in ("ftjob-default2", SAME)} == {"cancelled"}
    assert {keyless.job(job)["status"] for job in ("ftjob-keyless2", SAME)} == {"cancelled"}


def test_an_unknown_resource_is_rejected_on_every_path_and_nothing_reaches_either_resource(
    two_resources, simulator: FineTuningSimulator, keyless: FineTuningSimulator
):
    seed(simulator, SAME)
    seed(keyless, SAME)
    key = {"x-functions-key": two_resources.function_key}

    route = requests.post(
        f"{two_resources.api_url}/resources/nowhere/openai/fine_tuning/jobs/{SAME}/cancel", headers=key, timeout=60
    )
    bulk_body = requests.post(
        f"{two_resources.api_url}/cancel", json={"resource": "nowhere", "job_ids": [SAME]}, headers=key, timeout=60
    )
    bulk_item = requests.post(
        f"{two_resources.api_url}/cancel",
        json={"job_ids": [{"job_id": SAME, "resource": "nowhere"}]},
        headers=key,
        timeout=60,
    )
    two_resources.enqueue(json.dumps({"job_id": SAME, "resource": "nowhere"}))
    records = two_resources.wait_for_records(4)

    assert (route.status_code, route.json()["error"]["code"], route.json()["error"]["target"]) == (
        400, "invalidPayload", "resource"
    )
    assert (bulk_body.status_code, bulk_body.json()["error"]["target"]) == (400, "resource")
    [item] = bulk_item.json()["results"]
    assert (bulk_item.status_code, item["outcome"], item["error"]["target"]) == (200, "rejected", "resource")
    assert sorted(record["trigger"] for record in records) == ["http", "http", "http", "queue"]
    assert {(r["outcome"], r["resource"], r["error"]["target"]) for r in records} == {("rejected", "nowhere", "resource")}
    assert (simulator.requests, keyless.requests) == ([], [])
    assert (simulator.job(SAME)["status"], keyless.job(SAME)["status"]) == ("running", "running")
