"""The guard lists a resource's jobs through the real resource client against the simulator, within a bound.

Every listing ends, says whether it reached the last page, and keeps each job it did list.
"""

from __future__ import annotations

import os
import time

import pytest

from devstack.openai_sim import FineTuningSimulator
from shared.guard_listing import list_jobs
from shared.resource_client import ResourceClient
from shared.settings import Settings
from tests.support.handlers import API_KEY


def client_for(resource: str = "default") -> tuple[ResourceClient, list[float]]:
    """The app's own client for a resource, its retry waits recorded instead of slept."""
    waits: list[float] = []
    settings = Settings.from_environ(os.environ)
    return ResourceClient(settings, settings.resources[resource], sleep=waits.append), waits


def far() -> float:
    return time.monotonic() + 30


def list_requests(simulator: FineTuningSimulator):
    return [
        request
        for request in simulator.requests
        if request.method == "GET" and request.path.rstrip("/").endswith("/fine_tuning/jobs")
    ]


def test_every_page_is_followed_with_after_until_has_more_is_false(app_settings, simulator: FineTuningSimulator):
    created = [simulator.create_job(status="succeeded")["id"] for _ in range(250)]
    client, _ = client_for()
    listing = list_jobs(client, deadline=far())
    assert listing.complete and listing.problem is None and listing.pages == 3
    assert [job["id"] for job in listing.jobs] == list(reversed(created))  # newest first, none twice
    sent = list_requests(simulator)
    assert [request.query.get("limit") for request in sent] == ["100", "100", "100"]
    assert [request.query.get("after") for request in sent] == [None, created[-100], created[-200]]
    assert all(request.query.get("api-version") == "2024-10-21" for request in sent)


def test_the_v1_api_lists_at_openai_v1_without_api_version(app_settings, simulator, monkeypatch):
    monkeypatch.setenv("AZURE_OPENAI_API_VERSION", "v1")
    simulator.create_job(status="queued")
    client, _ = client_for()
    listing = list_jobs(client, deadline=far())
    assert listing.complete and len(listing.jobs) == 1
    [request] = list_requests(simulator)
    assert request.path == "/openai/v1/fine_tuning/jobs" and "api-version" not in request.query


def test_a_throttled_page_is_retried_as_a_cancel_would_be(app_settings, simulator):
    simulator.create_job(status="running")
    simulator.fail_next(2, status=429, headers={"retry-after-ms": "10"}, method="GET")
    client, waits = client_for()
    listing = list_jobs(client, deadline=far())
    assert listing.complete and len(listing.jobs) == 1
    assert waits == [0.01, 0.01]


def test_a_resource_that_stays_unavailable_ends_the_listing_and_keeps_what_was_listed(app_settings, simulator):
    earlier = [{"id": "ftjob-listed1", "status": "queued"}, {"id": "ftjob-listed2", "status": "running"}]
    simulator.fail_next(1, status=200, body={"object": "list", "data": earlier, "has_more": True}, method="GET")
    simulator.fail_next(10, status=503, headers={"retry-after-ms": "1"}, method="GET")
    client, _ = client_for()
    listing = list_jobs(client, deadline=far())
    assert not listing.complete and listing.pages == 1
    assert [job["id"] for job in listing.jobs] == ["ftjob-listed1", "ftjob-listed2"]
    assert listing.problem == "page 2: Azure OpenAI answered 503"
    assert len(list_requests(simulator)) == 1 + 4  # the second page: the first try and UPSTREAM_MAX_RETRIES


def test_a_resource_that_pages_forever_stops_at_the_page_bound(app_settings, simulator):
    for _ in range(30):
        simulator.create_job(status="queued")
    client, _ = client_for()
    listing = list_jobs(client, deadline=far(), max_pages=3, page_size=2)
    assert not listing.complete and listing.pages == 3 and len(listing.jobs) == 6
    assert listing.problem == "stopped after 3 pages of 2 jobs"
    assert len(list_requests(simulator)) == 3


def test_a_page_that_repeats_itself_ends_the_listing(app_settings, simulator):
    looping = {"object": "list", "data": [{"id": "ftjob-same", "status": "queued"}], "has_more": True}
    simulator.fail_next(5, status=200, body=looping, method="GET")
    client, _ = client_for()
    listing = list_jobs(client, deadline=far())
    assert not listing.complete and [job["id"] for job in listing.jobs] == ["ftjob-same"]
    assert listing.problem == "page 2 says has_more but brings no new job"


@pytest.mark.parametrize(
    ("fault", "problem"),
    [
        ({"status": 404}, "page 1: Azure OpenAI answered 404"),
        ({"status": 200, "body": {"data": "not a list"}}, "page 1: Azure OpenAI answered 200 without a list of jobs"),
        ({"non_json": True}, "page 1: Azure OpenAI answered 200 without a list of jobs"),
    ],
)
def test_an_answer_that_is_not_a_page_ends_the_listing(app_settings, simulator, fault, problem):
    simulator.fail_next(1, method="GET", **fault)
    client, _ = client_for()
    listing = list_jobs(client, deadline=far())
    assert not listing.complete and listing.jobs == () and listing.problem == problem


def test_the_listing_uses_the_resources_own_credential(app_settings, simulator):
    simulator.create_job(status="queued")
    client, _ = client_for()
    list_jobs(client, deadline=far())
    [request] = list_requests(simulator)
    assert request.status == 200  # the simulator refuses any other key
    assert API_KEY not in str(request.query)
