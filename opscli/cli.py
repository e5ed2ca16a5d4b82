"""`ftcancel`: the command line for the cancel function app (enqueue, results, cancel).

Each command reads its arguments, checks the job ids before anything is sent, makes its calls
through `queues`/`results` or `function_client`, and prints records with `output`. Every failure
ends as one line on stderr and an exit code (see `errors`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import TextIO

from opscli.errors import EXIT_INTERRUPTED, EXIT_NOT_CANCELLED, EXIT_OK, EXIT_USAGE, CliError, counted
from opscli.function_client import FunctionApp
from opscli.guard_cli import add_guard_commands
from opscli.job_ids import JobIds, check_job_ids, read_job_ids
from opscli.output import RecordPrinter, shorten
from opscli.progress import Progress
from opscli.queues import CONNECTION_STRING_ENV, StorageAccount, StorageQueue, storage_account
from opscli.results import HOLD_SECONDS, ResultMessage, ResultsReader, peek_records
from shared.records import InvalidRequest, validate_correlation_id, validate_wait_seconds
from shared.settings import CANCEL_REQUESTS_QUEUE, CANCEL_RESULTS_QUEUE, RESOURCE_NAME, SETTING_DEFAULTS

PROG = "ftcancel"
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

MAIN_EPILOG = f"""\
examples:
  ftcancel enqueue --account mystorage ftjob-0f4191f0c59a4256b7a797a3d9eed219
  ftcancel enqueue --account mystorage --file ids.txt --correlation-id ticket-42
  ftcancel enqueue --account mystorage --resource sweden ftjob-0f4191f0c59a4256b7a797a3d9eed219
  ftcancel results --account mystorage --follow
  ftcancel cancel --url https://myapp.azurewebsites.net/api --key "$KEY" ftjob-abc123 ftjob-def456 --wait 30

Storage: --account NAME signs in with Entra ID (az login, azd, VS Code, a managed identity...);
--connection-string (or ${CONNECTION_STRING_ENV}) uses a key or SAS; UseDevelopmentStorage=true is Azurite.
Run `ftcancel COMMAND --help` for each command's options.

{EXIT_CODES}"""

ENQUEUE_EPILOG = f"""\
Each id becomes one message: the bare id, or {{"job_id": ..., "resource": ..., "correlation_id": ...,
"wait_seconds": ...}} when --resource, --correlation-id or --wait is given. Every id is checked
first: invalid and repeated ones are listed (with their line in --file) before anything is sent;
a repeated id is sent once; an invalid one stops the command (exit 2, nothing sent) unless
--skip-invalid.

examples:
  ftcancel enqueue --account mystorage ftjob-0f4191f0c59a4256b7a797a3d9eed219
  ftcancel enqueue --account mystorage --file ids.txt --skip-invalid
  az ... --query '[].id' -o tsv | ftcancel enqueue --account mystorage --file -
  ftcancel enqueue --connection-string UseDevelopmentStorage=true ftjob-local1 --wait 30
  ftcancel enqueue --account mystorage --resource sweden --file sweden-ids.txt

{EXIT_CODES}"""

RESULTS_EPILOG = f"""\
By default the command peeks: it shows the first records on the queue (at most 32) and leaves them.
--delete takes records off the queue (each is deleted once printed) until it is empty.
--follow keeps reading as records arrive until Ctrl-C (or --max). Without --delete it leaves
the records on the queue: it holds each one it has shown (invisible to other readers for up to
{HOLD_SECONDS} s) and puts them all back when it stops. With --delete it takes them off.
Roles with --account: peeking needs Storage Queue Data Reader; --delete needs Storage Queue Data
Message Processor; --follow without --delete also needs to put records back (Storage Queue Data
Contributor), else they reappear by themselves after {HOLD_SECONDS} s.
A message that is not a record is reported on stderr as unreadable and left on the queue. A read
that fails ends the command (exit 1), saying how many records were read before it.

