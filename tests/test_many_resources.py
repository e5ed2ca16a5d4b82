"""Issue 15 on the real handlers: many Azure OpenAI resources from one app, and who asked for each cancel.

Two simulators stand for two resources: `default` (AZURE_OPENAI_ENDPOINT) and `second` (AZURE_OPENAI_RESOURCES,
its own Key Vault secret). A third, `trap`, is on no allow-list: no input may ever reach it.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator

import azure.functions as func
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devstack.keyvault_emulator import KeyVaultEmulator
from devstack.openai_sim import FineTuningSimulator
from shared.settings import Settings, SettingsError
from tests.support.handlers import API_KEY, SECOND_KEY, call_bulk, drain_results, handler
from tests.support.properties import PROPERTY_SETTINGS

RESOURCE_ROUTE = "resources/{resource}/openai/fine_tuning/jobs/{job_id}/cancel"


@pytest.fixture
def trap() -> Iterator[FineTuningSimulator]:
    with FineTuningSimulator(api_key=API_KEY) as sim:
        yield sim


@pytest.fixture
def two_resources(app_settings, monkeypatch, second: FineTuningSimulator) -> None:
    monkeypatch.setenv("AZURE_OPENAI_RESOURCES", json.dumps({"second": {"endpoint": second.endpoint}}))


def cancel_on(resource: str | None, job_id: str, headers: dict[str, str] | None = None):
    route = RESOURCE_ROUTE if resource is not None else "openai/fine_tuning/jobs/{job_id}/cancel"
    request = func.HttpRequest(
        method="POST",
        url=f"http://localhost:7071/api/resources/{resource}/openai/fine_tuning/jobs/{job_id}/cancel",
        headers=headers or {},
        route_params={"job_id": job_id, **({"resource": resource} if resource is not None else {})},
        body=b"",
    )
    response = handler("httpTrigger", route)(req=request)
    return response, drain_results().records


# --- settings --------------------------------------------------------------------------------------------------

BASE = {"KEY_VAULT_URL": "https://v.vault.azure.net/", "AzureWebJobsStorage": "UseDevelopmentStorage=true"}


@pytest.mark.parametrize(
    ("resources", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('["https://hushhush-host.openai.azure.com"]', "JSON object"),
        ('{"Sweden": {"endpoint": "https://hushhush-host.openai.azure.com"}}', "resource name"),
        ('{"' + "a" * 41 + '": {"endpoint": "https://hushhush-host.openai.azure.com"}}', "resource name"),
        ('{"default": {"endpoint": "https://hushhush-host.openai.azure.com"}}', "may not define 'default'"),
        ('{"x": {}}', "resource 'x': endpoint"),
        ('{"x": {"endpoint": "http://hushhush-host.openai.azure.com"}}', "must use https"),
        ('{"x": {"endpoint": "https://u:hushhush-pass@host.openai.azure.com"}}', "credentials"),
        ('{"x": {"endpoint": "https://hushhush-host.openai.azure.com", "region": "hushhush-region"}}', "unknown fields"),
        ('{"x": {"endpoint": "https://hushhush-host.openai.azure.com", "auth": "hushhush-mode"}}', "auth must be one of"),
        ('{"x": {"endpoint": "https://hushhush-host.openai.azure.com", "api_version": "hushhush"}}', "api_version"),
        ('{"x": {"endpoint": "https://hushhush-host.openai.azure.com", "auth": 7}}', "must be a string"),
    ],
)
def test_bad_resources_setting_is_named_without_its_values(resources: str, problem: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_environ({**BASE, "AZURE_OPENAI_RESOURCES": resources})
    assert caught.value.name == "AZURE_OPENAI_RESOURCES" and problem in str(caught.value)
    assert "hushhush" not in str(caught.value)


def test_resources_inherit_the_apps_settings() -> None:
    resources = Settings.from_environ(
        {
            **BASE,
            "AZURE_OPENAI_ENDPOINT": "https://a.openai.azure.com",
            "AZURE_OPENAI_AUTH": "entra",
            "AZURE_OPENAI_API_VERSION": "v1",
            "AZURE_OPENAI_RESOURCES": json.dumps(
                {"ncus": {"endpoint": "https://b.openai.azure.com", "auth": "api-key"}, "s2": {"endpoint": "https://c.openai.azure.com"}}
            ),
        }
    ).resources
    assert {name: (r.auth, r.api_version, r.key_secret_name) for name, r in resources.items()} == {
        "default": ("entra", "v1", "azure-openai-api-key"),
        "ncus": ("api-key", "v1", "azure-openai-api-key-ncus"),
        "s2": ("entra", "v1", "azure-openai-api-key-s2"),
    }


def test_only_named_resources_means_no_default(app_settings, monkeypatch, second, simulator, call_queue) -> None:
    monkeypatch.delenv("AZURE_OPENAI_ENDPOINT")
    monkeypatch.setenv("AZURE_OPENAI_RESOURCES", json.dumps({"second": {"endpoint": second.endpoint}}))
    record = call_queue(second.create_job()["id"]).record  # a bare id means `default`, which is not there
    assert record["outcome"] == "rejected" and record["error"]["target"] == "resource"
    assert second.requests == [] and simulator.requests == []


# --- choosing the resource ---------------------------------------------------------------------------------------


def test_resource_route_cancels_on_that_resource_with_its_own_key(
    two_resources, simulator: FineTuningSimulator, second: FineTuningSimulator
) -> None:
    job = second.create_job()
    response, [record] = cancel_on("second", job["id"])
    assert response.status_code == 200 and record["resource"] == "second"
    assert [r.headers["api-key"] for r in second.requests] == [SECOND_KEY] and simulator.requests == []
    response, [record] = cancel_on("default", simulator.create_job()["id"])
    assert response.status_code == 200 and record["resource"] == "default"


def test_the_old_route_means_default(two_resources, simulator: FineTuningSimulator, second) -> None:
    response, [record] = cancel_on(None, simulator.create_job()["id"])
    assert response.status_code == 200 and record["resource"] == "default" and second.requests == []


@pytest.mark.parametrize("name", ["trap", "Second", "second ", "../default", "x" * 300])
def test_unknown_resource_is_rejected_before_anything_is_sent(
    two_resources, simulator, second, vault: KeyVaultEmulator, name: str
) -> None:
    response, [record] = cancel_on(name, "ftjob-a.b")  # a bad job id too: the resource is checked first
    assert response.status_code == 400 and record["error"]["target"] == "resource"
    assert record["outcome"] == "rejected" and record["resource"] == name[:200]
    assert simulator.requests == second.requests == [] and vault.read_count() == 0


def test_queue_message_names_its_resource(two_resources, simulator, second: FineTuningSimulator, call_queue) -> None:
    job = second.create_job()
    record = call_queue(json.dumps({"job_id": job["id"], "resource": "second"})).record
    assert record["outcome"] == "cancelled" and record["resource"] == "second" and simulator.requests == []
    encoded = base64.b64encode(json.dumps({"job_id": "ftjob-x", "resource": "trap"}).encode()).decode()
    record = call_queue(encoded).record
    assert record["outcome"] == "rejected" and (record["error"]["target"], record["resource"]) == ("resource", "trap")
    record = call_queue(json.dumps({"job_id": "ftjob-x", "resource": 5})).record
    assert record["error"]["target"] == "resource" and record["resource"] is None


def test_one_bulk_call_spans_resources(two_resources, simulator: FineTuningSimulator, second: FineTuningSimulator):
    on_default, on_second = simulator.create_job()["id"], second.create_job()["id"]
    both = second.create_job()["id"]
    response, output = call_bulk(
        {
            "job_ids": [on_default, {"job_id": on_second, "resource": "second"}, {"job_id": both, "resource": "trap"},
                        {"job_id": on_second, "resource": "second"}],
        }
    )
    results = json.loads(response.get_body())["results"]
    assert [(r["resource"], r["outcome"]) for r in results] == [
        ("default", "cancelled"), ("second", "cancelled"), ("trap", "rejected"), ("second", "cancelled"),
    ]
    assert len(output.records) == 3  # the repeated (second, id) pair was cancelled once
    assert [r.path for r in simulator.requests] == [f"/openai/fine_tuning/jobs/{on_default}/cancel"]
    assert [r.path for r in second.requests] == [f"/openai/fine_tuning/jobs/{on_second}/cancel"]


def test_bulk_top_level_resource_applies_to_plain_items(two_resources, simulator, second: FineTuningSimulator):
    job = second.create_job()["id"]
    response, output = call_bulk({"job_ids": [job], "resource": "second"})
    assert response.status_code == 200 and output.records[0]["resource"] == "second" and simulator.requests == []
    response, output = call_bulk({"job_ids": [job], "resource": "trap"})
    assert response.status_code == 400 and json.loads(response.get_body())["error"]["target"] == "resource"


def test_key_vault_is_read_once_per_keyed_resource_from_cold(
    two_resources, simulator: FineTuningSimulator, second: FineTuningSimulator, vault: KeyVaultEmulator
) -> None:
    jobs = [("default", simulator.create_job()["id"]) for _ in range(50)]
    jobs += [("second", second.create_job()["id"]) for _ in range(50)]
    statuses: list[int] = []
    barrier = threading.Barrier(len(jobs))

    def cancel(resource: str, job_id: str) -> None:
        request = func.HttpRequest(
            method="POST", url="http://localhost/api/x", route_params={"job_id": job_id, "resource": resource}, body=b""
        )
        barrier.wait()
        statuses.append(handler("httpTrigger", RESOURCE_ROUTE)(req=request).status_code)

    threads = [threading.Thread(target=cancel, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 100
    assert (vault.read_count("azure-openai-api-key"), vault.read_count("azure-openai-api-key-second")) == (1, 1)
    assert len(drain_results().records) == 100


# --- who asked -----------------------------------------------------------------------------------------------------

PRINCIPAL = {"x-ms-client-principal-id": "0b5e3f7c-aaaa-bbbb-cccc-1234567890ab", "x-ms-client-principal-name": "ana@contoso"}


def test_caller_is_recorded_when_app_service_authentication_is_on(
    two_resources, simulator: FineTuningSimulator, monkeypatch
) -> None:
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "True")
    _, [record] = cancel_on("default", simulator.create_job()["id"], headers=PRINCIPAL)
    assert record["caller"] == {"id": PRINCIPAL["x-ms-client-principal-id"], "name": "ana@contoso"}
    _, [record] = cancel_on("default", simulator.create_job()["id"])  # signed in anonymously: no headers
    assert record["caller"] is None


@pytest.mark.parametrize("auth_enabled", [None, "false", "0", ""])
def test_forged_caller_headers_never_reach_a_record_without_platform_auth(
    two_resources, simulator: FineTuningSimulator, monkeypatch, auth_enabled: str | None
) -> None:
    if auth_enabled is not None:
        monkeypatch.setenv("WEBSITE_AUTH_ENABLED", auth_enabled)
    response, [record] = cancel_on("default", simulator.create_job()["id"], headers=PRINCIPAL)
    assert response.status_code == 200 and record["caller"] is None
    _, output = call_bulk({"job_ids": [simulator.create_job()["id"]]})
    assert output.records[0]["caller"] is None


# --- property: no input reaches an endpoint that is not allow-listed ------------------------------------------------

names = st.one_of(st.sampled_from(["default", "second", "trap", "", "SECOND", "second\n"]), st.text(max_size=50))


@settings(PROPERTY_SETTINGS, max_examples=60)
@given(name=names, as_object=st.booleans())
def test_no_input_reaches_an_endpoint_off_the_allow_list(
    name: str, as_object: bool, two_resources, simulator, second, trap: FineTuningSimulator, call_queue
) -> None:
    for sim in (simulator, second, trap):
        sim.clear_requests()
    job = second.create_job()["id"]
    if "/" not in name:
        cancel_on(name, job)
    call_queue(json.dumps({"job_id": job, "resource": name}))
    call_bulk({"job_ids": [{"job_id": job, "resource": name} if as_object else job], "resource": name})
    assert trap.requests == []
    if name != "default":
        assert simulator.requests == []
    if name != "second":
        assert second.requests == []
