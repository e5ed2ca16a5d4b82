"""`ftcancel guard`: the guard's kill switch, and a sweep now (CONTRACT section 8, Guard).

    guard cancel-active  POST {url}/guard/cancel-active {"resource", "states", "dry_run"} with a function key;
                         prints the matching jobs (would_cancel) and how many cancels were enqueued
    guard sweep          runs the timer function `guard_sweep` now, through the host's admin API with the
                         master key; the sweep itself runs in the app, and its outcome is in the app's log

`guard sweep` follows the host's `POST /admin/functions/{name}` (azure-functions-host
`src/WebJobs.Script.WebHost/Controllers/FunctionsController.cs`, `Invoke`): the body is a `FunctionInvocation`
`{"input": ...}` (no body is 400), an unknown function is 404, and the host answers 202 at once and runs the
function in the background (`Task.Run`), so nothing of the sweep's outcome comes back. Admin routes sit at the
root of the app's host whatever its route prefix, and take only the master key
(`[Authorize(Policy = PolicyNames.AdminAuthLevel)]`).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, TextIO
from urllib.parse import urlsplit

import requests

from opscli.arguments import FORMATTER, FUNCTION_KEY_ENV, URL_ENV, common_options
from opscli.errors import EXIT_ERROR, EXIT_OK, EXIT_USAGE, CliError, counted, network_reason
from opscli.function_client import CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS, FunctionApp, checked_api_url
from opscli.output import printable_line
from shared.guard_policy import GROUP_OF_STATE, STATE_GROUPS

MASTER_KEY_ENV = "FTCANCEL_MASTER_KEY"
SWEEP_FUNCTION = "guard_sweep"  # function_app.py's timer trigger

GUARD_EPILOG = f"""\
cancel-active is the kill switch: every active job (of the given state groups, on the given resource)
is enqueued for cancelling once, with correlation_id guard:cancel-active, except what GUARD_POLICY
exempts. --dry-run enqueues nothing and lists what it would cancel.

sweep runs the app's scheduled sweep now (the function {SWEEP_FUNCTION}) through the host's admin API:
it needs the master key (`az functionapp keys list` shows it as masterKey), not a function key.
The host answers at once and runs the sweep in the background: its outcome is the "guard sweep:" line
in the app's log. A sweep's dry run is GUARD_POLICY's "dry_run"; sweep refuses --dry-run.

examples:
  export {URL_ENV}=https://myapp.azurewebsites.net/api {FUNCTION_KEY_ENV}=... {MASTER_KEY_ENV}=...
  ftcancel guard cancel-active --dry-run
  ftcancel guard cancel-active --resource sweden --states waiting paused
  ftcancel guard sweep

exit codes:
  0  done
  1  the function app could not be used, or the kill switch could not reach every job (it says which)
  2  bad arguments, or the app refused the request: nothing was enqueued"""


EXAMPLES = (
    "ftcancel guard cancel-active --dry-run",
    "ftcancel guard sweep --master-key \"$MASTER_KEY\"",
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add `guard cancel-active` and `guard sweep` to ftcancel's subcommands."""
    common, formatter = common_options(), FORMATTER
    guard = commands.add_parser(
        "guard", formatter_class=formatter, epilog=GUARD_EPILOG, help="the guard: kill switch, sweep now",
        description="The spend guard of the function app: cancel every active job now, or run a sweep now.",
    )
    actions = guard.add_subparsers(dest="guard_command", required=True, metavar="ACTION")
    url = argparse.ArgumentParser(add_help=False)
    url.add_argument("--url", default=os.environ.get(URL_ENV),
                     help=f"the function app's URL with /api (default: ${URL_ENV})")
    dry_run = argparse.ArgumentParser(add_help=False)
    dry_run.add_argument("--dry-run", action="store_true", help="enqueue nothing; list what would be cancelled")

    cancel_active = actions.add_parser(
        "cancel-active", parents=[common, url, dry_run], formatter_class=formatter, epilog=GUARD_EPILOG,
        help="enqueue a cancel of every active job", description="The kill switch: POST {url}/guard/cancel-active.",
    )
    cancel_active.add_argument("--key", default=os.environ.get(FUNCTION_KEY_ENV),
                               help=f"a function key of the app (default: ${FUNCTION_KEY_ENV})")
    cancel_active.add_argument("--resource", metavar="NAME",
                               help="only this resource of the app (default: every resource the policy sweeps)")
    cancel_active.add_argument("--states", nargs="+", metavar="STATE", choices=[*STATE_GROUPS, *GROUP_OF_STATE],
                               help=f"state groups ({', '.join(STATE_GROUPS)}) or states (default: all active)")
    cancel_active.add_argument("--json", action="store_true", help="print the app's answer as it came")
    cancel_active.set_defaults(run=run_cancel_active)

    sweep = actions.add_parser(
        "sweep", parents=[common, url, dry_run], formatter_class=formatter, epilog=GUARD_EPILOG,
        help="run the scheduled sweep now", description=f"Run the timer function {SWEEP_FUNCTION} now.",
    )
    sweep.add_argument("--master-key", default=os.environ.get(MASTER_KEY_ENV),
                       help=f"the app's master key (default: ${MASTER_KEY_ENV})")
    sweep.set_defaults(run=run_sweep)


