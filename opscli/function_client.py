"""Calling the function app's bulk route with a function key (CONTRACT section 8, docs/contract.md section 8).

Every cancel goes to `POST {url}/cancel`, in requests of at most 100 ids, and the route answers
`{"results": [record, ...]}` in input order: the function's own records, printed as they are. The
single-job route is not used, because its answer is the job or an error, from which a record can
only be guessed: a job cancelled just now and one that was already cancelled both answer 200 with
the job, while their records say `cancelled` and `already_terminal`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import requests

from opscli.errors import EXIT_USAGE, CliError, network_reason
from shared.settings import is_loopback_host

MAX_IDS_PER_REQUEST = 100  # the bulk route's limit
CONNECT_TIMEOUT_SECONDS = 10
# The host ends a function after functionTimeout (host.json: 5 minutes); wait a little longer for its answer.
READ_TIMEOUT_SECONDS = 320


class FunctionApp:
    """The function app at `api_url` (its URL with the `/api` prefix), called with one function key."""

    def __init__(self, api_url: str, function_key: str, *, session: requests.Session | None = None) -> None:
        self.api_url = checked_api_url(api_url)
        self._session = session or requests.Session()
        self._session.headers["x-functions-key"] = function_key

    def cancel(
        self, job_ids: Sequence[str], *, wait_seconds: float, correlation_id: str | None, resource: str | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        """Cancel through the bulk route, 100 ids a request; yields each request's records in input order.

        With `resource`, one id is sent as `{"job_id", "resource"}`, so a name the app does not know is that
        job's `rejected` record (exit 3); several ids name it once for the request, which the route then
        refuses whole (400, exit 1): both as docs/cli.md says.
        """
        for start in range(0, len(job_ids), MAX_IDS_PER_REQUEST):
            chunk = list(job_ids[start : start + MAX_IDS_PER_REQUEST])
            payload: dict[str, Any] = {"job_ids": chunk}
            if resource is not None and len(job_ids) == 1:
                payload["job_ids"] = [{"job_id": chunk[0], "resource": resource}]
            elif resource is not None:
                payload["resource"] = resource
            if wait_seconds:
                payload["wait_seconds"] = _number(wait_seconds)
            if correlation_id:
                payload["correlation_id"] = correlation_id
            response = self.post(f"{self.api_url}/cancel", json=payload)
            body = _json_body(response, self.api_url)
            records = body.get("results") if isinstance(body, dict) else None
            if not _records_of(records, chunk):
                raise CliError(f"the bulk route answered {response.status_code}: {_error_message(body)}")
            yield records
            if response.status_code != 200:
                # 503 with results: every job's record is above, but not all are on the results queue.
                raise CliError(f"the bulk route answered {response.status_code}: {_error_message(body)}")

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        """POST with the function key; unreachable, refused keys and redirects become one CliError each."""
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


def _records_of(records: object, chunk: list[str]) -> bool:
    """Whether the answer's `results` are one record (a JSON object) per id sent."""
    return isinstance(records, list) and len(records) == len(chunk) and all(isinstance(r, dict) for r in records)


def _error_message(body: object) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else "no results list"


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
