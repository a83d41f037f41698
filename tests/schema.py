"""Checks JSON objects against the official schemas of ``../shared/spec``.

``conforms(name, instance)`` validates ``instance`` against ``#/components/schemas/<name>`` of
``openai-batch-subset.openapi.json`` (OpenAPI 3.1, i.e. JSON Schema 2020-12) and then asserts that
every key the schema lists in ``properties`` is present, recursively (nested objects, list items):
batchd always emits every key, ``null`` where empty.

Two relaxations of the official document, both prescribed by the conformance spec:

* an optional property (not in ``required``) may be ``null``. The schema types e.g.
  ``Batch.model`` as a plain ``string``, but every official example emits absent values as
  explicit ``null`` and the SDK types them ``Optional`` (spec §2.1, §5.1). ``request_counts``
  stays a required-shaped object (spec §2.1: "always an object").
* ``first_id``/``last_id`` of a list response may be ``null`` on an empty page (spec §1.4).
* ``OpenAIFile.purpose`` also accepts ``evals``, an upload purpose of ``CreateFileRequest`` that
  the object's enum omits (spec §5.1).

The spec lives outside the repository. Where it is absent (a fresh clone without ``../shared``),
``conforms``/``check_response`` check nothing but the response headers, so that the behaviour
checks of the end-to-end tests still run; ``require_spec``/``schema_properties`` skip the calling
test with the reason, and ``test_official_schema_is_available`` shows that skip in every run.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = [
    "EMPTY_PAGE",
    "SPEC_FILE",
    "check_empty_page",
    "check_response",
    "conforms",
    "require_spec",
    "schema_properties",
]

SPEC_FILE = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "spec"
    / "openai-batch-subset.openapi.json"
)
_BASE_URI = "urn:batchd-tests:openai-batch-subset"
_NEVER_NULL = {("Batch", "request_counts")}
_LIST_SCHEMAS = ("ListFilesResponse", "ListBatchesResponse")


def require_spec() -> dict[str, Any]:
    """The parsed spec document, or skip the calling test when it is not there."""
    if not SPEC_FILE.is_file():
        pytest.skip(f"../shared/spec not found: {SPEC_FILE} is absent, schema checks need it")
    return _load()


@cache
def _load() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(SPEC_FILE.read_text())
    return document


def _nullable(schema: Any) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _relax(name: str, schema: Any) -> Any:
    """Deep copy of ``schema`` with optional properties made nullable (see the module docstring)."""
    if isinstance(schema, list):
        return [_relax(name, item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _relax(name, value) for key, value in schema.items() if key != "properties"}
    if isinstance(schema.get("properties"), dict):
        required = set(schema.get("required", ()))
        props = {}
        for key, value in schema["properties"].items():
            relaxed = _relax(name, value)
            if key not in required and (name, key) not in _NEVER_NULL:
                relaxed = _nullable(relaxed)
            props[key] = relaxed
        out["properties"] = props
    return out


@cache
def _relaxed_document() -> dict[str, Any]:
    document = copy.deepcopy(_load())
    schemas = document["components"]["schemas"]
    for name in list(schemas):
        schemas[name] = _relax(name, schemas[name])
    for name in _LIST_SCHEMAS:
        for key in ("first_id", "last_id"):
            prop = schemas[name]["properties"][key]
            if "anyOf" not in prop:
                schemas[name]["properties"][key] = _nullable(prop)
    purpose = schemas["OpenAIFile"]["properties"]["purpose"]
    purpose["enum"] = [*purpose["enum"], "evals"]
    return document


@cache
def _validator(name: str) -> Draft202012Validator:
    document = _relaxed_document()
    if name not in document["components"]["schemas"]:
        raise KeyError(f"no schema {name!r} in {SPEC_FILE}")
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(_BASE_URI, resource)
    return Draft202012Validator(
        {"$ref": f"{_BASE_URI}#/components/schemas/{name}"}, registry=registry
    )


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    """Follow ``#/components/schemas/...`` refs in the official document."""
    while "$ref" in schema:
        ref = schema["$ref"]
        prefix = "#/components/schemas/"
        assert ref.startswith(prefix), f"unexpected $ref {ref!r}"
        schema = _load()["components"]["schemas"][ref[len(prefix) :]]
    return schema


def schema_properties(name: str) -> list[str]:
    """The keys listed in ``properties`` of a named schema (skips when the spec is absent)."""
    require_spec()
    return list(_resolve(_load()["components"]["schemas"][name])["properties"])


def _missing_keys(schema: dict[str, Any], instance: Any, path: str) -> list[str]:
    """Every ``properties`` key of ``schema`` (recursively) that ``instance`` lacks."""
    schema = _resolve(schema)
    missing: list[str] = []
    if instance is None:
        return missing
    for key in ("anyOf", "oneOf", "allOf"):
        for branch in map(_resolve, schema.get(key, [])):
            wanted = "properties" if isinstance(instance, dict) else "items"
            if isinstance(instance, dict | list) and wanted in branch:
                missing += _missing_keys(branch, instance, path)
    if isinstance(instance, dict) and isinstance(schema.get("properties"), dict):
        for key, sub in schema["properties"].items():
            if key not in instance:
                missing.append(f"{path}.{key}")
            else:
                missing += _missing_keys(sub, instance[key], f"{path}.{key}")
    if isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(instance):
            missing += _missing_keys(schema["items"], item, f"{path}[{i}]")
    return missing


def conforms(name: str, instance: Any) -> Any:
    """Assert that ``instance`` validates against schema ``name`` and carries every key the schema
    lists; return ``instance``. Checks nothing when the spec is absent (see the module doc)."""
    if not SPEC_FILE.is_file():
        return instance
    errors = sorted(_validator(name).iter_errors(instance), key=lambda e: list(e.absolute_path))
    assert not errors, f"not a valid {name}:\n" + "\n".join(
        f"  at {'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors
    )
    schema = _load()["components"]["schemas"][name]
    missing = _missing_keys(schema, instance, name)
    assert not missing, f"{name} lacks keys the schema lists: {', '.join(missing)}"
    return instance


def check_response(response: Any, name: str) -> Any:
    """For a raw HTTP response (``httpx2.Response`` or the SDK's ``with_raw_response`` object):
    assert an ``x-request-id: req_…`` header and a JSON body that :func:`conforms` to ``name``;
    return the parsed body. The schema part is left out when the spec is absent."""
    request_id = response.headers.get("x-request-id", "")
    assert request_id.startswith("req_"), f"x-request-id is {request_id!r}"
    assert response.headers.get("content-type", "").startswith("application/json")
    return conforms(name, json.loads(response.text))


EMPTY_PAGE = {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


def check_empty_page(response: Any, name: str) -> None:
    """A list response past the last object: empty ``data``, null ids, ``has_more`` false."""
    assert check_response(response, name) == EMPTY_PAGE
