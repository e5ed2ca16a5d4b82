"""Tests of the Azure OpenAI fine-tuning simulator over real HTTP, every body checked against a schema.

Every answer is checked against our own schema (`devstack/fine_tuning_schema.json`). The tests
marked `needs_upstream_spec` also compare with Microsoft's spec, which is not in the repository:
they run when `AZURE_OPENAI_SPEC_DIR` points at it (or it sits in `../shared/specs`) and skip otherwise.
"""

from __future__ import annotations

import json
import re
import socketserver
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests

from devstack import spec
from devstack._http import QuietHandler
from devstack.openai_sim import FaultPlan, FineTuningSimulator
from devstack.processes import read_ready_line

KEY = "sim-test-key-0123456789"
API_VERSION = "2024-10-21"
JOBS = "/openai/fine_tuning/jobs"
REPO = Path(__file__).resolve().parents[1]
needs_upstream_spec = pytest.mark.skipif(not spec.spec_available(), reason=spec.SPEC_MISSING)

# Azure's gateway answers a wrong key and a wrong path/api-version with these bodies. Their codes
# ("401", "404") are not in the spec's ErrorCode enum, so they are checked by exact shape, not the schema.
GATEWAY_401 = {
    "error": {
        "code": "401",
        "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
        "valid key for an active subscription and use a correct regional API endpoint for your resource.",
    }
}
GATEWAY_404 = {"error": {"code": "404", "message": "Resource not found"}}


@pytest.fixture
def sim() -> Iterator[FineTuningSimulator]:
    """A running simulator."""
    with FineTuningSimulator(api_key=KEY) as simulator:
        yield simulator


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A keep-alive HTTP session."""
    with requests.Session() as session:
        yield session


def check(response: requests.Response, definition: str | None = None) -> Any:
    """Assert Azure's headers and validate the body: gateway bodies by shape, the rest against our schema."""
    assert response.headers["content-type"] == "application/json"
    assert uuid.UUID(response.headers["apim-request-id"]).version == 4
    assert uuid.UUID(response.headers["x-request-id"]).version == 4
    assert response.headers["x-ms-region"]
    body = response.json()
    if body in (GATEWAY_401, GATEWAY_404):
        assert response.status_code == int(body["error"]["code"])
        return body
    if response.status_code >= 400:
        spec.validate_response("ErrorResponse", body)
        return body
    assert definition is not None, "a success body needs a definition to validate against"
    spec.validate_response(definition, body)
    jobs = body["data"] if definition == "FineTuningJobList" else [body]
    for job in jobs:
        # Azure would allow extra fields; the simulator sends none, so clients are not fooled by them.
        assert spec.unlisted_properties("FineTuningJob", job) == set()
    return body


def call(
    http: requests.Session,
    sim: FineTuningSimulator,
    method: str,
    path: str,
    *,
    key: str | None = KEY,
    api_version: str | None = API_VERSION,
    **kwargs: Any,
) -> requests.Response:
    """Send one request to the simulator."""
    headers = dict(kwargs.pop("headers", {}))
    if key is not None:
        headers["api-key"] = key
    params = dict(kwargs.pop("params", {}))
    if api_version is not None:
        params["api-version"] = api_version
    return http.request(method, sim.endpoint + path, headers=headers, params=params, timeout=5, **kwargs)


# --- the validators themselves ------------------------------------------------------------------


# A job with just the fields our schema requires; each row below spoils it in one way.
MINIMAL_JOB = {
    "id": "ftjob-a",
    "object": "fine_tuning.job",
    "status": "running",
    "model": "m",
    "training_file": "f",
    "created_at": 1,
}


def _without(field: str) -> dict[str, Any]:
    return {name: value for name, value in MINIMAL_JOB.items() if name != field}


@pytest.mark.parametrize(
    ("definition", "instance"),
    [
        ("FineTuningJob", _without("id")),
        ("FineTuningJob", _without("status")),
        ("FineTuningJob", {**MINIMAL_JOB, "status": "cancelling"}),
        ("FineTuningJob", {**MINIMAL_JOB, "object": "list"}),
        ("FineTuningJob", {**MINIMAL_JOB, "created_at": "yesterday"}),
        ("FineTuningJob", {**MINIMAL_JOB, "estimated_finish": None}),
        ("FineTuningJob", {**MINIMAL_JOB, "hyperparameters": {"n_epochs": "3"}}),
        ("FineTuningJob", {**MINIMAL_JOB, "status": "failed", "error": {"code": 42}}),
        ("FineTuningJobList", {"object": "list", "data": [_without("model")], "has_more": False}),
        ("FineTuningJobList", {"object": "list", "data": [MINIMAL_JOB]}),
        ("ErrorResponse", GATEWAY_401),
        ("ErrorResponse", {"error": {"code": "notFound"}}),
        ("ErrorResponse", {"error": {"code": "notFound", "message": ""}}),
    ],
)
def test_own_schema_rejects_what_the_app_cannot_use(definition: str, instance: Any) -> None:
    """Our schema refuses a job without id or known status, nulls, wrong types, and error bodies without text."""
    with pytest.raises(jsonschema.ValidationError):
        spec.validate_response(definition, instance)


