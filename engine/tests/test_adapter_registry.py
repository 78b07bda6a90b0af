"""The engine's adapter registry: a request may name only a registered adapter."""

from pathlib import Path

import pytest

from engine.generation import GenerationRequest, UnknownAdapter
from engine.testing import running_engine, tiny_config


async def test_a_request_naming_an_unregistered_adapter_is_refused_before_it_queues(
    tiny_model_dir: Path,
) -> None:
    with running_engine(tiny_config(tiny_model_dir)) as engine:
        with pytest.raises(UnknownAdapter, match="'acme'"):
            await engine.submit(GenerationRequest(prompt="hello", adapter="acme"))
        with pytest.raises(UnknownAdapter):
            await engine.submit_group(
                [GenerationRequest(prompt="a"), GenerationRequest(prompt="b", adapter="x")]
            )
        engine.set_adapters({"acme": str(tiny_model_dir / "adapter")})
        assert engine.adapters == {"acme": str(tiny_model_dir / "adapter")}
        stream = await engine.submit(
            GenerationRequest(prompt="hello", adapter="acme", max_tokens=2)
        )
        assert (await stream.complete()).completion_tokens > 0
        engine.set_adapters({})
        with pytest.raises(UnknownAdapter):
            await engine.submit(GenerationRequest(prompt="hello", adapter="acme"))
