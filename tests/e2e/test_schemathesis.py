"""openapi.yaml against the running app: schemathesis sends what the document allows, and what it forbids.

The app runs in the local runner (real HTTP, function keys, Azurite for its result queue) against
the fine-tuning simulator and the Key Vault emulator. Every response must pass every schemathesis
check: no server error, a documented status, content type and headers, a body valid for its
schema, invalid input rejected and valid input accepted. The jobs named in the document's examples
exist in the simulator, so the example phase reaches the 200 and 409 answers, not only 404. The
simulator cancels at once, so a generated `wait_seconds` (up to 120) never makes the app sleep.

The schema is loaded eagerly and each call gets the runner's URL: schemathesis's fixture-based
loader (`schemathesis.pytest.from_fixture`) fails on pytest 9.2 (it sets `Node._nodeid`).
Deterministic: derandomized generation with a fixed seed, bounded examples.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import schemathesis
from azure.storage.queue import QueueClient
from hypothesis import HealthCheck, settings

from devstack.openai_sim import JOB_STATES, FineTuningSimulator
from devstack.storage import take_messages
from tests.support.handlers import FUNCTION_KEY
from tests.support.openapi import OPENAPI_PATH, component_validator, load_document

pytestmark = [
    pytest.mark.e2e,
    # schemathesis's own strategies use `random`; Hypothesis warns about it, not about this test.
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies"),
]

CANCEL_PATH = "/openai/fine_tuning/jobs/{job_id}/cancel"
SEED = 20261126
MAX_EXAMPLES = 40  # per operation, fuzzing phase; the example and coverage phases are bounded by the document
# Sent to each route to see it refused. Not TRACE or QUERY: the runner's HTTP server answers those 501
# itself, before routing (the runner's gap, not the app's).
UNEXPECTED_METHODS = {"get", "put", "post", "delete", "options", "patch"}
# The checks this test promises, by name; the run uses every check schemathesis has, these included.
REQUIRED_CHECKS = {
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
}


def _example_jobs(document: dict[str, Any]) -> dict[str, str]:
    """Job id -> status for each job-id example named after a job status (`running`, `succeeded`, ...)."""
    [job_id] = [p for p in document["paths"][CANCEL_PATH]["post"]["parameters"] if p.get("name") == "job_id"]
    return {example["value"]: name for name, example in job_id["examples"].items() if name in JOB_STATES}


@pytest.fixture
def local_app(start_local_app, simulator: FineTuningSimulator):
    for job_id, status in _example_jobs(load_document()).items():
        simulator.create_job(job_id=job_id, status=status)
    # A dry-run policy: the kill switch's examples list the jobs instead of enqueuing cancels whose records
    # would reach a later example's drain (that example asserts the queue stays empty).
    return start_local_app(GUARD_POLICY=json.dumps({"dry_run": True}))


schema = schemathesis.openapi.from_path(
    OPENAPI_PATH,
    config=schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "auth": {"openapi": {"functionKey": {"api_key": FUNCTION_KEY}}},
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
            # The Functions host answers 404 (empty), not 405, to a method the route does not list
            # (Azure/azure-functions-host#10098); the runner mirrors that for the methods it serves.
            "checks": {"unsupported_method": {"enabled": False}},
            "phases": {"coverage": {"unexpected-methods": sorted(UNEXPECTED_METHODS)}},
        }
    ),
)


@schema.parametrize()
# One app for all examples of an operation, on purpose: each example drains the records it caused.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_app_answers_as_openapi_yaml_says(case: schemathesis.Case, local_app) -> None:
    response = case.call(base_url=local_app.api_url, timeout=30)
    case.validate_response(response)
    # The records the request wrote (before its answer left) are ResultRecords too.
    records = _drain(local_app.results_queue)
    for record in records:
        component_validator("ResultRecord").validate(record)
    request_id = response.headers.get("x-request-id", [None])[0]
    reached_the_function = case.method.upper() == case.operation.method.upper() and response.status_code != 401
    # The guard's routes write no record themselves: the cancels they enqueue are recorded by the queue trigger.
    if not reached_the_function or case.path == "/health" or case.path.startswith("/guard/"):
        assert records == []
    elif case.path != "/cancel" or response.status_code == 400:  # the single-job routes, or a refused bulk body
        [record] = records
        assert (record["request_id"], record["status_code"]) == (request_id, response.status_code)
    else:
        results = response.json()["results"]
        assert {record["request_id"] for record in records} == {result["request_id"] for result in results}


def test_the_run_uses_every_check_it_promises() -> None:
    """`validate_response` runs every check the configuration enables: these are among them."""
    from schemathesis.checks import CHECKS, load_all_checks

    load_all_checks()
    config = schema.config.checks_config_for()
    assert REQUIRED_CHECKS <= set(CHECKS.get_all_names())
    assert all(config.get_by_name(name=name).enabled for name in REQUIRED_CHECKS)


def _drain(queue: QueueClient) -> list[dict[str, Any]]:
    """Every message on the queue now: the function wrote its records before it answered."""
    return [json.loads(text) for text in take_messages(queue)]
