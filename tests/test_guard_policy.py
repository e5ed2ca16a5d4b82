"""GUARD_POLICY validation and the guard's rules, as tables (CONTRACT section 8, Guard).

The rules are pure: jobs, a policy and `now` in, (job, rule) out. Every row says what a platform
team would see: which job is cancelled, and the rule its record names.
"""

from __future__ import annotations

import json

import pytest

from shared.guard_policy import (
    BUDGET_ALERT,
    GuardPolicy,
    breaches,
    load_guard_policy,
    matching_active,
)
from shared.settings import SettingsError

NOW = 1_750_000_000
RESOURCES = ("default", "sweden")
SECRET_LOOKING = "sk-do-not-echo-0123456789"


def policy(**fields: object) -> GuardPolicy:
    return GuardPolicy.parse(json.dumps(fields), known_resources=RESOURCES)


def job(job_id: str, status: str, *, minutes_old: float = 0, model: str = "gpt-4o-mini", **extra: object) -> dict:
    return {"id": job_id, "status": status, "created_at": NOW - minutes_old * 60, "model": model, **extra}


def test_a_full_policy_is_read_whole():
    parsed = policy(
        max_age_minutes={"waiting": 720, "running": 1440, "paused": 60},
        allowed_models=["gpt-4o-mini"],
        exempt_job_ids=["ftjob-keep"],
        exempt_suffixes=["prod"],
        resources=["sweden"],
        dry_run=True,
        on_budget_alert="cancel_active",
    )
    assert parsed.max_age_minutes == {"waiting": 720.0, "running": 1440.0, "paused": 60.0}
    assert parsed.allowed_models == {"gpt-4o-mini"}
    assert parsed.exempt_job_ids == {"ftjob-keep"} and parsed.exempt_suffixes == {"prod"}
    assert parsed.swept_resources(RESOURCES) == ["sweden"]
    assert parsed.dry_run is True and parsed.on_budget_alert == "cancel_active"


def test_an_empty_policy_limits_nothing_and_alerts_do_nothing():
    parsed = policy()
    assert parsed.max_age_minutes == {} and parsed.allowed_models is None
    assert parsed.swept_resources(RESOURCES) == list(RESOURCES)
    assert parsed.dry_run is False and parsed.on_budget_alert == "none"
    assert breaches([job("ftjob-a", "queued", minutes_old=10**6, model="anything")], parsed, now=NOW) == []


def test_no_policy_is_none():
    assert load_guard_policy({}, known_resources=RESOURCES) is None
    assert load_guard_policy({"GUARD_POLICY": "  "}, known_resources=RESOURCES) is None


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ("{not json", "is not valid JSON"),
        ('{"dry_run": NaN}', "is not valid JSON"),
        (json.dumps([SECRET_LOOKING]), "must be a JSON object"),
        (json.dumps({"max_age": 5, "dry_run": True}), "has unknown fields"),
        (json.dumps({"max_age_minutes": [SECRET_LOOKING]}), "field 'max_age_minutes' must be an object"),
        (json.dumps({"max_age_minutes": {SECRET_LOOKING: 5}}), "field 'max_age_minutes' has a key"),
        (json.dumps({"max_age_minutes": {"waiting": -1}}), "field 'max_age_minutes.waiting' must be a number"),
        (json.dumps({"max_age_minutes": {"running": "60"}}), "field 'max_age_minutes.running' must be a number"),
        (json.dumps({"max_age_minutes": {"paused": True}}), "field 'max_age_minutes.paused' must be a number"),
        ('{"max_age_minutes": {"paused": 1e400}}', "field 'max_age_minutes.paused' must be a number"),
        (json.dumps({"allowed_models": SECRET_LOOKING}), "field 'allowed_models' must be a list"),
        (json.dumps({"allowed_models": []}), "field 'allowed_models' must name at least one"),
        (json.dumps({"exempt_job_ids": [1]}), "field 'exempt_job_ids' must be a list"),
        (json.dumps({"exempt_suffixes": [""]}), "field 'exempt_suffixes' must be a list"),
        (json.dumps({"resources": [SECRET_LOOKING]}), "field 'resources' names a resource"),
        (json.dumps({"resources": []}), "field 'resources' must name at least one"),
        (json.dumps({"dry_run": "yes"}), "field 'dry_run' must be true or false"),
        (json.dumps({"on_budget_alert": SECRET_LOOKING}), "field 'on_budget_alert' must be one of"),
    ],
)
def test_a_bad_policy_names_the_field_never_the_value(raw: str, named: str):
    with pytest.raises(SettingsError) as caught:
        load_guard_policy({"GUARD_POLICY": raw}, known_resources=RESOURCES)
    assert caught.value.name == "GUARD_POLICY"
    assert named in str(caught.value)
    assert SECRET_LOOKING not in str(caught.value) and "1e400" not in str(caught.value)


def test_a_bad_policy_is_refused_on_every_load_not_only_the_first():
    for _ in range(2):
        with pytest.raises(SettingsError):
            load_guard_policy({"GUARD_POLICY": "{"}, known_resources=RESOURCES)


