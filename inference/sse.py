"""OpenAI's response and Server-Sent Event chunk shapes for completions and chat completions.

Each content chunk also carries `x_completion_tokens`: the completion tokens covered by the text
sent so far, so a client that cuts a stream knows exactly what it will be billed (a node
extension; OpenAI's SDKs ignore unknown fields).
"""

import json
import time
import uuid
from typing import Any

from engine.runtime import GenerationResult

DONE = b"data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def usage_of(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


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
        choice = {"delta": {}} if self.chat else {"text": ""}
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
        """The whole (non-streamed) response object."""
        if self.chat:
            choice = {"message": {"role": "assistant", "content": result.text, "refusal": None}}
            body = self._base("chat.completion")
        else:
            choice = {"text": result.text}
            body = self._base("text_completion")
        body["choices"] = [
            {"index": 0, **choice, "logprobs": None, "finish_reason": result.finish_reason}
        ]
        body["usage"] = usage_of(prompt_tokens, result.completion_tokens)
        body["system_fingerprint"] = None
        return body
