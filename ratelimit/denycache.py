"""Keys that Redis just refused on a requests-per-minute limit are refused here, in process,
until the retry time Redis gave — without another round trip.

A flood from one key (the hostile tenant of the load test, a client stuck in a retry loop)
would otherwise cost one ADMIT per refusal. The shortcut is exact for requests-per-minute
limits only: their GCRA state (a theoretical arrival time) never moves back except by time
(SETTLE corrects token limits, never request limits), so a request of the same key is refused
by Redis for at least `retry_after` after a refusal, whoever else admits meanwhile. Token,
quota and in-flight refusals are not cached: a refund or a released lease can end them early.

An entry belongs to the KeyRecord it was made for; a limit change (a new record, within
API_KEY_VERSION_POLL_SECONDS) ends it. Refusals made here are audited through the process
backlog (ratelimit/backlog.py), which the flusher writes to ThrottleEvent like Redis's buffer.
"""

import time
from dataclasses import dataclass, replace

from django.conf import settings

from ratelimit.decision import Decision, LimitState
from ratelimit.limits import LimitKind
from tenants.keycache import KeyRecord

# A hair early rather than late: if this clock runs slow against Redis's, Redis decides.
MARGIN_US = 1000


@dataclass(frozen=True)
class Denial:
    """A refusal from Redis, and the monotonic time until which it certainly still holds."""

    record: KeyRecord
    decision: Decision
    made_at: float
    until: float


_denials: dict[int, Denial] = {}


def remember(record: KeyRecord, decision: Decision) -> None:
    """Keep a Redis refusal if it is one whose wait is certain (a requests-per-minute limit)."""
    binding = decision.binding
    if (
        not settings.RATELIMIT_DENY_CACHE
        or binding is None
        or binding.limit.kind is not LimitKind.REQUESTS
    ):
        return
    if decision.retry_after_us <= MARGIN_US:
        return
    now = time.monotonic()
    until = now + (decision.retry_after_us - MARGIN_US) / 1_000_000
    _denials[record.api_key_pk] = Denial(record, decision, now, until)


def still_denied(record: KeyRecord) -> Decision | None:
    """The refusal, aged to now, while it still holds for this very record; else None."""
    denial = _denials.get(record.api_key_pk)
    if denial is None:
        return None
    now = time.monotonic()
    if denial.record is not record or now >= denial.until:
        del _denials[record.api_key_pk]
        return None
    return _aged(denial.decision, int((now - denial.made_at) * 1_000_000))


def holds(record: KeyRecord) -> bool:
    """Whether a refusal of this very record still holds: still_denied() without building its
    aged decision (a cheap test before the refusal itself)."""
    denial = _denials.get(record.api_key_pk)
    return denial is not None and denial.record is record and time.monotonic() < denial.until


def _aged(decision: Decision, elapsed_us: int) -> Decision:
    # The constructor, not _replace(): about half the cost, on every refusal of a flood.
    states = tuple(
        LimitState(state.limit, state.remaining, max(0, state.reset_us - elapsed_us))
        for state in decision.states
    )
    # remember() keeps only refusals with a binding limit.
    assert decision.binding is not None
    binding = next(s for s in states if s.limit is decision.binding.limit)
    return replace(
        decision,
        binding=binding,
        states=states,
        now_us=decision.now_us + elapsed_us,
        retry_after_us=max(1, decision.retry_after_us - elapsed_us),
    )


def clear() -> None:
    _denials.clear()
