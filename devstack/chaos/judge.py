"""The chaos run's judge: what came back, compared with the plan, and the report of it.

Every record and HTTP answer is checked against the outcome planned for its message or request:
lost (no record), duplicates (more than one record for one request id), records with an unexpected
outcome, running jobs the simulator does not show cancelled, and the api-key and every bearer token
the identity emulator issued searched in every record, HTTP response, log file and line printed.
`judge` turns what the run saw (`Evidence`) into its `ChaosReport`, with the failures that make it fail.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devstack.chaos.drivers import HttpExchange
from devstack.chaos.plan import RUNNING_KINDS, ChaosSettings, Kind, PlannedRequest
from devstack.chaos.report import ChaosReport
from devstack.chaos.storage import ReceivedRecord
from devstack.openai_sim import FineTuningSimulator
from devstack.processes import REPO_ROOT, shown_path
from devstack.runner import HostSettings

STALE_KEY_WARNING = "using the api-key read earlier"


@dataclass
class Evidence:
    """What one run saw: its plan, the records and answers that came back, and its parts' own counts."""

    settings: ChaosSettings
    api_key: str
    messages: Sequence[PlannedRequest]
    http_planned: Sequence[PlannedRequest]
    records: Sequence[ReceivedRecord]
    exchanges: Sequence[HttpExchange]
    printed: Sequence[str]  # every line the run printed
    simulator: FineTuningSimulator | None = None
    issued_tokens: Sequence[str] = ()
    collector_storage_errors: int = 0
    outage: Mapping[str, Any] = field(default_factory=dict)  # the outage's figures
    outage_window: tuple[float, float] | None = None  # monotonic start and end; None: it never started
    restart: Mapping[str, Any] = field(default_factory=dict)
    poison: Sequence[str] = ()
    left: int = -1  # messages left on the request queue; -1: not read


