"""`ftcancel enqueue`: one cancel request a job id on the request queue (CONTRACT sections 4 and 8).

The ids are checked before anything is sent; the messages are sent one after the other, and a
command that stops part-way says which id is the first one not sent.
"""

from __future__ import annotations

import argparse
import json
from typing import TextIO

from opscli.arguments import (
    EXIT_CODES,
    FORMATTER,
    common_options,
    job_id_options,
    queue_name,
    storage_from,
    storage_options,
)
from opscli.errors import EXIT_INTERRUPTED, EXIT_OK, CliError, counted
from opscli.job_ids import check_job_ids, read_job_ids, unsent_note
from opscli.progress import Progress
from shared.settings import CANCEL_REQUESTS_QUEUE, SETTING_DEFAULTS

EXAMPLES = (
    "ftcancel enqueue --account mystorage ftjob-0f4191f0c59a4256b7a797a3d9eed219",
    "ftcancel enqueue --account mystorage --file ids.txt --correlation-id ticket-42",
    "ftcancel enqueue --account mystorage --resource sweden ftjob-0f4191f0c59a4256b7a797a3d9eed219",
)

EPILOG = f"""\
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


def add_parser(commands: argparse._SubParsersAction) -> None:
    enqueue = commands.add_parser(
        "enqueue", parents=[common_options(), job_id_options(), storage_options()], formatter_class=FORMATTER,
        epilog=EPILOG, help="put cancel requests on the request queue", description="Put cancel requests on the "
        "request queue; the app's queue trigger cancels each job and writes its record to the results queue.",
    )
    enqueue.add_argument("--queue", type=queue_name, default=SETTING_DEFAULTS[CANCEL_REQUESTS_QUEUE],
                         help="the request queue (default: %(default)s)")
    enqueue.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                         help="a progress bar on stderr (default: on a terminal, for more than 50 ids)")
    enqueue.set_defaults(run=run_enqueue)


def run_enqueue(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    found = read_job_ids(args.ids, args.file)
    job_ids = check_job_ids(found, skip_invalid=args.skip_invalid, stderr=stderr)
    queue = storage_from(args).queue(args.queue)
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
            raise CliError(f"interrupted; {unsent_note(found, job_ids, sent)}", exit_code=EXIT_INTERRUPTED) from err
        raise CliError(f"{err.message}; {unsent_note(found, job_ids, sent)}", exit_code=err.exit_code) from err
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