# --- cancel-active ------------------------------------------------------------------------------


def run_cancel_active(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    app = FunctionApp(_required(args.url, "--url", URL_ENV), _required(args.key, "--key", FUNCTION_KEY_ENV))
    body: dict[str, Any] = {"dry_run": args.dry_run}
    if args.resource is not None:
        body["resource"] = args.resource
    if args.states:
        body["states"] = list(dict.fromkeys(args.states))
    response = app.post(f"{app.api_url}/guard/cancel-active", json=body)
    answer = _answer(response, f"{app.api_url}/guard/cancel-active")
    if args.json:
        print(json.dumps(answer), file=stdout)
    else:
        for job_id in answer["would_cancel"]:
            print(job_id, file=stdout)
    would, enqueued = len(answer["would_cancel"]), answer["enqueued"]
    if args.dry_run or response.status_code == 200:
        print(f"dry run: {counted(would, 'job')} would be cancelled; nothing enqueued", file=stderr)
    else:
        pending = would - enqueued - len(answer.get("not_enqueued", []))
        print(f"enqueued {counted(enqueued, 'cancel request')} (guard:cancel-active) for {counted(would, 'matching job')}"
              + (f"; {pending} already had one pending" if pending else ""), file=stderr)
    problems = [f"listing resource {item.get('resource')} is incomplete: {item.get('problem')}"
                for item in answer.get("incomplete", [])]
    problems += [f"not enqueued: {item}" for item in answer.get("not_enqueued", [])]
    for problem in problems:
        print(f"ftcancel: {problem}", file=stderr)
    return EXIT_ERROR if problems else EXIT_OK


def _answer(response: requests.Response, url: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code in (200, 202) and _is_run(body):
        return body
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if response.status_code == 400 and message:
        target = error.get("target")
        raise CliError(f"the app refused the request: {message}" + (f" ({target})" if target else ""),
                       exit_code=EXIT_USAGE)
    if response.status_code == 404:
        raise CliError(f"no guard route at {url} (404): --url is the app's URL with /api, "
                       "and the app must be a version with the guard")
    detail = message or printable_line(response.text, 200) or "no body"
    raise CliError(f"the function app answered {response.status_code}: {detail}")


def _is_run(body: object) -> bool:
    return (isinstance(body, dict) and isinstance(body.get("enqueued"), int)
            and isinstance(body.get("would_cancel"), list))


# --- sweep --------------------------------------------------------------------------------------


def run_sweep(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    if args.dry_run:
        raise CliError(
            "a sweep's dry run is the policy's: set \"dry_run\": true in GUARD_POLICY (the sweep then logs its "
            "would_cancel and enqueues nothing); `ftcancel guard cancel-active --dry-run` lists the active jobs now",
            exit_code=EXIT_USAGE,
        )
    origin = admin_origin(_required(args.url, "--url", URL_ENV))
    master_key = _required(args.master_key, "--master-key", MASTER_KEY_ENV)
    url = f"{origin}/admin/functions/{SWEEP_FUNCTION}"
    try:
        response = requests.post(
            url,
            json={"input": ""},  # a timer trigger takes no input; the host refuses a missing body
            headers={"x-functions-key": master_key},
            timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS),
            allow_redirects=False,
        )
    except requests.Timeout as err:
        raise CliError(f"the function app at {origin} did not answer in time: {network_reason(err)}") from err
    except requests.ConnectionError as err:
        raise CliError(f"cannot reach the function app at {origin}: {network_reason(err)}") from err
    if response.status_code in (401, 403):
        raise CliError(f"master key refused by {origin} ({response.status_code}): the admin API takes only the "
                       "master key (masterKey in `az functionapp keys list`), not a function key")
    if response.status_code == 404:
        raise CliError(f"{origin} has no function {SWEEP_FUNCTION} (404): deploy a version with the guard, and set "
                       "GUARD_SCHEDULE (without it the host disables the function)")
    if response.status_code != 202:
        raise CliError(f"{origin} answered {response.status_code} to {url}: {printable_line(response.text, 200) or 'no body'}")
    print(f"sweep started on {origin} (202): the host runs it in the background; its outcome is the "
          "\"guard sweep:\" line in the app's log", file=stdout)
    return EXIT_OK


def admin_origin(api_url: str) -> str:
    """`https://<app>.azurewebsites.net` from the app's URL: the admin API is at the host's root, not under /api."""
    parts = urlsplit(checked_api_url(api_url))
    return f"{parts.scheme}://{parts.netloc}"


# --- arguments ----------------------------------------------------------------------------------


def _required(value: str | None, option: str, env: str) -> str:
    if not value:
        raise CliError(f"{option} is needed (or set {env})", exit_code=EXIT_USAGE)
    return value