examples:
  ftcancel results --account mystorage
  ftcancel results --account mystorage --follow
  ftcancel results --account mystorage --follow --max 200 --json > records.jsonl
  ftcancel results --account mystorage --delete --json | jq 'select(.outcome != "cancelled")'

{EXIT_CODES}"""

CANCEL_EPILOG = f"""\
One id is sent to POST {{url}}/openai/fine_tuning/jobs/{{id}}/cancel, several to POST {{url}}/cancel
(100 ids a request). With --resource NAME, one id goes to
POST {{url}}/resources/NAME/openai/fine_tuning/jobs/{{id}}/cancel and several carry "resource": NAME.
The function key goes in the x-functions-key header; keep it out of your
shell history with ${FUNCTION_KEY_ENV} (and ${URL_ENV} for --url).
For one id the printed record is built from the HTTP answer (no attempts or times: the full
record is on the results queue); for several it is the function's own record.

examples:
  ftcancel cancel --url https://myapp.azurewebsites.net/api --key "$KEY" ftjob-0f4191f0c59a4256b7a797a3d9eed219
  export {URL_ENV}=https://myapp.azurewebsites.net/api {FUNCTION_KEY_ENV}=...
  ftcancel cancel --file ids.txt --wait 60 --correlation-id ticket-42 --json
  ftcancel cancel --resource sweden ftjob-0f4191f0c59a4256b7a797a3d9eed219

