"""Only served ids name the model (a server path is never one), and a 503 says whether
retrying can help."""

from pathlib import Path

import pytest

from inference import engines


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "flan-local"
    folder.mkdir()
    return folder


def test_a_local_folder_is_known_by_its_name_not_its_path(settings, model_dir) -> None:
    settings.INFERENCE_MODEL, settings.INFERENCE_MODEL_NAME = str(model_dir), ""
    assert engines.served_model_id() == "flan-local"
    assert engines.served_model_names() == {"flan-local"}


def test_a_named_local_model_is_known_by_its_name_and_folder_name(settings, model_dir) -> None:
    settings.INFERENCE_MODEL, settings.INFERENCE_MODEL_NAME = str(model_dir), "house-model"
    assert engines.served_model_id() == "house-model"
    assert engines.served_model_names() == {"house-model", "flan-local"}


def test_a_missing_absolute_path_is_still_a_path(settings) -> None:
    settings.INFERENCE_MODEL, settings.INFERENCE_MODEL_NAME = "/srv/models/gone", ""
    assert engines.served_model_names() == {"gone"}


def test_a_hub_model_is_known_by_its_id_and_short_name(settings) -> None:
    settings.INFERENCE_MODEL, settings.INFERENCE_MODEL_NAME = "google/flan-t5-base", ""
    assert engines.served_model_id() == "google/flan-t5-base"
    assert engines.served_model_names() == {"google/flan-t5-base", "flan-t5-base"}


@pytest.mark.parametrize("state", ["failed", "not_loaded"])
def test_a_model_that_cannot_load_says_retrying_will_not_help(state) -> None:
    error = engines._unavailable({"state": state})
    assert error.status == 503 and error.code == "model_unavailable"
    assert error.headers == {"x-should-retry": "false"}


@pytest.mark.parametrize(("state", "retry_after"), [("loading", "5"), ("stopped", None)])
def test_a_model_that_may_come_back_leaves_retrying_to_the_client(state, retry_after) -> None:
    error = engines._unavailable({"state": state})
    assert "x-should-retry" not in error.headers
    assert error.headers.get("Retry-After") == retry_after
