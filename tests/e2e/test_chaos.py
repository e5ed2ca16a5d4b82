"""The chaos run inside `make test`: 300 messages through the whole local stack while it misbehaves.

Upstream fails about a third of its calls (429 with retry-after and retry-after-ms, 500, 503, an
answer past the timeout, a dropped connection), Key Vault is down for longer than the api-key cache,
and Azurite is restarted once with messages waiting. `make chaos` is the same run with 5,000.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devstack.chaos import ChaosRun, ChaosSettings
from devstack.chaos.judge import count_secrets, record_problem, search_log_files
from devstack.chaos.plan import Kind, PlannedRequest

CHAOS_MESSAGES = 300
TIME_LIMIT_SECONDS = 80  # the run stops itself past this; it takes about 25 s on two cores


@pytest.mark.e2e
def test_chaos_run_loses_nothing_leaks_nothing_and_cancels_every_running_job(tmp_path: Path, capfd):
    run = ChaosRun(
        ChaosSettings(messages=CHAOS_MESSAGES, time_limit_seconds=TIME_LIMIT_SECONDS, log_dir=tmp_path / "logs")
    )

    report = run.run()
    report.write(tmp_path / "chaos.json")
    printed = capfd.readouterr()

    assert report.completed, report.failures
    assert report.wall_seconds < TIME_LIMIT_SECONDS
    assert report.sent["queue_messages"] == CHAOS_MESSAGES
    assert report.lost == 0, report.lost_request_ids
    assert report.poison_queue_messages == 0
    assert report.uncancelled_jobs == 0, report.uncancelled_job_ids
    assert report.unexpected_records == 0, report.unexpected_examples
    assert report.leaks["api_key"]["total"] == 0, report.leaks["api_key"]
    assert report.leaks["bearer_tokens"]["total"] == 0, report.leaks["bearer_tokens"]
    assert count_secrets(printed.out + printed.err, [run.api_key]) == 0
    # The chaos really happened: faults on a third of the calls, a vault outage, a restart with a backlog.
    assert report.faults["share"] >= 0.30
    assert set(report.faults["by_kind"]) == {"429", "429ms", "500", "503", "timeout", "drop"}
    assert report.key_vault_outage["records_during_outage"] > 0
    assert report.key_vault_outage["stale_key_warnings_in_runner_log"] >= 1
    assert report.azurite_restart["request_queue_depth_before"] > 0
    assert report.passed, report.failures
    assert json.loads((tmp_path / "chaos.json").read_text())["lost"] == 0


def test_the_leak_search_finds_the_key_as_text_and_as_base64_in_every_log_file(tmp_path: Path):
    key = "chaos-key-0123456789abcdef"
    (tmp_path / "runner.log").write_text(f"INFO header api-key: {key}\n")
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "azurite.log").write_text("Q2hhb3M=\n" + "chaos-key-0123456789abcdef".encode().hex())
    (tmp_path / "nested" / "b64.log").write_text("token " + "Y2hhb3Mta2V5LTAxMjM0NTY3ODlhYmNkZWY=")

    assert search_log_files(tmp_path, [key]) == {"runner.log": 1, "nested/azurite.log": 0, "nested/b64.log": 1}


_RUNNING = PlannedRequest(Kind.RUNNING_JSON, "{}", "ftjob-abc", "chaos-00001")


def _record(outcome: str, status_code: int, **fields: object) -> dict[str, object]:
    """A record of the running job above, as the app writes it, with `fields` changed."""
    return {
        "outcome": outcome,
        "status_code": status_code,
        "job_id": "ftjob-abc",
        "correlation_id": "chaos-00001",
        "job": {"id": "ftjob-abc", "status": "cancelled"},
        **fields,
    }


@pytest.mark.parametrize(
    ("planned", "record", "problem"),
    [
        (_RUNNING, _record("cancelled", 200), None),
        (_RUNNING, _record("already_terminal", 200), None),  # the cancel's answer was lost, the retry saw it
        (_RUNNING, _record("already_terminal", 409), "outcome"),
        (_RUNNING, _record("cancelled", 200, job_id="ftjob-xyz"), "job_id"),
        (_RUNNING, _record("cancelled", 200, correlation_id=None), "correlation_id"),
        (_RUNNING, _record("cancelled", 200, job={"status": "running"}), "job status"),
        (PlannedRequest(Kind.INVALID, "ftjob_1", None), {"outcome": "rejected", "status_code": 400}, None),
        (PlannedRequest(Kind.INVALID, "ftjob_1", None), {"outcome": "failed", "status_code": 503}, "outcome"),
        (PlannedRequest(Kind.SUCCEEDED, "ftjob-s", "s"), _record("already_terminal", 409, job_id="s"), None),
        (PlannedRequest(Kind.MISSING, "ftjob-m", "m"), _record("cancelled", 200, job_id="m"), "outcome"),
    ],
)
def test_a_record_is_judged_against_the_outcome_planned_for_its_message(planned, record, problem):
    found = record_problem(planned, record)

    assert (found is None) if problem is None else (problem in (found or ""))
