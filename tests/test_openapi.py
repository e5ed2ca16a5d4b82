"""openapi.yaml: a valid OpenAPI 3.1 document that says what the code does and cannot drift from the spec.

Three kinds of checks. The document on its own (valid, every `$ref` resolves, every example valid).
The document against the sources of truth: the upstream spec's definitions, the app's routes and
auth levels, the limits in `shared.records`, CONTRACT section 3's status codes. And the document
against the real handlers: one row per CONTRACT situation, the answer and the record must be
what the document promises for that status. The checks against the upstream spec need Microsoft's
spec, which is not in the repository (`AZURE_OPENAI_SPEC_DIR`, see `devstack.spec`); without it they skip.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
import schemathesis
import yaml
from jsonschema import Draft202012Validator

from devstack.keyvault_emulator import KeyVaultEmulator
from devstack.openai_sim import RESOURCE_NOT_FOUND_BODY, FineTuningSimulator
from devstack.spec import SPEC_MISSING, load_spec, spec_available
from scripts.build_openapi import MARKER, UPSTREAM_ROOTS, objects_in, render, upstream_schema_names
from shared.bulk import MAX_JOB_IDS
from shared.records import (
    CORRELATION_ID_MAX_LENGTH,
    JOB_ID_PATTERN,
    MAX_WAIT_SECONDS,
    REJECTED_TEXT_MAX_LENGTH,
    InvalidRequest,
    Outcome,
    ResultRecord,
    Trigger,
    utc_now,
    validate_correlation_id,
    validate_job_id,
)
from tests.support.handlers import SECRET_NAME, handler
from tests.support.openapi import OPENAPI_PATH, component_validator, load_document, validator_at

REPO_ROOT = Path(__file__).resolve().parents[1]
CANCEL_PATH = "/openai/fine_tuning/jobs/{job_id}/cancel"
# CONTRACT section 3's table, plus 401 (no function key) and the other upstream 4xx passed through.
CANCEL_STATUSES = {"200", "400", "401", "404", "409", "429", "502", "503", "4XX"}
RETRYABLE_STATUSES = {"429", "503"}
# The brief names these; the closure of FineTuningJob and ErrorResponse holds them and their references.
UPSTREAM_SCHEMAS = {"FineTuningJob", "ErrorResponse", "Error", "ErrorCode", "FineTuningState"}
needs_upstream_spec = pytest.mark.skipif(not spec_available(), reason=SPEC_MISSING)


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return load_document()


def pointer(*parts: str) -> str:
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


# --- the document on its own ----------------------------------------------------------------------


def test_is_a_valid_openapi_3_1_document() -> None:
    schema = schemathesis.openapi.from_path(OPENAPI_PATH)
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    assert schema.raw_schema["openapi"].startswith("3.1.")
    operations = [result.ok() for result in schema.get_all_operations()]  # raises for an unusable operation
    assert {(op.method.upper(), op.path) for op in operations} == {
        ("POST", CANCEL_PATH), ("POST", "/openai/v1/fine_tuning/jobs/{job_id}/cancel"),
        ("POST", "/resources/{resource}" + CANCEL_PATH),
        ("POST", "/resources/{resource}/openai/v1/fine_tuning/jobs/{job_id}/cancel"),
        ("POST", "/cancel"), ("GET", "/health"), ("POST", "/guard/cancel-active"), ("POST", "/guard/budget-alert"),
    }


def test_every_schema_is_valid_json_schema_2020_12(document: dict[str, Any]) -> None:
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_every_ref_resolves(document: dict[str, Any]) -> None:
    refs = {node["$ref"] for node in objects_in(document) if isinstance(node.get("$ref"), str)}
    assert refs, "the document uses $ref"
    for ref in refs:
        assert ref.startswith("#/"), ref
        target: Any = document
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        assert isinstance(target, dict), ref


def test_every_example_is_valid_for_its_schema(document: dict[str, Any]) -> None:
    checked = 0
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            for index, parameter in enumerate(operation.get("parameters", [])):
                at = pointer("paths", path, method, "parameters", str(index), "schema")
                for example in parameter.get("examples", {}).values():
                    validator_at(document, at).validate(example["value"])
                    checked += 1
            content_holders = [("requestBody", operation.get("requestBody", {}))]
            content_holders += [(f"responses/{status}", answer) for status, answer in operation["responses"].items()]
            for where, holder in content_holders:
                for media_type, content in holder.get("content", {}).items():
                    for example in content.get("examples", {}).values():
                        at = pointer("paths", path, method, *where.split("/"), "content", media_type, "schema")
                        validator_at(document, at).validate(example["value"])
                        checked += 1
    assert checked >= 6


# --- the document against the upstream spec ----------------------------------------------------------


@needs_upstream_spec
def test_upstream_schemas_are_the_specs_definitions_unchanged(document: dict[str, Any]) -> None:
    """FineTuningJob, ErrorResponse and what they reference: the spec's definitions, only `$ref`s moved."""
    definitions = load_spec()["definitions"]
    schemas = document["components"]["schemas"]
    closure = set(upstream_schema_names(definitions))
    assert UPSTREAM_SCHEMAS <= closure and set(UPSTREAM_ROOTS) <= closure
    for name in sorted(closure):
        ours = json.loads(json.dumps(schemas[name]).replace('"#/components/schemas/', '"#/definitions/'))
        assert ours == definitions[name], f"components.schemas.{name} differs from the spec's definitions.{name}"


