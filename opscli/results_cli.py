"""`ftcancel results`: show the records on the results queue (peek, --delete, --follow).

Records are printed with `output` as they are read; a message that is not a record is reported
on stderr and left on the queue; a read that fails ends the command, saying how far it got.
"""

from __future__ import annotations

import argparse
from typing import TextIO

from opscli.arguments import (
    EXIT_CODES,
    FORMATTER,
    common_options,
    positive_int,
    queue_name,
    storage_from,
    storage_options,
)
from opscli.errors import EXIT_OK, PROG, CliError, counted
from opscli.output import RecordPrinter, printable_line
from opscli.queues import StorageQueue
from opscli.results import HOLD_SECONDS, ResultMessage, ResultsReader, peek_records
from shared.settings import CANCEL_RESULTS_QUEUE, SETTING_DEFAULTS

EXAMPLES = ("ftcancel results --account mystorage --follow",)

EPILOG = f"""\
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


def add_parser(commands: argparse._SubParsersAction) -> None:
    results = commands.add_parser(
        "results", parents=[common_options(), storage_options()], formatter_class=FORMATTER, epilog=EPILOG,
        help="show the result records", description="Show the result records on the results queue.",
    )
    results.add_argument("--queue", type=queue_name, default=SETTING_DEFAULTS[CANCEL_RESULTS_QUEUE],
                         help="the results queue (default: %(default)s)")
    results.add_argument("--follow", "-f", action="store_true", help="keep reading as records arrive, until Ctrl-C")
    results.add_argument("--delete", action="store_true", help="take the records off the queue once printed")
    results.add_argument("--json", action="store_true", help="one record a line, as the app wrote it")
    results.add_argument("--max", type=positive_int, metavar="N", help="stop after N records")
    results.set_defaults(run=run_results)


def run_results(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    queue = storage_from(args).queue(args.queue)
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
                  f"left on the queue: '{printable_line(message.content, 80)}'", file=self.stderr)
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
            left = f"; {unreadable} left on it" if self.unreadable else ""
            return f"{self.printer.summary('record')} ({where}){left}"
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
