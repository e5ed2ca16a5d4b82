"""The figures of one chaos run: the report written as JSON, and the summary lines `make chaos` prints."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ChaosReport:
    """The figures of one run: what the JSON file holds."""

    completed: bool
    wall_seconds: float
    settings: dict[str, Any]
    sent: dict[str, Any]
    records: dict[str, Any]
    lost: int
    lost_request_ids: list[str]
    duplicates: int
    duplicates_identical: int  # the same record twice: a write whose answer was lost, repeated
    duplicate_request_ids: list[str]
    poison_queue_messages: int
    failed_retryable: int
    unexpected_records: int
    unexpected_examples: list[dict[str, Any]]
    uncancelled_jobs: int
    uncancelled_job_ids: list[str]
    leaks: dict[str, Any]
    faults: dict[str, Any]
    key_vault_outage: dict[str, Any]
    azurite_restart: dict[str, Any]
    http: dict[str, Any]
    deliveries: dict[str, int]
    failures: list[str] = field(default_factory=list)
    started_at: str = ""
    finished_at: str = ""

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> str:
        return json.dumps({"passed": self.passed, **asdict(self)}, indent=2) + "\n"

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(), encoding="utf-8")


def summary_lines(report: ChaosReport) -> list[str]:
    """The figures of a run as the lines `make chaos` prints."""
    leaks = report.leaks["api_key"]
    logs = ", ".join(f"{name} {n}" for name, n in leaks["logs"].items())
    lines = [
        "",
        f"  sent                  {report.sent['queue_messages']} queue messages, {report.sent['http_requests']} "
        f"HTTP requests ({report.sent['http_cancels']} HTTP cancels)",
        f"  records received      {report.records['received']} ({report.records['queue']} queue, "
        f"{report.records['http']} http)",
        "  outcomes              "
        + ", ".join(f"{outcome} {n}" for outcome, n in sorted(report.records["by_outcome"].items()))
        + f" ({report.records['running_jobs_reported_already_terminal']} running jobs already_terminal: "
        "the answer to their cancel came too late, the retry found them cancelled)",
        f"  lost                  {report.lost}",
        f"  duplicates            {report.duplicates} ({report.duplicates_identical} the same record written twice, "
        f"{report.duplicates - report.duplicates_identical} from a second delivery)",
        f"  poison queue          {report.poison_queue_messages}",
        f"  failed, retryable     {report.failed_retryable} (every delivery failed; a record, not a loss)",
        f"  unexpected outcomes   {report.unexpected_records}",
        f"  uncancelled jobs      {report.uncancelled_jobs}",
        f"  api-key occurrences   {leaks['total']} (records {leaks['records']}, responses {leaks['responses']}, "
        f"printed {leaks['printed']}, logs: {logs})",
        f"  bearer tokens         {report.leaks['bearer_tokens']['total']} occurrences of "
        f"{report.leaks['bearer_tokens_issued']} issued",
        f"  upstream faults       {report.faults['injected']} of {report.faults['upstream_requests']} calls "
        f"({report.faults['share']:.1%}): " + ", ".join(f"{kind} {n}" for kind, n in report.faults["by_kind"].items()),
        f"  Key Vault outage      {report.key_vault_outage.get('seconds', 0):g} s, "
        f"{report.key_vault_outage.get('records_during_outage', 0)} records meanwhile, "
        f"{report.key_vault_outage.get('stale_key_warnings_in_runner_log', 0)} stale-key warnings",
        f"  Azurite restart       {report.azurite_restart.get('downtime_seconds', '-')} s down, "
        f"{report.azurite_restart.get('request_queue_depth_before', '-')} messages queued before, "
        f"{report.azurite_restart.get('request_queue_depth_after', '-')} after",
        "  deliveries            " + ", ".join(f"{n}x: {count}" for n, count in report.deliveries.items()),
        f"  wall time             {report.wall_seconds:.1f} s",
        "",
    ]
    if report.passed:
        lines.append("PASSED: nothing lost, nothing leaked, every running job cancelled.")
    else:
        lines.append("FAILED: " + "; ".join(report.failures))
    return lines
