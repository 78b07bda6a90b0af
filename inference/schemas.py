"""Request and response shapes of the OpenAI-compatible API.

Unknown fields are refused (OpenAI's "Unrecognized request argument"), and the parameters the
node accepts for compatibility but cannot honour beyond their neutral value (n, best_of, echo,
logprobs, penalties, logit_bias, suffix, tools, response formats other than text) are refused
with a clear 400 when set to anything else: never silently ignored.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.generation import SEED_MAX, SEED_MIN

# Unknown fields refused, and no coercion: `"max_tokens": true` is not 1, `"stream": "yes"` is
# not true (a JSON integer still fills a number field).
STRICT = ConfigDict(extra="forbid", strict=True)
MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 64


class Unsupported(ValueError):
    """A parameter value the node cannot honour (reported with its parameter name)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False


class GenerationParams(BaseModel):
    """Parameters shared by completions and chat completions."""

    model_config = STRICT

    model: str = Field(min_length=1, max_length=200)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    # The schema states what the node can do; the checks in unsupported() say it in words.
    n: int | None = Field(None, ge=1, json_schema_extra={"maximum": 1})
    stream: bool = False
    stream_options: StreamOptions | None = None
    # What torch's generator takes (engine/generation.py): one past it would fail at decoding.
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    user: str | None = Field(None, max_length=256)
    presence_penalty: float | None = Field(None, ge=-2, le=2, json_schema_extra={"enum": [0]})
    frequency_penalty: float | None = Field(None, ge=-2, le=2, json_schema_extra={"enum": [0]})
    logit_bias: dict[str, float] | None = Field(None, json_schema_extra={"maxProperties": 0})

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        if any(not s or len(s) > MAX_STOP_LENGTH for s in stops):
            raise ValueError(f"stop sequences must be 1 to {MAX_STOP_LENGTH} characters")
        return stops

    def unsupported(self) -> Unsupported | None:
        """The first parameter set to something the node cannot do, if any."""
        if self.n not in (None, 1):
            return Unsupported("n", "This node generates one choice per request; n must be 1.")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0):
                return Unsupported(name, f"{name} is not supported by this node; omit it or use 0.")
        if self.logit_bias:
            return Unsupported("logit_bias", "logit_bias is not supported by this node.")
        if self.stream_options is not None and not self.stream:
            return Unsupported("stream_options", "stream_options requires stream: true.")
        return None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class CompletionIn(GenerationParams):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]]
    best_of: int | None = Field(None, ge=1, json_schema_extra={"maximum": 1})
    echo: bool = Field(False, json_schema_extra={"enum": [False]})
    logprobs: int | None = Field(None, ge=0, json_schema_extra={"maximum": 0})
    suffix: str | None = Field(None, json_schema_extra={"maxLength": 0})

    def unsupported(self) -> Unsupported | None:
        found = super().unsupported()
        if found:
            return found
        if isinstance(self.prompt, list) and not all(isinstance(p, str) for p in self.prompt):
            return Unsupported("prompt", "Token-id prompts are not supported; send text.")
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            return Unsupported("prompt", "This node accepts exactly one prompt per request.")
        checks = (
            ("best_of", self.best_of in (None, 1)),
            ("echo", not self.echo),
            ("logprobs", not self.logprobs),
            ("suffix", not self.suffix),
        )
        for name, ok in checks:
            if not ok:
                return Unsupported(name, f"{name} is not supported by this node.")
        return None

    @property
    def prompt_text(self) -> str:
        """The one text prompt (empty for shapes unsupported() refuses)."""
        first = self.prompt[0] if isinstance(self.prompt, list) and self.prompt else self.prompt
        return first if isinstance(first, str) else ""


class TextPart(BaseModel):
    model_config = STRICT
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = Field(None, max_length=64)

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: str


class ChatCompletionIn(GenerationParams):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    logprobs: bool | None = None

    @model_validator(mode="after")
    def _one_max(self) -> "ChatCompletionIn":
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("give max_tokens or max_completion_tokens, not both")
        return self

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def unsupported(self) -> Unsupported | None:
        found = super().unsupported()
        if found:
            return found
        if self.tools or self.tool_choice not in (None, "none"):
            return Unsupported("tools", "Tool calls are not supported by this node.")
        if self.response_format is not None and self.response_format.type != "text":
            return Unsupported("response_format", "Only the text response format is supported.")
        if self.logprobs:
            return Unsupported("logprobs", "logprobs is not supported by this node.")
        if self.messages[-1].role != "user":
            return Unsupported("messages", "The last message must come from the user.")
        return None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None


class CompletionOut(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    logprobs: None = None
    finish_reason: str | None


class ChatCompletionOut(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class WsAuth(BaseModel):
    """{"type": "auth", "api_key": ...}: the first message when no header carried the key."""

    model_config = STRICT
    type: Literal["auth"]
    api_key: str = Field(min_length=1, max_length=200)


class WsCancel(BaseModel):
    """{"type": "completion.cancel", "id": ...}: stops a request of either kind (the chat
    spelling is accepted too)."""

    model_config = STRICT
    type: Literal["completion.cancel", "chat.completion.cancel"]
    id: str = Field(min_length=1, max_length=64)


class WsCompletionCreate(GenerationParams):
    """{"type": "completion.create", "id": ..., "prompt": ..., ...}: `model` may be left out."""

    type: Literal["completion.create"]
    id: str = Field(min_length=1, max_length=64)
    prompt: str
    # Optional on the socket only: pydantic lets a subclass widen a field; mypy calls it an
    # incompatible override.
    model: str | None = Field(None, min_length=1, max_length=200)  # type: ignore[assignment]


class WsChatCompletionCreate(ChatCompletionIn):
    """{"type": "chat.completion.create", "id": ..., "messages": [...], ...}: the parameters of
    /v1/chat/completions; `model` may be left out."""

    type: Literal["chat.completion.create"]
    id: str = Field(min_length=1, max_length=64)
    model: str | None = Field(None, min_length=1, max_length=200)  # type: ignore[assignment]
