"""Request JSON, parsed once for REST (ninja's parser) and WebSocket frames alike.

json.loads takes things the rest of the node cannot: a lone surrogate escape ("\\ud800") becomes
a str that no tokenizer, database or encoder accepts, and thousands of nested brackets raise
RecursionError, not ValueError. Both are refused here as bad input (400 or an error frame).
"""

import json
import re
from typing import Any

from django.http import HttpRequest
from ninja.parser import Parser

from core.errors import InvalidRequest

MAX_DEPTH = 32  # the deepest request shape (chat content parts) is 5 levels


# A JSON string literal (its escapes included), and every byte but the brackets.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


def _too_deep(raw: bytes) -> bool:
    """Whether raw's brackets outside its strings nest deeper than MAX_DEPTH, found without
    recursion. json.loads would otherwise recurse to the interpreter's limit on such a body,
    and anything the collector finalizes down there (a warning, a __del__) fails for want of
    stack. Fewer brackets than the limit cannot go deeper: the common case costs two counts."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return False
    depth = 0
    for byte in _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS):
        depth += 1 if byte in b"[{" else -1
        if depth > MAX_DEPTH:
            return True
    return False


def loads(raw: str | bytes) -> Any:
    """Parse request JSON; InvalidRequest for invalid JSON, deep nesting or invalid text."""
    encoded = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if _too_deep(encoded):
        raise InvalidRequest(f"The JSON is nested more than {MAX_DEPTH} levels deep.")
    try:
        value = json.loads(raw)
    except RecursionError:
        raise InvalidRequest("The JSON is nested too deeply.") from None
    except ValueError:
        raise InvalidRequest("The request body is not valid JSON.") from None
    _check(value)
    return value


def _check(value: Any) -> None:
    # Iterative: a recursive walk would itself hit the recursion limit on deep input.
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise InvalidRequest(f"The JSON is nested more than {MAX_DEPTH} levels deep.")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(
            "The request contains a lone UTF-16 surrogate escape (such as \\ud800), which is "
            "not valid Unicode text."
        ) from None


class NodeParser(Parser):
    """ninja's JSON parser, refusing what `loads` refuses (as the InvalidRequest it raises)."""

    def parse_body(self, request: HttpRequest) -> Any:
        return loads(request.body)
