"""The guard: a sweep by `GUARD_POLICY`, the kill switch, and budget alerts (CONTRACT section 8, Guard).

Each lists the jobs of the resources it looks at (`shared.guard_listing`), picks the ones to cancel
(`shared.guard_policy`), and for each one it can claim (`shared.guard_store`) sends one cancel request
`{"job_id", "resource", "correlation_id": "guard:<rule>"}` to the request queue, so that the queue
trigger cancels it and writes its one record like any other. Nothing here calls a cancel itself.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.answers import HttpAnswer
from shared.built_once import BuiltOnce
from shared.cancel import CancelService, current_service
from shared.errors import CancelError
from shared.guard_alerts import MAX_ALERT_BYTES, parse_budget_alert
from shared.guard_listing import JobListing, list_jobs
from shared.guard_policy import (
    BUDGET_ALERT,
    CANCEL_ACTIVE,
    GROUP_OF_STATE,
    STATE_GROUPS,
    Breach,
    GuardPolicy,
    breaches,
    load_guard_policy,
    matching_active,
)
from shared.guard_store import GuardStore, GuardStoreError, open_guard_store
from shared.record_text import strict_json
from shared.records import InvalidRequest, validate_job_id
from shared.settings import SettingsError, StorageConnection
from shared.upstream import CallTrace

logger = logging.getLogger(__name__)

ALL_GROUPS = tuple(STATE_GROUPS)
STORAGE_RETRY_AFTER_SECONDS = 60


@dataclass(frozen=True)
class GuardRun:
    """What one sweep, kill switch or alert did: cancels enqueued, jobs matched, listings cut short."""

    enqueued: int
    would_cancel: tuple[str, ...]  # every matching job, its request pending or not
    already_pending: int
    incomplete: tuple[JobListing, ...]
    not_enqueued: tuple[str, ...]  # why a matching job's request could not be sent (storage trouble)
    dry_run: bool

    def answer(self) -> dict[str, Any]:
        body: dict[str, Any] = {"enqueued": self.enqueued, "would_cancel": list(self.would_cancel)}
        if self.incomplete:
            body["incomplete"] = [{"resource": item.resource, "problem": item.problem} for item in self.incomplete]
        if self.not_enqueued:
            body["not_enqueued"] = list(self.not_enqueued)
        return body


NOTHING = GuardRun(0, (), 0, (), (), dry_run=False)


class Guard:
    """Runs the guard on the process's cancel service (its resource clients) and the shared store."""

    def __init__(self, service: CancelService, store: GuardStore, *, clock: Callable[[], float] = time.time) -> None:
        self.service = service
        self.store = store
        self._clock = clock

    def run(
        self,
        resources: Iterable[str],
        pick: Callable[[Sequence[Mapping[str, Any]], float], list[Breach]],
        *,
        dry_run: bool,
    ) -> GuardRun:
        """List each resource, `pick` the jobs to cancel, and enqueue one request for each unclaimed one."""
        enqueued = pending = 0
        would_cancel: list[str] = []
        incomplete: list[JobListing] = []
        not_enqueued: list[str] = []
        storage_down: GuardStoreError | None = None  # after one failure, the rest are reported, not tried
        for name in resources:
            deadline = time.monotonic() + self.service.settings.upstream_deadline_seconds
            listing = list_jobs(self.service.clients[name], deadline=deadline)
            if not listing.complete:
                incomplete.append(listing)
            for breach in pick(listing.jobs, self._clock()):
                try:
                    job_id = validate_job_id(breach.job_id)
                except InvalidRequest:
                    logger.info("guard: resource %s listed a job whose id is not a job id; skipped", name)
                    continue
                would_cancel.append(job_id)
                if dry_run:
                    logger.info("guard: would_cancel %s on %s (%s)", job_id, name, breach.rule)
                    continue
                try:
                    if storage_down is not None:
                        raise storage_down
                    claim = self.store.claim(name, job_id, breach.rule)
                    if claim is None:
                        pending += 1
                        continue
                    if claim.took_over and not self._still_breaks(name, job_id, pick, deadline):
                        self.store.release(claim)
                        continue
                    self.store.send_request(claim, breach.rule)
                except GuardStoreError as err:
                    storage_down = err
                    logger.warning("guard: %s on %s not enqueued: %s", job_id, name, err)
                    not_enqueued.append(f"{name}/{job_id}: {err}")
                    continue
                enqueued += 1
                logger.info("guard: enqueued the cancel of %s on %s (%s)", job_id, name, breach.rule)
        return GuardRun(enqueued, tuple(would_cancel), pending, tuple(incomplete), tuple(not_enqueued), dry_run)

    def _still_breaks(
        self,
        name: str,
        job_id: str,
        pick: Callable[[Sequence[Mapping[str, Any]], float], list[Breach]],
        deadline: float,
    ) -> bool:
        """Whether the job, read again, still breaks a rule: its last request was handled, maybe after the listing.

        The listing can be older than that request's cancel (a sweep lists, then the queue trigger cancels and
        writes its record, then the sweep claims): without this read the job would be enqueued a second time.
        When the read does not tell, the job is enqueued (its record then says what happened).
        """
        try:
            reply = self.service.clients[name].get_job(job_id, deadline=deadline, trace=CallTrace())
        except CancelError:
            return True
        if reply.status != 200 or not isinstance(reply.body, dict) or reply.body.get("id") != job_id:
            return True
        if any(breach.job_id == job_id for breach in pick([reply.body], self._clock())):
            return True
        logger.info("guard: %s on %s no longer breaks a rule since it was listed; not enqueued again", job_id, name)
        return False


