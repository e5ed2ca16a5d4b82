"""The text of a record as it goes on the results queue: strict JSON that a storage queue can carry and hold.

- Strict JSON: no `NaN` or `Infinity` (`allow_nan=False`); upstream bodies that hold them never get this far.
- Characters a queue can carry: a message travels in XML, whose characters exclude lone surrogates,
  U+FFFE and U+FFFF (XML 1.0, production `Char`). Azure refuses such a message; Azurite stores it and then fails
  every read of the queue. They are written as JSON `\\u` escapes instead, so the text still says what came in.
  (Control characters below U+0020 are escaped by `json.dumps` already.)
- At most `MAX_RECORD_BYTES` of UTF-8, the limit of a queue message. A record that would be larger keeps every
  field, but the bulky parts of the upstream body in `job` and `error` are cut, and it says `"truncated": true`.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_RECORD_BYTES = 64 * 1024
# Fields of the upstream body a cut record always keeps (each itself cut when huge).
KEPT_JOB_FIELDS = ("id", "object", "status", "model", "fine_tuned_model")
KEPT_ERROR_FIELDS = ("code", "message")
# Cutting goes from light to heavy: strings cut to this many characters, containers to a quarter as many items.
CUT_STRING_LENGTHS = (4096, 512, 64)
MAX_CUT_DEPTH = 6

_QUEUE_UNSAFE = re.compile("[\ud800-\udfff\ufffe\uffff]")


MAX_JSON_NESTING = 200  # far deeper than any job or message; well inside Python's recursion limit
_NESTING = re.compile(r'"(?:[^"\\]|\\.)*"|[\[{]|[\]}]')  # a string (skipped whole), an opening or a closing


def loads_bounded(text: str | bytes, **options: object) -> object:
    """`json.loads`, refusing (ValueError) JSON nested deeper than MAX_JSON_NESTING before it parses.

    The parser recurses once per level: near Python's recursion limit even a garbage collection that runs
    a finalizer fails, so depth is counted first, without recursion.
    """
    scanned = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    depth = 0
    for token in _NESTING.finditer(scanned):
        mark = token.group()
        if mark in "[{":
            depth += 1
            if depth > MAX_JSON_NESTING:
                raise ValueError(f"JSON nested deeper than {MAX_JSON_NESTING} levels")
        elif mark in "]}":
            depth -= 1
    return json.loads(text, **options)  # type: ignore[arg-type]


def strict_json(value: object, *, compact: bool = True) -> str:
    """JSON text with only characters a storage queue can carry; raises ValueError for NaN or Infinity."""
    separators = (",", ":") if compact else None
    text = json.dumps(value, separators=separators, ensure_ascii=False, allow_nan=False)
    return _QUEUE_UNSAFE.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


def fitted_record_text(shaped: dict[str, Any]) -> str:
    """The record's queue text: as it is when it fits in MAX_RECORD_BYTES, else with its bulky parts cut."""
    text = strict_json(shaped)
    if _size(text) <= MAX_RECORD_BYTES:
        return text
    bare = strict_json({**shaped, "job": None, "error": None, "truncated": True})
    budget = (MAX_RECORD_BYTES - _size(bare)) // 2  # for the job and for the error, each
    for length in CUT_STRING_LENGTHS:
        cut = {
            **shaped,
            "job": _cut_object(shaped.get("job"), KEPT_JOB_FIELDS, length, budget),
            "error": _cut_object(shaped.get("error"), KEPT_ERROR_FIELDS, length, budget),
            "truncated": True,
        }
        text = strict_json(cut)
        if _size(text) <= MAX_RECORD_BYTES:
            return text
    raise ValueError(f"a record's own fields exceed {MAX_RECORD_BYTES} bytes")  # ours are bounded: cannot happen


def _cut_object(value: Any, kept: tuple[str, ...], length: int, budget: int) -> Any:
    """The kept fields (cut), then every other field cut, in order, while the object stays within `budget`."""
    if not isinstance(value, dict):
        return _cut_value(value, length, 0)
    result = {name: _cut_value(value[name], length, 0) for name in kept if name in value}
    used = _size(strict_json(result))
    for name, item in value.items():
        if name in result:
            continue
        cut_item = _cut_value(item, length, 0)
        cost = _size(strict_json({name[:length]: cut_item})) - 1  # the pair and its comma
        if used + cost > budget:
            continue
        result[name[:length]] = cut_item
        used += cost
    return result


def _cut_value(value: Any, length: int, depth: int) -> Any:
    if isinstance(value, str):
        return value[:length]
    if isinstance(value, (dict, list)) and depth >= MAX_CUT_DEPTH:
        return None
    items = max(1, length // 4)
    if isinstance(value, dict):
        return {name[:length]: _cut_value(item, length, depth + 1) for name, item in list(value.items())[:items]}
    if isinstance(value, list):
        return [_cut_value(item, length, depth + 1) for item in value[:items]]
    return value


def _size(text: str) -> int:
    return len(text.encode("utf-8"))
