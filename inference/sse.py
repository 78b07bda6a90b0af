"""OpenAI's response and Server-Sent Event chunk shapes for completions and chat completions.

The whole (non-streamed) response and every usage object are built from the schemas that
document them in OpenAPI (inference/schemas.py), so a field added to one is in the other.

Each content chunk also carries `x_completion_tokens`: the completion tokens covered by the text
sent so far (every choice's), so a client that cuts a stream knows exactly what it will be
billed (a node extension; OpenAI's SDKs ignore unknown fields).

A request of several choices (prompts times n) numbers them as OpenAI does (prompt by prompt,
then each prompt's n choices); every chunk carries its choice's index. Log-probabilities come
in OpenAI's two shapes: the legacy one of /v1/completions (tokens, token_logprobs,
top_logprobs, text_offset) and chat's `content` list.
"""

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from engine.messages import TokenLogprob
from engine.runtime import GenerationResult
from inference.schemas import (
    ChatChoice,
    ChatCompletionOut,
    ChatLogprobs,
    ChatMessageOut,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionOut,
    TopLogprob,
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


def chat_logprobs(entries: Sequence[TokenLogprob]) -> ChatLogprobs:
    """Chat's shape: per token its text, log-probability, UTF-8 bytes and alternatives."""
    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=entry.text,
                logprob=entry.logprob,
                bytes=list(entry.text.encode()),
                top_logprobs=[
                    TopLogprob(token=alt.text, logprob=alt.logprob, bytes=list(alt.text.encode()))
                    for alt in entry.top
                ],
            )
            for entry in entries
        ]
    )


def completion_logprobs(
    entries: Sequence[TokenLogprob], alternatives: int, offset: int = 0
) -> CompletionLogprobs:
    """The legacy shape; `offset`: where the first token starts in the choice's text."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.text)
    return CompletionLogprobs(
        tokens=[entry.text for entry in entries],
        token_logprobs=[entry.logprob for entry in entries],
        top_logprobs=[_by_text(entry.top) for entry in entries] if alternatives else None,
        text_offset=offsets,
    )


def _by_text(alternatives: Sequence[TokenLogprob]) -> dict[str, float]:
    # Alternatives that share a text share a key: the first (the most likely) is kept.
    top: dict[str, float] = {}
    for alt in alternatives:
        top.setdefault(alt.text, alt.logprob)
    return top


class Shape:
    """How one endpoint spells its objects; `chat` picks chat.completion(.chunk); `logprobs`:
    None, or how many alternatives each token reports."""

    def __init__(
        self, *, chat: bool, model: str, include_usage: bool = False, logprobs: int | None = None
    ) -> None:
        self.chat = chat
        self.model = model
        self.include_usage = include_usage
        self.logprobs = logprobs
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self._offsets: dict[int, int] = {}  # per choice: the text its logprobs covered so far

    def _base(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def _chunk(
        self,
        choice: dict[str, Any],
        finish_reason: str | None,
        index: int = 0,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        chunk = self._base(obj)
        chunk["choices"] = [
            {"index": index, **choice, "logprobs": logprobs, "finish_reason": finish_reason}
        ]
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def opening(self, choices: int = 1) -> bytes | None:
        """Chat streams open with the assistant role, once per choice, as OpenAI's do."""
        if not self.chat:
            return None
        role = {"delta": {"role": "assistant", "content": ""}}
        return b"".join(event(self._chunk(role, None, index)) for index in range(choices))

    def delta(
        self,
        text: str,
        completion_tokens: int,
        *,
        index: int = 0,
        logprobs: Sequence[TokenLogprob] = (),
    ) -> bytes:
        choice = {"delta": {"content": text}} if self.chat else {"text": text}
        chunk = self._chunk(choice, None, index, self._stream_logprobs(index, logprobs))
        chunk["x_completion_tokens"] = completion_tokens
        return event(chunk)

    def _stream_logprobs(
        self, index: int, entries: Sequence[TokenLogprob]
    ) -> dict[str, Any] | None:
        if self.logprobs is None:
            return None
        if self.chat:
            return chat_logprobs(entries).model_dump()
        offset = self._offsets.get(index, 0)
        self._offsets[index] = offset + sum(len(entry.text) for entry in entries)
        return completion_logprobs(entries, self.logprobs, offset).model_dump()

    def closing(self, finish_reason: str, *, index: int = 0) -> bytes:
        choice: dict[str, Any] = {"delta": {}} if self.chat else {"text": ""}
        return event(self._chunk(choice, finish_reason, index))

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

    def response(
        self,
        results: Sequence[GenerationResult],
        logprobs: Sequence[Sequence[TokenLogprob]],
        prompt_tokens: int,
    ) -> dict[str, Any]:
        """The whole (non-streamed) response object: ChatCompletionOut or CompletionOut, the
        schemas the API documents, dumped (their defaults fill object...): one choice per
        result, in order; usage sums them."""
        usage = _usage(prompt_tokens, sum(result.completion_tokens for result in results))
        body: ChatCompletionOut | CompletionOut
        if self.chat:
            chats = [
                ChatChoice(
                    index=index,
                    message=ChatMessageOut(content=result.text),
                    logprobs=None if self.logprobs is None else chat_logprobs(entries),
                    finish_reason=result.finish_reason,
                )
                for index, (result, entries) in enumerate(zip(results, logprobs, strict=True))
            ]
            body = ChatCompletionOut(
                id=self.id, created=self.created, model=self.model, choices=chats, usage=usage
            )
        else:
            texts = [
                CompletionChoice(
                    index=index,
                    text=result.text,
                    logprobs=None
                    if self.logprobs is None
                    else completion_logprobs(entries, self.logprobs),
                    finish_reason=result.finish_reason,
                )
                for index, (result, entries) in enumerate(zip(results, logprobs, strict=True))
            ]
            body = CompletionOut(
                id=self.id, created=self.created, model=self.model, choices=texts, usage=usage
            )
        return body.model_dump()
