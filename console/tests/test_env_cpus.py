import pytest

from console.settings import env_cpus


@pytest.mark.parametrize(
    ("raw", "cpus"),
    [("", ()), ("1", (1,)), ("0,2", (0, 2)), ("2-4", (2, 3, 4)), (" 3, 1-2 ", (1, 2, 3))],
)
def test_cpu_lists_read_like_tasksets(monkeypatch, raw: str, cpus: tuple[int, ...]) -> None:
    monkeypatch.setenv("INFERENCE_CPUS", raw)
    assert env_cpus("INFERENCE_CPUS") == cpus


@pytest.mark.parametrize("raw", ["a", "3-1", "-2", "1-x"])
def test_a_bad_cpu_list_names_the_variable(monkeypatch, raw: str) -> None:
    monkeypatch.setenv("INFERENCE_CPUS", raw)
    with pytest.raises(ValueError, match="INFERENCE_CPUS must list CPUs"):
        env_cpus("INFERENCE_CPUS")