def test_own_schema_accepts_what_the_rows_above_spoil() -> None:
    """The unspoilt job, a simulator job with every failed-state field, a list and an error are valid."""
    with FineTuningSimulator(api_key=KEY) as simulator:
        failed = simulator.create_job(status="failed")
    spec.validate_response("FineTuningJob", MINIMAL_JOB)
    spec.validate_response("FineTuningJob", failed)
    spec.validate_response("FineTuningJobList", {"object": "list", "data": [MINIMAL_JOB, failed], "has_more": False})
    spec.validate_response("ErrorResponse", {"error": {"code": "invalidPayload", "message": "m", "target": "job_id"}})


@needs_upstream_spec
def test_own_schema_agrees_with_the_spec() -> None:
    """Every field and enum value our schema names is the upstream spec's, with the same JSON type."""
    definitions = spec.load_spec()["definitions"]
    ours = spec.own_schema()["$defs"]
    # The spec's states, and the ones Azure added since (the v1 API's queued, validating_files, pausing, ...).
    assert set(definitions["FineTuningState"]["enum"]) <= set(ours["FineTuningState"]["enum"])
    assert ours["ErrorCode"]["enum"] == definitions["ErrorCode"]["enum"]
    for name in ("FineTuningJob", "FineTuningJobList"):
        upstream = definitions[name]["properties"]
        for field, schema in ours[name]["properties"].items():
            assert field in upstream, f"{name}.{field} is not in the spec"
            theirs = upstream[field]
            if "$ref" in theirs:
                theirs = definitions[theirs["$ref"].rsplit("/", 1)[1]]
            if "type" in schema:
                assert schema["type"] == theirs["type"], f"{name}.{field}"
            for inner, inner_schema in schema.get("properties", {}).items():
                assert inner_schema["type"] == theirs["properties"][inner]["type"], f"{name}.{field}.{inner}"
    upstream_error = definitions["Error"]["properties"]
    for field in ours["ErrorResponse"]["properties"]["error"]["properties"]:
        assert field in upstream_error


def _spec_examples() -> list[tuple[str, str, Any]]:
    """Return (label, definition, instance) for every fine-tuning example the spec links to."""
    cases = []
    for path, operations in spec.load_spec()["paths"].items():
        if not path.startswith("/fine_tuning/"):
            continue
        for method, operation in operations.items():
            body_schema = next((p["schema"] for p in operation.get("parameters", []) if p.get("in") == "body"), None)
            for example_ref in operation.get("x-ms-examples", {}).values():
                example_path = spec.SPEC_PATH.parent / example_ref["$ref"]
                if not example_path.exists():
                    continue  # the delete example ships only as YAML
                example = json.loads(example_path.read_text(encoding="utf-8"))
                if body_schema is not None:
                    name = body_schema["$ref"].rsplit("/", 1)[1]
                    body_param = next(p["name"] for p in operation["parameters"] if p.get("in") == "body")
                    cases.append((example_path.name + " request", name, example["parameters"][body_param]))
                for status, response in example["responses"].items():
                    schema = operation["responses"][status].get("schema")
                    if schema is not None:
                        name = schema["$ref"].rsplit("/", 1)[1]
                        cases.append((f"{example_path.name} {method} {status}", name, response["body"]))
    return cases


SPEC_EXAMPLES = _spec_examples() if spec.spec_available() else []


@needs_upstream_spec
def test_spec_links_the_fine_tuning_examples() -> None:
    """The examples the tests below rely on are found through the spec."""
    labels = {label.split(" ")[0] for label, _, _ in SPEC_EXAMPLES}
    assert {"cancel_finetuning_job.json", "get_finetuning_job.json", "get_finetuning_jobs.json"} <= labels
    assert {"post_finetuning_job.json"} <= labels


@needs_upstream_spec
@pytest.mark.parametrize(("label", "definition", "instance"), SPEC_EXAMPLES, ids=[c[0] for c in SPEC_EXAMPLES])
def test_spec_examples_validate(label: str, definition: str, instance: Any) -> None:
    """Both validators accept Azure's own examples (ours for the bodies it describes)."""
    spec.validate(definition, instance)
    if definition in spec.own_schema()["$defs"]:
        spec.validate_response(definition, instance)


