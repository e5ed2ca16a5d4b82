"""The bodies the simulated Azure OpenAI answers errors with: the gateway's, and ErrorResponse by status.

The gateway's 401 and 404 bodies carry numeric-string codes that are not in the spec's ErrorCode
enum, as Azure's do; every other error is an ErrorResponse valid for `devstack/fine_tuning_schema.json`.
"""

from __future__ import annotations

import json
from typing import Any

UNAUTHORIZED_BODY = {
    "error": {
        "code": "401",
        "message": (
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid "
            "key for an active subscription and use a correct regional API endpoint for your resource."
        ),
    }
}
RESOURCE_NOT_FOUND_BODY = {"error": {"code": "404", "message": "Resource not found"}}
UNAUTHORIZED_BYTES = json.dumps(UNAUTHORIZED_BODY, separators=(",", ":")).encode()
NOT_FOUND_BYTES = json.dumps(RESOURCE_NOT_FOUND_BODY, separators=(",", ":")).encode()

_ERROR_BY_STATUS: dict[int, tuple[str, str]] = {
    400: ("invalidPayload", "The request data is invalid for this operation."),
    403: ("forbidden", "The operation is forbidden for the current user/api key."),
    404: ("notFound", "The resource is not found."),
    408: ("serviceUnavailable", "The operation timed out."),
    409: ("conflict", "The requested operation conflicts with the current resource state."),
    429: ("tooManyRequests", "Too many requests. Please retry later."),
    500: ("internalFailure", "Internal error. Please retry."),
    502: ("serviceUnavailable", "Bad gateway. Please retry."),
    503: ("serviceUnavailable", "The service is currently not available."),
    504: ("serviceUnavailable", "The gateway timed out. Please retry."),
}
NON_JSON_BODY = (
    b"<html><head><title>502 Bad Gateway</title></head>"
    b"<body><center><h1>502 Bad Gateway</h1></center><hr><center>simulated gateway</center></body></html>"
)
KEYS_DISABLED_MESSAGE = "Key based authentication is disabled for this resource."
TOKEN_REFUSED_MESSAGE = (
    "The principal lacks the required data action Microsoft.CognitiveServices/accounts/OpenAI/fine-tunes/write."
)


def error_body(status: int) -> dict[str, Any]:
    """Return the ErrorResponse (or gateway body, for 401) Azure sends for a status."""
    if status == 401:
        return UNAUTHORIZED_BODY
    code, message = _ERROR_BY_STATUS.get(status, ("invalidPayload" if status < 500 else "internalFailure", "Error."))
    return {"error": {"code": code, "message": message}}


def error(code: str, message: str, **extra: str) -> dict[str, Any]:
    """Build an ErrorResponse body."""
    return {"error": {"code": code, "message": message, **extra}}
