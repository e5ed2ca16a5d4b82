"""Result records on stdout: a table for people, or JSON lines (each record as it is) for programs.

The table is printed row by row as records arrive (`results --follow` has no end to measure), so
its columns have fixed widths; a longer value stretches its row rather than being cut, except the
correlation id and the error message, which are shortened.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any, TextIO

from opscli.errors import counted

ERROR_MESSAGE_WIDTH = 60
CORRELATION_ID_WIDTH = 20
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # C0, DEL, C1, surrogates
OUTCOME_ORDER = ("cancelled", "already_terminal", "rejected", "failed")

# (heading, width); the last column takes the rest of the line.
COLUMNS = (
    ("job id", 38),  # ftjob- and 32 hex digits, as Azure makes them
    ("resource", 10),  # a name of AZURE_OPENAI_RESOURCES, or default; a longer one stretches its row
    ("outcome", 16),
    ("status", 6),
    ("job status", 10),
    ("retryable", 9),
    ("attempts", 8),
    ("correlation id", CORRELATION_ID_WIDTH),
    ("completed at", 24),
    ("error", 0),
)


class RecordPrinter:
    """Prints records one at a time and counts their outcomes for the closing summary."""

    def __init__(self, out: TextIO, *, json_lines: bool) -> None:
        self._out = out
        self._json_lines = json_lines
        self._header_printed = False
        self.outcomes: Counter[str] = Counter()

    def print(self, record: Mapping[str, Any]) -> None:
        self.outcomes[printable(str(record.get("outcome")))] += 1
        if self._json_lines:
            self._out.write(json_line(record, encoding=self._encoding) + "\n")
        else:
            if not self._header_printed:
                self._out.write(_line([heading for heading, _ in COLUMNS]) + "\n")
                self._out.write(_line(["-" * max(width, len(heading)) for heading, width in COLUMNS]) + "\n")
                self._header_printed = True
            row = _line(table_cells(record))
            self._out.write(row.encode(self._encoding, "backslashreplace").decode(self._encoding) + "\n")
        self._out.flush()

    @property
    def _encoding(self) -> str:
        return getattr(self._out, "encoding", None) or "utf-8"

    @property
    def count(self) -> int:
        return sum(self.outcomes.values())

    def summary(self, noun: str) -> str:
        """`3 records: 2 cancelled, 1 failed` (outcomes in the contract's order)."""
        known = [outcome for outcome in OUTCOME_ORDER if self.outcomes[outcome]]
        other = sorted(outcome for outcome in self.outcomes if outcome not in OUTCOME_ORDER)
        parts = [f"{self.outcomes[outcome]} {outcome}" for outcome in (*known, *other)]
        return counted(self.count, noun) + (": " + ", ".join(parts) if parts else "")


def json_line(record: Mapping[str, Any], *, encoding: str = "utf-8") -> str:
    """The record as one line of JSON: characters as they are where `encoding` holds them, else `\\u` escapes.

    A record may hold text that is no character (a lone surrogate from a `"\\ud800"` escape), which no
    encoding holds: escaped, it is printed as the same JSON value instead of ending the command.
    """
    text = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return json.dumps(record, separators=(",", ":"))
    return text


def table_cells(record: Mapping[str, Any]) -> list[str]:
    """One table row of a record, printable; `-` where the record has no value."""
    job = _object(record.get("job"))
    error = _object(record.get("error"))
    retryable = record.get("retryable")
    attempts = record.get("attempts")
    cells = [
        str(record.get("job_id") or "(none)"),
        str(record.get("resource") or "-"),
        str(record.get("outcome") or "-"),
        str(record.get("status_code") or "-"),
        str(job.get("status") or "-"),
        "-" if retryable is None else ("yes" if retryable else "no"),
        "-" if attempts is None else str(attempts),
        printable_line(str(record.get("correlation_id") or "-"), CORRELATION_ID_WIDTH),
        str(record.get("completed_at") or "-"),
        printable_line(str(error.get("message") or ""), ERROR_MESSAGE_WIDTH),
    ]
    return [printable(cell) for cell in cells]


def printable_line(text: str, width: int) -> str:
    """One printable line of at most `width` characters, `…` where it was cut."""
    text = printable(" ".join(text.split()))
    return text if len(text) <= width else text[: width - 1] + "…"


def printable(text: str) -> str:
    """`text` with control characters and lone surrogates as `\\x1b`-style escapes: records cannot drive a terminal."""
    return _UNPRINTABLE.sub(lambda found: found.group().encode("unicode_escape").decode("ascii"), text)


def _object(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _line(cells: list[str]) -> str:
    padded = [cell.ljust(max(width, len(heading))) for cell, (heading, width) in zip(cells[:-1], COLUMNS)]
    return "  ".join([*padded, cells[-1]]).rstrip()