@pytest.mark.parametrize(
    ("definition", "instance"),
    [
        ("FineTuningJob", {"model": "m", "training_file": "f", "status": "cancelling"}),
        ("FineTuningJob", {"model": "m"}),
        ("FineTuningJob", {"model": "m", "training_file": "f", "created_at": "yesterday"}),
        ("FineTuningJob", {"model": "m", "training_file": "f", "hyperparameters": {"n_epochs": "3"}}),
        ("FineTuningJob", {"model": "m", "training_file": "f", "estimated_finish": None}),
        ("FineTuningJobList", {"object": "list", "data": [{"model": "m"}]}),
        ("ErrorResponse", GATEWAY_401),
        ("ErrorResponse", {"error": {"code": "notFound"}}),
    ],
)
@needs_upstream_spec
def test_validator_rejects_what_the_spec_forbids(definition: str, instance: Any) -> None:
    """The validator follows $refs (status enum, nested hyperparameters, ErrorCode) and rejects bad bodies."""
    with pytest.raises(jsonschema.ValidationError):
        spec.validate(definition, instance)


# --- routes ------------------------------------------------------------------------------------


def test_create_job(sim: FineTuningSimulator, http: requests.Session) -> None:
    """POST /fine_tuning/jobs creates a pending job with an Azure-style id."""
    request = {"model": "gpt-4o-mini-2024-07-18", "training_file": "file-abc", "suffix": "mine", "seed": 7}
    response = call(http, sim, "POST", JOBS, json=request)
    assert response.status_code == 201
    job = check(response, "FineTuningJob")
    assert re.fullmatch(r"ftjob-[0-9a-f]{32}", job["id"])
    assert (job["object"], job["status"], job["model"], job["training_file"]) == (
        "fine_tuning.job",
        "pending",
        "gpt-4o-mini-2024-07-18",
        "file-abc",
    )
    assert (job["suffix"], job["seed"]) == ("mine", 7)
    assert abs(job["created_at"] - time.time()) < 5
    assert response.headers["location"] == sim.endpoint + JOBS + "/" + job["id"]
    assert sim.job(job["id"]) == job