@needs_upstream_spec
def test_generated_part_is_up_to_date() -> None:
    """`python -m scripts.build_openapi --check`: the part below the marker is exactly the script's output."""
    current = OPENAPI_PATH.read_text(encoding="utf-8")
    assert current.count(MARKER) == 1
    assert render(current) == current, "run: python -m scripts.build_openapi"


@needs_upstream_spec
def test_hand_written_schemas_do_not_shadow_upstream_ones(document: dict[str, Any]) -> None:
    hand_written = yaml.safe_load(OPENAPI_PATH.read_text(encoding="utf-8").partition(MARKER)[0])
    upstream = set(upstream_schema_names(load_spec()["definitions"]))
    assert not upstream & set(hand_written["components"]["schemas"])


def test_error_code_is_a_hint_where_upstream_bodies_pass_through(document: dict[str, Any]) -> None:
    """Azure's gateway answers `"code": "404"` (not an ErrorCode): valid for the pass-through schema only."""
    passthrough = validator_at(document, "/components/schemas/PassthroughErrorResponse")
    strict = validator_at(document, "/components/schemas/ErrorResponse")
    passthrough.validate(RESOURCE_NOT_FOUND_BODY)
    assert not strict.is_valid(RESOURCE_NOT_FOUND_BODY)
    code = document["components"]["schemas"]["PassthroughError"]["properties"]["code"]
    assert {"$ref": "#/components/schemas/ErrorCode"} in code["anyOf"]


# --- the document against the code -------------------------------------------------------------------


def test_paths_methods_and_auth_levels_are_the_apps_routes(document: dict[str, Any]) -> None:
    import function_app

    routes = {}
    for function in function_app.app.get_functions():
        for binding in function.get_bindings():
            if binding.type == "httpTrigger":
                spec = binding.get_dict_repr()
                auth_level = str(getattr(spec["authLevel"], "value", spec["authLevel"])).lower()
                methods = {str(getattr(m, "value", m)).lower() for m in spec["methods"]}
                routes["/" + spec["route"]] = (methods, auth_level)
    documented = {
        path: (set(methods), "anonymous" if operation.get("security", document["security"]) == [] else "function")
        for path, methods in document["paths"].items()
        for operation in methods.values()
    }
    assert documented == routes


def test_servers_end_with_the_hosts_route_prefix(document: dict[str, Any]) -> None:
    prefix = json.loads((REPO_ROOT / "host.json").read_text())["extensions"]["http"]["routePrefix"]
    assert document["servers"] and all(server["url"].endswith("/" + prefix) for server in document["servers"])


