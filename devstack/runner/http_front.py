"""The HTTP front: routes `/<routePrefix>/...` to the app's HTTP triggers, checks keys, and answers as the host.

Requests for `/admin/...` go to the host's admin API (devstack/runner/admin.py). A request's body reaches
the function only with a Content-Length above 0; what the function returns is converted by the
`azure.functions` library's own `HttpResponseConverter`, as in the Python worker.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote

import azure.functions as func
from azure.functions.http import HttpResponseConverter

from devstack._http import EmulatorServer, QuietHandler
from devstack.runner.admin import AdminApi, KeyRing
from devstack.runner.indexing import LocalFunction
from devstack.runner.invocation import InvocationPool, invocation_log, invoke, write_outputs
from devstack.runner.storage import QueueClients

FUNCTIONS_KEY_HEADER = "x-functions-key"
FUNCTIONS_KEY_QUERY = "code"
_ENCODED_SLASH = re.compile(r"%2[fF]")


class HttpHandler(QuietHandler):
    """Hands every request to the front; one thread per connection, whose invocation waits for the worker's pool."""

    server: EmulatorServer

    def _dispatch(self) -> None:
        self.server.app.handle_http(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch


class HttpFrontEnd:
    """Routes `/<routePrefix>/...` to the app's HTTP triggers, checks keys, builds HttpRequests."""

    def __init__(
        self,
        functions: Sequence[LocalFunction],
        *,
        route_prefix: str,
        keys: KeyRing,
        admin: AdminApi,
        queues: QueueClients,
        pool: InvocationPool,
        base64_encode: bool,
    ) -> None:
        self._pool = pool
        # Tried in the app's order, the first match winning (see devstack/runner/routes.py).
        self._functions = [f for f in functions if f.http_route is not None]
        self._prefix = "/" + route_prefix if route_prefix else ""
        self._keys = keys
        self._admin = admin
        self._queues = queues
        self._base64_encode = base64_encode

    def handle_http(self, handler: QuietHandler) -> None:
        raw_path, _, raw_query = handler.path.partition("?")
        body = forwarded_body(handler.headers.get("Content-Length"), handler.read_body())
        path = _decoded_path(raw_path)
        query = _query_params(raw_query)
        offered_key = handler.headers.get(FUNCTIONS_KEY_HEADER) or query.get(FUNCTIONS_KEY_QUERY) or ""
        if path.lower().startswith("/admin/"):
            self._admin.handle(handler, path, offered_key=offered_key, body=body)
            return
        function, route_params = self._route(handler.command, path)
        if function is None:
            handler.send_raw(404, b"", content_type="text/plain")
            return
        # The master key opens function routes too: the host's Admin level satisfies every level (host
        # `src/WebJobs.Script.WebHost/Security/Authorization/AuthUtility.cs` `PrincipalHasAuthLevelClaim`).
        if function.auth_level != "anonymous" and self._keys.level(offered_key) == "anonymous":
            handler.send_raw(401, b"", content_type="text/plain")
            return
        request = func.HttpRequest(
            method=handler.command,
            url=f"http://{handler.headers.get('host') or '127.0.0.1'}{handler.path}",
            headers=_request_headers(handler),
            params=query,
            route_params=route_params,
            body=body,
        )
        status, headers, content_type, response_body = self._invoke(function, request)
        handler.send_raw(status, b"" if handler.command == "HEAD" else response_body, headers, content_type)

    def _route(self, method: str, path: str) -> tuple[LocalFunction | None, dict[str, str]]:
        prefix = self._prefix
        if prefix:
            if not path.lower().startswith(prefix.lower() + "/"):
                return None, {}
            path = path[len(prefix) :]
        for function in self._functions:
            if function.http_methods is not None and method.upper() not in function.http_methods:
                continue
            params = function.http_route.match(path)  # type: ignore[union-attr]
            if params is not None:
                return function, params
        return None, {}

    def _invoke(
        self, function: LocalFunction, request: func.HttpRequest
    ) -> tuple[int, list[tuple[str, str]], str, bytes]:
        """Run the function; a failure answers 500 with no body and writes no output, as the host does."""
        try:
            with invocation_log(function, "This function was programmatically called via the host APIs."):
                result, outputs = invoke(function, request, self._pool)
                response = http_response(result)
                write_outputs(self._queues, function, outputs, base64_encode=self._base64_encode)
        except Exception:  # noqa: BLE001 - reported by invocation_log; the caller gets the host's 500
            return 500, [], "text/plain", b""
        return response


def forwarded_body(content_length: str | None, body: bytes) -> bytes:
    """The body the function sees: the host forwards one only when Content-Length is above 0, so a chunked
    body (no Content-Length) arrives empty. Host `src/WebJobs.Script.Grpc/MessageExtensions/
    GrpcMessageConversionExtensions.cs` `ToRpcHttp`: `if (request.Body != null && request.ContentLength > 0)`.
    The runner still reads the chunks, to keep the connection usable."""
    try:
        return body if content_length is not None and int(content_length) > 0 else b""
    except ValueError:
        return b""


def http_response(result: Any) -> tuple[int, list[tuple[str, str]], str, bytes]:
    """Status, headers, content type and body of what an HTTP function returned, as the Python worker encodes it.

    The worker encodes `$return` with `azure.functions` http.py `HttpResponseConverter.encode` (worker
    `azure_functions_worker/bindings/meta.py` `get_datum`, then `datumdef.py` `datum_as_proto` to an RpcHttp):
    a str or an HttpResponse, whose content-type the converter fills in from its mimetype and charset. Anything
    else (None, bytes) raises NotImplementedError, which `get_datum` turns into a TypeError: the invocation
    fails, and the host answers 500. A str is answered 200 as text/plain in UTF-8.
    """
    try:
        datum = HttpResponseConverter.encode(result, expected_type=None)
    except NotImplementedError as err:
        raise TypeError(
            f'unable to encode outgoing TypedData: unsupported type "http" for Python type "{type(result).__name__}"'
        ) from err
    if datum.type == "string":
        return 200, [], "text/plain; charset=utf-8", datum.value.encode("utf-8")
    rpc_http = datum.value
    headers = [(name, header.value) for name, header in rpc_http["headers"].items()]
    for cookie in rpc_http.get("cookies") or []:
        headers += [("Set-Cookie", morsel.OutputString()) for morsel in cookie.values()]
    content_type = next(value for name, value in headers if name.lower() == "content-type")
    kept = [(name, value) for name, value in headers if name.lower() not in ("content-type", "content-length")]
    return int(rpc_http["status_code"].value), kept, content_type, rpc_http["body"].value


def _decoded_path(raw_path: str) -> str:
    """The path with percent-escapes decoded except `%2F`, which stays inside its segment (as in ASP.NET Core)."""
    return "%2F".join(unquote(piece) for piece in _ENCODED_SLASH.split(raw_path))


def _query_params(raw_query: str) -> dict[str, str]:
    """Query parameters; repeated names are joined with commas, like the host's StringValues."""
    params: dict[str, list[str]] = {}
    for name, value in parse_qsl(raw_query, keep_blank_values=True):
        params.setdefault(name, []).append(value)
    return {name: ",".join(values) for name, values in params.items()}


def _request_headers(handler: QuietHandler) -> dict[str, str]:
    headers: dict[str, list[str]] = {}
    for name, value in handler.headers.items():
        headers.setdefault(name.lower(), []).append(value)
    return {name: ", ".join(values) for name, values in headers.items()}
