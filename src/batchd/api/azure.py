"""Azure OpenAI's routes, over the same service layer as ``/v1``.

Two generations, as ``AzureOpenAI`` and ``OpenAI(base_url=".../openai/v1/")`` call them:

- ``/openai/files``, ``/openai/batches``, ``/openai/models``, ``/openai/responses`` … with a
  required ``api-version`` query parameter, one of ``azure_api_versions``; and
  ``/openai/deployments/{deployment}/chat/completions`` (``completions``, ``embeddings``),
  where the deployment names the model (a route's name or alias);
- ``/openai/v1/...``: the same paths as ``/v1/...``, no ``api-version`` needed.

Both speak Azure's dialect (:data:`batchd.api.deps.Dialect`): a file that failed validation
while it was uploaded is ``error`` with ``status_details``; a batch always publishes an error
file (empty when nothing failed); ``invalid_url`` is Azure's ``url_mismatch``. Keys come as
``api-key`` or ``Authorization: Bearer``, as everywhere (:mod:`batchd.auth`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from starlette.responses import Response

from batchd.api.deps import Services, ServicesDep, project
from batchd.api.openapi import json_body
from batchd.api.passthrough import INFERENCE, Inference, relay
from batchd.errors import InvalidRequest

__all__ = ["ApiVersionError", "api_version", "deployments"]


class ApiVersionError(InvalidRequest):
    """A missing or unknown ``api-version``: Azure's 400, in Azure's error shape."""

    def envelope(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"code": "BadRequest", "message": self.message}}


async def api_version(request: Request, svc: ServicesDep) -> str:
    """The request's ``api-version``, if the server accepts it (:class:`ApiVersionError` if
    not)."""
    version = request.query_params.get("api-version")
    accepted = svc.settings.azure_api_versions
    shown = ", ".join(accepted)
    if version is None or not version.strip():
        raise ApiVersionError(
            "Missing required query parameter 'api-version'. Add ?api-version="
            f"{_latest_ga(accepted)} to the URL (AzureOpenAI(api_version=...) does it); "
            f"accepted versions: {shown}. The /openai/v1/ routes need none.",
            param="api-version",
        )
    if version not in accepted:
        raise ApiVersionError(
            f"API version not supported: '{version}'. Accepted versions: {shown} (the "
            "azure_api_versions setting).",
            param="api-version",
        )
    return version


def _latest_ga(versions: tuple[str, ...]) -> str:
    ga = sorted(v for v in versions if v[:1].isdigit() and not v.endswith("-preview"))
    return ga[-1] if ga else versions[0]


#: ``/openai/deployments/{deployment}/...``: Azure's inference routes, the model in the path.
deployments = APIRouter(
    prefix="/openai/deployments/{deployment}",
    tags=["azure"],
    dependencies=[Depends(project), Depends(api_version)],
)

Deployment = Annotated[str, Path(description="The model: a route's name or alias.")]


def _deployment_route(
    item: Inference,
) -> Callable[[str, Request, Services], Awaitable[Response]]:
    async def route(deployment: Deployment, request: Request, svc: ServicesDep) -> Response:
        return await relay(
            request, svc, item.endpoint, streamable=item.streamable, deployment=deployment
        )

    return route


for _item in INFERENCE:
    if _item.name != "responses":  # Azure's Responses route is /openai/responses
        deployments.add_api_route(
            _item.path,
            _deployment_route(_item),
            methods=["POST"],
            name=f"deployment_{_item.name}",
            summary=f"{_item.summary} on a deployment",
            openapi_extra=json_body(required=[_item.field], properties={_item.field: _item.schema}),
        )
