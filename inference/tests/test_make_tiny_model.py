from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from engine.testing import running_engine, tiny_config


def make(folder: Path, *args: str) -> str:
    out = StringIO()
    call_command("make_tiny_model", str(folder), *args, stdout=out)
    return out.getvalue()


def test_it_writes_a_small_model_tokenizer_and_adapter_and_prints_the_folder(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "tiny"
    assert make(folder).strip() == str(folder.resolve())
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "adapter"} <= names
    assert (folder / "adapter" / "adapter_model.safetensors").is_file()
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 5_000_000
    config = (folder / "config.json").read_text()
    # Untied like flan-t5 (transformers 5 would otherwise re-tie lm_head to the embeddings).
    assert '"tie_word_embeddings": false' in config and '"scale_decoder_outputs": false' in config


def test_the_same_seed_gives_the_same_files_and_another_seed_does_not(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    make(tmp_path / "again", "--seed", "0")
    make(tmp_path / "other", "--seed", "1")
    for name in ("model.safetensors", "tokenizer.json", "adapter/adapter_model.safetensors"):
        same = (tmp_path / "again" / name).read_bytes()
        assert same == (tiny_model_dir / name).read_bytes()
        assert (tmp_path / "other" / name).read_bytes() != same


async def test_the_tiny_model_serves_with_its_adapter(tiny_model_dir: Path) -> None:
    from engine.testing import generate

    config = tiny_config(tiny_model_dir, adapter=str(tiny_model_dir / "adapter"))
    with running_engine(config) as engine:
        result = await generate(engine, "naïve café 🙂", max_tokens=5)
    assert result.completion_tokens > 0 and result.prompt_tokens > 5


def test_a_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CommandError, match="not a folder"):
        make(blocker)


def test_adapters_n_writes_n_more_adapters_each_its_own_and_leaves_the_default_alone(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    import json

    folder = tmp_path / "many"
    make(folder, "--adapters", "2")
    default = "adapter/adapter_model.safetensors"
    assert (folder / default).read_bytes() == (tiny_model_dir / default).read_bytes()
    first, second = (folder / "adapters" / n / "adapter_model.safetensors" for n in ("1", "2"))
    assert first.read_bytes() != second.read_bytes()
    config = json.loads((folder / "adapters" / "1" / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"q", "k", "v", "o", "wi_0", "wi_1", "wo"}
    assert not (folder / "adapters" / "3").exists()
    again = tmp_path / "again"
    make(again, "--adapters", "1")
    assert (again / "adapters/1/adapter_model.safetensors").read_bytes() == first.read_bytes()


def test_a_negative_adapter_count_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="--adapters takes 0 to 64"):
        make(tmp_path / "x", "--adapters", "-1")
