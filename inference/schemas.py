"""Request and response shapes of the OpenAI-compatible API.

Unknown fields are refused (OpenAI's "Unrecognized request argument"), and the parameters the
node accepts for compatibility but cannot honour beyond their neutral value (best_of other than
n, echo, penalties, logit_bias, suffix, tools, response formats other than text) are refused
with a clear 400 when set to anything else: never silently ignored.
"""

import json
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.generation import MAX_TOP_LOGPROBS, SEED_MAX, SEED_MIN

# Unknown fields refused, and no coercion: `"max_tokens": true` is not 1, `"stream": "yes"` is
# not true (a JSON integer still fills a number field).
STRICT = ConfigDict(extra="forbid", strict=True)
MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 64
# A request's rows (docs/api.md): prompts in one completions request (LangChain's OpenAI sends
# up to 20), choices per prompt, and choices in all (prompts times n; each is a row of a batch).
MAX_PROMPTS = 20
MAX_N = 20
MAX_CHOICES = 64
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's bound for /v1/completions' logprobs


class Unsupported(ValueError):
    """A parameter value the node cannot honour (reported with its parameter name)."""

    def __init__(self, param: str, message: str, code: str = "unsupported_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def unsupported_parameter(param: str) -> Unsupported:
    """A field this model cannot honour at all (OpenAI's wording and code for such a field)."""
    message = f"Unsupported parameter: '{param}' is not supported with this model."
    return Unsupported(param, message, code="unsupported_parameter")


class NullMeansAbsent(BaseModel):
    """OpenAI's optional fields take null for "not given" (the SDKs and LangChain send it):
    a null field is dropped before validation, so an optional one takes its default and a
    required one is missing (and named). A null unknown field stays, to be refused by name."""

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {
            name: value for name, value in data.items() if value is not None or name not in fields
        }


class StreamOptions(NullMeansAbsent):
    model_config = STRICT
    include_usage: bool = False
    # Accepted and ignored: chunks carry no `obfuscation` padding here.
    include_obfuscation: bool = True


class GenerationParams(NullMeansAbsent):
    """Parameters shared by completions and chat completions."""

    model_config = STRICT
    # The request field that carries the prompt, named by a too-long prompt's error.
    prompt_param: ClassVar[str] = "prompt"

    model: str = Field(min_length=1, max_length=200)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1, le=MAX_N)
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

    # Whether this request shape can answer with several choices (the REST routes); the
    # WebSocket's one stream per request cannot.
    multiple_choices: ClassVar[bool] = False

    def unsupported(self) -> Unsupported | None:
        """The first parameter set to something the node cannot do, if any."""
        if self.n not in (None, 1) and not self.multiple_choices:
            return Unsupported("n", "This endpoint generates one choice per request; n must be 1.")
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

    def requested_logprobs(self) -> int | None:
        """None: no log-probabilities; else how many alternatives each token reports."""
        return None


class CompletionIn(GenerationParams):
    """POST /v1/completions."""

    multiple_choices: ClassVar[bool] = True

    # A text, a list of texts, a list of token ids, or a list of token-id lists.
    prompt: str | list[str] | list[int] | list[list[int]]
    best_of: int | None = Field(None, ge=1, le=MAX_N)
    echo: bool = Field(False, json_schema_extra={"enum": [False]})
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    suffix: str | None = Field(None, json_schema_extra={"maxLength": 0})

    def unsupported(self) -> Unsupported | None:
        found = super().unsupported() or self._prompt_problem()
        if found:
            return found
        if self.best_of not in (None, 1, self.n or 1):
            return Unsupported(
                "best_of", "best_of must equal n: this node returns every choice it generates."
            )
        checks = (("echo", not self.echo), ("suffix", not self.suffix))
        for name, ok in checks:
            if not ok:
                return Unsupported(name, f"{name} is not supported by this node.")
        return None

    def _prompt_problem(self) -> Unsupported | None:
        prompts = self.prompts
        if not prompts:
            return Unsupported("prompt", "prompt must hold at least one prompt.")
        if len(prompts) > MAX_PROMPTS:
            return Unsupported(
                "prompt",
                f"This node takes at most {MAX_PROMPTS} prompts per request, not "
                f"{len(prompts)}; send the rest in further requests.",
            )
        if any(not prompt for prompt in prompts if isinstance(prompt, list)):
            return Unsupported("prompt", "A token-id prompt must hold at least one id.")
        return None

    @property
    def prompts(self) -> list[str | list[int]]:
        """The prompts, each a text or a list of token ids, in the order of the request."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if prompt and all(isinstance(item, int) for item in prompt):
            return [[item for item in prompt if isinstance(item, int)]]  # one token-id prompt
        return [item for item in prompt if not isinstance(item, int)]

    def requested_logprobs(self) -> int | None:
        return self.logprobs


class ContentPart(NullMeansAbsent):
    """A part of a message's content. Text parts are read; a part of another documented type
    (image_url, input_audio, file, refusal) is refused by name (ChatCompletionIn), and the
    fields OpenAI may add to a part (prompt_cache_breakpoint) are accepted and ignored."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_has_text(self) -> "ContentPart":
        if self.type == "text" and self.text is None:
            raise ValueError("a text part needs its text")
        return self


