"""Budget alerts the guard accepts, and the identity that tells a second delivery of one from a new alert.

Two payloads, and nothing else:

- Azure Monitor's common alert schema: `schemaId` `azureMonitorCommonAlertSchema`,
  `data.essentials.monitoringService` `CostAlerts`, `data.alertContext.AlertCategory` `budgets`;
  identity `data.essentials.alertId` (the same alert keeps it on every delivery).
- The older budget payload: `schemaId` `AIP Budget Notification` with a `data` object of strings
  (`BudgetName`, `SpendingAmount`, ...); it has no id, so its identity is the whole `data` object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from shared.records import InvalidRequest

MAX_ALERT_BYTES = 1 << 20  # an alert is a few KiB; over 1 MiB is not one
COMMON_SCHEMA = "azureMonitorCommonAlertSchema"
LEGACY_BUDGET_SCHEMA = "AIP Budget Notification"
COST_ALERTS = "CostAlerts"
BUDGETS = "budgets"


@dataclass(frozen=True)
class BudgetAlert:
    """One budget alert: which schema it came in, and its identity across deliveries."""

    schema: str
    identity: str
    budget: str | None  # the budget's name where the payload gives it, for the log


def parse_budget_alert(body: bytes) -> BudgetAlert:
    """The alert in the body, or `InvalidRequest` (400 `invalidPayload`) saying why it is not one."""
    if len(body) > MAX_ALERT_BYTES:
        raise InvalidRequest(f"the body is over {MAX_ALERT_BYTES} bytes; a budget alert is a few KiB", target="body")
    try:
        payload = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as err:
        raise InvalidRequest("the body is not JSON", target="body") from err
    if not isinstance(payload, dict):
        raise InvalidRequest("the body is not a JSON object", target="body")
    schema = payload.get("schemaId")
    data = payload.get("data")
    if schema == COMMON_SCHEMA:
        return _common_schema(data)
    if schema == LEGACY_BUDGET_SCHEMA:
        if not isinstance(data, dict) or not data:
            raise InvalidRequest("a budget notification carries a non-empty 'data' object", target="data")
        identity = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        name = data.get("BudgetName")
        return BudgetAlert(LEGACY_BUDGET_SCHEMA, f"legacy:{identity}", name if isinstance(name, str) else None)
    raise InvalidRequest(
        f"schemaId must be '{COMMON_SCHEMA}' or '{LEGACY_BUDGET_SCHEMA}'", target="schemaId"
    )


def _common_schema(data: object) -> BudgetAlert:
    essentials = data.get("essentials") if isinstance(data, dict) else None
    context = data.get("alertContext") if isinstance(data, dict) else None
    if not isinstance(essentials, dict) or essentials.get("monitoringService") != COST_ALERTS:
        raise InvalidRequest(
            f"only cost alerts are accepted (data.essentials.monitoringService '{COST_ALERTS}')",
            target="data.essentials.monitoringService",
        )
    if not isinstance(context, dict) or context.get("AlertCategory") != BUDGETS:
        raise InvalidRequest(
            f"only budget alerts are accepted (data.alertContext.AlertCategory '{BUDGETS}')",
            target="data.alertContext.AlertCategory",
        )
    alert_id = essentials.get("alertId")
    if not isinstance(alert_id, str) or not alert_id:
        raise InvalidRequest("the alert has no data.essentials.alertId", target="data.essentials.alertId")
    rule = essentials.get("alertRule")
    return BudgetAlert(COMMON_SCHEMA, f"common:{alert_id}", rule if isinstance(rule, str) else None)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")

