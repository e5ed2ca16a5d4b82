"""The options ftcancel's commands share, as argparse parent parsers, and the checks of their values.

A command module builds its subparser from these parents (`common_options()`, `storage_options()`,
`job_id_options()`, `function_app_options()`), then turns the parsed options into the objects it calls
with `storage_from(args)` and `function_app_from(args)`. Values are checked with the app's own rules
(`shared.records`, `shared.settings`), so a value the app would refuse stops the command (exit 2).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable

from opscli.errors import EXIT_USAGE, CliError
from opscli.function_client import FunctionApp
from opscli.queues import CONNECTION_STRING_ENV, StorageAccount, storage_account
from shared.records import InvalidRequest, validate_correlation_id, validate_wait_seconds
from shared.settings import RESOURCE_NAME

FORMATTER = argparse.RawDescriptionHelpFormatter
URL_ENV = "FTCANCEL_URL"
FUNCTION_KEY_ENV = "FTCANCEL_FUNCTION_KEY"
_QUEUE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")  # the storage service's rules
_ACCOUNT_NAME = re.compile(r"[a-z0-9]{3,24}")

EXIT_CODES = """\
exit codes:
  0  done (every job cancelled or already finished)
  1  the storage account or the function app could not be used (the message says why)
  2  bad arguments or invalid job ids: nothing was sent
  3  cancel: the function answered, and at least one job failed or was rejected"""


def common_options() -> argparse.ArgumentParser:
    """What every command takes: --debug."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="print the traceback behind an error")
    return common


def storage_options() -> argparse.ArgumentParser:
    """Which storage account: --account (Entra ID, with --queue-url) or --connection-string."""
    storage = argparse.ArgumentParser(add_help=False)
    where = storage.add_argument_group("storage account (one of)")
    where.add_argument("--account", metavar="NAME", type=account_name,
                       help="storage account name; signs in with Entra ID")
    where.add_argument("--connection-string", metavar="STRING",
                       help=f"a storage connection string (default: ${CONNECTION_STRING_ENV}); "
                            "UseDevelopmentStorage=true for Azurite")
    where.add_argument("--queue-url", metavar="URL",
                       help="queue service URL for Entra sign-in instead of https://NAME.queue.core.windows.net "
                            "(other clouds, private endpoints)")
    return storage


def job_id_options() -> argparse.ArgumentParser:
    """The job ids and what goes with each request: --file, --skip-invalid, --correlation-id, --wait, --resource."""
    ids = argparse.ArgumentParser(add_help=False)
    ids.add_argument("ids", nargs="*", metavar="ID", help="fine-tuning job ids (ftjob-...)")
    ids.add_argument("--file", metavar="FILE", help="more ids, one a line (# comments allowed); - reads stdin")
    ids.add_argument("--skip-invalid", action="store_true", help="send the valid ids even when some are invalid")
    ids.add_argument("--correlation-id", metavar="TEXT", type=checked(validate_correlation_id),
                     help="copied into every result record (at most 128 printable ASCII characters)")
    ids.add_argument("--wait", metavar="SECONDS", type=checked(validate_command_line_wait), default=0.0,
                     help="after the cancel, wait up to this long (0-120) for each job to reach a final state")
    ids.add_argument("--resource", metavar="NAME", type=resource_name,
                     help="the Azure OpenAI resource of the jobs, a name of the app's AZURE_OPENAI_RESOURCES "
                          "(default: the app's default resource, AZURE_OPENAI_ENDPOINT)")
    return ids


def function_app_options() -> argparse.ArgumentParser:
    """Which function app, and its key: --url and --key (defaults from the environment)."""
    app = argparse.ArgumentParser(add_help=False)
    app.add_argument("--url", default=os.environ.get(URL_ENV),
                     help=f"the function app's URL with /api, like https://<app>.azurewebsites.net/api "
                          f"(default: ${URL_ENV})")
    app.add_argument("--key", default=os.environ.get(FUNCTION_KEY_ENV),
                     help=f"a function key of the app (default: ${FUNCTION_KEY_ENV})")
    return app


def storage_from(args: argparse.Namespace) -> StorageAccount:
    """The storage account that `storage_options()` named."""
    if args.connection_string and args.queue_url:
        raise CliError("--queue-url goes with Entra sign-in (--account), not with --connection-string",
                       exit_code=EXIT_USAGE)
    return storage_account(account=args.account, queue_url=args.queue_url, connection_string=args.connection_string)


def function_app_from(args: argparse.Namespace) -> FunctionApp:
    """The function app that `function_app_options()` named; exit 2 when its URL or key is missing."""
    if not args.url:
        raise CliError(f"which function app? pass --url https://<app>.azurewebsites.net/api or set {URL_ENV}",
                       exit_code=EXIT_USAGE)
    if not args.key:
        raise CliError(f"no function key: pass --key or set {FUNCTION_KEY_ENV}", exit_code=EXIT_USAGE)
    return FunctionApp(args.url, args.key)


def validate_command_line_wait(text: str) -> float:
    """--wait is text, like a query string: a number in JSON's syntax."""
    return validate_wait_seconds(text, from_query=True)


def checked(validate: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse type from one of shared.records' validators: the app's own rule, the app's own message."""

    def convert(text: str) -> object:
        try:
            return validate(text)
        except InvalidRequest as err:
            raise argparse.ArgumentTypeError(err.message) from err

    return convert


def resource_name(text: str) -> str:
    """--resource: the app's own rule for a resource name (whether the app knows it, only the app can say)."""
    if not RESOURCE_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a resource name (1 to 40 lower-case letters, digits and '-', "
            "as in AZURE_OPENAI_RESOURCES)"
        )
    return text


def queue_name(text: str) -> str:
    if not _QUEUE_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a queue name (3 to 63 lowercase letters, digits and single hyphens)"
        )
    return text


def account_name(text: str) -> str:
    if not _ACCOUNT_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a storage account name (3 to 24 lowercase letters and digits)"
        )
    return text


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive whole number")
    return value
