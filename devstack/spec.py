"""Validate JSON bodies against the upstream Azure OpenAI spec's definitions.

Loads `shared/specs/azureopenai-authoring-2024-10-21.json` (beside the repository) once and
checks instances against `#/definitions/<name>` with a Draft 4 validator, the JSON Schema
dialect Swagger 2.0 is built on; `$ref`s resolve inside the spec through a referencing Registry.
"""

from __future__ import annotations

import json
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator
from referencing import Registry
from referencing.jsonschema import DRAFT4

SPEC_PATH = Path(__file__).resolve().parents[2] / "shared" / "specs" / "azureopenai-authoring-2024-10-21.json"
EXAMPLES_DIR = SPEC_PATH.parent / "examples"
_SPEC_URI = "urn:azureopenai-authoring-2024-10-21"


@lru_cache(maxsize=1)
def load_spec() -> dict[str, Any]:
    """Return the parsed spec."""
    with SPEC_PATH.open(encoding="utf-8") as handle:
        return json.load(handle)


@lru_cache(maxsize=1)
def _registry() -> Registry:
    """Return a registry holding the whole spec as one Draft 4 resource."""
    return Registry().with_resource(_SPEC_URI, DRAFT4.create_resource(load_spec()))


@cache
def validator(definition_name: str) -> Draft4Validator:
    """Return a validator for `#/definitions/<definition_name>`."""
    if definition_name not in load_spec()["definitions"]:
        raise KeyError(f"no definition {definition_name!r} in {SPEC_PATH.name}")
    schema = {"$ref": f"{_SPEC_URI}#/definitions/{definition_name}"}
    return Draft4Validator(schema, registry=_registry())


def validate(definition_name: str, instance: Any) -> None:
    """Raise jsonschema.ValidationError unless instance is valid for the named definition."""
    validator(definition_name).validate(instance)


def undocumented_properties(definition_name: str, instance: dict[str, Any]) -> set[str]:
    """Return the top-level keys of instance that the definition does not list (the spec allows them)."""
    return set(instance) - set(load_spec()["definitions"][definition_name].get("properties", {}))
