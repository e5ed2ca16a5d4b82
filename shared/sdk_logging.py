"""The Azure SDKs' per-request logs, turned down for the whole app.

The Python worker sets the root logger to INFO and sends every record to the host over gRPC
(azure-functions-python-worker `azure_functions_worker/dispatcher.py`, `Dispatcher.dispatch_forever`
and `AsyncLoggingHandler.emit`), and host.json keeps `Information`. azure-core's `HttpLoggingPolicy`
logs each storage, Key Vault and identity request and response at INFO, headers included
(azure-sdk-for-python#19925 shows a Function App's log made of them), so every record written
would cost two log lines in Application Insights and their CPU in the worker. WARNING and above
still come through; the SDKs' other INFO lines (which credential got a token) are kept.
"""

from __future__ import annotations

import logging

HTTP_LOGGING_POLICY_LOGGER = "azure.core.pipeline.policies.http_logging_policy"


def quiet_sdk_request_logs() -> None:
    """Log the SDKs' requests and responses only at WARNING and above, not two INFO records per request."""
    logging.getLogger(HTTP_LOGGING_POLICY_LOGGER).setLevel(logging.WARNING)
