"""check_adapter_folder: a peft LoRA folder is taken only when the served base can serve it, and
every refusal says why."""

import json
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from core.adapters import AdapterInfo, AdapterInvalid, check_adapter_folder
from core.tests.adapter_folders import (
    ALL_LINEARS,
    TINY_BASE,
    lora_shapes,
    write_adapter,
    write_base,
)


def check(folder: Path, max_rank: int = 64, **base: object) -> AdapterInfo:
    return check_adapter_folder(folder, base_config={**TINY_BASE, **base}, max_rank=max_rank)


def refused(folder: Path, match: str, **kwargs: object) -> None:
    with pytest.raises(AdapterInvalid, match=match):
        check(folder, **kwargs)  # type: ignore[arg-type]


def test_it_takes_an_adapter_of_every_linear_in_the_bases_order(tmp_path: Path) -> None:
    folder = write_adapter(
        tmp_path / "a", rank=8, targets=["wo", "q", "wi_1", "k", "v", "o", "wi_0"]
    )
    assert check(folder) == AdapterInfo(rank=8, target_modules=ALL_LINEARS)


def test_it_takes_a_folder_peft_wrote_for_the_tiny_model(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from engine.tiny_model import ALL_T5_LINEARS, build_adapter

    build_adapter(tiny_model_dir, tmp_path / "peft", seed=3, rank=4, targets=ALL_T5_LINEARS)
    base = json.loads((tiny_model_dir / "config.json").read_text())
    info = check_adapter_folder(tmp_path / "peft", base_config=base, max_rank=4)
    assert info == AdapterInfo(rank=4, target_modules=ALL_T5_LINEARS)


def test_it_reads_the_served_base_and_the_maximum_from_the_settings(tmp_path: Path) -> None:
    base, bart = write_base(tmp_path / "base"), write_base(tmp_path / "bart", model_type="bart")
    folder = write_adapter(tmp_path / "a", rank=16)
    with override_settings(INFERENCE_MODEL=str(base), INFERENCE_MAX_ADAPTER_RANK=16):
        assert check_adapter_folder(folder).rank == 16
    too_high = r"rank 16 is above this node's maximum \(8\)"
    with (
        override_settings(INFERENCE_MODEL=str(base), INFERENCE_MAX_ADAPTER_RANK=8),
        pytest.raises(AdapterInvalid, match=too_high),
    ):
        check_adapter_folder(folder)
    with (
        override_settings(INFERENCE_MODEL=str(bart)),
        pytest.raises(AdapterInvalid, match="'bart' model; adapters need a T5"),
    ):
        check_adapter_folder(folder)


def test_a_hub_model_not_in_the_cache_is_named(tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "a")
    with (
        override_settings(INFERENCE_MODEL="nobody/no-such-model-h1"),
        pytest.raises(AdapterInvalid, match="'nobody/no-such-model-h1' is not on this machine"),
    ):
        check_adapter_folder(folder)


def test_it_refuses_a_missing_or_relative_folder(tmp_path: Path) -> None:
    refused(tmp_path / "nothing", "does not exist")
    with pytest.raises(AdapterInvalid, match="must be an absolute path"):
        check_adapter_folder("relative/adapter", base_config=TINY_BASE, max_rank=64)


def test_it_refuses_a_folder_without_its_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "adapter_config.json is missing")
    folder = write_adapter(tmp_path / "bin")
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    refused(folder, "adapter_model.safetensors is missing .*safe_serialization=True")
    (folder / "adapter_model.safetensors").write_bytes(b"\xff" * 4)
    refused(folder, "not a readable safetensors file")
    (folder / "adapter_config.json").write_text("{not json")
    refused(folder, "adapter_config.json cannot be read: JSONDecodeError")


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"peft_type": "IA3"}, "peft_type is 'IA3'; only LORA"),
        ({"r": 0}, "rank r must be a positive integer"),
        ({"r": "4"}, "rank r must be a positive integer"),
        ({"use_dora": True}, "use_dora=True is not supported"),
        ({"bias": "all"}, "bias='all' is not supported"),
        ({"rank_pattern": {"q": 8}}, "rank_pattern=.* is not supported"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save=.* is not supported"),
        ({"target_modules": "q|v"}, "a pattern is not supported"),
        ({"target_modules": []}, "must be a list of module names"),
        ({"target_modules": ["q", "lm_head"]}, "lm_head are not Linears of the served T5"),
    ],
)
def test_it_refuses_lora_settings_it_cannot_serve(
    tmp_path: Path, config: dict[str, Any], reason: str
) -> None:
    refused(write_adapter(tmp_path / "a", **config), reason)


def test_it_refuses_a_rank_above_the_maximum(tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "a", rank=32)
    refused(folder, r"rank 32 is above this node's maximum \(16\)", max_rank=16)
    assert check(folder, max_rank=32).rank == 32


def test_it_refuses_wi_on_a_gated_base_and_wi_0_on_a_plain_one(tmp_path: Path) -> None:
    plain = write_adapter(tmp_path / "plain", targets=["wi"])
    refused(plain, "wi are not Linears of the served T5")
    assert check(plain, feed_forward_proj="relu").target_modules == ("wi",)
    gated = write_adapter(tmp_path / "gated", targets=["wi_0"])
    refused(gated, "wi_0 are not Linears", feed_forward_proj="relu")


def test_it_refuses_an_adapter_made_for_another_shape(tmp_path: Path) -> None:
    wider = write_adapter(tmp_path / "wide", base={"d_model": 128})
    refused(wider, r"has shape \[4, 128\], the served base needs \[4, 64\]")
    deeper = write_adapter(tmp_path / "deep", base={"num_layers": 3, "num_decoder_layers": 3})
    refused(deeper, "encoder.block.2.*past the served base's 2 blocks")


def test_it_refuses_weights_that_do_not_match_the_config(tmp_path: Path) -> None:
    shapes = lora_shapes(4, ["q"])
    refused(
        write_adapter(tmp_path / "few", targets=["q", "v"], shapes=shapes), "no weights for .*v"
    )
    odd = {**shapes, "base_model.model.shared.weight": [10, 64]}
    refused(write_adapter(tmp_path / "odd", targets=["q"], shapes=odd), "not LoRA of a target")
    refused(write_adapter(tmp_path / "none", shapes={}), "holds no tensors")
    refused(write_adapter(tmp_path / "rank", rank=4, shapes=lora_shapes(8, ["q", "v"])), "shape")
