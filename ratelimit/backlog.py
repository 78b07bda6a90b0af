"""Work the limiter could not finish in Redis, kept in this process until it can be.

- Settles that met a Redis error twice (or a cancellation mid-call) are queued and retried by
  the flusher thread. SETTLE is idempotent per lease id, so a retry of one that did run is a no-op.
- Usage of requests admitted without Redis (failure modes open and local) that Redis still could
  not take at settle time (COUNT_USAGE, see limiter.settle), errors that
  could not be counted in Redis, and the refusals of the in-process denial cache
  (ratelimit/denycache.py) are summed here per key and minute and written to Postgres by
  the flusher (ratelimit/flush.py). They are lost if the process dies first: the price of an
  outage, next to the unchecked admissions themselves. So that this window stays short, what
  is billed (usage, errors, queued settles) wakes the flusher at once (`pending`), rather than
  waiting for its next RATELIMIT_FLUSH_SECONDS; refusals wait (a flood of them must not turn
  into a stream of writes).
"""

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

import redis

from ratelimit.scripts import SETTLE, Arg

if TYPE_CHECKING:
    from tenants.keycache import KeyRecord

MAX_PENDING = 10_000
MAX_SAMPLED_ADDRESSES = 20  # the flusher keeps RATELIMIT_AUDIT_SAMPLE_ADDRESSES of them

UsageKey = tuple[int, int, int]  # tenant id, api key pk, minute (epoch seconds)
# Per UsageKey: [requests, prompt tokens, completion tokens, errors], UsageMinute's columns.
COLUMNS = 4


@dataclass(frozen=True)
class Call:
    """One SETTLE call: its KEYS and ARGV."""

    keys: list[str]
    args: list[Arg]


_pending: deque[Call] = deque(maxlen=MAX_PENDING)
_usage: dict[UsageKey, list[int]] = {}
# The same per adapter: (tenant id, api key pk, minute, adapter NAME) -> [requests, prompt
# tokens, completion tokens], AdapterUsageDay's columns.
AdapterUsageKey = tuple[int, int, int, str]
_adapter_usage: dict[AdapterUsageKey, list[int]] = {}
ThrottleKey = tuple[int, int, str, int]  # tenant id, api key pk, reason, minute (epoch s)


class ThrottleRow(TypedDict):
    """Per ThrottleKey: the refusals counted, first and last seen (epoch us), addresses."""

    n: int
    f: int
    l: int  # noqa: E741 (the letters of ADMIT's audit buffer fields)
    a: list[str]


_throttles: dict[ThrottleKey, ThrottleRow] = {}
# The event loop adds while the flusher thread takes.
_lock = threading.Lock()
# Set when billed work waits here: the flusher runs soon instead of at its next interval.
pending = threading.Event()


def defer(call: Call) -> None:
    with _lock:
        _pending.append(call)
    pending.set()


def pending_count() -> int:
    return len(_pending)


def retry_settles(client: redis.Redis) -> int:
    """Run queued settles in order; stop at the first error (it stays queued). Returns done."""
    done = 0
    while True:
        with _lock:
            if not _pending:
                return done
            call = _pending[0]
        SETTLE.run_sync(client, call.keys, call.args)
        with _lock:
            # Only this thread removes from the left; the loop may have appended meanwhile.
            if _pending and _pending[0] is call:
                _pending.popleft()
        done += 1


def _add(tenant_id: int, api_key_pk: int, values: tuple[int, ...]) -> None:
    minute = int(time.time()) // 60 * 60
    with _lock:
        row = _usage.setdefault((tenant_id, api_key_pk, minute), [0] * COLUMNS)
        for i, value in enumerate(values):
            row[i] += value
    pending.set()


def count_usage(
    tenant_id: int, api_key_pk: int, prompt: int, completion: int, adapter: str = ""
) -> None:
    if adapter:
        minute = int(time.time()) // 60 * 60
        with _lock:
            row = _adapter_usage.setdefault((tenant_id, api_key_pk, minute, adapter), [0, 0, 0])
            row[0], row[1], row[2] = row[0] + 1, row[1] + prompt, row[2] + completion
    _add(tenant_id, api_key_pk, (1, prompt, completion, 0))


def count_error(tenant_id: int, api_key_pk: int) -> None:
    _add(tenant_id, api_key_pk, (0, 0, 0, 1))


def count_throttle(record: "KeyRecord", reason: str, address: str) -> None:
    """One refusal made in process, for the 429 audit (as ADMIT counts Redis's own)."""
    now_us = time.time_ns() // 1000
    key = (record.tenant_id, record.api_key_pk, reason, now_us // 60_000_000 * 60)
    with _lock:
        row = _throttles.setdefault(key, {"n": 0, "f": now_us, "l": now_us, "a": []})
        row["n"] += 1
        row["l"] = now_us
        if address and address not in row["a"] and len(row["a"]) < MAX_SAMPLED_ADDRESSES:
            row["a"].append(address)


def take_throttles() -> dict[ThrottleKey, ThrottleRow]:
    """Every in-process refusal counted so far (give them back with restore_throttles())."""
    global _throttles
    with _lock:
        taken, _throttles = _throttles, {}
    return taken


def restore_throttles(rows: dict[ThrottleKey, ThrottleRow]) -> None:
    with _lock:
        for key, row in rows.items():
            mine = _throttles.setdefault(key, {"n": 0, "f": row["f"], "l": row["l"], "a": []})
            mine["n"] += row["n"]
            mine["f"], mine["l"] = min(mine["f"], row["f"]), max(mine["l"], row["l"])
            mine["a"] = list(dict.fromkeys(mine["a"] + row["a"]))[:MAX_SAMPLED_ADDRESSES]


def take_usage() -> dict[UsageKey, list[int]]:
    """Everything counted so far; the caller writes it or gives it back with restore_usage()."""
    global _usage
    with _lock:
        taken, _usage = _usage, {}
    return taken


def restore_usage(rows: dict[UsageKey, list[int]]) -> None:
    with _lock:
        for key, values in rows.items():
            row = _usage.setdefault(key, [0] * COLUMNS)
            for i, value in enumerate(values):
                row[i] += value


def take_adapter_usage() -> dict[AdapterUsageKey, list[int]]:
    """take_usage() of the usage per adapter."""
    global _adapter_usage
    with _lock:
        taken, _adapter_usage = _adapter_usage, {}
    return taken


def restore_adapter_usage(rows: dict[AdapterUsageKey, list[int]]) -> None:
    with _lock:
        for key, values in rows.items():
            row = _adapter_usage.setdefault(key, [0, 0, 0])
            for i, value in enumerate(values):
                row[i] += value


def clear() -> None:
    with _lock:
        _pending.clear()
        _usage.clear()
        _adapter_usage.clear()
        _throttles.clear()
