"""Request and response shapes of POST /v1/responses, OpenAI's Responses API (its text subset).

As on the other endpoints, unknown fields are refused, and a documented field the node cannot
honour is refused with a 400 that names it (tools, reasoning, text formats other than text,
stored state: store, previous_response_id, conversation, background, prompt). Fields that change
nothing here (metadata, user, safety_identifier, prompt_cache_key, service_tier, ...) are
accepted and ignored. The output shapes follow the openai package's types/responses, so its SDK
parses them into typed objects.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from inference.schemas import STRICT, GenerationParams, Unsupported

ItemStatus = Literal["in_progress", "completed", "incomplete"]
ResponseStatus = Literal["in_progress", "completed", "incomplete", "failed"]
# The input item and content part types this node reads (everything else names `input`).
TEXT_PARTS = ("input_text", "output_text")
# `include` values about outputs the node never produces (no tools, no reasoning): harmless.
INCLUDABLE = frozenset(
    {
        "reasoning.encrypted_content",
        "file_search_call.results",
        "web_search_call.results",
        "web_search_call.action.sources",
        "code_interpreter_call.outputs",
        "computer_call_output.output.image_url",
        "message.input_image.image_url",
    }
)


class InputText(BaseModel):
    model_config = STRICT
    type: Literal["input_text"]
    text: str


class OutputText(BaseModel):
    """An earlier answer sent back as input (as LangChain and openai-agents replay it)."""

    model_config = STRICT
    type: Literal["output_text"]
    text: str
    annotations: list[dict[str, Any]] = []
    logprobs: list[dict[str, Any]] | None = None


class InputMessage(BaseModel):
    """A message item: `type` may be left out, as OpenAI's easy input messages allow."""

    model_config = STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Annotated[InputText | OutputText, Field(discriminator="type")]]
    type: Literal["message"] = "message"
    # Present when a client replays an earlier output item; ignored.
    id: str | None = Field(default=None, max_length=200)
    status: ItemStatus | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class TextFormat(BaseModel):
    model_config = STRICT
    type: str


class TextConfig(BaseModel):
    model_config = STRICT
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class StreamOptions(BaseModel):
    model_config = STRICT
    include_obfuscation: bool | None = None


