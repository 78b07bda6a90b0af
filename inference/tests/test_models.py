"""GET /v1/models/{model} (the SDK's models.retrieve): the model object for a served id, 404
model_not_found otherwise, behind the same models scope as the list."""

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from tenants.services import api_key_issue

pytestmark = pytest.mark.django_db(transaction=True)


async def get(path: str, token: str | None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await AsyncClient().get(path, headers=headers)


async def listed(token: str) -> list[dict[str, Any]]:
    response = await get("/v1/models", token)
    assert response.status_code == 200
    data: list[dict[str, Any]] = response.json()["data"]
    return data


@pytest.mark.parametrize("name", ["flan-t5-base", "google/flan-t5-base", "org/team/model-v2"])
async def test_a_served_id_is_retrieved_as_the_list_shows_it(issued, settings, name: str) -> None:
    # Ids may hold slashes (a hub id); the SDK sends them percent-encoded (%2F).
    settings.INFERENCE_MODEL_NAME = name
    [model] = await listed(issued.token)
    assert model["id"] == name
    for path in (f"/v1/models/{name}", f"/v1/models/{name.replace('/', '%2F')}"):
        response = await get(path, issued.token)
        assert response.status_code == 200, (path, response.content)
        assert response.json() == model
        assert set(model) == {"id", "object", "created", "owned_by"} and model["object"] == "model"


@pytest.mark.parametrize(
    "other", ["gpt-4o", "flan-t5-base-x", "google/flan-t5-base/", "google", "google%2Fnope"]
)
async def test_any_other_id_is_404_model_not_found(issued, settings, other: str) -> None:
    settings.INFERENCE_MODEL_NAME = "google/flan-t5-base"
    response = await get(f"/v1/models/{other}", issued.token)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error == {
        "message": error["message"],
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert "does not exist" in error["message"]


async def test_it_needs_the_models_scope(tenant) -> None:
    issued = await sync_to_async(api_key_issue)(tenant=tenant, scopes=["completions"], actor="t")
    response = await get("/v1/models/flan-t5-base", issued.token)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_scope"
    response = await get("/v1/models/flan-t5-base", None)
    assert response.status_code == 401
