"""Request JSON: deep nesting is refused before json.loads recurses into it."""

import json
from typing import Any

import pytest

from core import jsonbody
from core.errors import InvalidRequest


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_the_deepest_allowed_nesting_parses_and_one_more_level_is_refused() -> None:
    assert jsonbody.loads(nested(jsonbody.MAX_DEPTH)) is not None
    with pytest.raises(InvalidRequest, match="nested more than"):
        jsonbody.loads(nested(jsonbody.MAX_DEPTH + 1))


def test_deep_nesting_is_refused_without_json_recursing_into_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(raw: Any) -> Any:
        raise AssertionError("json.loads was given the deep body")

    monkeypatch.setattr(json, "loads", refuse)  # the module jsonbody parses with
    for body in (nested(40_000), "[" * 40_000, '{"prompt": ' + nested(5_000) + "}"):
        with pytest.raises(InvalidRequest, match="nested more than"):
            jsonbody.loads(body.encode())


def test_brackets_inside_strings_are_text_not_nesting() -> None:
    prompt = '[{"quoted \\" [[[' + "[" * 100
    body = json.dumps({"prompt": prompt, "messages": [{"content": "{" * 50}] * 40})
    assert jsonbody.loads(body)["prompt"] == prompt  # as a str and as bytes
    assert jsonbody.loads(body.encode())["messages"][0]["content"] == "{" * 50
