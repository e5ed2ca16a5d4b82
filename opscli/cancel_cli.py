"""`ftcancel cancel`: cancel jobs now through the function app's bulk route and print its records.

The records printed are the function's own, from `POST {url}/cancel` (see `function_client`), so
`cancelled` and `already_terminal` are told apart; the exit code says whether every job ended cancelled.
"""

from __future__ import annotations

import argparse
from typing import TextIO

from opscli.arguments import (
    EXIT_CODES,
    FORMATTER,
    FUNCTION_KEY_ENV,
    URL_ENV,
    common_options,
    function_app_from,
    function_app_options,
    job_id_options,
)
from opscli.errors import EXIT_NOT_CANCELLED, EXIT_OK, CliError
from opscli.job_ids import check_job_ids, read_job_ids, unsent_note
from opscli.output import RecordPrinter

EXAMPLES = (
    "ftcancel cancel --url https://myapp.azurewebsites.net/api --key \"$KEY\" ftjob-abc123 ftjob-def456 --wait 30",
)

EPILOG = f"""\
The ids are sent to POST {{url}}/cancel, 100 ids a request; with --resource NAME the request
names NAME. The function key goes in the x-functions-key header; keep it out of your
shell history with ${FUNCTION_KEY_ENV} (and ${URL_ENV} for --url).
The printed records are the function's own, as on the results queue: a job cancelled now is
`cancelled`, one that had already been cancelled or had finished is `already_terminal`.

examples:
  ftcancel cancel --url https://myapp.azurewebsites.net/api --key "$KEY" ftjob-0f4191f0c59a4256b7a797a3d9eed219
  export {URL_ENV}=https://myapp.azurewebsites.net/api {FUNCTION_KEY_ENV}=...
  ftcancel cancel --file ids.txt --wait 60 --correlation-id ticket-42 --json
  ftcancel cancel --resource sweden ftjob-0f4191f0c59a4256b7a797a3d9eed219

{EXIT_CODES}"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    cancel = commands.add_parser(
        "cancel", parents=[common_options(), job_id_options(), function_app_options()], formatter_class=FORMATTER,
        epilog=EPILOG, help="cancel now through the function's HTTP routes",
        description="Cancel jobs now through the function app's HTTP routes and print their records.",
    )
    cancel.add_argument("--json", action="store_true", help="one record a line")
    cancel.set_defaults(run=run_cancel)


def run_cancel(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    found = read_job_ids(args.ids, args.file)
    job_ids = check_job_ids(found, skip_invalid=args.skip_invalid, stderr=stderr)
    app = function_app_from(args)
    printer = RecordPrinter(stdout, json_lines=args.json)
    try:
        for records in app.cancel(
            job_ids, wait_seconds=args.wait, correlation_id=args.correlation_id, resource=args.resource
        ):
            for record in records:
                printer.print(record)
    except CliError as err:
        if printer.count:
            raise CliError(f"{err.message}; {unsent_note(found, job_ids, printer.count)}",
                           exit_code=err.exit_code) from err
        raise
    print(printer.summary("job"), file=stderr)
    not_cancelled = printer.outcomes["failed"] + printer.outcomes["rejected"]
    return EXIT_NOT_CANCELLED if not_cancelled else EXIT_OK
