"""openapi.yaml, loaded, and validators for its schemas (records and answers are checked against them)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

OPENAPI_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"
DOCUMENT_URI = "urn:cancel-function-app:openapi"


def load_document() -> dict[str, Any]:
    return yaml.safe_load(OPENAPI_PATH.read_text(encoding="utf-8"))


@functools.cache
def component_validator(name: str) -> Draft202012Validator:
    """A validator for `components.schemas.<name>` of openapi.yaml (other test files check records with it)."""
    return validator_at(load_document(), f"/components/schemas/{name}")


def validator_at(document: dict[str, Any], at: str) -> Draft202012Validator:
    """A validator for the schema at JSON pointer `at` (`/components/schemas/X`), the document's `$ref`s resolving."""
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry = Registry().with_resource(DOCUMENT_URI, resource)
    schema = {"$ref": f"{DOCUMENT_URI}#{at}"}
    return Draft202012Validator(schema, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER)
