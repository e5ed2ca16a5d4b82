"""`ftcancel`: the command line for the cancel function app, and the one place its commands are registered.

A command is a module with `add_parser(commands)`, which adds its subparser and sets its `run`
default (`run(args, stdout, stderr) -> exit code`), and `EXAMPLES`, its lines in `ftcancel --help`.
COMMANDS lists them in the order help shows them. `main` runs the chosen command and turns every
failure into one line on stderr and an exit code (see `errors`).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence

from opscli import cancel_cli, enqueue_cli, guard_cli, results_cli
from opscli.arguments import EXIT_CODES, FORMATTER
from opscli.errors import EXIT_INTERRUPTED, EXIT_OK, PROG, CliError
from opscli.queues import CONNECTION_STRING_ENV

COMMANDS = (enqueue_cli, results_cli, cancel_cli, guard_cli)

MAIN_EPILOG = """\
examples:
{examples}

Storage: --account NAME signs in with Entra ID (az login, azd, VS Code, a managed identity...);
--connection-string (or ${connection_string_env}) uses a key or SAS; UseDevelopmentStorage=true is Azurite.
Run `ftcancel COMMAND --help` for each command's options.

{exit_codes}"""


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


def build_parser() -> argparse.ArgumentParser:
    examples = "\n".join(f"  {line}" for command in COMMANDS for line in command.EXAMPLES)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Cancel Azure OpenAI fine-tuning jobs through the cancel function app.",
        epilog=MAIN_EPILOG.format(examples=examples, connection_string_env=CONNECTION_STRING_ENV,
                                  exit_codes=EXIT_CODES),
        formatter_class=FORMATTER,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser
