"""ftcancel's printing of records another writer may have filled with hostile text, and its reading of ids files.

The queue cannot carry most control characters (Azurite answers 500, see tests/e2e/test_cli.py), but
a record's JSON can spell any of them as an escape; these tests hand such records to the printer.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opscli.errors import CliError
from opscli.job_ids import read_job_ids
from opscli.output import RecordPrinter, json_line, printable


def printed(record: dict[str, object], *, json_lines: bool, encoding: str = "utf-8") -> str:
    stream = io.TextIOWrapper(io.BytesIO(), encoding=encoding)
    RecordPrinter(stream, json_lines=json_lines).print(record)
    stream.flush()
    return stream.buffer.getvalue().decode(encoding)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b[2Jgone", "\\x1b[2Jgone"),  # a terminal escape would clear the screen
        ("\x9b31m", "\\x9b31m"),  # C1 control sequence introducer
        ("a\x7fb", "a\\x7fb"),
        ("half \ud800", "half \\ud800"),  # a lone surrogate is no character: no encoding holds it
        ("caf\u00e9 \uffff \U0001f600", "caf\u00e9 \uffff \U0001f600"),  # characters stay as they are
    ],
)
def test_a_table_row_shows_control_characters_and_lone_surrogates_as_escapes(text: str, shown: str):
    row = printed({"job_id": text, "outcome": "failed", "error": {"message": text}}, json_lines=False)

    assert printable(text) == shown
    assert row.splitlines()[2].startswith(shown)
    assert row.splitlines()[2].endswith(shown)


@given(st.dictionaries(st.text(max_size=5), st.text(), max_size=4))
def test_a_json_line_is_the_same_json_value_whatever_the_text_and_the_stream_encoding(record: dict[str, str]):
    for encoding in ("utf-8", "latin-1", "ascii"):
        line = printed(record, json_lines=True, encoding=encoding)

        assert json.loads(line) == record
        assert line.count("\n") == 1


def test_a_json_line_keeps_characters_the_stream_can_hold():
    assert json_line({"m": "caf\u00e9"}) == '{"m":"caf\u00e9"}'
    assert json_line({"m": "caf\u00e9"}, encoding="ascii") == '{"m":"caf\\u00e9"}'


@pytest.mark.parametrize("source", ["file", "stdin"])
@pytest.mark.parametrize(
    ("raw", "ids"),
    [
        (b"\xef\xbb\xbfftjob-a1\r\nftjob-b2\r\n", ["ftjob-a1", "ftjob-b2"]),  # Notepad, PowerShell 5
        (b"ftjob-a1\n# comment\n\n  ftjob-b2  \n", ["ftjob-a1", "ftjob-b2"]),
        (b"\xef\xbb\xbf\xef\xbb\xbfftjob-a1\n", None),  # a second BOM is part of the id: invalid
    ],
)
def test_ids_from_a_file_and_from_stdin_are_read_the_same_way(tmp_path: Path, source: str, raw: bytes,
                                                              ids: list[str] | None):
    (tmp_path / "ids.txt").write_bytes(raw)
    file = str(tmp_path / "ids.txt") if source == "file" else "-"

    found = read_job_ids([], file, stdin=io.BytesIO(raw))

    if ids is None:
        assert found.ids == [] and len(found.invalid) == 1
    else:
        assert found.ids == ids


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_ids_that_are_not_utf8_name_the_byte_counted_from_the_start_with_the_bom(tmp_path: Path, source: str):
    raw = b"\xef\xbb\xbfftjob-a1\n\xff\n"
    (tmp_path / "ids.txt").write_bytes(raw)
    file = str(tmp_path / "ids.txt") if source == "file" else "-"

    with pytest.raises(CliError) as refused:
        read_job_ids([], file, stdin=io.BytesIO(raw))

    assert refused.value.message == f"{'stdin' if source == 'stdin' else file}: not UTF-8 text (byte 12)"
    assert refused.value.exit_code == 2
