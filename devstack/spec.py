"""JSON bodies checked two ways: against our own schema, and against the upstream spec when it is there.

- Our own schema, `devstack/fine_tuning_schema.json`, is in the repository: the fine-tuning job,
  job list and error body fields the app relies on, written by this project. The simulator's
  responses are checked against it everywhere (`validate_response`).
- The upstream Azure OpenAI spec (`azureopenai-authoring-2024-10-21.json`) is Microsoft's and is
  not copied into the repository. Tests that compare against it find its folder through the
  setting `AZURE_OPENAI_SPEC_DIR`, else in `shared/specs` beside the repository, and otherwise skip
  with `SPEC_MISSING` as their reason. It is Swagger 2.0, so its definitions are checked with a
  Draft 4 validator; `$ref`s resolve inside the spec through a referencing Registry.
"""

from __future__ import annotations

import json
import os
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator, Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT4, DRAFT202012

OWN_SCHEMA_PATH = Path(__file__).with_name("fine_tuning_schema.json")

SPEC_FILE_NAME = "azureopenai-authoring-2024-10-21.json"
SPEC_DIR_SETTING = "AZURE_OPENAI_SPEC_DIR"
SPEC_DIR_BESIDE_REPOSITORY = Path(__file__).resolve().parents[2] / "shared" / "specs"
SPEC_MISSING = (
    f"needs the upstream Azure OpenAI spec, which is not part of this repository: "
    f"set {SPEC_DIR_SETTING} to the folder holding {SPEC_FILE_NAME}"
)
_SPEC_URI = "urn:azureopenai-authoring-2024-10-21"


def _spec_dir() -> Path:
    """The setting's folder when it is set (a wrong one then fails, not skips), else the one beside us."""
    configured = os.environ.get(SPEC_DIR_SETTING, "").strip()
    return Path(configured).expanduser() if configured else SPEC_DIR_BESIDE_REPOSITORY


SPEC_PATH = _spec_dir() / SPEC_FILE_NAME
EXAMPLES_DIR = SPEC_PATH.parent / "examples"


class SpecNotFound(FileNotFoundError):
    """The upstream spec is neither where the setting points nor beside the repository."""


# --- our own schema ----------------------------------------------------------------------------


@lru_cache(maxsize=1)
def own_schema() -> dict[str, Any]:
    """Return the parsed `fine_tuning_schema.json`."""
    with OWN_SCHEMA_PATH.open(encoding="utf-8") as handle:
        return json.load(handle)


@cache
def response_validator(definition_name: str) -> Draft202012Validator:
    """Return a validator for `#/$defs/<definition_name>` of our own schema."""
    schema = own_schema()
    if definition_name not in schema["$defs"]:
        raise KeyError(f"no definition {definition_name!r} in {OWN_SCHEMA_PATH.name}")
    registry = Registry().with_resource(schema["$id"], DRAFT202012.create_resource(schema))
    return Draft202012Validator({"$ref": f"{schema['$id']}#/$defs/{definition_name}"}, registry=registry)


def validate_response(definition_name: str, instance: Any) -> None:
    """Raise jsonschema.ValidationError unless instance is valid for our own schema's definition."""
    response_validator(definition_name).validate(instance)


def unlisted_properties(definition_name: str, instance: dict[str, Any]) -> set[str]:
    """Return the top-level keys of instance that our own schema's definition does not list."""
    return set(instance) - set(own_schema()["$defs"][definition_name].get("properties", {}))


# --- the upstream spec, when it is there --------------------------------------------------------


def spec_available() -> bool:
    """Whether tests against the upstream spec run: the setting is set, or the spec is beside us."""
    return bool(os.environ.get(SPEC_DIR_SETTING, "").strip()) or SPEC_PATH.is_file()


@lru_cache(maxsize=1)
def load_spec() -> dict[str, Any]:
    """Return the parsed upstream spec; raise `SpecNotFound` (saying how to point at it) when it is not there."""
    try:
        with SPEC_PATH.open(encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError as err:
        raise SpecNotFound(f"{SPEC_PATH} does not exist: {SPEC_MISSING}") from err


@lru_cache(maxsize=1)
def _registry() -> Registry:
    """Return a registry holding the whole spec as one Draft 4 resource."""
    return Registry().with_resource(_SPEC_URI, DRAFT4.create_resource(load_spec()))


@cache
def validator(definition_name: str) -> Draft4Validator:
    """Return a validator for the upstream spec's `#/definitions/<definition_name>`."""
    if definition_name not in load_spec()["definitions"]:
        raise KeyError(f"no definition {definition_name!r} in {SPEC_PATH.name}")
    schema = {"$ref": f"{_SPEC_URI}#/definitions/{definition_name}"}
    return Draft4Validator(schema, registry=_registry())


def validate(definition_name: str, instance: Any) -> None:
    """Raise jsonschema.ValidationError unless instance is valid for the upstream spec's definition."""
    validator(definition_name).validate(instance)


def undocumented_properties(definition_name: str, instance: dict[str, Any]) -> set[str]:
    """Return the top-level keys of instance that the upstream definition does not list (the spec allows them)."""
    return set(instance) - set(load_spec()["definitions"][definition_name].get("properties", {}))
