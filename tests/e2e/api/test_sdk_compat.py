"""The openai package and LangChain against the live node: a prompt past the context is the
error class each has for it, models.retrieve works, documented fields that change nothing are
accepted, and function calling is refused naming `tools`."""

from typing import Any

import openai
import pytest

from tests.e2e.api.conftest import Customer, model_name

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TOO_LONG_WORDS = "word " * 600  # 601 tokens at least: refused by its words, not tokenized
TOO_LONG_WORD = "themodelruns" * 200  # one word: tokenized, then refused with its count


def client(server, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=token, max_retries=0, timeout=60)


def body_of(error: openai.APIError) -> dict[str, Any]:
    assert isinstance(error.body, dict), error.body
    return error.body


@pytest.mark.parametrize("prompt", [TOO_LONG_WORDS, TOO_LONG_WORD])
def test_the_sdk_raises_bad_request_with_context_length_exceeded(
    api_server, customer: Customer, prompt: str
) -> None:
    sdk = client(api_server, customer.token)
    model = model_name(api_server)
    with pytest.raises(openai.BadRequestError) as completion:
        sdk.completions.create(model=model, prompt=prompt, max_tokens=4)
    error = body_of(completion.value)
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
    assert "maximum context length is 512 tokens" in error["message"]
    with pytest.raises(openai.BadRequestError) as chat:
        sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}])
    error = body_of(chat.value)
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"


def test_models_retrieve(api_server, customer: Customer) -> None:
    sdk = client(api_server, customer.token)
    model = model_name(api_server)
    retrieved = sdk.models.retrieve(model)
    assert retrieved.id == model and retrieved.object == "model"
    assert retrieved == sdk.models.list().data[0]
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.models.retrieve("gpt-4o")
    assert body_of(missing.value)["code"] == "model_not_found"


def test_the_sdk_sends_documented_fields_that_change_nothing(
    api_server, customer: Customer
) -> None:
    sdk = client(api_server, customer.token)
    model = model_name(api_server)
    messages: Any = [{"role": "user", "content": "Translate to German: Hello"}]
    plain = sdk.chat.completions.create(model=model, messages=messages, max_tokens=4, temperature=0)
    dressed = sdk.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=4,
        temperature=0,
        store=False,
        metadata={"team": "search"},
        user="user-1",
        service_tier="auto",
        prompt_cache_key="prefix-1",
        safety_identifier="c0ffee",
        parallel_tool_calls=False,
        extra_body={"stream": None, "n": None, "logprobs": None},
    )
    assert dressed.choices[0].message.content == plain.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(
            model=model, messages=messages, response_format={"type": "json_object"}
        )
    error = body_of(refused.value)
    assert error["param"] == "response_format" and "with this model" in error["message"]


@pytest.fixture
def langchain_openai() -> Any:
    return pytest.importorskip("langchain_openai")


def chat_model(langchain_openai: Any, server, token: str, **options: Any) -> Any:
    return langchain_openai.ChatOpenAI(
        model=model_name(server),
        base_url=f"{server.url}/v1",
        api_key=token,
        max_retries=0,
        temperature=0,
        max_tokens=4,
        **options,
    )


def test_langchain_chat_with_openai_fields_works(
    langchain_openai: Any, api_server, customer: Customer
) -> None:
    plain = chat_model(langchain_openai, api_server, customer.token)
    dressed = chat_model(
        langchain_openai,
        api_server,
        customer.token,
        store=False,
        service_tier="auto",
        model_kwargs={
            "user": "user-1",
            "prompt_cache_key": "prefix-1",
            "safety_identifier": "c0ffee",
            "parallel_tool_calls": False,
        },
        extra_body={"metadata": {"team": "search"}},
    )
    question = "Translate to German: Hello"
    assert dressed.invoke(question).content == plain.invoke(question).content
    streamed = "".join(str(chunk.content) for chunk in dressed.stream(question))
    assert streamed == plain.invoke(question).content


def test_langchain_completions_model_works(
    langchain_openai: Any, api_server, customer: Customer
) -> None:
    # It sends seed and logprobs as null, n 1 and the penalties 0, and the prompt as a list.
    llm = langchain_openai.OpenAI(
        model=model_name(api_server),
        base_url=f"{api_server.url}/v1",
        api_key=customer.token,
        max_retries=0,
        temperature=0,
        max_tokens=4,
        model_kwargs={"user": "user-1"},
    )
    assert isinstance(llm.invoke("Translate to German: Hello"), str)


def test_langchain_function_calling_is_refused_naming_tools(
    langchain_openai: Any, api_server, customer: Customer
) -> None:
    def lookup(city: str) -> str:
        """Look up a city."""
        return city

    llm = chat_model(langchain_openai, api_server, customer.token)
    for bound in (
        llm.bind_tools([lookup]),
        llm.bind_tools([lookup], tool_choice="lookup", parallel_tool_calls=False),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            bound.invoke("Where is Paris?")
        error = body_of(refused.value)
        assert error["param"] == "tools", error
        assert (
            error["message"] == "Unsupported parameter: 'tools' is not supported with this model."
        )


def test_langchain_raises_its_context_overflow_error(
    langchain_openai: Any, api_server, customer: Customer
) -> None:
    from langchain_core.exceptions import ContextOverflowError

    llm = chat_model(langchain_openai, api_server, customer.token)
    for prompt in (TOO_LONG_WORDS, TOO_LONG_WORD):
        with pytest.raises(ContextOverflowError) as overflow:
            llm.invoke(prompt)
        # Still the SDK's class too, as LangChain raises it for OpenAI itself.
        assert isinstance(overflow.value, openai.BadRequestError)
        assert body_of(overflow.value)["code"] == "context_length_exceeded"