{EXIT_CODES}"""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.debug:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    else:
        # The SDKs log failures at WARNING as well as raising them: the error line says it once.
        logging.getLogger("azure").addHandler(logging.NullHandler())
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` and `timeout` stop ftcancel as Ctrl-C does
    try:
        return args.run(args, sys.stdout, sys.stderr)
    except CliError as err:
        _report(args, err, err.message)
        return err.exit_code
    except KeyboardInterrupt as err:
        _report(args, err, "interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): stop quietly, and keep Python from failing at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as err:  # noqa: BLE001 - a bug: one line, the traceback with --debug
        _report(args, err, f"unexpected error: {type(err).__name__}: {err} (run with --debug for the traceback)")
        return 1


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _report(args: argparse.Namespace, err: BaseException, message: str) -> None:
    if args.debug:
        traceback.print_exception(err, file=sys.stderr)
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


# --- enqueue ------------------------------------------------------------------------------------


def run_enqueue(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    found = read_job_ids(args.ids, args.file)
    job_ids = check_job_ids(found, skip_invalid=args.skip_invalid, stderr=stderr)
    queue = _storage(args).queue(args.queue)
    progress = Progress.for_stream(len(job_ids), label=f"enqueue {queue.name}", stream=stderr, forced=args.progress)
    sent = 0
    try:
        for job_id in job_ids:
            queue.send(
                request_message(
                    job_id, correlation_id=args.correlation_id, wait_seconds=args.wait, resource=args.resource
                )
            )
            sent += 1
            progress.advance()
    except (CliError, KeyboardInterrupt) as err:
        progress.finish()
        if isinstance(err, KeyboardInterrupt):
            raise CliError(f"interrupted; {_unsent(found, job_ids, sent)}", exit_code=EXIT_INTERRUPTED) from err
        raise CliError(f"{err.message}; {_unsent(found, job_ids, sent)}", exit_code=err.exit_code) from err
    progress.finish()
    notes = []
    if found.duplicates:
        notes.append(f"{counted(len(found.duplicates), 'repeated id')} sent once")
    if found.invalid:
        notes.append(f"{counted(len(found.invalid), 'invalid id')} skipped")
    print(
        f"enqueued {counted(sent, 'cancel request')} on queue '{queue.name}' of storage account "
        f"'{queue.account.name}'" + (f" ({', '.join(notes)})" if notes else ""),
        file=stdout,
    )
    return EXIT_OK


def request_message(
    job_id: str, *, correlation_id: str | None, wait_seconds: float, resource: str | None = None
) -> str:
    """A message of the request queue: the bare id, or the JSON object when there is more to say (CONTRACT 4, 8)."""
    if correlation_id is None and not wait_seconds and resource is None:
        return job_id
    message: dict[str, object] = {"job_id": job_id}
    if resource is not None:
        message["resource"] = resource
    if correlation_id is not None:
        message["correlation_id"] = correlation_id
    if wait_seconds:
        message["wait_seconds"] = int(wait_seconds) if float(wait_seconds).is_integer() else wait_seconds
    return json.dumps(message, separators=(",", ":"))


def _unsent(found: JobIds, job_ids: list[str], sent: int) -> str:
    if sent >= len(job_ids):
        return f"all {sent} were sent"
    if sent == 0:
        return "nothing was sent"
    first = job_ids[sent]
    rest = len(job_ids) - sent - 1
    after = f" and the {rest} after it" if rest else ""
    return f"{sent} of {len(job_ids)} sent; not sent: {first} ({found.source(first)}){after}"


# --- results ------------------------------------------------------------------------------------


def run_results(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    queue = _storage(args).queue(args.queue)
    shown = ShownRecords(RecordPrinter(stdout, json_lines=args.json), queue.name, stderr)
    try:
        if not args.follow and not args.delete:
            for message in peek_records(queue, args.max):
                shown.show(message)
            where = "peeked, left on the queue"
            if shown.messages == 32 and (args.max is None or args.max > 32):
                where += "; peek shows at most the first 32: --follow shows them all, --delete takes them off"
        else:
            where = "taken off the queue" if args.delete else "left on the queue"
            _receive_records(args, queue, shown)
    except CliError as err:
        if shown.messages:  # what was printed stays true: say how far the command got
            raise CliError(f"{shown.read_so_far(where)}, then {err.message}", exit_code=err.exit_code) from err
        raise
    print(shown.closing(where, hidden=None if shown.messages else _hidden_messages(queue)), file=stderr)
    return EXIT_OK


def _receive_records(args: argparse.Namespace, queue: StorageQueue, shown: ShownRecords) -> None:
    with ResultsReader(queue, delete=args.delete, follow=args.follow, limit=args.max) as reader:
        try:
            for message in reader.messages():
                if shown.show(message) and not reader.settle(message):
                    print(f"{PROG}: record {message.message_id} was printed but not deleted: its hold ran out "
                          "and someone else received it", file=shown.stderr)
        except KeyboardInterrupt:
            if not args.follow:
                raise
            print(file=shown.stderr)  # Ctrl-C is how --follow ends; the terminal shows ^C on the last line
    if reader.not_put_back:
        print(f"{PROG}: {reader.not_put_back} held record(s) could not be put back (your role cannot update "
              f"messages): they reappear on '{queue.name}' by themselves within {HOLD_SECONDS} s", file=shown.stderr)


class ShownRecords:
    """What `results` has shown: records through the printer, unreadable messages as one stderr line each."""

    def __init__(self, printer: RecordPrinter, queue_name: str, stderr: TextIO) -> None:
        self.printer = printer
        self.queue_name = queue_name
        self.stderr = stderr
        self.unreadable = 0

    @property
    def messages(self) -> int:
        return self.printer.count + self.unreadable

    def show(self, message: ResultMessage) -> bool:
        """Print a record, or report an unreadable message (left on the queue); True for a record."""
        if message.record is None:
            self.unreadable += 1
            print(f"{PROG}: message {message.message_id} on '{self.queue_name}' is unreadable ({message.problem}); "
                  f"left on the queue: '{shorten(message.content, 80)}'", file=self.stderr)
            return False
        self.printer.print(message.record)
        return True

    def read_so_far(self, where: str) -> str:
        """`read 40 records (taken off the queue)`, with the unreadable messages when there were some."""
        unreadable = f" and {counted(self.unreadable, 'unreadable message')}" if self.unreadable else ""
        return f"read {counted(self.printer.count, 'record')}{unreadable} ({where})"

    def closing(self, where: str, *, hidden: int | str | None) -> str:
        """The last line on stderr: what was shown, and, when nothing was, whether the queue is really empty."""
        if self.messages:
            unreadable = counted(self.unreadable, "unreadable message")
            return f"{self.printer.summary('record')} ({where})" + (f"; {unreadable} left on it" if self.unreadable else "")
        if not hidden:
            return f"no records on '{self.queue_name}'"
        if isinstance(hidden, str):
            return f"no visible records on '{self.queue_name}' (could not count hidden ones: {hidden})"
        return (f"no visible records on '{self.queue_name}', but it holds {counted(hidden, 'hidden message')}: "
                f"received by another reader or by a read that failed; they reappear when that hold ends "
                f"(ftcancel holds for at most {HOLD_SECONDS} s)")


def _hidden_messages(queue: StorageQueue) -> int | str:
    """How many messages the queue holds that a read could not see; the reason when it cannot say."""
    try:
        return queue.message_count()
    except CliError as err:
        return err.message


# --- cancel -------------------------------------------------------------------------------------


def run_cancel(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    found = read_job_ids(args.ids, args.file)
    job_ids = check_job_ids(found, skip_invalid=args.skip_invalid, stderr=stderr)
    if not args.url:
        raise CliError(f"which function app? pass --url https://<app>.azurewebsites.net/api or set {URL_ENV}",
                       exit_code=EXIT_USAGE)
    if not args.key:
        raise CliError(f"no function key: pass --key or set {FUNCTION_KEY_ENV}", exit_code=EXIT_USAGE)
    app = FunctionApp(args.url, args.key)
    printer = RecordPrinter(stdout, json_lines=args.json)
    try:
        if len(job_ids) == 1:
            printer.print(
                app.cancel_one(
                    job_ids[0], wait_seconds=args.wait, correlation_id=args.correlation_id, resource=args.resource
                )
            )
        else:
            for records in app.cancel_many(
                job_ids, wait_seconds=args.wait, correlation_id=args.correlation_id, resource=args.resource
            ):
                for record in records:
                    printer.print(record)
    except CliError as err:
        if printer.count:
            raise CliError(f"{err.message}; {_unsent(found, job_ids, printer.count)}", exit_code=err.exit_code) from err
        raise
    print(printer.summary("job"), file=stderr)
    not_cancelled = printer.outcomes["failed"] + printer.outcomes["rejected"]
    return EXIT_NOT_CANCELLED if not_cancelled else EXIT_OK


# --- arguments ----------------------------------------------------------------------------------


def _storage(args: argparse.Namespace) -> StorageAccount:
    if args.connection_string and args.queue_url:
        raise CliError("--queue-url goes with Entra sign-in (--account), not with --connection-string",
                       exit_code=EXIT_USAGE)
    return storage_account(account=args.account, queue_url=args.queue_url, connection_string=args.connection_string)


def validate_command_line_wait(text: str) -> float:
    """--wait is text, like a query string: a number in JSON's syntax."""
    return validate_wait_seconds(text, from_query=True)


