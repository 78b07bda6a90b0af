"""The model process never writes to the server's PROMETHEUS_MULTIPROC_DIR."""

from engine import remote


def test_the_model_process_gets_no_multiprocess_dir(monkeypatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/run/metrics")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    env = remote._child_env()
    assert "PROMETHEUS_MULTIPROC_DIR" not in env
    assert env["HF_HUB_OFFLINE"] == "1" and env["PYTHONPATH"]
