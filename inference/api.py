"""/v1 routes for models and completions."""

from django.conf import settings
from django.http import HttpRequest
from ninja import Router, Schema

from tenants.auth import ApiKeyAuth, require_scope

router = Router(auth=ApiKeyAuth(), tags=["models"])


class ModelOut(Schema):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "inference-node"


class ModelListOut(Schema):
    object: str = "list"
    data: list[ModelOut]


@router.get("/models", response=ModelListOut, summary="List the served model")
async def list_models(request: HttpRequest) -> ModelListOut:
    require_scope(request.auth, "models")
    return ModelListOut(data=[ModelOut(id=settings.INFERENCE_MODEL)])