class ChatMessage(NullMeansAbsent):
    model_config = STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = Field(None, max_length=64)
    # An assistant message of the history: its refusal stands in for absent content; tool
    # and function calls and audio are refused (ChatCompletionIn.refused_field), never dropped.
    refusal: str | None = None
    tool_calls: list[Any] | None = None
    function_call: Any = None
    audio: Any = None

    @model_validator(mode="before")
    @classmethod
    def _assistant_content_may_be_null(cls, data: Any) -> Any:
        # OpenAI: an assistant message's content is optional (null beside tool_calls or a
        # refusal); every other role's is required.
        assistant = isinstance(data, dict) and data.get("role") == "assistant"
        if assistant and data.get("content") is None:
            return {**data, "content": data.get("refusal") or ""}
        return data

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)


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
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    multiple_choices: ClassVar[bool] = True
    # Documented OpenAI fields (docs/api.md, "Request fields"). Accepted and ignored: they
    # change nothing in the answer of this node.
    metadata: dict[str, str] | None = Field(None, max_length=16)
    store: bool = Field(False, json_schema_extra={"enum": [False]})
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast"] | None = None
    prompt_cache_key: str | None = Field(None, max_length=256)
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prompt_cache_options: dict[str, Any] | None = None
    safety_identifier: str | None = Field(None, max_length=256)
    parallel_tool_calls: bool | None = None
    # Refused unless neutral (refused_field): each would change the answer and cannot be
    # honoured by this model. Any type, so the refusal names the field whatever its shape.
    functions: Any = None
    function_call: Any = None
    modalities: Any = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    moderation: Any = None
    prompt_param: ClassVar[str] = "messages"

    @field_validator("metadata")
    @classmethod
    def _check_metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value and any(len(k) > 64 or len(v) > 512 for k, v in value.items()):
            raise ValueError("metadata keys are at most 64 characters, values at most 512")
        return value

    @model_validator(mode="after")
    def _one_max(self) -> "ChatCompletionIn":
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("give max_tokens or max_completion_tokens, not both")
        return self

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def requested_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def unsupported(self) -> Unsupported | None:
        found = super().unsupported()
        if found:
            return found
        refused = self.refused_field()
        if refused:
            return refused
        if self.top_logprobs is not None and not self.logprobs:
            return Unsupported("top_logprobs", "top_logprobs requires logprobs: true.")
        if self.messages[-1].role != "user":
            return Unsupported("messages", "The last message must come from the user.")
        return None

    def refused_field(self) -> Unsupported | None:
        """The first documented field set to what this model cannot honour; it is named,
        never another one (LangChain's bind_tools sends tools with parallel_tool_calls)."""
        for name in ("tools", "functions"):
            if getattr(self, name):  # an empty list asks for nothing
                return unsupported_parameter(name)
        for name in ("audio", "prediction", "web_search_options", "moderation"):
            if getattr(self, name) is not None:  # {} turns web search or moderation on
                return unsupported_parameter(name)
        # The neutral value of each: what the model does anyway.
        neutral = {
            "tool_choice": ("none", "auto"),
            "function_call": ("none", "auto"),
            "reasoning_effort": ("none",),
            "verbosity": ("medium",),
        }
        for name, allowed in neutral.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                return _unsupported_value(name, value, allowed)
        if self.modalities not in (None, ["text"]):
            return _unsupported_value("modalities", self.modalities, (["text"],))
        if self.response_format is not None and self.response_format.type != "text":
            return _unsupported_value("response_format", self.response_format.type, ("text",))
        if self.store:
            return Unsupported("store", "This node does not store completions; omit store.")
        return self._refused_in_messages()

    def _refused_in_messages(self) -> Unsupported | None:
        for index, message in enumerate(self.messages):
            for name in ("tool_calls", "function_call", "audio"):
                if getattr(message, name) not in (None, []):
                    return unsupported_parameter(f"messages.{index}.{name}")
            parts = message.content if isinstance(message.content, list) else []
            for number, part in enumerate(parts):
                if part.type != "text":
                    param = f"messages.{index}.content.{number}.type"
                    return _unsupported_value(param, part.type, ("text",))
        return None


def _unsupported_value(param: str, value: Any, allowed: tuple[Any, ...]) -> Unsupported:
    shown = value if isinstance(value, str) else json.dumps(value)[:100]
    choices = " or ".join(repr(choice) for choice in allowed)
    return Unsupported(
        param,
        f"Unsupported value: '{param}' does not support {shown!r} with this model. "
        f"Only {choices} is supported.",
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy shape: per generated token its text, log-probability, most likely
    alternatives (text to log-probability; None when logprobs is 0) and offset in the text."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None = None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
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


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None  # the token's UTF-8 bytes


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None
    refusal: None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    logprobs: ChatLogprobs | None = None
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
