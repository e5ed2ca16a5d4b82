"""Calling the function app's HTTP routes with a function key (CONTRACT section 3 and the bulk route).

One job goes to `POST {url}/openai/fine_tuning/jobs/{id}/cancel` (or, on a named resource,
`POST {url}/resources/{name}/openai/fine_tuning/jobs/{id}/cancel`); several go to `POST {url}/cancel`
in requests of at most 100 ids, with a top-level `"resource"` when one is named. Both give back
result records: the bulk route answers with the records themselves; for the single route a record
is built from the answer (status, body, `x-request-id`), without the fields only the results
queue's copy has (attempts, times).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import requests

from opscli.errors import EXIT_USAGE, CliError, network_reason
from shared.settings import DEFAULT_RESOURCE, is_loopback_host

MAX_IDS_PER_REQUEST = 100  # the bulk route's limit
CONNECT_TIMEOUT_SECONDS = 10
# The host ends a function after functionTimeout (host.json: 5 minutes); wait a little longer for its answer.
READ_TIMEOUT_SECONDS = 320
RETRYABLE_STATUSES = frozenset({429, 503})  # the contract's rows marked retryable


class FunctionApp:
    """The function app at `api_url` (its URL with the `/api` prefix), called with one function key."""

    def __init__(self, api_url: str, function_key: str, *, session: requests.Session | None = None) -> None:
        self.api_url = checked_api_url(api_url)
        self._session = session or requests.Session()
        self._session.headers["x-functions-key"] = function_key

    def cancel_one(
        self, job_id: str, *, wait_seconds: float, correlation_id: str | None, resource: str | None = None
    ) -> dict[str, Any]:
        """Cancel one job through the single route (on a named resource, its route); the answer as a record."""
        prefix = f"{self.api_url}/resources/{resource}" if resource is not None else self.api_url
        response = self._post(
            f"{prefix}/openai/fine_tuning/jobs/{job_id}/cancel",
            params={"wait_seconds": _number(wait_seconds)} if wait_seconds else None,
            headers={"x-correlation-id": correlation_id} if correlation_id else None,
        )
        body = _json_body(response, self.api_url)
        if not isinstance(body, dict):
            raise CliError(f"the function app answered {response.status_code} with JSON that is not an object")
        return single_route_record(
            job_id, response.status_code, body, response.headers, correlation_id, resource=resource or DEFAULT_RESOURCE
        )

    def cancel_many(
        self, job_ids: Sequence[str], *, wait_seconds: float, correlation_id: str | None, resource: str | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        """Cancel through the bulk route, 100 ids a request; yields each request's records in input order."""
        for start in range(0, len(job_ids), MAX_IDS_PER_REQUEST):
            chunk = list(job_ids[start : start + MAX_IDS_PER_REQUEST])
            payload: dict[str, Any] = {"job_ids": chunk}
            if resource is not None:
                payload["resource"] = resource
            if wait_seconds:
                payload["wait_seconds"] = _number(wait_seconds)
            if correlation_id:
                payload["correlation_id"] = correlation_id
            response = self._post(f"{self.api_url}/cancel", json=payload)
            body = _json_body(response, self.api_url)
            records = body.get("results") if isinstance(body, dict) else None
            if response.status_code != 200 or not isinstance(records, list) or len(records) != len(chunk):
                error = body.get("error") if isinstance(body, dict) else None
                message = error.get("message") if isinstance(error, dict) else "no results list"
                raise CliError(f"the bulk route answered {response.status_code}: {message}")
            yield records

    def _post(self, url: str, **kwargs: Any) -> requests.Response:
        try:
            response = self._session.post(
                url, timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS), allow_redirects=False, **kwargs
            )
        except requests.Timeout as err:
            raise CliError(f"the function app at {self.api_url} did not answer in time: {network_reason(err)}") from err
        except requests.ConnectionError as err:
            raise CliError(f"cannot reach the function app at {self.api_url}: {network_reason(err)}") from err
        if response.status_code == 401:
            raise CliError(
                f"function key refused by {self.api_url}: pass a key of this function app "
                "(`az functionapp keys list --name <app> --resource-group <group>`)"
            )
        if response.is_redirect:
            raise CliError(
                f"{self.api_url} redirects to {response.headers.get('location')}: pass that address as --url"
            )
        return response


def checked_api_url(api_url: str) -> str:
    """The function app's URL without a trailing `/`; https, or http on a loopback host (the key travels with it)."""
    url = api_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(
            f"--url must be the function app's URL, like https://<app>.azurewebsites.net/api, not '{api_url}'",
            exit_code=EXIT_USAGE,
        )
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise CliError(f"--url must use https: the function key would travel in clear text to {parts.hostname}",
                       exit_code=EXIT_USAGE)
    return url


def single_route_record(
    job_id: str, status: int, body: dict[str, Any], headers: Any, correlation_id: str | None, *, resource: str
) -> dict[str, Any]:
    """The record the single route's answer stands for (CONTRACT section 3's table read backwards)."""
    error = body.get("error") if isinstance(body.get("error"), dict) else None
    code = (error or {}).get("code")
    if 200 <= status < 300:
        outcome = "cancelled"  # also when it was cancelled before: the answer does not tell them apart
    elif status == 409 and code == "unexpectedEntityState":
        outcome = "already_terminal"
    elif status == 400 and code == "invalidPayload":
        outcome = "rejected"
    else:
        outcome = "failed"
    return {
        "job_id": job_id,
        "resource": resource,
        "outcome": outcome,
        "job": None if error is not None else body,
        "error": error,
        "status_code": status,
        "retryable": status in RETRYABLE_STATUSES,
        "trigger": "http",
        "correlation_id": correlation_id,
        "request_id": headers.get("x-request-id"),
    }


def _json_body(response: requests.Response, api_url: str) -> Any:
    try:
        return response.json()
    except ValueError:
        pass
    kind = response.headers.get("content-type") or "no content type"
    if response.status_code == 404:
        raise CliError(
            f"no cancel route at {api_url} (404, {kind}): --url is the function app's URL with its /api prefix, "
            "like https://<app>.azurewebsites.net/api"
        )
    raise CliError(f"the function app at {api_url} answered {response.status_code} without JSON ({kind})")


def _number(seconds: float) -> int | float:
    return int(seconds) if float(seconds).is_integer() else seconds