def _as_message_items(value: object) -> object:
    """A string is one user message. Items and parts other than text messages are named in
    words here (pydantic's own error would name a branch of a union instead)."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise PydanticCustomError(
            "input_shape", "input must be a string or a non-empty list of message items."
        )
    for n, item in enumerate(value):
        if not isinstance(item, dict):
            continue  # pydantic's own error names it
        kind = item.get("type", "message")
        if kind != "message":
            raise PydanticCustomError(
                "unsupported_input",
                "input[{n}] is a {kind} item; this model reads only message items.",
                {"n": n, "kind": kind},
            )
        parts = item.get("content")
        for part in parts if isinstance(parts, list) else ():
            if isinstance(part, dict) and part.get("type") not in TEXT_PARTS:
                raise PydanticCustomError(
                    "unsupported_input",
                    "input[{n}] has a {kind} part; this model reads only text parts "
                    "(input_text, output_text).",
                    {"n": n, "kind": part.get("type")},
                )
    return value


def _string_too(schema: dict[str, Any]) -> None:
    # OpenAPI: the field takes a string as well (the validator above turns it into a list).
    items = dict(schema)
    schema.clear()
    schema["anyOf"] = [{"type": "string"}, items]


class ResponseCreateIn(BaseModel):
    """POST /v1/responses."""

    model_config = STRICT

    model: str = Field(min_length=1, max_length=200)
    input: Annotated[
        list[InputMessage],
        BeforeValidator(_as_message_items),
        Field(json_schema_extra=_string_too),
    ]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    # Accepted, ignored: they change nothing a client gets from this node.
    metadata: dict[str, str] | None = Field(None, max_length=16)
    user: str | None = Field(None, max_length=256)
    safety_identifier: str | None = Field(None, max_length=256)
    prompt_cache_key: str | None = Field(None, max_length=256)
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    parallel_tool_calls: bool | None = None
    max_tool_calls: int | None = Field(None, ge=1)
    include: list[str] | None = None
    # Accepted at their neutral value only (unsupported() says why otherwise).
    store: bool | None = Field(None, json_schema_extra={"enum": [False, None]})
    background: bool | None = Field(None, json_schema_extra={"enum": [False, None]})
    previous_response_id: str | None = Field(None, json_schema_extra={"enum": [None]})
    conversation: str | dict[str, Any] | None = Field(None, json_schema_extra={"enum": [None]})
    prompt: dict[str, Any] | None = Field(None, json_schema_extra={"enum": [None]})
    tools: list[dict[str, Any]] | None = Field(None, json_schema_extra={"maxItems": 0})
    tool_choice: str | dict[str, Any] | None = None
    text: TextConfig | None = None
    reasoning: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20, json_schema_extra={"maximum": 0})

    def unsupported(self) -> Unsupported | None:
        """The first field set to something the node cannot do, if any."""
        stateless = "this node stores nothing"
        checks = (
            ("store", not self.store, f"store must be false or absent: {stateless}."),
            ("background", not self.background, f"background is not supported: {stateless}."),
            (
                "previous_response_id",
                self.previous_response_id is None,
                f"previous_response_id is not supported: {stateless}; send the whole "
                "conversation in `input`.",
            ),
            (
                "conversation",
                self.conversation is None,
                f"conversation is not supported: {stateless}.",
            ),
            ("prompt", self.prompt is None, f"Stored prompts are not supported: {stateless}."),
            ("tools", not self.tools, "Tools are not supported by this model."),
            (
                "tool_choice",
                self.tool_choice in (None, "none", "auto"),
                "Tool calls are not supported by this model.",
            ),
            (
                "text.format",
                self.text is None or self.text.format is None or self.text.format.type == "text",
                "Only the text format is supported by this model.",
            ),
            (
                "text.verbosity",
                self.text is None or self.text.verbosity in (None, "medium"),
                "This model does not support verbosity other than medium.",
            ),
            (
                "reasoning",
                not any(v is not None for v in (self.reasoning or {}).values()),
                "Reasoning is not supported by this model.",
            ),
            (
                "truncation",
                self.truncation != "auto",
                "truncation: auto is not supported; an input too long for the model is refused.",
            ),
            ("top_logprobs", not self.top_logprobs, "Logprobs are not supported by this model."),
            (
                "include",
                all(value in INCLUDABLE for value in self.include or ()),
                "include may name only outputs this model never produces; logprobs and "
                "others are not supported.",
            ),
        )
        for name, ok, message in checks:
            if not ok:
                return Unsupported(name, message)
        if self.messages[-1].role != "user":
            return Unsupported("input", "The last input message must come from the user.")
        return None

    @property
    def messages(self) -> list[InputMessage]:
        """The conversation, instructions first as a system message."""
        if self.instructions:
            return [InputMessage(role="system", content=self.instructions), *self.input]
        return self.input

    def generation_params(self) -> "ResponseParams":
        """The parameters plan_completion() takes; it reports this request's refusals too."""
        fields = {"model": self.model, "temperature": self.temperature, "top_p": self.top_p}
        params = ResponseParams.model_validate({**fields, "stream": bool(self.stream)})
        params._source = self
        return params


class ResponseParams(GenerationParams):
    """GenerationParams of a Responses request: its own refusals are plan_completion()'s, so
    they are charged to the key's request rate like the other endpoints' refusals."""

    _source: ResponseCreateIn | None = None

    def unsupported(self) -> Unsupported | None:
        found = self._source.unsupported() if self._source is not None else None
        return found or super().unsupported()


# --- The response -----------------------------------------------------------------------


class OutputTextOut(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = []
    logprobs: list[dict[str, Any]] = []


class OutputMessageOut(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: ItemStatus
    role: Literal["assistant"] = "assistant"
    content: list[OutputTextOut]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsageOut(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = InputTokensDetails()
    output_tokens: int
    output_tokens_details: OutputTokensDetails = OutputTokensDetails()
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseErrorOut(BaseModel):
    code: str
    message: str


class TextFormatOut(BaseModel):
    type: Literal["text"] = "text"


class TextConfigOut(BaseModel):
    format: TextFormatOut = TextFormatOut()
    verbosity: Literal["medium"] = "medium"


class ResponseOut(BaseModel):
    """A response object, whole or as a stream event carries it (output_text, the SDK's
    convenience property, is not part of it)."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: ResponseStatus
    completed_at: int | None = None
    error: ResponseErrorOut | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputMessageOut] = []
    parallel_tool_calls: bool = True
    previous_response_id: None = None
    store: Literal[False] = False
    temperature: float
    top_p: float
    text: TextConfigOut = TextConfigOut()
    tool_choice: Literal["none", "auto"] = "auto"
    tools: list[dict[str, Any]] = []
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsageOut | None = None
    user: str | None = None
    metadata: dict[str, str] = {}
