"""Listing one resource's fine-tuning jobs for the guard, page by page, within a bound.

`GET {endpoint}/openai[/v1]/fine_tuning/jobs?limit=&after=` through the resource's own client (its
credential, retries and redaction), following `after`/`has_more`. A listing always ends: after
`MAX_LIST_PAGES` pages, at its deadline, or at the first answer that is not a page; it then says why
it is incomplete and keeps every job it did list, so the sweep still judges those.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.errors import CancelError
from shared.resource_client import ResourceClient
from shared.upstream import CallTrace

logger = logging.getLogger(__name__)

LIST_PAGE_SIZE = 100  # the most a page may hold (the API's own upper bound for `limit`)
MAX_LIST_PAGES = 20  # 2,000 jobs a resource a sweep; jobs come newest first, and old jobs are mostly finished


@dataclass(frozen=True)
class JobListing:
    """The jobs one resource listed, and whether the listing reached the last page."""

    resource: str
    jobs: tuple[Mapping[str, Any], ...]
    pages: int
    complete: bool
    problem: str | None = None  # why the listing stopped before the last page


def list_jobs(
    client: ResourceClient,
    *,
    deadline: float,
    max_pages: int = MAX_LIST_PAGES,
    page_size: int = LIST_PAGE_SIZE,
) -> JobListing:
    """Every job of the resource, newest first, up to `max_pages` pages and until `deadline` (monotonic)."""
    name = client.resource.name
    jobs: list[Mapping[str, Any]] = []
    seen: set[str] = set()
    after: str | None = None
    for page in range(1, max_pages + 1):
        try:
            reply = client.list_jobs_page(after=after, limit=page_size, deadline=deadline, trace=CallTrace())
        except CancelError as err:
            return _incomplete(name, jobs, page - 1, f"page {page}: {err.message}")
        body = reply.body
        if reply.status != 200 or not _is_page(body):
            what = f"{reply.status}" if reply.status != 200 else "200 without a list of jobs"
            return _incomplete(name, jobs, page - 1, f"page {page}: Azure OpenAI answered {what}")
        new = [job for job in body["data"] if isinstance(job, dict) and _new_id(job, seen)]
        jobs.extend(new)
        if body.get("has_more") is not True:
            return JobListing(name, tuple(jobs), page, complete=True)
        last_id = body["data"][-1].get("id") if body["data"] and isinstance(body["data"][-1], dict) else None
        if not new or not isinstance(last_id, str):
            return _incomplete(name, jobs, page, f"page {page} says has_more but brings no new job")
        after = last_id
    return _incomplete(name, jobs, max_pages, f"stopped after {max_pages} pages of {page_size} jobs")


def _is_page(body: object) -> bool:
    return isinstance(body, dict) and isinstance(body.get("data"), list)


def _new_id(job: Mapping[str, Any], seen: set[str]) -> bool:
    job_id = job.get("id")
    if not isinstance(job_id, str) or job_id in seen:
        return False
    seen.add(job_id)
    return True


def _incomplete(name: str, jobs: list[Mapping[str, Any]], pages: int, problem: str) -> JobListing:
    logger.warning("guard: listing the jobs of resource %s is incomplete (%d listed): %s", name, len(jobs), problem)
    return JobListing(name, tuple(jobs), pages, complete=False, problem=problem)