_stores: dict[tuple[StorageConnection, str], GuardStore] = {}  # one per storage and queue, built under _guards' lock


def _guard_for(service: CancelService) -> Guard:
    key = (service.settings.results.storage, service.settings.requests_queue)
    if key not in _stores:
        _stores[key] = open_guard_store(*key)
    return Guard(service, _stores[key])


_guards: BuiltOnce[CancelService, Guard] = BuiltOnce(_guard_for)  # rebuilt when the service (the settings) changes


def current_guard() -> Guard:
    """The process's Guard, for the current cancel service."""
    return _guards.get(current_service())


def current_policy(allow_list: Collection[str]) -> GuardPolicy | None:
    """The process's `GUARD_POLICY` (None when unset); `SettingsError` names a bad field."""
    return load_guard_policy(os.environ, known_resources=allow_list)


def sweep() -> GuardRun:
    """The timer trigger's sweep: every rule of the policy on its resources; no policy, no listing at all."""
    service = current_service()
    policy = current_policy(service.settings.resources.keys())
    if policy is None:
        return NOTHING
    guard = current_guard()
    run = guard.run(
        policy.swept_resources(service.settings.resources),
        lambda jobs, now: breaches(jobs, policy, now=now),
        dry_run=policy.dry_run,
    )
    logger.info(
        "guard sweep: %d enqueued, %d already pending, %d listings incomplete%s; would_cancel %s",
        run.enqueued,
        run.already_pending,
        len(run.incomplete),
        " (dry run)" if run.dry_run else "",
        json.dumps(list(run.would_cancel)),
    )
    return run


def cancel_active(body: bytes) -> HttpAnswer:
    """`POST /api/guard/cancel-active`: `{"resource", "states", "dry_run"}` (all optional)."""
    try:
        service = current_service()
        policy = current_policy(service.settings.resources.keys())
        request = _kill_switch_request(body, service.settings.resources.keys())
    except SettingsError as err:
        return _misconfigured(err)
    except InvalidRequest as err:
        return _invalid(err.message, err.target)
    resource, groups, dry_run = request
    resources = policy.swept_resources(service.settings.resources) if policy else list(service.settings.resources)
    resources = [name for name in resources if resource is None or name == resource]
    run = current_guard().run(
        resources,
        lambda jobs, now: matching_active(jobs, policy, groups=groups, rule=CANCEL_ACTIVE),
        dry_run=dry_run or (policy is not None and policy.dry_run),
    )
    return _run_answer(run)


def budget_alert(body: bytes) -> HttpAnswer:
    """`POST /api/guard/budget-alert`: a budget alert cancels every active job when the policy says so."""
    try:
        alert = parse_budget_alert(body)
    except InvalidRequest as err:
        return _invalid(err.message, err.target)
    try:
        service = current_service()
        policy = current_policy(service.settings.resources.keys())
    except SettingsError as err:
        return _misconfigured(err)
    if policy is None or policy.on_budget_alert != "cancel_active":
        logger.info("guard: budget alert %s received; the policy says do nothing", alert.budget)
        return _run_answer(NOTHING)
    guard = current_guard()
    try:
        first = guard.store.first_delivery(alert.identity)
    except GuardStoreError as err:
        return _storage_unavailable(err)
    if not first:
        logger.info("guard: budget alert %s delivered again; nothing new to do", alert.budget)
        return _run_answer(NOTHING)
    run = guard.run(
        policy.swept_resources(service.settings.resources),
        lambda jobs, now: matching_active(jobs, policy, groups=ALL_GROUPS, rule=BUDGET_ALERT),
        dry_run=policy.dry_run,
    )
    logger.warning("guard: budget alert %s: %d cancels enqueued", alert.budget, run.enqueued)
    return _run_answer(run)


def _kill_switch_request(body: bytes, allow_list: Collection[str]) -> tuple[str | None, tuple[str, ...], bool]:
    if len(body) > MAX_ALERT_BYTES:
        raise InvalidRequest(f"the body is over {MAX_ALERT_BYTES} bytes", target="body")
    try:
        request = json.loads(body or b"{}")
    except (ValueError, RecursionError) as err:
        raise InvalidRequest("the body is not JSON", target="body") from err
    if not isinstance(request, dict):
        raise InvalidRequest("the body is not a JSON object", target="body")
    unknown = sorted(set(request) - {"resource", "states", "dry_run"})
    if unknown:
        raise InvalidRequest("unknown field (expected resource, states, dry_run)", target=unknown[0][:200])
    resource = request.get("resource")
    if resource is not None and (not isinstance(resource, str) or resource not in allow_list):
        raise InvalidRequest("resource is not one of the app's resources", target="resource")
    states = request.get("states", list(ALL_GROUPS))
    if not isinstance(states, list) or not states or not all(isinstance(state, str) for state in states):
        raise InvalidRequest("states must be a non-empty list of state groups or states", target="states")
    groups = []
    for state in states:
        if state not in STATE_GROUPS and state not in GROUP_OF_STATE:
            raise InvalidRequest(
                f"states: each is a state group ({', '.join(STATE_GROUPS)}) or one of their states", target="states"
            )
        groups.append(state if state in STATE_GROUPS else GROUP_OF_STATE[state])
    dry_run = request.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise InvalidRequest("dry_run must be true or false", target="dry_run")
    return resource, tuple(dict.fromkeys(groups)), dry_run


def _run_answer(run: GuardRun) -> HttpAnswer:
    return HttpAnswer(200 if run.dry_run else 202, strict_json(run.answer()))


def _invalid(message: str, target: str) -> HttpAnswer:
    error = {"code": "invalidPayload", "message": message, "target": target}
    return HttpAnswer(400, strict_json({"error": error}), {"x-should-retry": "false"})


def _misconfigured(err: SettingsError) -> HttpAnswer:
    error = {"code": "serviceUnavailable", "message": f"the function app is misconfigured: {err}", "target": err.name}
    return HttpAnswer(503, strict_json({"error": error}), {"Retry-After": "30", "x-should-retry": "true"})


def _storage_unavailable(err: GuardStoreError) -> HttpAnswer:
    error = {"code": "serviceUnavailable", "message": str(err), "target": "AzureWebJobsStorage"}
    headers = {"Retry-After": str(STORAGE_RETRY_AFTER_SECONDS), "x-should-retry": "true"}
    return HttpAnswer(503, strict_json({"error": error}), headers)
