"""Clients that send several prompts, n and logprobs, against the live node: the official openai
package (sync, async, streaming) and langchain-openai (OpenAI's batch, abatch and generate, which
send up to 20 prompts a request and read the choices back by OpenAI's order; ChatOpenAI)."""

import asyncio

import openai
import pytest
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI, OpenAI
from pydantic import SecretStr

from tests.e2e.api.conftest import Customer, model_name, wait_for_release

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PROMPTS = ["Name a colour.", "Count to three.", "Hello café", "naïve"]


def sdk(server, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=token, max_retries=0, timeout=120)


def test_the_sdk_parses_several_prompts_n_and_logprobs(api_server, customer: Customer) -> None:
    client, model = sdk(api_server, customer.token), model_name(api_server)
    response = client.completions.create(
        model=model, prompt=PROMPTS, n=2, max_tokens=6, temperature=0, logprobs=3
    )
    assert [choice.index for choice in response.choices] == list(range(8))
    for index, prompt in enumerate(PROMPTS):
        alone = client.completions.create(model=model, prompt=prompt, max_tokens=6, temperature=0)
        for choice in response.choices[index * 2 : index * 2 + 2]:
            assert choice.text == alone.choices[0].text
            logprobs = choice.logprobs
            assert logprobs is not None and logprobs.tokens is not None
            assert "".join(logprobs.tokens) == choice.text
            assert logprobs.top_logprobs is not None
            assert all(1 <= len(top) <= 3 for top in logprobs.top_logprobs)
    assert response.usage is not None
    assert response.usage.total_tokens == (
        response.usage.prompt_tokens + response.usage.completion_tokens
    )
    chat = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Name a colour."}],
        n=3,
        logprobs=True,
        top_logprobs=4,
        max_tokens=5,
        temperature=1.0,
        seed=5,
    )
    assert [choice.index for choice in chat.choices] == [0, 1, 2]
    for answer in chat.choices:
        content = answer.logprobs.content if answer.logprobs else None
        assert content is not None
        assert "".join(token.token for token in content) == answer.message.content
        assert all(len(token.top_logprobs) == 4 for token in content)
    assert wait_for_release(customer.tenant_id) == []


def test_the_async_sdk_streams_each_choice_by_its_index(api_server, customer: Customer) -> None:
    async def scenario() -> None:
        client = openai.AsyncOpenAI(
            base_url=f"{api_server.url}/v1", api_key=customer.token, max_retries=0, timeout=120
        )
        model = model_name(api_server)
        whole = await client.completions.create(
            model=model, prompt=PROMPTS[:2], n=2, max_tokens=8, temperature=0
        )
        stream = await client.completions.create(
            model=model,
            prompt=PROMPTS[:2],
            n=2,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        texts: dict[int, str] = {}
        finishes: dict[int, str | None] = {}
        usage = None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                texts[choice.index] = texts.get(choice.index, "") + choice.text
                if choice.finish_reason:
                    finishes[choice.index] = choice.finish_reason
        assert texts == {choice.index: choice.text for choice in whole.choices}
        assert finishes == {choice.index: choice.finish_reason for choice in whole.choices}
        assert usage is not None and whole.usage is not None
        assert usage.completion_tokens == whole.usage.completion_tokens
        chat = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Hi"}],
            n=2,
            logprobs=True,
            max_tokens=6,
            stream=True,
        )
        chat_texts: dict[int, str] = {}
        tokens: dict[int, str] = {}
        async for piece in chat:
            for part in piece.choices:
                chat_texts[part.index] = chat_texts.get(part.index, "") + (part.delta.content or "")
                if part.logprobs and part.logprobs.content:
                    joined = "".join(t.token for t in part.logprobs.content)
                    tokens[part.index] = tokens.get(part.index, "") + joined
        assert sorted(chat_texts) == [0, 1]
        assert tokens == {index: text for index, text in chat_texts.items() if text}

    asyncio.run(scenario())
    assert wait_for_release(customer.tenant_id) == []


def llm(server, customer: Customer, n: int = 1, logprobs: int | None = None) -> OpenAI:
    return OpenAI(
        base_url=f"{server.url}/v1",
        api_key=SecretStr(customer.token),
        model=model_name(server),
        max_tokens=6,
        temperature=0,
        max_retries=0,
        n=n,
        logprobs=logprobs,
    )


def test_langchain_openai_batches_and_generates(api_server, customer: Customer) -> None:
    model = llm(api_server, customer)
    alone = [model.invoke(prompt) for prompt in PROMPTS]
    prompts: list[LanguageModelInput] = [
        *PROMPTS * 5
    ]  # 20 prompts: LangChain's batch size, sent as one request
    assert model.batch(prompts) == alone * 5
    assert asyncio.run(model.abatch(prompts)) == alone * 5
    result = llm(api_server, customer, n=2, logprobs=2).generate(PROMPTS)
    # LangChain reads choice i * n + j as prompt i's j-th generation.
    assert [[g.text for g in gens] for gens in result.generations] == [[t, t] for t in alone]
    info = result.generations[0][0].generation_info
    assert info is not None and info["logprobs"]["tokens"]
    assert result.llm_output is not None and result.llm_output["token_usage"]["total_tokens"] > 0
    assert wait_for_release(customer.tenant_id) == []


def test_langchain_chat_openai_with_n_and_logprobs(api_server, customer: Customer) -> None:
    chat = ChatOpenAI(
        base_url=f"{api_server.url}/v1",
        api_key=SecretStr(customer.token),
        model=model_name(api_server),
        max_completion_tokens=6,
        temperature=0,
        max_retries=0,
        logprobs=True,
        top_logprobs=2,
    )
    message = chat.invoke("Name a colour.")
    content = message.response_metadata["logprobs"]["content"]
    assert "".join(token["token"] for token in content) == message.content
    assert all(len(token["top_logprobs"]) == 2 for token in content)
    result = chat.bind(n=2).invoke("Hi")
    assert isinstance(result.content, str)
    generations = ChatOpenAI(
        base_url=f"{api_server.url}/v1",
        api_key=SecretStr(customer.token),
        model=model_name(api_server),
        max_completion_tokens=6,
        temperature=0,
        max_retries=0,
        n=2,
    ).generate([[HumanMessage("Hi")]])
    texts = [generation.text for generation in generations.generations[0]]
    assert len(texts) == 2 and texts[0] == texts[1]
    assert wait_for_release(customer.tenant_id) == []
