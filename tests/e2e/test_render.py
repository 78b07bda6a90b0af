"""deploy/render.py: placeholders filled strictly, output complete and free of stale files."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.render import DEPLOY_DIR, compose_values, render_text, render_tree

pytestmark = pytest.mark.e2e


def test_strings_go_in_as_they_are_and_other_values_as_json() -> None:
    text = 'address: "${ADDRESS}"\nservers: ${SERVERS}\nbound: ${BOUND}'
    values = {"ADDRESS": ":8080", "SERVERS": [{"url": "http://a:8000"}], "BOUND": 10}
    assert yaml.safe_load(render_text(text, values)) == {
        "address": ":8080",
        "servers": [{"url": "http://a:8000"}],
        "bound": 10,
    }


def test_a_missing_value_is_an_error_never_an_empty_string() -> None:
    with pytest.raises(ValueError, match="no value for PORT"):
        render_text("port: ${PORT}", {})


def test_a_value_no_template_uses_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TYPO_ADDRESS"):
        render_tree(tmp_path, {**compose_values(2), "TYPO_ADDRESS": "x"})
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_the_compose_render_leaves_no_placeholder_and_removes_stale_files(tmp_path: Path) -> None:
    stale = tmp_path / "traefik" / "dynamic" / "old-router.yml"
    stale.parent.mkdir(parents=True)
    stale.write_text("http: {}")
    render_tree(tmp_path, compose_values(3))
    assert not stale.exists()
    for path in tmp_path.rglob("*.yml"):
        assert "${" not in path.read_text(), path
    templates = {
        p.relative_to(DEPLOY_DIR)
        for d in ("traefik", "prometheus")
        for p in (DEPLOY_DIR / d).rglob("*")
        if p.is_file()
    }
    assert {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()} == templates


def test_the_command_line_renders_the_compose_preset(tmp_path: Path) -> None:
    result = subprocess.run(  # noqa: S603 (our own script)
        [
            sys.executable,
            str(DEPLOY_DIR / "render.py"),
            str(tmp_path),
            "--app-replicas",
            "3",
            "--set",
            "INFERENCE_MAX_QUEUE=64",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    dynamic = yaml.safe_load((tmp_path / "traefik" / "dynamic" / "app.yml").read_text())
    servers = dynamic["http"]["services"]["app"]["loadBalancer"]["servers"]
    assert len(servers) == 3
    rules = (tmp_path / "prometheus" / "rules" / "alerts.yml").read_text()
    assert ">= 0.8 * 64" in rules
