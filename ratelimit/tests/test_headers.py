"""Header and 429 conformance: the OpenAI trio, Retry-After, x-should-retry, the error body,
and the IETF RateLimit-Policy / RateLimit fields (parsed as Structured Fields lists)."""

import json
import re

import pytest
from django.test import RequestFactory

from console.api import error_response
from core.errors import QuotaExhausted, RateLimited
from ratelimit import limiter
from ratelimit.decision import Decision, LimitState
from ratelimit.headers import denial_error, denial_headers, go_duration, rate_headers
from ratelimit.limits import Limit, LimitKind
from ratelimit.tests.helpers import make_record

SECOND = 1_000_000
# One Structured Fields list item: a string with integer or string parameters.
SF_ITEM = r'"([a-z0-9-]+)"((?:;[a-z*][a-z0-9_.*-]*=(?:"[^"\\]*"|-?\d+))*)'


def _parse_sf_list(value: str) -> dict[str, dict[str, str]]:
    items = {}
    for part in value.split(", "):
        match = re.fullmatch(SF_ITEM, part)
        assert match, f"not a Structured Fields item: {part!r}"
        params = dict(p.split("=", 1) for p in match.group(2).split(";")[1:])
        items[match.group(1)] = params
    return items


@pytest.mark.parametrize(
    ("us", "text"),
    [
        (0, "0s"),
        (1, "1ms"),
        (999_000, "999ms"),
        (1 * SECOND, "1s"),
        (17_600_000, "17.6s"),
        (360 * SECOND, "6m0s"),
        (7_380 * SECOND + 500_000, "2h3m0.5s"),
    ],
)
def test_resets_are_written_as_openai_writes_them(us: int, text: str) -> None:
    assert go_duration(us) == text


def _state(name: str, kind: str, limit: int, remaining: int, reset_us: int) -> LimitState:
    return LimitState(
        Limit(name, LimitKind(kind), limit, 1, f"rl:test:{name}"), remaining, reset_us
    )


def test_the_trio_comes_from_the_most_restrictive_limit_or_the_binding_one() -> None:
    key_rpm = _state("key-rpm", "r", 60, 50, 2 * SECOND)
    tenant_rpm = _state("tenant-rpm", "r", 600, 3, 9 * SECOND)
    day = _state("tenant-tokens-per-day", "d", 10_000, 9_000, 3600 * SECOND)
    tpm = _state("key-tpm", "t", 5000, 0, 1_200_000)
    allowed = Decision(True, None, 0, 0, (key_rpm, tenant_rpm, day))
    headers = rate_headers(allowed)
    assert headers["x-ratelimit-limit-requests"] == "600"  # 3 left beats 50 left
    assert headers["x-ratelimit-remaining-requests"] == "3"
    assert headers["x-ratelimit-limit-tokens"] == "10000"
    denied = Decision(False, tpm, 1_200_000, 0, (key_rpm, tenant_rpm, day, tpm))
    assert rate_headers(denied)["x-ratelimit-limit-tokens"] == "5000"
    assert "x-ratelimit-limit-requests" not in rate_headers(Decision(True, None, 0, 0, (day,)))


def test_retry_after_is_whole_seconds_rounded_up_with_milliseconds_beside() -> None:
    state = _state("key-rpm", "r", 60, 0, 1_200_000)
    headers = denial_headers(Decision(False, state, 1_200_001, 0, (state,)))
    assert headers["Retry-After"] == "2" and headers["retry-after-ms"] == "1201"
    assert "x-should-retry" not in headers
    tiny = denial_headers(Decision(False, state, 3, 0, (state,)))
    assert tiny["Retry-After"] == "1" and tiny["retry-after-ms"] == "1"


def test_the_429_body_is_openai_shaped_and_names_the_limit() -> None:
    record = make_record(key_id="KEYpublic123", slug="acme")
    tpm = _state("tenant-tpm", "t", 5000, 10, 4 * SECOND)
    error = denial_error(Decision(False, tpm, 900_000, 0, (tpm,)), record)
    assert isinstance(error, RateLimited)
    response = error_response(RequestFactory().post("/v1/completions"), error)
    body = json.loads(response.content)["error"]
    assert response.status_code == 429 and response["Retry-After"] == "1"
    assert body["code"] == "rate_limit_exceeded" and body["type"] == "tokens"
    assert "tenant-tpm" in body["message"] and "tenant acme" in body["message"]
    month = _state("key-tokens-per-month", "m", 10**6, 0, 86_400 * SECOND)
    spent = denial_error(Decision(False, month, 86_400 * SECOND, 0, (month,)), record)
    assert isinstance(spent, QuotaExhausted) and "key-tokens-per-month" in spent.message
    response = error_response(RequestFactory().post("/v1/completions"), spent)
    assert response["x-should-retry"] == "false" and response["Retry-After"] == "86400"
    assert json.loads(response.content)["error"]["code"] == "insufficient_quota"
    assert "KEYpublic123" in spent.message


async def test_ietf_fields_are_off_by_default() -> None:
    admission = await limiter.admit(make_record(tenant={"rpm": 60}), tokens=1)
    assert "RateLimit" not in admission.headers and "RateLimit-Policy" not in admission.headers


async def test_ietf_fields_parse_and_agree_with_the_trio(settings) -> None:
    settings.RATELIMIT_IETF_HEADERS = True
    record = make_record(
        key={"rpm": 2, "max_inflight": 4},
        tenant={"tpm": 1000, "tokens_per_day": 50_000, "tokens_per_month": 900_000},
        burst_percent=100,
    )
    admission = await limiter.admit(record, tokens=100)
    policy = _parse_sf_list(admission.headers["RateLimit-Policy"])
    state = _parse_sf_list(admission.headers["RateLimit"])
    assert policy["key-rpm"] == {"q": "2", "w": "60"}
    assert policy["key-inflight"] == {"q": "4", "qu": '"concurrent-requests"'}
    assert policy["tenant-tpm"]["node-unit"] == '"tokens"' and policy["tenant-tpm"]["w"] == "60"
    assert policy["tenant-tokens-per-day"]["w"] == "86400"
    assert "w" not in policy["tenant-tokens-per-month"]  # calendar months vary in length
    assert state["key-rpm"]["r"] == admission.headers["x-ratelimit-remaining-requests"]
    assert state["tenant-tpm"]["r"] == admission.headers["x-ratelimit-remaining-tokens"]
    await limiter.admit(record, tokens=1)
    with pytest.raises(RateLimited) as denied:
        await limiter.admit(record, tokens=1)
    headers = denied.value.headers
    binding = _parse_sf_list(headers["RateLimit"])["key-rpm"]
    assert binding["r"] == "0"
    assert int(headers["Retry-After"]) >= int(binding["t"])