def judge(evidence: Evidence, *, completed: bool, wall_seconds: float, problem: str | None) -> ChaosReport:
    """The report of a run: its figures, and what makes it fail (`problem`: why it stopped early, if it did)."""
    settings, records, exchanges = evidence.settings, evidence.records, evidence.exchanges
    counts: Counter[str] = Counter(str(r.record.get("request_id")) for r in records)
    by_request_id: dict[str, list[dict[str, Any]]] = {}
    texts_by_request_id: dict[str, set[str]] = {}
    for received in records:
        request_id = str(received.record.get("request_id"))
        by_request_id.setdefault(request_id, []).append(received.record)
        texts_by_request_id.setdefault(request_id, set()).add(received.text)

    expected: dict[str, PlannedRequest] = {p.message_id: p for p in evidence.messages if p.message_id}
    for exchange in exchanges:
        if exchange.request_id:
            expected[exchange.request_id] = exchange.planned
    lost = [rid for rid in expected if not counts.get(rid)]
    duplicates = [rid for rid, n in counts.items() if n > 1]
    unknown = [rid for rid in counts if rid not in expected]

    judgement = judge_records(expected, by_request_id)
    uncancelled = uncancelled_jobs(evidence.simulator, [*evidence.messages, *evidence.http_planned])
    secrets_ = [evidence.api_key]
    tokens = list(evidence.issued_tokens)
    leaks = {
        "api_key": leak_search(settings.log_dir, secrets_, evidence),
        "bearer_tokens": leak_search(settings.log_dir, tokens, evidence),
        "bearer_tokens_issued": len(tokens),
    }

    simulator = evidence.simulator
    deliveries = Counter(str(r.record.get("dequeue_count")) for r in records if r.record.get("trigger") == "queue")
    fault_counts = simulator.fault_counts() if simulator else {}
    faults_total = sum(fault_counts.values())
    upstream = sum(simulator.counts.values()) if simulator else 0
    outage = {**evidence.outage, **outage_figures(settings.log_dir, evidence.outage_window, records)}
    http_statuses = Counter(str(e.status) for e in exchanges)
    sent = [p for p in evidence.messages if p.message_id]

    report = ChaosReport(
        completed=completed,
        wall_seconds=round(wall_seconds, 1),
        settings={
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items() if k != "log_dir"},
            "http_cancels": settings.http_count,
            "key_vault_outage_seconds": settings.outage_seconds,
            "time_limit_seconds": settings.time_limit,
            "timeout_fault_delay_seconds": settings.timeout_fault_delay,
            "max_dequeue_count": HostSettings.from_host_json(REPO_ROOT / "host.json").max_dequeue_count,
            "log_dir": shown_path(settings.log_dir),
        },
        sent={
            "queue_messages": len(sent),
            "by_kind": dict(Counter(p.kind.value for p in sent)),
            "http_cancels": len(evidence.http_planned),
            "http_requests": len(exchanges),
        },
        records={
            "received": len(records),
            "queue": sum(1 for r in records if r.record.get("trigger") == "queue"),
            "http": sum(1 for r in records if r.record.get("trigger") == "http"),
            "by_outcome": dict(Counter(str(r.record.get("outcome")) for r in records)),
            "running_jobs_reported_already_terminal": judgement.running_already_terminal,
            "unknown_request_ids": len(unknown),
            "request_queue_left": evidence.left,
            "collector_storage_errors": evidence.collector_storage_errors,
        },
        lost=len(lost),
        lost_request_ids=lost[:50],
        duplicates=len(duplicates),
        duplicates_identical=sum(1 for rid in duplicates if len(texts_by_request_id[rid]) == 1),
        duplicate_request_ids=duplicates[:50],
        poison_queue_messages=len(evidence.poison),
        failed_retryable=judgement.failed_retryable,
        unexpected_records=len(judgement.unexpected),
        unexpected_examples=judgement.unexpected[:20],
        uncancelled_jobs=len(uncancelled),
        uncancelled_job_ids=uncancelled[:50],
        leaks=leaks,
        faults={
            "upstream_requests": upstream,
            "injected": faults_total,
            "share": round(faults_total / upstream, 3) if upstream else 0.0,
            "by_kind": dict(sorted(fault_counts.items())),
        },
        key_vault_outage=outage,
        azurite_restart=dict(evidence.restart),
        http={
            "statuses": dict(sorted(http_statuses.items())),
            "cancels_ending_200": sum(
                1 for p in evidence.http_planned if any(e.planned is p and e.status == 200 for e in exchanges)
            ),
        },
        deliveries=dict(sorted(deliveries.items())),
    )
    report.failures = failures(report, problem)
    return report


def uncancelled_jobs(simulator: FineTuningSimulator | None, planned: Iterable[PlannedRequest]) -> list[str]:
    """The running jobs of the run that the simulator does not show cancelled."""
    if simulator is None:
        return []
    uncancelled = []
    for request in planned:
        if request.kind in RUNNING_KINDS and request.job_id:
            job = simulator.job(request.job_id)
            if job is None or job["status"] != "cancelled":
                uncancelled.append(request.job_id)
    return uncancelled


def leak_search(log_dir: Path, secrets_: Sequence[str], evidence: Evidence) -> dict[str, Any]:
    """Occurrences of the secrets in the records, the HTTP answers, the log files and the printed lines."""
    logs = search_log_files(log_dir, secrets_) if secrets_ else {}
    found = {
        "records": sum(count_secrets(r.text, secrets_) for r in evidence.records),
        "responses": sum(count_secrets(e.text, secrets_) for e in evidence.exchanges),
        "logs": logs,
        "printed": sum(count_secrets(line, secrets_) for line in evidence.printed),
    }
    found["total"] = found["records"] + found["responses"] + sum(logs.values()) + found["printed"]
    return found


def outage_figures(
    log_dir: Path, window: tuple[float, float] | None, records: Sequence[ReceivedRecord]
) -> dict[str, Any]:
    """The records taken during the Key Vault outage, those failed for it, and the runner's stale-key warnings."""
    figures: dict[str, Any] = {}
    if window is not None:
        start, end = window
        during = [r for r in records if start <= r.received_at <= end]
        figures["records_during_outage"] = len(during)
        figures["key_vault_failures_in_records_during_outage"] = sum(
            1 for r in during if "Key Vault" in json.dumps(r.record.get("error") or {})
        )
    runner_log = log_dir / "runner.log"
    if runner_log.exists():
        figures["stale_key_warnings_in_runner_log"] = runner_log.read_text(errors="replace").count(STALE_KEY_WARNING)
    return figures


