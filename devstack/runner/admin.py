"""The host's admin API, as far as the runner has it: host status, and running a non-HTTP function on demand.

`POST /admin/functions/{name}` with `{"input": "..."}` runs a timer or queue function once, as host
`src/WebJobs.Script.WebHost/Controllers/FunctionsController.cs` `Invoke` does: 400 without a JSON object
body, 404 for a name no function has (`ScriptHost.cs` `GetFunctionOrNull`, case-insensitive), else 202
at once while the function runs in the background (`Task.Run` there). It needs the master key, in
`x-functions-key` or `?code=` (`[Authorize(Policy = PolicyNames.AdminAuthLevel)]`; the key is read by
`Security/Authentication/Keys/AuthenticationLevelHandler.cs` `GetAuthorizationKeyInfoAsync` and matched by
`Security/KeyManagement/SecretManager.cs` `GetAuthorizationLevelAsync`): no key or an unknown one answers 401,
a function key 403 (ASP.NET Core `AuthorizeFilter`: Challenge when unauthenticated, Forbid otherwise).
Not mirrored: the host accepts an HTTP function here too; the runner answers 400 (run it through its route).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import secrets
import threading
from collections.abc import Sequence
from typing import Any

from devstack._http import QuietHandler
from devstack.runner.indexing import LocalFunction
from devstack.runner.invocation import InvocationPool, invocation_log, invoke, write_outputs
from devstack.runner.queue_listener import queue_message_for_worker
from devstack.runner.storage import QueueClients
from devstack.runner.timers import timer_request

logger = logging.getLogger(__name__)

HOST_STATUS_PATH = "/admin/host/status"
FUNCTIONS_PATH = "/admin/functions/"
ON_DEMAND_REASON = "This function was programmatically called via the host APIs."


def generate_master_key() -> str:
    """A random master key, for a runner started without one (the host generates its own too)."""
    return secrets.token_urlsafe(32)


class KeyRing:
    """The runner's two keys and the auth level a presented key grants (SecretManager `GetAuthorizationLevelAsync`:
    the master key first, Admin; then the function key)."""

    def __init__(self, *, function_key: str, master_key: str) -> None:
        self._function_key = function_key.encode("utf-8")
        self._master_key = master_key.encode("utf-8")

    def level(self, offered: str) -> str:
        """"admin", "function" or "anonymous"."""
        key = offered.encode("utf-8")
        if offered and hmac.compare_digest(key, self._master_key):
            return "admin"
        if offered and hmac.compare_digest(key, self._function_key):
            return "function"
        return "anonymous"


class AdminApi:
    """Answers `/admin/...` requests: the host status, and `POST /admin/functions/{name}`."""

    def __init__(
        self,
        functions: Sequence[LocalFunction],
        *,
        keys: KeyRing,
        pool: InvocationPool,
        queues: QueueClients,
        base64_encode: bool,
    ) -> None:
        self._functions = {function.name.lower(): function for function in functions}
        self._keys = keys
        self._pool = pool
        self._queues = queues
        self._base64_encode = base64_encode

    def handle(self, handler: QuietHandler, path: str, *, offered_key: str, body: bytes) -> None:
        name = path[len(FUNCTIONS_PATH) :].rstrip("/") if path.lower().startswith(FUNCTIONS_PATH) else ""
        status = handler.command == "GET" and path.rstrip("/").lower() == HOST_STATUS_PATH
        invoke = handler.command == "POST" and bool(name) and "/" not in name
        if not (status or invoke):
            _refuse(
                handler,
                404,
                f"the local runner's admin API has GET {HOST_STATUS_PATH} and POST {FUNCTIONS_PATH}{{name}} only, "
                f"not {handler.command} {path}",
            )
            return
        # Both need the master key: host `HostController.cs` `GetHostStatus` and `FunctionsController.cs` `Invoke`
        # carry `[Authorize(Policy = PolicyNames.AdminAuthLevel...)]`.
        level = self._keys.level(offered_key)
        if level != "admin":
            handler.send_raw(401 if level == "anonymous" else 403, b"", content_type="text/plain")
            return
        if status:
            handler.send_json(200, {"state": "Running", "version": "local-runner"})
            return
        invocation = _invocation_input(body)
        if invocation is _NO_INVOCATION:
            _refuse(handler, 400, 'the body must be a JSON object like {"input": "..."}, its input a string')
            return
        function = self._functions.get(name.lower())
        if function is None:
            handler.send_raw(404, b"", content_type="text/plain")
            return
        if function.trigger_type == "httpTrigger":
            _refuse(
                handler,
                400,
                f"'{function.name}' is an HTTP function: the local runner runs it through its route only, "
                "not through the admin API",
            )
            return
        threading.Thread(
            target=self._run, args=(function, invocation), name=f"admin-{function.name}", daemon=True
        ).start()
        handler.send_raw(202, b"", content_type="text/plain")

    def _run(self, function: LocalFunction, given: str | None) -> None:
        # A failure is logged by invocation_log, as the host logs it; nobody waits for an on-demand run.
        with contextlib.suppress(Exception), invocation_log(function, ON_DEMAND_REASON):
            _, outputs = invoke(function, self._trigger_value(function, given or ""), self._pool)
            write_outputs(self._queues, function, outputs, base64_encode=self._base64_encode)

    @staticmethod
    def _trigger_value(function: LocalFunction, given: str) -> Any:
        """The trigger value the host binds for an input string.

        A timer gets a fresh TimerInfo (devstack/runner/timers.py `timer_request`). A queue trigger gets a message
        made from the string alone, with no id, pop receipt or times and a dequeue count of 0 (azure-webjobs-sdk
        `Extensions.Storage/Queues/Triggers/StringToStorageQueueMessageConverter.cs` `Convert`:
        `new CloudQueueMessage(input)`), whose JSON fields overwrite its metadata as on any delivery.
        """
        if function.trigger_type == "timerTrigger":
            return timer_request()
        return queue_message_for_worker(given.encode("utf-8"), {"QueueTrigger": given, "DequeueCount": 0})


_NO_INVOCATION = object()


def _invocation_input(body: bytes) -> Any:
    """The `Input` of the body's `FunctionInvocation` (host `Models/FunctionInvocation.cs`; the name matched
    case-insensitively, as MVC binds it): a string or None, or _NO_INVOCATION when the body is no such object."""
    try:
        invocation = json.loads(body or b"null")
    except ValueError:
        return _NO_INVOCATION
    if not isinstance(invocation, dict):
        return _NO_INVOCATION
    given = next((value for name, value in invocation.items() if name.lower() == "input"), None)
    return given if given is None or isinstance(given, str) else _NO_INVOCATION


def _refuse(handler: QuietHandler, status: int, message: str) -> None:
    handler.send_raw(status, message.encode("utf-8"), content_type="text/plain; charset=utf-8")
