"""The engine request a completion plan builds names its tenant and the tenant's scheduling
weight, so the engine's fair queue can share the model between tenants."""

from dataclasses import replace

import pytest

from inference import services
from inference.schemas import GenerationParams
from ratelimit.tests.helpers import make_record


async def test_the_request_carries_the_tenant_and_its_weight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def encode(text: str) -> list[int]:
        return [1, 2, 3]

    # No engine: only the request the plan builds is looked at.
    monkeypatch.setattr(services, "served_model_names", lambda: frozenset({"tiny"}))
    monkeypatch.setattr(services, "engine_check_request", lambda request: None)
    monkeypatch.setattr(services, "engine_encode_prompt", encode)

    async def no_registry() -> None:  # an engine another test started may still be installed
        return None

    monkeypatch.setattr(services, "engine_sync_adapters", no_registry)
    record = replace(make_record(slug="globex"), scheduling_weight=3)
    params = GenerationParams.model_validate({"model": "tiny", "max_tokens": 5})
    plan = await services.plan_completion(
        record, params, "hello", 5, endpoint="completions", stream=False, client_addr=None
    )
    assert (plan.request.tenant, plan.request.weight) == ("globex", 3)
    assert plan.request.prompt_ids == (1, 2, 3)
