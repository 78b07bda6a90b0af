"""Rate-limit response headers and 429 errors, as DESIGN.md's contract states them.

Every limited response gets the OpenAI trio for requests and for tokens, each taken from the
most restrictive of the key's and the tenant's limits (the binding one when it denied). A 429
adds Retry-After (whole seconds, rounded up) and retry-after-ms; a spent day or month quota
adds x-should-retry: false, which the OpenAI SDKs obey. The IETF draft's RateLimit-Policy and
RateLimit fields follow when RATELIMIT_IETF_HEADERS is on (the draft is still moving).
"""

from django.conf import settings

from core.errors import ApiError, QuotaExhausted, RateLimited
from ratelimit.decision import Decision, LimitState
from ratelimit.limits import DESCRIPTIONS, LimitKind
from tenants.keycache import KeyRecord

REQUEST_LABELS = frozenset({"rpm"})
TOKEN_LABELS = frozenset({"tpm", "tokens-per-day", "tokens-per-month"})


def _ceil_div(value: int, unit: int) -> int:
    return -(-value // unit)


def go_duration(us: int) -> str:
    """A duration as OpenAI writes resets: 20ms, 1s, 17.6s, 6m0s, 2h3m0s (rounded up to ms)."""
    ms = _ceil_div(max(us, 0), 1000)
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


def _most_restrictive(decision: Decision, labels: frozenset[str]) -> LimitState | None:
    candidates = [s for s in decision.states if s.limit.label in labels]
    if decision.binding is not None and decision.binding in candidates:
        return decision.binding
    if not candidates:
        return None
    return min(candidates, key=lambda s: (s.remaining, s.limit.limit))


def _trio(unit: str, state: LimitState) -> dict[str, str]:
    return {
        f"x-ratelimit-limit-{unit}": str(state.limit.limit),
        f"x-ratelimit-remaining-{unit}": str(state.remaining),
        f"x-ratelimit-reset-{unit}": go_duration(state.reset_us),
    }


def _policy_item(state: LimitState) -> str:
    limit = state.limit
    item = f'"{limit.name}";q={limit.limit}'
    if limit.kind is LimitKind.INFLIGHT:
        return item + ';qu="concurrent-requests"'
    window = limit.kind.window_seconds
    item += f";w={window}" if window else ""
    # The draft's quota-unit registry has no tokens: a vendor-prefixed parameter says so.
    return item + (';node-unit="tokens"' if limit.kind.counts_tokens else "")


def _ietf(decision: Decision) -> dict[str, str]:
    items = []
    for state in decision.states:
        seconds = _ceil_div(state.reset_us, 1_000_000)
        if state is decision.binding:
            # Retry-After must not point earlier than the binding policy's t.
            seconds = retry_after_seconds(decision)
        items.append(f'"{state.limit.name}";r={state.remaining};t={seconds}')
    if not items:
        return {}
    policies = ", ".join(_policy_item(s) for s in decision.states)
    return {"RateLimit-Policy": policies, "RateLimit": ", ".join(items)}


def rate_headers(decision: Decision) -> dict[str, str]:
    """The headers every limited response carries (200 or 429)."""
    headers: dict[str, str] = {}
    for unit, labels in (("requests", REQUEST_LABELS), ("tokens", TOKEN_LABELS)):
        state = _most_restrictive(decision, labels)
        if state is not None:
            headers.update(_trio(unit, state))
    if settings.RATELIMIT_IETF_HEADERS:
        headers.update(_ietf(decision))
    return headers


def retry_after_seconds(decision: Decision) -> int:
    return max(1, _ceil_div(decision.retry_after_us, 1_000_000))


def denial_headers(decision: Decision) -> dict[str, str]:
    """rate_headers plus Retry-After, retry-after-ms and, for a spent quota, x-should-retry."""
    headers = rate_headers(decision)
    headers["Retry-After"] = str(retry_after_seconds(decision))
    headers["retry-after-ms"] = str(max(1, _ceil_div(decision.retry_after_us, 1000)))
    if decision.binding is not None and decision.binding.limit.is_quota:
        headers["x-should-retry"] = "false"
    return headers


def _scope(record: KeyRecord, name: str) -> str:
    if name.startswith("key-"):
        return f"API key {record.key_id}"
    return f"tenant {record.tenant_slug}"


def denial_error(decision: Decision, record: KeyRecord) -> ApiError:
    """The 429 for a denied decision, naming the limit that tripped, with its headers."""
    state = decision.binding
    assert state is not None, "a denial always has a binding limit"
    limit = state.limit
    what = f"{limit.name} ({DESCRIPTIONS[limit.label]}) on {_scope(record, limit.name)}"
    wait = go_duration(decision.retry_after_us)
    headers = denial_headers(decision)
    if limit.is_quota:
        message = (
            f"You exceeded your quota: {what}, limit {limit.limit} tokens, "
            f"remaining {state.remaining}. It resets in {wait}."
        )
        return QuotaExhausted(message, headers=headers)
    message = (
        f"Rate limit reached for {what}: limit {limit.limit}, remaining {state.remaining}. "
        f"Please try again in {wait}."
    )
    error = RateLimited(message, headers=headers)
    # OpenAI reports which dimension tripped in `type`: requests or tokens.
    error.type = "tokens" if limit.kind is LimitKind.TOKENS else "requests"
    return error
