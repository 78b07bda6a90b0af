"""/v1 routes: models, completions, chat completions, usage. Thin: schema in, one service call,
response out; errors are ApiErrors mapped once in console/api.py."""

from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from ninja import Router, Schema

from core.clientaddr import client_ip
from inference import responses_api
from inference.adapters import granted_adapters
from inference.engines import served_model_id, unknown_model
from inference.prompting import render_chat
from inference.responses import json_response, stream_response
from inference.responses_schemas import ResponseCreateIn, ResponseOut
from inference.schemas import (
    ChatCompletionIn,
    ChatCompletionOut,
    CompletionIn,
    CompletionOut,
    GenerationParams,
)
from inference.services import Run, plan_completion
from inference.sse import Shape
from ratelimit.limiter import refuse_if_denied
from tenants.auth import ApiKeyAuth, require_scope
from tenants.keycache import KeyRecord
from tenants.selectors import tenant_usage_summary

router = Router(auth=ApiKeyAuth())


class KeyedRequest(ASGIRequest):
    """The request a view here gets, as the type checker sees it (django-stubs' pattern; never
    instantiated): an ASGIRequest on which ninja set `auth` to the caller's key, since ApiKeyAuth
    runs before every view and a refused request never reaches one."""

    auth: KeyRecord


class CompletionsAuth(ApiKeyAuth):
    """ApiKeyAuth, then the in-process denial cache: a key in a flood gets its 429 before its
    body is parsed or its prompt tokenized (admission checks again, for every other case)."""

    async def authenticate(self, request: HttpRequest, token: str | None) -> KeyRecord | None:
        record = await super().authenticate(request, token)
        if record is not None:
            refuse_if_denied(record, client_ip(request))
        return record


completions_auth = CompletionsAuth()


class ModelOut(Schema):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "inference-node"


class ModelListOut(Schema):
    object: str = "list"
    data: list[ModelOut]


class UsagePeriodOut(Schema):
    start: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class UsageOut(Schema):
    object: str = "usage"
    tenant: str
    today: UsagePeriodOut
    this_month: UsagePeriodOut
    as_of: str
    flush_interval_seconds: float


def _models(record: KeyRecord) -> list[ModelOut]:
    """The models a key may use: what GET /v1/models lists and GET /v1/models/{model} finds
    (the served base, then the adapters granted to the key's tenant, by name)."""
    return [ModelOut(id=name) for name in (served_model_id(), *granted_adapters(record))]


@router.get(
    "/models",
    response=ModelListOut,
    tags=["models"],
    summary="List the served model and the adapters granted to the key's tenant",
)
async def list_models(request: KeyedRequest) -> ModelListOut:
    require_scope(request.auth, "models")
    return ModelListOut(data=_models(request.auth))


# {path:model}: ids such as google/flan-t5-base hold slashes (the SDK does not escape them).
@router.get(
    "/models/{path:model}",
    response=ModelOut,
    tags=["models"],
    summary="Retrieve a model (404 model_not_found unless this key may use it)",
)
async def retrieve_model(request: KeyedRequest, model: str) -> ModelOut:
    require_scope(request.auth, "models")
    for served in _models(request.auth):
        if served.id == model:
            return served
    raise unknown_model(model)


async def _respond(
    request: KeyedRequest,
    body: GenerationParams,
    prompt: str | list[str | list[int]],
    max_tokens: int | None,
    chat: bool,
) -> JsonResponse | StreamingHttpResponse:
    endpoint = "chat.completions" if chat else "completions"
    client_addr = client_ip(request)
    plan = await plan_completion(
        request.auth,
        body,
        prompt,
        max_tokens,
        endpoint=endpoint,
        stream=body.stream,
        client_addr=client_addr,
    )
    run = await Run.start(plan, client_addr=client_addr)
    shape = Shape(
        chat=chat,
        model=plan.model,
        include_usage=body.include_usage,
        logprobs=body.requested_logprobs(),
    )
    if body.stream:
        return stream_response(request, run, shape)
    return await json_response(request, run, shape)


@router.post(
    "/completions",
    auth=completions_auth,
    response=CompletionOut,
    tags=["completions"],
    summary="Create a completion (stream: true for Server-Sent Events)",
)
async def create_completion(
    request: KeyedRequest, body: CompletionIn
) -> JsonResponse | StreamingHttpResponse:
    return await _respond(request, body, body.prompts, body.max_tokens, chat=False)


@router.post(
    "/chat/completions",
    auth=completions_auth,
    response=ChatCompletionOut,
    tags=["completions"],
    summary="Create a chat completion (messages become one flan-style prompt)",
)
async def create_chat_completion(
    request: KeyedRequest, body: ChatCompletionIn
) -> JsonResponse | StreamingHttpResponse:
    prompt = render_chat(body.messages)
    return await _respond(request, body, prompt, body.max_new_tokens, chat=True)


@router.post(
    "/responses",
    auth=completions_auth,
    response=ResponseOut,
    tags=["completions"],
    summary="Create a response (OpenAI's Responses API, text only; nothing is stored)",
)
async def create_response(
    request: KeyedRequest, body: ResponseCreateIn
) -> JsonResponse | StreamingHttpResponse:
    return await responses_api.create_response(request, request.auth, body)


@router.get("/usage", response=UsageOut, tags=["usage"], summary="The caller's tenant usage")
async def get_usage(request: KeyedRequest) -> UsageOut:
    require_scope(request.auth, "usage")
    return UsageOut(**await tenant_usage_summary(request.auth.tenant_id))