def _checked(validate: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse type from one of shared.records' validators: the app's own rule, the app's own message."""

    def convert(text: str) -> object:
        try:
            return validate(text)
        except InvalidRequest as err:
            raise argparse.ArgumentTypeError(err.message) from err

    return convert


def _resource_name(text: str) -> str:
    """--resource: the app's own rule for a resource name (whether the app knows it, only the app can say)."""
    if not RESOURCE_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a resource name (1 to 40 lower-case letters, digits and '-', "
            "as in AZURE_OPENAI_RESOURCES)"
        )
    return text


def _queue_name(text: str) -> str:
    if not _QUEUE_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a queue name (3 to 63 lowercase letters, digits and single hyphens)"
        )
    return text


def _account_name(text: str) -> str:
    if not _ACCOUNT_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"'{text}' is not a storage account name (3 to 24 lowercase letters and digits)")
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive whole number")
    return value


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="print the traceback behind an error")

    storage = argparse.ArgumentParser(add_help=False)
    where = storage.add_argument_group("storage account (one of)")
    where.add_argument("--account", metavar="NAME", type=_account_name, help="storage account name; signs in with Entra ID")
    where.add_argument("--connection-string", metavar="STRING",
                       help=f"a storage connection string (default: ${CONNECTION_STRING_ENV}); "
                            "UseDevelopmentStorage=true for Azurite")
    where.add_argument("--queue-url", metavar="URL",
                       help="queue service URL for Entra sign-in instead of https://NAME.queue.core.windows.net "
                            "(other clouds, private endpoints)")

    ids = argparse.ArgumentParser(add_help=False)
    ids.add_argument("ids", nargs="*", metavar="ID", help="fine-tuning job ids (ftjob-...)")
    ids.add_argument("--file", metavar="FILE", help="more ids, one a line (# comments allowed); - reads stdin")
    ids.add_argument("--skip-invalid", action="store_true", help="send the valid ids even when some are invalid")
    ids.add_argument("--correlation-id", metavar="TEXT", type=_checked(validate_correlation_id),
                     help="copied into every result record (at most 128 printable ASCII characters)")
    ids.add_argument("--wait", metavar="SECONDS", type=_checked(validate_command_line_wait), default=0.0,
                     help="after the cancel, wait up to this long (0-120) for each job to reach a final state")
    ids.add_argument("--resource", metavar="NAME", type=_resource_name,
                     help="the Azure OpenAI resource of the jobs, a name of the app's AZURE_OPENAI_RESOURCES "
                          "(default: the app's default resource, AZURE_OPENAI_ENDPOINT)")

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Cancel Azure OpenAI fine-tuning jobs through the cancel function app.",
        epilog=MAIN_EPILOG,
        formatter_class=formatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    enqueue = commands.add_parser(
        "enqueue", parents=[common, ids, storage], formatter_class=formatter, epilog=ENQUEUE_EPILOG,
        help="put cancel requests on the request queue", description="Put cancel requests on the request queue; "
        "the app's queue trigger cancels each job and writes its record to the results queue.",
    )
    enqueue.add_argument("--queue", type=_queue_name, default=SETTING_DEFAULTS[CANCEL_REQUESTS_QUEUE],
                         help="the request queue (default: %(default)s)")
    enqueue.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                         help="a progress bar on stderr (default: on a terminal, for more than 50 ids)")
    enqueue.set_defaults(run=run_enqueue)

    results = commands.add_parser(
        "results", parents=[common, storage], formatter_class=formatter, epilog=RESULTS_EPILOG,
        help="show the result records", description="Show the result records on the results queue.",
    )
    results.add_argument("--queue", type=_queue_name, default=SETTING_DEFAULTS[CANCEL_RESULTS_QUEUE],
                         help="the results queue (default: %(default)s)")
    results.add_argument("--follow", "-f", action="store_true", help="keep reading as records arrive, until Ctrl-C")
    results.add_argument("--delete", action="store_true", help="take the records off the queue once printed")
    results.add_argument("--json", action="store_true", help="one record a line, as the app wrote it")
    results.add_argument("--max", type=_positive_int, metavar="N", help="stop after N records")
    results.set_defaults(run=run_results)

    cancel = commands.add_parser(
        "cancel", parents=[common, ids], formatter_class=formatter, epilog=CANCEL_EPILOG,
        help="cancel now through the function's HTTP routes",
        description="Cancel jobs now through the function app's HTTP routes and print their records.",
    )
    cancel.add_argument("--url", default=os.environ.get(URL_ENV),
                        help=f"the function app's URL with /api, like https://<app>.azurewebsites.net/api "
                             f"(default: ${URL_ENV})")
    cancel.add_argument("--key", default=os.environ.get(FUNCTION_KEY_ENV),
                        help=f"a function key of the app (default: ${FUNCTION_KEY_ENV})")
    cancel.add_argument("--json", action="store_true", help="one record a line")
    cancel.set_defaults(run=run_cancel)
    add_guard_commands(commands, common=common, formatter=formatter)
    return parser
