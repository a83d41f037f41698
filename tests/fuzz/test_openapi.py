"""schemathesis against batchd's own OpenAPI document, positive and negative modes, and any
method on any path.

The document names each route's success schema and every error status it may answer (see
``batchd.api.openapi``), so schemathesis' own checks hold batchd to it: no 5xx, every status one
the document lists, every body valid against the document's schema for it, the documented
content type. On top, :func:`~tests.fuzz.support.check_response` holds the answers to the
OpenAI conventions and the official schemas.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fuzz.support import (
    BASE_URL,
    DOCUMENT,
    MODELS,
    OK_SCHEMAS,
    OPERATIONS,
    TIMEOUT,
    Api,
    check_response,
    checked,
    fuzz,
    lower,
    mutated_ids,
    path_to,
)
from tests.schema import require_spec

# Negative mode needs something to make invalid: query parameters or a body. A string path
# parameter cannot be made invalid (any string is one).
NEGATABLE = sorted(label for label, op in OPERATIONS.items() if len(op.query) or len(op.body))


def openai_conventions(ctx: Any, response: Any, case: Any) -> bool | None:
    """A schemathesis check: :func:`check_response` on the answer to a generated case."""
    label = case.operation.label
    check_response(
        response.status_code, lower(response.headers), response.content, OK_SCHEMAS.get(label)
    )
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    content_type_conformance,
    openai_conventions,
]


def _run_operation(api: Api, label: str, mode: GenerationMode) -> None:
    @fuzz()
    @given(case=OPERATIONS[label].as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(session=api.client, base_url=BASE_URL, timeout=TIMEOUT)
        case.validate_response(response, checks=CHECKS)

    run()


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_openapi_positive(quiet_api: Api, label: str) -> None:
    _run_operation(quiet_api, label, GenerationMode.POSITIVE)


@pytest.mark.parametrize("label", NEGATABLE)
def test_openapi_negative(quiet_api: Api, label: str) -> None:
    _run_operation(quiet_api, label, GenerationMode.NEGATIVE)


def test_every_route_is_fuzzed() -> None:
    """A route added to the app is fuzzed by the tests above; its 2xx schema must be named in
    ``OK_SCHEMAS``."""
    assert set(OPERATIONS) == set(OK_SCHEMAS)
    assert {"POST /v1/files", "POST /v1/batches", "GET /v1/files"} <= set(NEGATABLE)


def test_the_document_lists_no_answer_batchd_never_gives() -> None:
    """Not FastAPI's 422 (batchd answers 400, as OpenAI does); every error in the envelope (of
    OpenAI, or of Anthropic on its routes)."""
    for path, operations in DOCUMENT["paths"].items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            assert "422" not in statuses, (method, path)
            if not path.startswith("/v1/"):
                continue
            assert {"200", "401", "503"} <= statuses, (method, path)
            for status, answer in operation["responses"].items():
                if status[0] in "45" and status[1:] != "XX":
                    schema = answer["content"]["application/json"]["schema"]
                    anthropic = path.startswith("/v1/messages")  # Anthropic's envelope there
                    envelope = "AnthropicErrorResponse" if anthropic else "ErrorResponse"
                    assert schema == {"$ref": f"#/components/schemas/{envelope}"}, (path, status)
    assert "HTTPValidationError" not in DOCUMENT["components"]["schemas"]


def test_model_ids(quiet_api: Api) -> None:
    @fuzz()
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        model = data.draw(mutated_ids(data.draw(st.sampled_from(MODELS))))
        response = quiet_api.request("GET", path_to("/v1/models", model))
        body = checked(response, "Model")
        if model in MODELS:
            assert response.status_code == 200
            assert body["id"] == model
        elif model and model not in (".", ".."):  # (those two leave the route)
            assert response.status_code == 404
            assert body["error"]["param"] == "model"

    run()


@pytest.mark.parametrize("suffix", ["\n", "\nx", "\r\n", "%0A"])
def test_a_model_name_with_a_newline_is_its_own_name(quiet_api: Api, suffix: str) -> None:
    """Every name reaches the route whole: ``gpt-4o-mini\n`` is not ``gpt-4o-mini`` (Starlette's
    ``:path`` would drop that newline) but a model the routing table does not have."""
    model = MODELS[0] + suffix
    response = quiet_api.request("GET", path_to("/v1/models", model))
    body = checked(response)
    assert response.status_code == 404, response.text
    assert (body["error"]["param"], body["error"]["code"]) == ("model", "model_not_found")


def test_model_objects_have_every_key_of_the_official_schema(quiet_api: Api) -> None:
    require_spec()
    listed = checked(quiet_api.request("GET", "/v1/models"), "ListModelsResponse")
    assert [model["id"] for model in listed["data"]] == list(MODELS)
    assert (
        checked(quiet_api.request("GET", f"/v1/models/{MODELS[0]}"), "Model") == listed["data"][0]
    )


_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE", "PURGE"]
_PATHS = [
    "/",
    "/v1",
    "/v1/",
    "/v1/files/",
    "/v1/files/file-abc/content/x",
    "/v1/batches/batch_abc/cancel/",
    "/v2/files",
    "/openapi.json",
    "/docs",
    *(op.path for op in OPERATIONS.values()),
]
_ANY_PATH = st.text(st.characters(codec="utf-8"), max_size=20).map(
    lambda p: "/" + quote(p, safe="")
)


@fuzz(80)
@given(method=st.sampled_from(_METHODS), path=st.sampled_from(_PATHS) | _ANY_PATH)
def test_methods_and_paths(quiet_api: Api, method: str, path: str) -> None:
    """Any method on any path: a route's answer or a 404/405 in the envelope (a HEAD answer has
    no body to check)."""
    response = quiet_api.request(method, path)
    if method == "HEAD":
        assert response.status_code < 500
        assert response.headers["x-request-id"].startswith("req_")
        return
    label = f"{method} {path}"
    checked(response, OK_SCHEMAS.get(label) if label in OPERATIONS else None)
