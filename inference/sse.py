"""OpenAI's response and Server-Sent Event chunk shapes for completions and chat completions.

The whole (non-streamed) response and every usage object are built from the schemas that
document them in OpenAPI (inference/schemas.py), so a field added to one is in the other.

Each content chunk also carries `x_completion_tokens`: the completion tokens covered by the text
sent so far, so a client that cuts a stream knows exactly what it will be billed (a node
extension; OpenAI's SDKs ignore unknown fields).
"""

import json
import time
import uuid
from typing import Any

from engine.runtime import GenerationResult
from inference.schemas import (
    ChatChoice,
    ChatCompletionOut,
    ChatMessageOut,
    CompletionChoice,
    CompletionOut,
    Usage,
)

DONE = b"data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    total = prompt_tokens + completion_tokens
    return Usage(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=total
    )


def usage_of(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The usage object of a response, a stream's usage chunk and a WebSocket's done event."""
    return _usage(prompt_tokens, completion_tokens).model_dump()


class Shape:
    """How one endpoint spells its objects; `chat` picks chat.completion(.chunk)."""

    def __init__(self, *, chat: bool, model: str, include_usage: bool = False) -> None:
        self.chat = chat
        self.model = model
        self.include_usage = include_usage
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _base(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def _chunk(self, choice: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        chunk = self._base(obj)
        chunk["choices"] = [
            {"index": 0, **choice, "logprobs": None, "finish_reason": finish_reason}
        ]
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def opening(self) -> bytes | None:
        """Chat streams open with the assistant role, as OpenAI's do."""
        if not self.chat:
            return None
        return event(self._chunk({"delta": {"role": "assistant", "content": ""}}, None))

    def delta(self, text: str, completion_tokens: int) -> bytes:
        choice = {"delta": {"content": text}} if self.chat else {"text": text}
        chunk = self._chunk(choice, None)
        chunk["x_completion_tokens"] = completion_tokens
        return event(chunk)

    def closing(self, finish_reason: str) -> bytes:
        choice: dict[str, Any] = {"delta": {}} if self.chat else {"text": ""}
        return event(self._chunk(choice, finish_reason))

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        chunk = {
            **self._base(obj),
            "choices": [],
            "usage": usage_of(prompt_tokens, completion_tokens),
        }
        return event(chunk)

    def error(self, body: dict[str, Any]) -> bytes:
        return event(body)

    def response(self, result: GenerationResult, prompt_tokens: int) -> dict[str, Any]:
        """The whole (non-streamed) response object: ChatCompletionOut or CompletionOut, the
        schemas the API documents, dumped (their defaults fill object, index, logprobs...)."""
        usage = _usage(prompt_tokens, result.completion_tokens)
        finish_reason = result.finish_reason
        body: ChatCompletionOut | CompletionOut
        if self.chat:
            message = ChatMessageOut(content=result.text)
            choice = ChatChoice(message=message, finish_reason=finish_reason)
            body = ChatCompletionOut(
                id=self.id, created=self.created, model=self.model, choices=[choice], usage=usage
            )
        else:
            text = CompletionChoice(text=result.text, finish_reason=finish_reason)
            body = CompletionOut(
                id=self.id, created=self.created, model=self.model, choices=[text], usage=usage
            )
        return body.model_dump()
