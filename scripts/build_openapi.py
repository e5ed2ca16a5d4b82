"""Writes the upstream half of openapi.yaml: the Azure OpenAI definitions our API returns.

The upstream spec (Swagger 2.0) keeps `FineTuningJob` and `ErrorResponse`, and everything they
reference, under `definitions`; OpenAPI 3.1 keeps schemas under `components.schemas`. The
conversion only moves them and rewrites their `$ref`s, so they cannot drift from the spec.
Everything in openapi.yaml above the marker line is written by hand and kept as it is.

    python -m scripts.build_openapi           # rewrite openapi.yaml
    python -m scripts.build_openapi --check   # exit 1 if openapi.yaml is not what the spec gives
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from devstack.spec import SPEC_PATH, load_spec

OPENAPI_PATH = Path(__file__).resolve().parents[1] / "openapi.yaml"
UPSTREAM_ROOTS = ("FineTuningJob", "ErrorResponse")  # what our responses carry; their references come along
MARKER = "    # --- Generated from the upstream spec by scripts/build_openapi.py: do not edit below. ---\n"
SWAGGER_REF = "#/definitions/"
OPENAPI_REF = "#/components/schemas/"


def upstream_schema_names(definitions: dict[str, Any], roots: tuple[str, ...] = UPSTREAM_ROOTS) -> list[str]:
    """The roots and every definition they reference, directly or not, in the spec's order."""
    wanted: set[str] = set()
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name not in wanted:
            wanted.add(name)
            pending.extend(_referenced_names(definitions[name]))
    return [name for name in definitions if name in wanted]


def converted(schema: Any) -> Any:
    """A Swagger 2.0 definition as an OpenAPI 3.1 schema: the same, with `$ref`s moved to components."""
    schema = copy.deepcopy(schema)
    for node in objects_in(schema):
        if isinstance(node.get("$ref"), str) and node["$ref"].startswith(SWAGGER_REF):
            node["$ref"] = OPENAPI_REF + node["$ref"][len(SWAGGER_REF) :]
    return schema


def render(hand_written: str) -> str:
    """openapi.yaml: the hand-written text up to and including the marker, then the converted definitions."""
    head, marker, _ = hand_written.partition(MARKER)
    if not marker:
        raise SystemExit(f"{OPENAPI_PATH.name} has no marker line:\n{MARKER}")
    definitions = load_spec()["definitions"]
    schemas = {name: converted(definitions[name]) for name in upstream_schema_names(definitions)}
    generated = yaml.safe_dump(schemas, sort_keys=False, allow_unicode=True, width=100)
    indented = "".join("    " + line if line.strip() else line for line in generated.splitlines(keepends=True))
    source = f"    # From {SPEC_PATH.name}: {' and '.join(UPSTREAM_ROOTS)}, and every definition they reference.\n"
    return head + marker + source + indented


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.build_openapi", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if openapi.yaml is out of date")
    args = parser.parse_args(argv)
    current = OPENAPI_PATH.read_text(encoding="utf-8")
    wanted = render(current)
    if args.check:
        if current != wanted:
            print(f"{OPENAPI_PATH.name} is out of date: run python -m scripts.build_openapi", file=sys.stderr)
            return 1
        return 0
    OPENAPI_PATH.write_text(wanted, encoding="utf-8")
    return 0


def objects_in(node: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in `node`, itself included, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from objects_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from objects_in(value)


def _referenced_names(schema: Any) -> Iterator[str]:
    for node in objects_in(schema):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(SWAGGER_REF):
            yield ref[len(SWAGGER_REF) :]


if __name__ == "__main__":
    sys.exit(main())