def test_function_key_is_accepted_in_the_header_or_the_code_query_parameter(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert {(s["type"], s["in"], s["name"]) for s in schemes.values()} == {
        ("apiKey", "header", "x-functions-key"), ("apiKey", "query", "code"),
    }
    assert document["security"] == [{name: []} for name in schemes]


def test_limits_are_the_codes(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert schemas["JobId"]["pattern"] == f"^{JOB_ID_PATTERN.pattern}$"
    assert schemas["CorrelationId"]["maxLength"] == CORRELATION_ID_MAX_LENGTH
    assert schemas["WaitSeconds"] == {**schemas["WaitSeconds"], "minimum": 0, "maximum": MAX_WAIT_SECONDS}
    assert schemas["BulkCancelRequest"]["properties"]["job_ids"]["maxItems"] == MAX_JOB_IDS
    assert schemas["BulkResponse"]["properties"]["results"]["maxItems"] == MAX_JOB_IDS
    assert schemas["ResultRecord"]["properties"]["job_id"]["maxLength"] == REJECTED_TEXT_MAX_LENGTH
    assert schemas["ResultRecord"]["properties"]["outcome"]["enum"] == [outcome.value for outcome in Outcome]
    assert schemas["ResultRecord"]["properties"]["trigger"]["enum"] == [trigger.value for trigger in Trigger]


@pytest.mark.parametrize(
    "job_id",
    ["ftjob-0f4191f0c59a4256b7a797a3d9eed219", "ft-A", "ftjob-" + "a" * 64, "ftjob-" + "a" * 65, "", "job-1",
     "ftjob-a.b", "ftjob-a/b", "ftjob-a?b", "ftjob-a#b", "ftjob-a%2F", "ftjob-a b", "ftjob-\u00e9", "ftjob-a\n",
     "FTJOB-a", "ftjob-", "ft-\u0661"],
)
def test_job_id_pattern_accepts_what_the_code_accepts(document: dict[str, Any], job_id: str) -> None:
    documented = _ecma_validator(document["components"]["schemas"]["JobId"]).is_valid(job_id)
    assert documented == _accepted(validate_job_id, job_id)


@pytest.mark.parametrize(
    "correlation_id", ["", "pipeline-42", " ", "~" * 128, "x" * 129, "tab\there", "caf\u00e9", "\x7f", "a\nb"]
)
def test_correlation_id_schema_accepts_what_the_code_accepts(document: dict[str, Any], correlation_id: str) -> None:
    documented = _ecma_validator(document["components"]["schemas"]["CorrelationId"]).is_valid(correlation_id)
    assert documented == _accepted(validate_correlation_id, correlation_id)


def test_cancel_route_documents_every_status_of_contract_section_3(document: dict[str, Any]) -> None:
    responses = document["paths"][CANCEL_PATH]["post"]["responses"]
    assert set(responses) == CANCEL_STATUSES
    for status, answer in responses.items():
        answer = _resolved(document, answer)
        if status == "401":  # the Functions host's own answer: empty, before the function runs
            assert "content" not in answer and "headers" not in answer
            continue
        assert list(answer["content"]) == ["application/json"], status
        assert answer["headers"]["x-request-id"] == {"$ref": "#/components/headers/RequestId"}, status
        assert ("Retry-After" in answer["headers"]) == (status in RETRYABLE_STATUSES), status
    assert document["components"]["headers"]["RetryAfter"]["required"] is True


def test_result_record_schema_lists_exactly_the_records_fields(document: dict[str, Any]) -> None:
    record = ResultRecord(
        job_id="ftjob-a", outcome=Outcome.CANCELLED, status_code=200, trigger=Trigger.HTTP,
        request_id="00000000-0000-4000-8000-000000000000", received_at=utc_now(), waited_seconds=1.0,
    ).to_dict()
    schema = document["components"]["schemas"]["ResultRecord"]
    assert list(schema["properties"]) == [*record, "truncated"]  # truncated: only on a record cut to fit the queue
    assert schema["required"] == [name for name in record if name != "waited_seconds"]


# --- the document against the handlers' answers -------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One situation of CONTRACT section 3, arranged on the emulators, and the status it answers."""

    situation: str
    status: int
    job_state: str | None = "running"  # None: a job id the simulator does not know
    job_id: str | None = None  # instead of a new job's id
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    upstream_fault: dict[str, Any] | None = None  # FineTuningSimulator.fail_next keywords, for 4 requests
    vault_secret: str | None = None  # the api-key Key Vault holds instead of the right one
    vault_status: int | None = None  # Key Vault answers this instead of the secret
    settings: dict[str, str] = field(default_factory=dict)


HANDLER_ROWS = [
    Row("cancelled", 200),
    Row("cancelled after waiting", 200, params={"wait_seconds": "5"}),
    Row("already cancelled", 200, job_state="cancelled"),
    Row("already succeeded", 409, job_state="succeeded"),
    Row("invalid job id", 400, job_id="ftjob-../x"),
    Row("invalid correlation id", 400, headers={"x-correlation-id": "\t"}),
    Row("invalid wait_seconds", 400, params={"wait_seconds": "121"}),
    Row("upstream 400 for an active job", 400, upstream_fault={"status": 400, "path_suffix": "/cancel"}),
    Row("no such job", 404, job_state=None),
    Row("gateway 404", 404, upstream_fault={"status": 404, "body": RESOURCE_NOT_FOUND_BODY}),
    Row("upstream 409 for an active job", 409, upstream_fault={"status": 409, "path_suffix": "/cancel"}),
    Row("other upstream 4xx", 422, upstream_fault={"status": 422, "body": {"error": {"code": "x", "message": "m"}}}),
    Row("throttled", 429, upstream_fault={"status": 429, "headers": {"retry-after-ms": "1"}}),
    Row("api-key refused", 502, vault_secret="not-the-key"),
    Row("non-JSON answer", 502, upstream_fault={"status": 200, "non_json": True}),
    Row("upstream 503", 503, upstream_fault={"status": 503, "headers": {"retry-after-ms": "1"}}),
    Row("Key Vault denies access", 503, vault_status=403),
    Row("misconfigured", 503, settings={"AZURE_OPENAI_ENDPOINT": "ftp://openai.example"}),
]


@pytest.mark.parametrize("row", HANDLER_ROWS, ids=[row.situation for row in HANDLER_ROWS])
def test_handler_answers_and_records_as_documented(
    document: dict[str, Any],
    simulator: FineTuningSimulator,
    vault: KeyVaultEmulator,
    monkeypatch: pytest.MonkeyPatch,
    call_http,
    row: Row,
) -> None:
    job_id = row.job_id or (simulator.create_job(status=row.job_state)["id"] if row.job_state else "ft-unknown")
    if row.upstream_fault:
        simulator.fail_next(4, **row.upstream_fault)
    if row.vault_secret:
        vault.set_secret(SECRET_NAME, row.vault_secret)
    if row.vault_status:
        vault.fail_next(10, status=row.vault_status)
    for name, value in row.settings.items():
        monkeypatch.setenv(name, value)

    call = call_http(job_id, headers=row.headers, params=row.params)

    assert call.response.status_code == row.status
    documented = str(row.status) if str(row.status) in CANCEL_STATUSES else f"{str(row.status)[0]}XX"
    answer = _resolved(document, document["paths"][CANCEL_PATH]["post"]["responses"][documented])
    at = pointer("paths", CANCEL_PATH, "post", "responses", documented, "content", "application/json", "schema")
    validator_at(document, at).validate(call.body)
    assert call.response.mimetype == "application/json"
    for name, header in answer["headers"].items():
        header = _resolved(document, header)
        value = call.response.headers.get(name)
        assert value is not None or not header.get("required"), f"{row.situation}: no {name} header"
        if value is not None and header["schema"].get("type") == "integer":
            assert int(value) >= header["schema"]["minimum"]
    component_validator("ResultRecord").validate(call.record)


def test_bulk_and_health_answers_are_as_documented(
    document: dict[str, Any], simulator: FineTuningSimulator, app_settings: dict[str, str]
) -> None:
    bulk = handler("httpTrigger", "cancel")
    health = handler("httpTrigger", "health")
    running = simulator.create_job(status="running")["id"]
    bodies = {
        200: {"job_ids": [running, running, "ft-unknown", "../x", 7, None], "correlation_id": "c", "wait_seconds": 1},
        400: {"job_ids": []},
    }
    for status, body in bodies.items():
        request = func.HttpRequest(method="POST", url="http://localhost/api/cancel", body=json.dumps(body).encode())
        response = bulk(req=request)
        assert response.status_code == status
        at = pointer("paths", "/cancel", "post", "responses", str(status), "content", "application/json", "schema")
        validator_at(document, at).validate(json.loads(response.get_body()))
    response = health(req=func.HttpRequest(method="GET", url="http://localhost/api/health", body=b""))
    assert response.status_code == 200
    at = pointer("paths", "/health", "get", "responses", "200", "content", "application/json", "schema")
    validator_at(document, at).validate(json.loads(response.get_body()))


# --- helpers ---------------------------------------------------------------------------------------------


def _ecma_validator(schema: dict[str, Any]) -> Any:
    """JSON Schema's own regex semantics (ECMA-262: `$` is the end, not "before a final newline" as in `re`)."""
    import jsonschema_rs  # schemathesis's validator

    return jsonschema_rs.validator_for(schema)


def _accepted(validate: Callable[[str], object], value: str) -> bool:
    try:
        validate(value)
    except InvalidRequest:
        return False
    return True


def _resolved(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node
