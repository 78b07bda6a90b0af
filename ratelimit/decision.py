"""The typed result of one admission check, from Redis (ADMIT's reply) or the local limiter."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ratelimit.limits import Limit


class LimitState(NamedTuple):
    """One limit after a decision: units left and microseconds until it is back to full
    (GCRA), until its period ends (quotas) or until the earliest lease expires (in-flight).
    A NamedTuple: one is built per limit per request, several times cheaper than a dataclass."""

    limit: Limit
    remaining: int
    reset_us: int


@dataclass(frozen=True)
class Decision:
    """Allowed or not, the binding limit when denied, how long to wait, and every limit's state."""

    allowed: bool
    binding: LimitState | None
    retry_after_us: int
    now_us: int
    states: tuple[LimitState, ...]

    @property
    def binding_name(self) -> str:
        return self.binding.limit.name if self.binding else "none"


def decode_reply(reply: bytes | str) -> list[int]:
    """ADMIT's reply string: integers separated by spaces."""
    text = reply.decode() if isinstance(reply, bytes) else reply
    return [int(v) for v in text.split()]


def parse_reply(limits: Sequence[Limit], reply: bytes | str) -> Decision:
    """ADMIT's reply {allowed, binding, retry, now, (remaining, reset) per limit}."""
    values = decode_reply(reply)
    states = tuple(
        LimitState(limit, values[4 + 2 * i], values[5 + 2 * i]) for i, limit in enumerate(limits)
    )
    binding = states[values[1] - 1] if values[1] > 0 else None
    return Decision(values[0] == 1, binding, values[2], values[3], states)
