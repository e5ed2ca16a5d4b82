"""The job ids a command is given, from its arguments and an ids file, checked before anything is sent.

An id is checked with the app's own rule (`shared.records`, CONTRACT section 2), so an id the
app would reject is caught here, with the line it came from. A repeated id is kept once.
"""

from __future__ import annotations

import codecs
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

from opscli.errors import EXIT_USAGE, PROG, CliError, counted
from shared.records import InvalidRequest, validate_job_id

STDIN_NAME = "-"
STDIN_LABEL = "stdin"


@dataclass(frozen=True)
class Problem:
    """One id that will not be sent as given: where it came from and why."""

    where: str  # "ids.txt:17" or "argument 2"
    message: str


@dataclass
class JobIds:
    """Valid ids in first-seen order, and the invalid and repeated entries found on the way."""

    ids: list[str] = field(default_factory=list)
    invalid: list[Problem] = field(default_factory=list)
    duplicates: list[Problem] = field(default_factory=list)
    _first_seen: dict[str, str] = field(default_factory=dict, repr=False)

    def add(self, text: str, where: str) -> None:
        try:
            job_id = validate_job_id(text)
        except InvalidRequest as err:
            self.invalid.append(Problem(where, err.message))
            return
        first = self._first_seen.get(job_id)
        if first is not None:
            self.duplicates.append(Problem(where, f"{job_id} repeats {first}; it is sent once"))
            return
        self._first_seen[job_id] = where
        self.ids.append(job_id)

    def source(self, job_id: str) -> str:
        """Where a valid id was first given: `ids.txt:17` or `argument 2`."""
        return self._first_seen[job_id]


def read_job_ids(arguments: list[str], file: str | None, *, stdin: BinaryIO | None = None) -> JobIds:
    """The ids of the command line, then those of the file (one a line; blank lines and `#` comments skipped)."""
    found = JobIds()
    for number, text in enumerate(arguments, start=1):
        found.add(text.strip(), f"argument {number}")
    if file is not None:
        name = STDIN_LABEL if file == STDIN_NAME else file
        for number, line in enumerate(_read_lines(file, name, stdin), start=1):
            text = line.strip()
            if text and not text.startswith("#"):
                found.add(text, f"{name}:{number}")
    if not found.ids and not found.invalid:
        raise CliError("no job ids given: pass them as arguments or with --file", exit_code=EXIT_USAGE)
    return found


def _read_lines(file: str, name: str, stdin: BinaryIO | None) -> list[str]:
    """The lines of the ids file or of stdin, read the same way: bytes, one leading UTF-8 BOM dropped, UTF-8."""
    try:
        raw = (stdin or sys.stdin.buffer).read() if file == STDIN_NAME else Path(file).read_bytes()
    except FileNotFoundError:
        raise CliError(f"{name}: no such file", exit_code=EXIT_USAGE) from None
    except OSError as err:
        raise CliError(f"{name}: cannot be read ({err.strerror})", exit_code=EXIT_USAGE) from err
    return _decoded(raw, name=name).splitlines()


def _decoded(raw: bytes, *, name: str) -> str:
    """UTF-8 text without a leading BOM (Notepad and PowerShell 5 write one); CliError naming the first bad byte."""
    body = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as err:
        byte = err.start + len(raw) - len(body)
        raise CliError(f"{name}: not UTF-8 text (byte {byte})", exit_code=EXIT_USAGE) from err


def check_job_ids(found: JobIds, *, skip_invalid: bool, stderr: TextIO) -> list[str]:
    """Report every problem on stderr before anything is sent; stop (exit 2) on invalid ids unless skipping them."""
    for problem in (*found.invalid, *found.duplicates):
        print(f"{PROG}: {problem.where}: {problem.message}", file=stderr)
    if found.invalid and not skip_invalid:
        valid = f"the {counted(len(found.ids), 'valid one')}"
        raise CliError(
            f"{counted(len(found.invalid), 'invalid job id')}: nothing was sent "
            f"(fix {'them' if len(found.invalid) != 1 else 'it'}, or pass --skip-invalid to send {valid})",
            exit_code=EXIT_USAGE,
        )
    if not found.ids:
        raise CliError("no valid job ids: nothing was sent", exit_code=EXIT_USAGE)
    return found.ids


def unsent_note(found: JobIds, job_ids: list[str], sent: int) -> str:
    """What a command that stopped part-way had not sent: `120 of 200 sent; not sent: ftjob-… (ids.txt:123) and …`."""
    if sent >= len(job_ids):
        return f"all {sent} were sent"
    if sent == 0:
        return "nothing was sent"
    first = job_ids[sent]
    rest = len(job_ids) - sent - 1
    after = f" and the {rest} after it" if rest else ""
    return f"{sent} of {len(job_ids)} sent; not sent: {first} ({found.source(first)}){after}"
