"""The guard's policy (`GUARD_POLICY`) and its rules: which fine-tuning jobs the guard cancels, and why.

`GuardPolicy.parse` validates the JSON once, naming a bad field and never echoing a value, like
`shared.settings`. `breaches` and `matching_active` are pure: jobs, the policy and the time in,
the jobs to cancel and the rule each breaks out; nothing here reaches the network.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.settings import GUARD_POLICY, RESOURCE_NAME, SettingsError

# State groups of CONTRACT section 8, in the order a reader meets them.
STATE_GROUPS: Mapping[str, tuple[str, ...]] = {
    "waiting": ("pending", "queued", "validating_files"),
    "running": ("running",),
    "paused": ("pausing", "paused", "resuming"),
}
ACTIVE_STATES = frozenset(state for states in STATE_GROUPS.values() for state in states)
GROUP_OF_STATE: Mapping[str, str] = {state: group for group, states in STATE_GROUPS.items() for state in states}

MAX_AGE_RULES: Mapping[str, str] = {group: f"guard:max-age-{group}" for group in STATE_GROUPS}
MODEL_NOT_ALLOWED = "guard:model-not-allowed"
BUDGET_ALERT = "guard:budget-alert"
CANCEL_ACTIVE = "guard:cancel-active"

ON_BUDGET_ALERT = ("cancel_active", "none")
POLICY_FIELDS = (
    "max_age_minutes",
    "allowed_models",
    "exempt_job_ids",
    "exempt_suffixes",
    "resources",
    "dry_run",
    "on_budget_alert",
)


@dataclass(frozen=True)
class GuardPolicy:
    """A validated `GUARD_POLICY`: limits per state group, allowed base models, exemptions, what alerts do."""

    max_age_minutes: Mapping[str, float]  # by state group; a group left out has no age limit
    allowed_models: frozenset[str] | None  # None: every base model is allowed
    exempt_job_ids: frozenset[str]
    exempt_suffixes: frozenset[str]
    resources: tuple[str, ...] | None  # None: every allow-listed resource
    dry_run: bool
    on_budget_alert: str  # "cancel_active" or "none"

    @classmethod
    def parse(cls, raw: str, *, known_resources: Collection[str]) -> GuardPolicy:
        """Validate `GUARD_POLICY`'s JSON; `SettingsError` names the first bad field, never its value."""
        try:
            policy = json.loads(raw, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as err:
            raise SettingsError(GUARD_POLICY, "is not valid JSON") from err
        if not isinstance(policy, dict):
            raise SettingsError(GUARD_POLICY, 'must be a JSON object, e.g. {"max_age_minutes": {"waiting": 720}}')
        unknown = sorted(set(policy) - set(POLICY_FIELDS))
        if unknown:
            raise SettingsError(GUARD_POLICY, f"has unknown fields (expected {', '.join(POLICY_FIELDS)})")
        on_budget_alert = policy.get("on_budget_alert", "none")
        if on_budget_alert not in ON_BUDGET_ALERT:
            raise _bad("on_budget_alert", f"must be one of {', '.join(ON_BUDGET_ALERT)}")
        dry_run = policy.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise _bad("dry_run", "must be true or false")
        allowed_models = policy.get("allowed_models")
        if allowed_models is not None:
            allowed_models = _strings("allowed_models", allowed_models)
            if not allowed_models:
                raise _bad("allowed_models", "must name at least one base model (leave it out to allow every model)")
        resources = policy.get("resources")
        if resources is not None:
            resources = _strings("resources", resources)
            if not resources:
                raise _bad("resources", "must name at least one resource (leave it out to sweep every resource)")
            for name in resources:
                if not RESOURCE_NAME.fullmatch(name) or name not in known_resources:
                    raise _bad("resources", "names a resource that is not on the allow-list (AZURE_OPENAI_RESOURCES)")
        return cls(
            max_age_minutes=_max_ages(policy.get("max_age_minutes", {})),
            allowed_models=frozenset(allowed_models) if allowed_models is not None else None,
            exempt_job_ids=frozenset(_strings("exempt_job_ids", policy.get("exempt_job_ids", []))),
            exempt_suffixes=frozenset(_strings("exempt_suffixes", policy.get("exempt_suffixes", []))),
            resources=tuple(dict.fromkeys(resources)) if resources is not None else None,
            dry_run=dry_run,
            on_budget_alert=on_budget_alert,
        )

    def swept_resources(self, allow_list: Iterable[str]) -> list[str]:
        """The resources the guard looks at: the policy's `resources`, else every allow-listed one."""
        names = list(allow_list)
        return [name for name in names if self.resources is None or name in self.resources]

    def is_exempt(self, job: Mapping[str, Any]) -> bool:
        """Whether the policy exempts the job, by id or by its `suffix` (matched exactly)."""
        return job.get("id") in self.exempt_job_ids or job.get("suffix") in self.exempt_suffixes


def _bad(field: str, problem: str) -> SettingsError:
    return SettingsError(GUARD_POLICY, f"field '{field}' {problem}")


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _strings(field: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise _bad(field, "must be a list of non-empty strings")
    return value


def _max_ages(value: object) -> dict[str, float]:
    if not isinstance(value, dict):
        raise _bad("max_age_minutes", f"must be an object keyed by state group ({', '.join(STATE_GROUPS)})")
    ages = {}
    for group, minutes in value.items():
        if group not in STATE_GROUPS:
            raise _bad("max_age_minutes", f"has a key that is not a state group ({', '.join(STATE_GROUPS)})")
        if isinstance(minutes, bool) or not isinstance(minutes, int | float) or not 0 <= minutes < math.inf:
            raise _bad(f"max_age_minutes.{group}", "must be a number of minutes, not negative")
        ages[group] = float(minutes)
    return ages


@dataclass(frozen=True)
class Breach:
    """One job the guard cancels, and the rule (`guard:...`) that says so."""

    job: Mapping[str, Any]
    rule: str

    @property
    def job_id(self) -> str:
        return self.job["id"]


def breaches(jobs: Iterable[Mapping[str, Any]], policy: GuardPolicy, *, now: float) -> list[Breach]:
    """The jobs that break a rule of the policy at `now` (epoch seconds), each with the rule, in input order.

    An age limit is broken when the age (from `created_at`) is strictly greater than it; an age rule wins
    over the model rule. Jobs that are exempt, not active, or without a string `id` break nothing.
    """
    found = []
    for job in jobs:
        group = _active_group(job)
        if group is None or policy.is_exempt(job):
            continue
        limit = policy.max_age_minutes.get(group)
        created_at = job.get("created_at")
        if limit is not None and _is_time(created_at) and now - created_at > limit * 60:
            found.append(Breach(job, MAX_AGE_RULES[group]))
        elif policy.allowed_models is not None and job.get("model") not in policy.allowed_models:
            found.append(Breach(job, MODEL_NOT_ALLOWED))
    return found


def matching_active(
    jobs: Iterable[Mapping[str, Any]], policy: GuardPolicy | None, *, groups: Collection[str], rule: str
) -> list[Breach]:
    """The active jobs in `groups` the policy does not exempt: what the kill switch and budget alerts cancel."""
    return [
        Breach(job, rule)
        for job in jobs
        if _active_group(job) in groups and not (policy is not None and policy.is_exempt(job))
    ]


def _active_group(job: Mapping[str, Any]) -> str | None:
    if not isinstance(job.get("id"), str):
        return None
    status = job.get("status")
    return GROUP_OF_STATE.get(status) if isinstance(status, str) else None


def _is_time(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class _PolicyCache:
    """The last policy validated, with the text and allow-list it was read from: validated once per change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, tuple[str, ...]] | None = None
        self._result: GuardPolicy | SettingsError | None = None

    def load(self, raw: str, known_resources: Collection[str]) -> GuardPolicy:
        key = (raw, tuple(sorted(known_resources)))
        with self._lock:
            if key != self._key:
                try:
                    self._result = GuardPolicy.parse(raw, known_resources=known_resources)
                except SettingsError as err:
                    self._result = err
                self._key = key
            result = self._result
        if isinstance(result, SettingsError):
            raise result
        assert result is not None
        return result


_policies = _PolicyCache()


def load_guard_policy(environ: Mapping[str, str], *, known_resources: Collection[str]) -> GuardPolicy | None:
    """The validated `GUARD_POLICY`, or None when it is not set; `SettingsError` names a bad field."""
    raw = environ.get(GUARD_POLICY, "").strip()
    if not raw:
        return None
    return _policies.load(raw, known_resources)