LIMITS = policy(max_age_minutes={"waiting": 60, "running": 120, "paused": 30}, allowed_models=["gpt-4o-mini"])


@pytest.mark.parametrize(
    ("the_job", "rule"),
    [
        # Each state of each group, just over its group's limit.
        (job("ftjob-1", "pending", minutes_old=61), "guard:max-age-waiting"),
        (job("ftjob-1", "queued", minutes_old=61), "guard:max-age-waiting"),
        (job("ftjob-1", "validating_files", minutes_old=61), "guard:max-age-waiting"),
        (job("ftjob-1", "running", minutes_old=121), "guard:max-age-running"),
        (job("ftjob-1", "pausing", minutes_old=31), "guard:max-age-paused"),
        (job("ftjob-1", "paused", minutes_old=31), "guard:max-age-paused"),
        (job("ftjob-1", "resuming", minutes_old=31), "guard:max-age-paused"),
        # Strictly greater: exactly at the limit, or a second under, breaks nothing.
        (job("ftjob-1", "queued", minutes_old=60), None),
        (job("ftjob-1", "queued", minutes_old=60 + 1 / 60), "guard:max-age-waiting"),
        (job("ftjob-1", "running", minutes_old=120), None),
        (job("ftjob-1", "paused", minutes_old=30), None),
        # Another group's limit does not apply: a running job 61 minutes old is within running's 120.
        (job("ftjob-1", "running", minutes_old=61), None),
        # The model rule, and the age rule winning over it.
        (job("ftjob-1", "running", model="gpt-4o"), "guard:model-not-allowed"),
        (job("ftjob-1", "queued", minutes_old=61, model="gpt-4o"), "guard:max-age-waiting"),
        (job("ftjob-1", "running", minutes_old=5, model="gpt-4o-mini"), None),
        # Finished jobs and unknown states are never cancelled, whatever their age or model.
        (job("ftjob-1", "succeeded", minutes_old=10**5, model="gpt-4o"), None),
        (job("ftjob-1", "failed", minutes_old=10**5, model="gpt-4o"), None),
        (job("ftjob-1", "cancelled", minutes_old=10**5, model="gpt-4o"), None),
        (job("ftjob-1", "cancelling", minutes_old=10**5, model="gpt-4o"), None),
        (job("ftjob-1", "Running", minutes_old=10**5), None),
        # Age from created_at only: missing or malformed, no age rule (the model rule may still apply).
        ({"id": "ftjob-1", "status": "queued", "model": "gpt-4o-mini"}, None),
        ({"id": "ftjob-1", "status": "queued", "created_at": "0", "model": "gpt-4o"}, "guard:model-not-allowed"),
        ({"id": "ftjob-1", "status": "queued", "created_at": True, "model": "gpt-4o-mini"}, None),
        # A job without a string id is not a job the guard can name.
        ({"id": 7, "status": "queued", "created_at": 0, "model": "gpt-4o"}, None),
    ],
)
def test_rules(the_job: dict, rule: str | None):
    found = breaches([the_job], LIMITS, now=NOW)
    assert [breach.rule for breach in found] == ([rule] if rule else [])
    assert all(breach.job is the_job for breach in found)


@pytest.mark.parametrize(
    ("exemptions", "exempt"),
    [
        ({"exempt_job_ids": ["ftjob-old"]}, True),
        ({"exempt_job_ids": ["ftjob-OLD"]}, False),
        ({"exempt_suffixes": ["prod"]}, True),
        ({"exempt_suffixes": ["pro"]}, False),  # exactly, not a prefix
        ({"exempt_suffixes": ["prod-2"]}, False),
    ],
)
def test_exemptions_by_id_and_exact_suffix(exemptions: dict, exempt: bool):
    rules = policy(max_age_minutes={"waiting": 1}, allowed_models=["gpt-4o-mini"], **exemptions)
    old = job("ftjob-old", "queued", minutes_old=100, model="gpt-4o", suffix="prod")
    assert (breaches([old], rules, now=NOW) == []) is exempt
    assert (matching_active([old], rules, groups={"waiting"}, rule=BUDGET_ALERT) == []) is exempt


def test_breaches_keep_the_input_order_and_every_breaker():
    jobs = [
        job("ftjob-a", "queued", minutes_old=61),
        job("ftjob-b", "running", minutes_old=1),
        job("ftjob-c", "paused", minutes_old=31),
        job("ftjob-d", "running", model="babbage-002"),
    ]
    found = breaches(jobs, LIMITS, now=NOW)
    assert [(b.job_id, b.rule) for b in found] == [
        ("ftjob-a", "guard:max-age-waiting"),
        ("ftjob-c", "guard:max-age-paused"),
        ("ftjob-d", "guard:model-not-allowed"),
    ]


def test_matching_active_takes_only_the_asked_groups():
    jobs = [job(f"ftjob-{state}", state) for state in ("queued", "running", "paused", "succeeded", "cancelling")]
    found = matching_active(jobs, None, groups={"waiting", "paused"}, rule=BUDGET_ALERT)
    assert [(b.job_id, b.rule) for b in found] == [("ftjob-queued", BUDGET_ALERT), ("ftjob-paused", BUDGET_ALERT)]
