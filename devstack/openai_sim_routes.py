"""Which operation a request to the simulated Azure OpenAI is: its route, and the api-versions served.

The fine-tuning jobs routes of the 2024-10-21 data-plane API (`/openai/fine_tuning/jobs[/{id}[/cancel]]`,
with an api-version from SUPPORTED_API_VERSIONS) and the same routes under the v1 API
(`/openai/v1/fine_tuning/jobs...`, without one); anything else is "unknown", which Azure answers 404.
"""

from __future__ import annotations

DEFAULT_API_VERSION = "2024-10-21"
# api-versions that serve fine_tuning/jobs on Azure; anything else answers 404 like the gateway.
SUPPORTED_API_VERSIONS = frozenset(
    {
        "2023-12-01-preview",
        "2024-02-15-preview",
        "2024-03-01-preview",
        "2024-04-01-preview",
        "2024-05-01-preview",
        "2024-07-01-preview",
        "2024-08-01-preview",
        "2024-09-01-preview",
        "2024-10-01-preview",
        "2024-10-21",
        "2025-01-01-preview",
        "2025-02-01-preview",
        "2025-03-01-preview",
        "2025-04-01-preview",
    }
)
V1_PREFIX = "/openai/v1/"


def route(method: str, path: str) -> tuple[str, str]:
    """Return (route kind, job id) for a request; kind is "unknown" for anything Azure would 404.

    The v1 API's paths (`/openai/v1/fine_tuning/jobs...`, served without an api-version) are the same routes.
    """
    if path.startswith(V1_PREFIX):
        path = "/openai/" + path[len(V1_PREFIX) :]
    if not path.startswith("/openai/fine_tuning/jobs"):
        return "unknown", ""
    rest = path[len("/openai/fine_tuning/jobs") :]
    if not rest:
        if method == "POST":
            return "create", ""
        return ("list", "") if method == "GET" else ("unknown", "")
    parts = rest.split("/")
    if parts[0] != "" or not parts[1]:
        return "unknown", ""
    if len(parts) == 2 and method == "GET":
        return "get", parts[1]
    if len(parts) == 3 and parts[2] == "cancel" and method == "POST":
        return "cancel", parts[1]
    return "unknown", ""