@dataclass
class Judgement:
    """How the records compare with the plan."""

    failed_retryable: int = 0  # queue records `failed` + `retryable`: every delivery failed
    running_already_terminal: int = 0  # running jobs whose cancel's answer was lost: the retry found them cancelled
    unexpected: list[dict[str, Any]] = field(default_factory=list)


def judge_records(
    expected: Mapping[str, PlannedRequest], by_request_id: Mapping[str, list[dict[str, Any]]]
) -> Judgement:
    judgement = Judgement()
    for request_id, planned in expected.items():
        for record in by_request_id.get(request_id, []):
            if record.get("outcome") == "failed" and record.get("retryable") is True:
                judgement.failed_retryable += record.get("trigger") == "queue"
                continue
            problem = record_problem(planned, record)
            if problem:
                judgement.unexpected.append({"request_id": request_id, "kind": planned.kind.value, "problem": problem})
            elif planned.kind in RUNNING_KINDS and record.get("outcome") == "already_terminal":
                judgement.running_already_terminal += 1
    return judgement


def record_problem(planned: PlannedRequest, record: Mapping[str, Any]) -> str | None:
    """What is wrong with a record for this request, or None."""
    outcome = (record.get("outcome"), record.get("status_code"))
    if outcome not in planned.expected:
        return f"outcome {outcome[0]} {outcome[1]}, expected one of {sorted(planned.expected)}"
    if planned.kind is not Kind.INVALID and record.get("job_id") != planned.job_id:
        return f"job_id {record.get('job_id')!r}, expected {planned.job_id!r}"
    if planned.correlation_id and record.get("correlation_id") != planned.correlation_id:
        return f"correlation_id {record.get('correlation_id')!r}, expected {planned.correlation_id!r}"
    if planned.kind in RUNNING_KINDS and (record.get("job") or {}).get("status") != "cancelled":
        return f"job status {(record.get('job') or {}).get('status')!r} in a {outcome[0]} record"
    return None


def failures(report: ChaosReport, problem: str | None) -> list[str]:
    """What makes the run fail, in words; none for a run that passed."""
    failures = []
    if problem:
        failures.append(problem)
    if report.lost:
        failures.append(f"{report.lost} message(s) or request(s) without a record")
    if report.poison_queue_messages:
        failures.append(f"{report.poison_queue_messages} message(s) on the poison queue")
    if report.uncancelled_jobs:
        failures.append(f"{report.uncancelled_jobs} running job(s) not cancelled in the simulator")
    if report.unexpected_records:
        failures.append(f"{report.unexpected_records} record(s) with an unexpected outcome")
    for secret in ("api_key", "bearer_tokens"):
        if report.leaks[secret]["total"]:
            failures.append(f"{report.leaks[secret]['total']} occurrence(s) of the {secret.replace('_', ' ')}")
    if report.completed and report.faults["share"] < 0.30:
        failures.append(f"only {report.faults['share']:.1%} of upstream calls failed; the run asks for 30% or more")
    if report.completed and not report.key_vault_outage.get("ended_at"):
        failures.append("Key Vault was never down")
    return failures


def secret_forms(secret: str) -> list[str]:
    """The texts a leaked secret would show as: itself and its base64."""
    return [secret, base64.b64encode(secret.encode()).decode()]


def count_secrets(text: str, secrets_: Iterable[str]) -> int:
    """Occurrences of any of the secrets (in any of their forms) in a text."""
    return sum(text.count(form) for secret in secrets_ for form in secret_forms(secret) if form)


def search_log_files(log_dir: Path, secrets_: Sequence[str]) -> dict[str, int]:
    """Occurrences of the secrets in every `*.log` file below `log_dir`, by file name."""
    found = {}
    for path in sorted(log_dir.rglob("*.log")):
        text = path.read_bytes().decode("utf-8", errors="replace")
        found[str(path.relative_to(log_dir))] = count_secrets(text, secrets_)
    return found
