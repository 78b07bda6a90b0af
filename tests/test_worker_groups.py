"""How `make test` shares its end-to-end servers between pytest-xdist workers (conftest.py): the
files of a shared session server go to one worker as one unit of work, and a file that uses
such a server without being in its group is refused at collection."""

from types import SimpleNamespace
from typing import Any

import pytest

import conftest

STACK = "tests/e2e/test_traefik.py"
API = "tests/e2e/api/test_websocket.py"
PLAIN = "engine/tests/test_engine.py"


def _config(dist: str) -> Any:
    values = {"dist": dist, "tx": ["3*popen"]}
    return SimpleNamespace(getvalue=values.__getitem__)


def test_under_loadfile_a_groups_files_are_one_unit_and_other_files_their_own() -> None:
    scheduler = conftest.pytest_xdist_make_scheduler(_config("loadfile"), None)
    scope = scheduler._split_scope
    stack = {scope(f"{path}::test_x") for path in conftest.SHARED_SERVERS["stack"]}
    assert len(stack) == 1
    assert scope(f"{API}::test_y") == scope("tests/e2e/api/test_usage.py::test_z")
    assert scope(f"{API}::test_y") not in stack
    assert scope(f"{PLAIN}::test_a") == PLAIN
    assert scope(f"{PLAIN}::test_b[process]") == PLAIN


def test_other_distribution_modes_are_left_to_xdist() -> None:
    assert conftest.pytest_xdist_make_scheduler(_config("load"), None) is None


def _item(path: str, *fixtures: str) -> Any:
    return SimpleNamespace(nodeid=f"{path}::test_it", fixturenames=["request", *fixtures])


def test_a_file_that_uses_a_shared_server_outside_its_group_is_refused() -> None:
    conftest.check_server_groups(
        [
            _item(STACK, "stack", "replicas", "prometheus"),
            _item(API, "api_server"),
            _item(PLAIN, "engine"),
        ]
    )
    with pytest.raises(pytest.UsageError, match="SHARED_SERVERS\\['stack'\\]"):
        conftest.check_server_groups([_item("tests/e2e/test_new.py", "replicas")])
    with pytest.raises(pytest.UsageError, match="SHARED_SERVERS\\['api_server'\\]"):
        conftest.check_server_groups([_item(STACK, "api_server")])
