"""The guard's test data: a policy, budget and metric alerts as Azure sends them, jobs of every state and age."""

from __future__ import annotations

import copy
import time

from devstack.openai_sim import DEFAULT_MODEL, FineTuningSimulator

HOUR = 3600
MINUTE = 60
POLICY = {
    "max_age_minutes": {"waiting": 60, "running": 600, "paused": 30},
    "allowed_models": [DEFAULT_MODEL],
    "exempt_suffixes": ["keep"],
}

COMMON_BUDGET_ALERT = {  # the shape Azure Monitor sends for a budget, common alert schema
    "schemaId": "azureMonitorCommonAlertSchema",
    "data": {
        "essentials": {
            "monitoringService": "CostAlerts",
            "firedDateTime": "2025-05-07T20:35:04.9129447Z",
            "description": "Your spend for budget fine-tuning is now $31.00 exceeding your specified threshold $25.00.",
            "essentialsVersion": "1.0",
            "alertContextVersion": "1.0",
            "alertId": "/subscriptions/00000000-0000-0000-0000-000000000000/providers/Microsoft.AlertsManagement/alerts/",
            "alertRule": "fine-tuning",
            "severity": "Sev4",
            "signalType": "Log",
            "monitorCondition": "Fired",
            "alertTargetIDs": ["/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg-ft"],
            "configurationItems": ["budgets"],
            "originAlertId": None,
        },
        "alertContext": {
            "AlertCategory": "budgets",
            "AlertData": {
                "Scope": "/subscriptions/00000000-0000-0000-0000-000000000000/",
                "ThresholdType": "Actual",
                "BudgetType": "Cost",
                "BudgetThreshold": "$50.00",
                "NotificationThresholdAmount": "$25.00",
                "FiredDate": "2025-05-07T20:35:04.9129447Z",
                "SpentAmount": "$31.00",
                "Unit": "USD",
                "BudgetName": "fine-tuning",
            },
        },
    },
}
LEGACY_BUDGET_ALERT = {  # the older budget payload (action groups without the common schema)
    "schemaId": "AIP Budget Notification",
    "data": {
        "SubscriptionName": "ft-subscription",
        "SubscriptionId": "00000000-0000-0000-0000-000000000000",
        "SpendingAmount": "31",
        "BudgetStartDate": "5/1/2025",
        "Budget": "50",
        "Unit": "USD",
        "BudgetCreator": "platform@contoso.com",
        "BudgetName": "fine-tuning",
        "BudgetType": "Cost",
        "ResourceGroup": "rg-ft",
        "NotificationThresholdAmount": "25.0",
    },
}
METRIC_ALERT = {
    "schemaId": "azureMonitorCommonAlertSchema",
    "data": {
        "essentials": {"monitoringService": "Platform", "alertId": "/subscriptions/x/alerts/metric"},
        "alertContext": {"conditionType": "SingleResourceMultipleMetricCriteria"},
    },
}



def seed_every_state(sim: FineTuningSimulator) -> dict[str, str]:
    """Jobs of every state and age; returns {name: job id}, the breakers named for their rule."""
    now = int(time.time())
    jobs = {
        "old-queued": sim.create_job(status="queued", created_at=now - 2 * HOUR),
        "old-pending": sim.create_job(status="pending", created_at=now - 2 * HOUR),
        "young-validating": sim.create_job(status="validating_files", created_at=now - 5 * MINUTE),
        "young-running": sim.create_job(status="running", created_at=now - HOUR),
        "old-running": sim.create_job(status="running", created_at=now - 11 * HOUR),
        "old-paused": sim.create_job(status="paused", created_at=now - HOUR),
        "young-resuming": sim.create_job(status="resuming", created_at=now - 10 * MINUTE),
        "other-model": sim.create_job(status="running", model="gpt-4o", created_at=now - 5 * MINUTE),
        "exempt-old": sim.create_job(status="queued", created_at=now - 5 * HOUR, suffix="keep"),
        "old-succeeded": sim.create_job(status="succeeded", created_at=now - 50 * HOUR, model="gpt-4o"),
        "old-failed": sim.create_job(status="failed", created_at=now - 50 * HOUR),
        "old-cancelled": sim.create_job(status="cancelled", created_at=now - 50 * HOUR),
    }
    return {name: job["id"] for name, job in jobs.items()}


EXPECTED_RULES = {
    "old-queued": "guard:max-age-waiting",
    "old-pending": "guard:max-age-waiting",
    "old-running": "guard:max-age-running",
    "old-paused": "guard:max-age-paused",
    "other-model": "guard:model-not-allowed",
}
ACTIVE = ("old-queued", "old-pending", "young-validating", "young-running", "old-running", "old-paused",
          "young-resuming", "other-model")



def alert_with_id(alert: dict, suffix: str) -> dict:
    alert = copy.deepcopy(alert)
    alert["data"]["essentials"]["alertId"] += suffix
    return alert
