"""Checks on a record's text as the results queue holds it: strict JSON, within the size limit, queue-safe."""

from __future__ import annotations

import json

from shared.record_text import MAX_RECORD_BYTES

QUEUE_UNSAFE = ("\ufffe", "\uffff", *(chr(point) for point in (0xD800, 0xDBFF, 0xDC00, 0xDFFF)))


def strict_loads(text: str) -> object:
    """JSON as a strict parser (JavaScript's JSON.parse) reads it: no NaN, no Infinity."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def assert_queue_safe(text: str) -> None:
    assert len(text.encode("utf-8")) <= MAX_RECORD_BYTES
    assert not any(char in text for char in QUEUE_UNSAFE)
    strict_loads(text)