@pytest.mark.parametrize(
    "body",
    [
        None,
        b"not json",
        b"[1, 2]",
        b'{"training_file": "file-abc"}',
        b'{"model": "gpt-4o-mini"}',
        b'{"model": "", "training_file": "file-abc"}',
        b'{"model": "gpt-4o-mini", "training_file": 3}',
    ],
)
def test_create_job_rejects_invalid_payload(
    sim: FineTuningSimulator, http: requests.Session, body: bytes | None
) -> None:
    """A creation body without model and training_file is a 400 invalidPayload."""
    response = call(http, sim, "POST", JOBS, data=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert check(response)["error"]["code"] == "invalidPayload"
    assert sim.jobs() == []


def test_list_jobs_pages_newest_first(sim: FineTuningSimulator, http: requests.Session) -> None:
    """GET /fine_tuning/jobs lists newest first and pages with `after` and `limit`."""
    ids = [sim.create_job(status=status)["id"] for status in ("running", "succeeded", "pending")]
    first = check(call(http, sim, "GET", JOBS, params={"limit": 2}), "FineTuningJobList")
    assert (first["object"], first["has_more"]) == ("list", True)
    assert [job["id"] for job in first["data"]] == [ids[2], ids[1]]
    rest = check(call(http, sim, "GET", JOBS, params={"after": ids[1]}), "FineTuningJobList")
    assert ([job["id"] for job in rest["data"]], rest["has_more"]) == ([ids[0]], False)
    everything = check(call(http, sim, "GET", JOBS), "FineTuningJobList")
    assert len(everything["data"]) == 3


@pytest.mark.parametrize("limit", ["0", "101", "ten"])
def test_list_jobs_rejects_bad_limit(sim: FineTuningSimulator, http: requests.Session, limit: str) -> None:
    """A limit outside 1..100 is invalidPayload."""
    response = call(http, sim, "GET", JOBS, params={"limit": limit})
    assert response.status_code == 400
    assert check(response)["error"]["code"] == "invalidPayload"


def test_get_job(sim: FineTuningSimulator, http: requests.Session) -> None:
    """GET /fine_tuning/jobs/{id} returns the job; an unknown id is notFound."""
    job = sim.create_job(status="succeeded")
    found = check(call(http, sim, "GET", JOBS + "/" + job["id"]), "FineTuningJob")
    assert found == job
    assert found["fine_tuned_model"].startswith(job["model"] + ".ft-")
    missing = call(http, sim, "GET", JOBS + "/ftjob-0000")
    assert missing.status_code == 404
    assert check(missing)["error"]["code"] == "notFound"


@pytest.mark.parametrize("status", ["created", "pending", "running"])
def test_cancel_active_job(sim: FineTuningSimulator, http: requests.Session, status: str) -> None:
    """Cancelling an active job answers 200 with the job, now cancelled."""
    job = sim.create_job(status=status)
    response = call(http, sim, "POST", JOBS + "/" + job["id"] + "/cancel")
    assert response.status_code == 200
    cancelled = check(response, "FineTuningJob")
    assert (cancelled["id"], cancelled["status"]) == (job["id"], "cancelled")
    assert "estimated_finish" not in cancelled and cancelled["finished_at"] >= job["created_at"]
    assert sim.job(job["id"])["status"] == "cancelled"


def test_cancel_delay_keeps_the_old_status_for_a_while(sim: FineTuningSimulator, http: requests.Session) -> None:
    """With cancel_delay the cancel is accepted at once but the job reports cancelled only later."""
    sim.cancel_delay = 0.3
    job = sim.create_job(status="running")
    accepted = call(http, sim, "POST", JOBS + "/" + job["id"] + "/cancel")
    accepted_at = time.monotonic()
    assert (accepted.status_code, check(accepted, "FineTuningJob")["status"]) == (200, "running")
    again = call(http, sim, "POST", JOBS + "/" + job["id"] + "/cancel")
    assert check(again, "FineTuningJob")["status"] == "running"  # still active, so a repeat is accepted too
    assert check(call(http, sim, "GET", JOBS + "/" + job["id"]), "FineTuningJob")["status"] == "running"
    deadline = time.monotonic() + 5
    while sim.job(job["id"])["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert time.monotonic() - accepted_at >= 0.2
    final = check(call(http, sim, "GET", JOBS + "/" + job["id"]), "FineTuningJob")
    assert final["status"] == "cancelled" and "finished_at" in final
    terminal = call(http, sim, "POST", JOBS + "/" + job["id"] + "/cancel")
    assert check(terminal)["error"]["code"] == "unexpectedEntityState"


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_cancel_terminal_job_is_unexpected_entity_state(
    sim: FineTuningSimulator, http: requests.Session, status: str
) -> None:
    """Cancelling a finished job is a 400 unexpectedEntityState naming the status; the job is unchanged."""
    job = sim.create_job(status=status)
    response = call(http, sim, "POST", JOBS + "/" + job["id"] + "/cancel")
    assert response.status_code == 400
    error = check(response)["error"]
    assert error["code"] == "unexpectedEntityState"
    assert status in error["message"]
    assert sim.job(job["id"]) == job


def test_cancel_unknown_job_is_not_found(sim: FineTuningSimulator, http: requests.Session) -> None:
    """Cancelling an unknown job is a 404 notFound ErrorResponse."""
    response = call(http, sim, "POST", JOBS + "/ftjob-0f4191f0c59a4256b7a797a3d9eed219/cancel")
    assert response.status_code == 404
    assert check(response)["error"]["code"] == "notFound"


@pytest.mark.parametrize("status", ["created", "pending", "running", "succeeded", "cancelled", "failed"])
def test_seeded_jobs_match_the_spec_in_every_state(
    sim: FineTuningSimulator, http: requests.Session, status: str
) -> None:
    """Jobs in every state, as served, are valid FineTuningJobs with the state's fields."""
    job = sim.create_job(status=status, model="gpt-35-turbo-0613", job_id="ft-72a2792ef7d24ba7b82c7fe4a37e379f")
    served = check(call(http, sim, "GET", JOBS + "/" + job["id"]), "FineTuningJob")
    assert (served["status"], served["model"], served["id"]) == (status, "gpt-35-turbo-0613", job["id"])
    assert ("estimated_finish" in served) == (status == "running")
    assert ("finished_at" in served) == (status in ("succeeded", "cancelled", "failed"))
    assert ("error" in served) == (status == "failed")


@needs_upstream_spec
def test_served_bodies_are_valid_for_the_spec_too(sim: FineTuningSimulator, http: requests.Session) -> None:
    """A creation request, jobs in every state, a list and an error, as served, are valid upstream bodies."""
    request = {"model": "gpt-4o-mini-2024-07-18", "training_file": "file-abc", "suffix": "mine", "seed": 7}
    spec.validate("FineTuningJobCreation", request)
    spec.validate("FineTuningJob", check(call(http, sim, "POST", JOBS, json=request), "FineTuningJob"))
    for status in ("created", "pending", "running", "succeeded", "cancelled", "failed"):
        job = check(call(http, sim, "GET", JOBS + "/" + sim.create_job(status=status)["id"]), "FineTuningJob")
        spec.validate("FineTuningJob", job)
        assert spec.undocumented_properties("FineTuningJob", job) == set()
    spec.validate("FineTuningJobList", check(call(http, sim, "GET", JOBS), "FineTuningJobList"))
    missing = check(call(http, sim, "GET", JOBS + "/ftjob-0000"))
    spec.validate("ErrorResponse", missing)
    spec.validate("ErrorCode", missing["error"]["code"])


def test_set_status_moves_a_job(sim: FineTuningSimulator, http: requests.Session) -> None:
    """set_status changes what the API reports; unknown states and jobs are refused."""
    job = sim.create_job(status="pending")
    sim.set_status(job["id"], "succeeded")
    assert check(call(http, sim, "GET", JOBS + "/" + job["id"]), "FineTuningJob")["status"] == "succeeded"
    with pytest.raises(ValueError):
        sim.set_status(job["id"], "cancelling")
    with pytest.raises(KeyError):
        sim.set_status("ftjob-missing", "failed")


# --- gateway behaviour: key and api-version -----------------------------------------------------


@pytest.mark.parametrize("key", [None, "", "wrong-key", KEY + " "])
def test_wrong_api_key_is_gateway_401(sim: FineTuningSimulator, http: requests.Session, key: str | None) -> None:
    """Without the right api-key every route answers Azure's exact 401 body."""
    job = sim.create_job()
    for method, path in [("GET", JOBS), ("GET", JOBS + "/" + job["id"]), ("POST", JOBS + "/" + job["id"] + "/cancel")]:
        response = call(http, sim, method, path, key=key)
        assert response.status_code == 401
        assert check(response) == GATEWAY_401
    assert sim.job(job["id"])["status"] == "running"


def test_api_key_rotation(sim: FineTuningSimulator, http: requests.Session) -> None:
    """After the key changes, the old key is refused and the new one accepted."""
    job = sim.create_job()
    sim.api_key = "rotated-key"
    assert call(http, sim, "GET", JOBS + "/" + job["id"]).status_code == 401
    response = call(http, sim, "GET", JOBS + "/" + job["id"], key="rotated-key")
    assert check(response, "FineTuningJob")["id"] == job["id"]


@pytest.mark.parametrize(
    ("method", "path", "api_version"),
    [
        ("GET", JOBS, None),
        ("GET", JOBS, "2099-01-01"),
        ("POST", JOBS + "/ftjob-abc/cancel", ""),
        ("GET", JOBS + "/ftjob-abc/events", API_VERSION),
        ("GET", "/openai/deployments", API_VERSION),
        ("GET", "/fine_tuning/jobs", API_VERSION),
        ("DELETE", JOBS + "/ftjob-abc", API_VERSION),
        ("GET", JOBS + "/ftjob-abc/cancel", API_VERSION),
        ("POST", JOBS + "/", API_VERSION),
    ],
)
def test_unknown_route_or_api_version_is_gateway_404(
    sim: FineTuningSimulator, http: requests.Session, method: str, path: str, api_version: str | None
) -> None:
    """A wrong path, method or api-version answers Azure's exact 404 body, whatever the key."""
    for key in (KEY, "wrong-key"):
        response = call(http, sim, method, path, key=key, api_version=api_version)
        assert response.status_code == 404
        assert check(response) == GATEWAY_404


# --- scripted faults ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "code"),
    [
        (429, {"retry-after": "1"}, "tooManyRequests"),
        (429, {"retry-after-ms": "20", "retry-after": "1"}, "tooManyRequests"),
        (500, None, "internalFailure"),
        (502, None, "serviceUnavailable"),
        (503, {"retry-after": "2"}, "serviceUnavailable"),
        (504, None, "serviceUnavailable"),
        (408, None, "serviceUnavailable"),
        (403, None, "forbidden"),
        (409, None, "conflict"),
    ],
)
def test_fail_next_status(
    sim: FineTuningSimulator, http: requests.Session, status: int, headers: dict[str, str] | None, code: str
) -> None:
    """A scripted status answers once with a spec ErrorResponse and its headers, then service resumes."""
    job = sim.create_job()
    sim.fail_next(status=status, headers=headers)
    failed = call(http, sim, "POST", JOBS + "/" + job["id"] + "/cancel")
    assert failed.status_code == status
    assert check(failed)["error"]["code"] == code
    for name, value in (headers or {}).items():
        assert failed.headers[name] == value
    assert sim.job(job["id"])["status"] == "running"
    assert check(call(http, sim, "POST", JOBS + "/" + job["id"] + "/cancel"), "FineTuningJob")["status"] == "cancelled"


def test_fail_next_401_is_the_gateway_body(sim: FineTuningSimulator, http: requests.Session) -> None:
    """A scripted 401 looks like Azure's real one even with the right key."""
    sim.fail_next(status=401)
    assert check(call(http, sim, "GET", JOBS)) == GATEWAY_401


def test_fail_next_custom_body(sim: FineTuningSimulator, http: requests.Session) -> None:
    """A scripted body is sent as given."""
    body = {"error": {"code": "quotaExceeded", "message": "Quota exceeded.", "target": "job"}}
    sim.fail_next(status=400, body=body)
    response = call(http, sim, "GET", JOBS)
    assert (response.status_code, check(response)) == (400, body)


def test_fail_next_raw_body_and_content_type(sim: FineTuningSimulator, http: requests.Session) -> None:
    """A bytes body goes out verbatim, and a scripted content-type replaces the default one."""
    sim.fail_next(status=200, body=b'{"id": "ftjob-abc", "status": "cancel', headers={"Content-Type": "text/plain"})
    response = call(http, sim, "GET", JOBS)
    assert (response.status_code, response.content) == (200, b'{"id": "ftjob-abc", "status": "cancel')
    assert response.headers["content-type"] == "text/plain"
    assert uuid.UUID(response.headers["x-request-id"])


def test_fail_next_counts_and_order(sim: FineTuningSimulator, http: requests.Session) -> None:
    """Faults apply to the next n requests, first queued first."""
    sim.fail_next(2, status=429, headers={"retry-after": "1"})
    sim.fail_next(status=503)
    assert sim.pending_faults == 3
    statuses = [call(http, sim, "GET", JOBS).status_code for _ in range(4)]
    assert statuses == [429, 429, 503, 200]
    assert sim.pending_faults == 0


def test_fail_next_filters_by_method_and_path(sim: FineTuningSimulator, http: requests.Session) -> None:
    """A filtered fault waits for a matching request; others pass it by."""
    job = sim.create_job()
    sim.fail_next(status=500, method="POST", path_suffix="/cancel")
    assert check(call(http, sim, "GET", JOBS + "/" + job["id"]), "FineTuningJob")["status"] == "running"
    assert call(http, sim, "POST", JOBS + "/" + job["id"] + "/cancel").status_code == 500
    assert call(http, sim, "POST", JOBS + "/" + job["id"] + "/cancel").status_code == 200


def test_clear_faults(sim: FineTuningSimulator, http: requests.Session) -> None:
    """clear_faults drops everything queued."""
    sim.fail_next(5, status=500)
    sim.clear_faults()
    assert call(http, sim, "GET", JOBS).status_code == 200


def test_fail_next_requires_a_fault() -> None:
    """A fault that would change nothing is a programming error."""
    with FineTuningSimulator(api_key=KEY) as simulator:
        with pytest.raises(ValueError):
            simulator.fail_next()
        with pytest.raises(ValueError):
            simulator.fail_next(0, status=500)


def test_delay_exceeds_client_timeout_then_serves(sim: FineTuningSimulator, http: requests.Session) -> None:
    """A delayed request times the client out, and the simulator still carries it out afterwards."""
    job = sim.create_job()
    sim.fail_next(delay=0.5)
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.post(
            sim.endpoint + JOBS + "/" + job["id"] + "/cancel",
            params={"api-version": API_VERSION},
            headers={"api-key": KEY},
            timeout=(5, 0.1),
        )
    deadline = time.monotonic() + 5
    while sim.job(job["id"])["status"] != "cancelled" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sim.job(job["id"])["status"] == "cancelled"


def test_delay_with_status(sim: FineTuningSimulator, http: requests.Session) -> None:
    """delay plus status answers that status after the delay."""
    sim.fail_next(status=503, delay=0.2)
    started = time.monotonic()
    response = call(http, sim, "GET", JOBS)
    assert response.status_code == 503 and time.monotonic() - started >= 0.2
    check(response)


def test_drop_closes_without_answer(sim: FineTuningSimulator, http: requests.Session) -> None:
    """drop closes the connection with no response at all; the log records status 0."""
    job = sim.create_job()
    sim.fail_next(drop=True)
    with pytest.raises(requests.exceptions.ConnectionError):
        call(http, sim, "POST", JOBS + "/" + job["id"] + "/cancel")
    assert sim.requests[-1].status == 0
    assert sim.job(job["id"])["status"] == "running"
    assert call(http, sim, "POST", JOBS + "/" + job["id"] + "/cancel").status_code == 200


@pytest.mark.parametrize(("status", "expected"), [(None, 200), (502, 502)])
def test_non_json_answer(sim: FineTuningSimulator, http: requests.Session, status: int | None, expected: int) -> None:
    """non_json answers an HTML page as text/html, with the Azure tracing headers."""
    sim.fail_next(non_json=True, status=status)
    response = call(http, sim, "GET", JOBS)
    assert response.status_code == expected
    assert response.headers["content-type"] == "text/html"
    assert response.text.startswith("<html>")
    assert uuid.UUID(response.headers["apim-request-id"])
    with pytest.raises(ValueError):
        response.json()


# --- random faults ------------------------------------------------------------------------------


def test_fault_rate_one_always_fails_and_zero_never(sim: FineTuningSimulator, http: requests.Session) -> None:
    """Probability 1 faults every request; 0 turns random faults off."""
    sim.set_fault_rate(1.0, kinds=("500",))
    assert [call(http, sim, "GET", JOBS).status_code for _ in range(5)] == [500] * 5
    sim.set_fault_rate(0)
    assert [call(http, sim, "GET", JOBS).status_code for _ in range(5)] == [200] * 5


def test_fault_rate_mix_is_seeded_and_spec_valid(sim: FineTuningSimulator, http: requests.Session) -> None:
    """A seeded mix repeats exactly, hits every kind asked for, and every answer is a valid body."""

    def run() -> list[tuple[int, str | None]]:
        sim.set_fault_rate(0.5, seed=42, kinds=("429", "429ms", "500", "503"))
        seen = []
        for _ in range(80):
            response = call(http, sim, "GET", JOBS)
            check(response, "FineTuningJobList")
            seen.append((response.status_code, response.headers.get("retry-after-ms")))
        return seen

    first, second = run(), run()
    assert first == second
    assert {status for status, _ in first} == {200, 429, 500, 503}
    assert (429, "20") in first and (429, None) in first


def test_fault_rate_timeout_and_drop(sim: FineTuningSimulator, http: requests.Session) -> None:
    """The timeout kind outlasts a client timeout; the drop kind closes the connection."""
    sim.set_fault_rate(1.0, kinds=("timeout",), timeout_delay=0.3)
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.get(sim.endpoint + JOBS, params={"api-version": API_VERSION}, headers={"api-key": KEY}, timeout=(5, 0.1))
    sim.set_fault_rate(1.0, kinds=("drop",))
    with pytest.raises(requests.exceptions.ConnectionError):
        call(http, sim, "GET", JOBS)


def test_faults_are_counted_by_kind_as_they_are_injected(sim: FineTuningSimulator, http: requests.Session) -> None:
    """The simulator counts its own faults: a random one by its kind, a scripted one as "scripted"."""
    sim.fail_next(2, status=503)
    sim.set_fault_rate(0.5, seed=7, kinds=("429", "500"))
    statuses = [call(http, sim, "GET", JOBS).status_code for _ in range(40)]

    assert statuses[:2] == [503, 503]
    assert sim.fault_counts() == {"scripted": 2, "429": statuses[2:].count(429), "500": statuses.count(500)}
    assert 0 < statuses.count(429) and 0 < statuses.count(500)


def test_a_fault_plan_given_at_start_applies_from_the_first_request() -> None:
    """A simulator built with a FaultPlan fails from its first request, and counts what it injected."""
    with FineTuningSimulator(api_key=KEY, faults=FaultPlan(1.0, kinds=("drop",))) as simulator:
        with requests.Session() as session, pytest.raises(requests.exceptions.ConnectionError):
            call(session, simulator, "GET", JOBS)
        assert simulator.fault_counts() == {"drop": 1}


@pytest.mark.parametrize(("probability", "kinds"), [(1.5, ("500",)), (-0.1, ("500",)), (0.5, ("418",)), (0.5, ())])
def test_fault_rate_rejects_bad_arguments(probability: float, kinds: tuple[str, ...]) -> None:
    """Out-of-range probabilities and unknown kinds are refused."""
    with FineTuningSimulator(api_key=KEY) as simulator, pytest.raises(ValueError):
        simulator.set_fault_rate(probability, kinds=kinds)


# --- request log, counters, performance, lifecycle ----------------------------------------------


def test_request_log_and_counts(sim: FineTuningSimulator, http: requests.Session) -> None:
    """Each request is logged with method, path, query, headers and answered status, and counted by route."""
    job = sim.create_job()
    call(http, sim, "POST", JOBS + "/" + job["id"] + "/cancel", headers={"x-correlation-id": "abc"})
    call(http, sim, "GET", JOBS, key="bad")
    first, second = sim.requests
    assert (first.method, first.path, first.query, first.status) == (
        "POST",
        JOBS + "/" + job["id"] + "/cancel",
        {"api-version": API_VERSION},
        200,
    )
    assert first.headers["api-key"] == KEY and first.headers["x-correlation-id"] == "abc"
    assert (second.status, second.headers["api-key"]) == (401, "bad")
    assert second.time >= first.time
    assert sim.counts == {("POST", "cancel"): 1, ("GET", "list"): 1}
    sim.clear_requests()
    assert sim.requests == []


def test_request_log_can_be_off() -> None:
    """record_requests=False keeps no log but still counts."""
    with FineTuningSimulator(api_key=KEY, record_requests=False) as simulator, requests.Session() as session:
        call(session, simulator, "GET", JOBS)
        assert simulator.requests == []
        assert simulator.counts == {("GET", "list"): 1}


def test_keep_alive_responses_are_one_write_on_a_no_delay_socket(
    sim: FineTuningSimulator, http: requests.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No delayed-ACK stall on keep-alive: TCP_NODELAY, and each response leaves in one write."""
    job = sim.create_job()
    call(http, sim, "GET", JOBS + "/" + job["id"])  # open the connection
    writes: list[int] = []
    original = socketserver._SocketWriter.write  # the handler's wfile when wbufsize is 0

    def counting_write(self: Any, data: bytes) -> int:
        writes.append(len(data))
        return original(self, data)

    monkeypatch.setattr(socketserver._SocketWriter, "write", counting_write)
    for _ in range(5):
        assert call(http, sim, "GET", JOBS + "/" + job["id"]).status_code == 200
    assert len(writes) == 5 and min(writes) > 200  # status line, headers and body together
    assert QuietHandler.disable_nagle_algorithm is True


def test_stop_is_prompt_and_closes_keep_alive_connections(http: requests.Session) -> None:
    """stop() returns quickly even with a request sleeping in a delay, and pooled connections die with it."""
    simulator = FineTuningSimulator(api_key=KEY).start()
    assert call(http, simulator, "GET", JOBS).status_code == 200
    simulator.fail_next(delay=30)
    outcome: list[BaseException] = []

    def sleeping_request() -> None:
        try:
            call(requests.Session(), simulator, "GET", JOBS)
        except requests.exceptions.RequestException as err:
            outcome.append(err)

    sleeper = threading.Thread(target=sleeping_request)
    sleeper.start()
    deadline = time.monotonic() + 5
    while simulator.pending_faults and time.monotonic() < deadline:  # wait for the request to take its fault
        time.sleep(0.01)
    started = time.monotonic()
    simulator.stop()
    assert time.monotonic() - started < 1.0
    sleeper.join(timeout=5)
    assert not sleeper.is_alive() and len(outcome) == 1
    with pytest.raises(requests.exceptions.ConnectionError):
        call(http, simulator, "GET", JOBS)


def test_openai_sdk_works_against_the_simulator(sim: FineTuningSimulator) -> None:
    """The openai SDK's AzureOpenAI client creates, reads, lists and cancels jobs unchanged."""
    from openai import AzureOpenAI

    client = AzureOpenAI(azure_endpoint=sim.endpoint, api_key=KEY, api_version=API_VERSION, max_retries=0)
    created = client.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file="file-abc")
    assert created.status == "pending"
    assert client.fine_tuning.jobs.retrieve(created.id).id == created.id
    assert [job.id for job in client.fine_tuning.jobs.list(limit=5)] == [created.id]
    assert client.fine_tuning.jobs.cancel(created.id).status == "cancelled"


def test_main_runs_standalone() -> None:
    """`python -m devstack.openai_sim` prints a ready line with its endpoint and serves until terminated."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack.openai_sim", "--port", "0", "--api-key", KEY, "--job", "ftjob-abc=pending"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        endpoint = read_ready_line(proc.stdout, "openai-sim", timeout=20)["AZURE_OPENAI_ENDPOINT"]
        response = requests.post(
            endpoint + JOBS + "/ftjob-abc/cancel",
            params={"api-version": API_VERSION},
            headers={"api-key": KEY},
            timeout=5,
        )
        assert check(response, "FineTuningJob")["status"] == "cancelled"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
