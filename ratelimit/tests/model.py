"""A reference model of ADMIT, SETTLE and HEARTBEAT, written from docs/ratelimit.md and kept
apart from the Lua: plain Python integers and the datetime calendar. Property tests run both
on the same operations and require identical replies."""

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TypedDict

MINUTE = 60_000_000
DAY = 86_400_000_000


@dataclass
class Spec:
    kind: str
    limit: int
    burst: int
    name: str
    key: str


class Check(TypedDict):
    """One limit checked by admit(): its verdict, wait, (left, reset) after an admission and
    before it, how to apply it to a lease, and what the lease record keeps (cost, x)."""

    ok: bool
    wait: int
    after: tuple[int, int]
    before: tuple[int, int]
    apply: Callable[[str], None]
    record: tuple[int, int]


@dataclass
class Record:
    reserve: int
    items: list[tuple[str, str, int, int]]  # kind, key, cost, x (interval or period index)
    expires_us: int


def _epoch_us(day: date) -> int:
    return (day - date(1970, 1, 1)).days * DAY


def period(kind: str, now_us: int) -> tuple[int, int]:
    """(index, end in us) of the UTC day or month holding now."""
    today = datetime.fromtimestamp(now_us // 1_000_000, tz=UTC).date()
    if kind == "d":
        index = (today - date(1970, 1, 1)).days
        return index, (index + 1) * DAY
    following = date(today.year + today.month // 12, today.month % 12 + 1, 1)
    return today.year * 12 + today.month - 1, _epoch_us(following)


@dataclass
class Model:
    tats: dict[str, int] = field(default_factory=dict)
    quotas: dict[str, tuple[int, int]] = field(default_factory=dict)
    leases: dict[str, dict[str, int]] = field(default_factory=dict)
    records: dict[str, Record] = field(default_factory=dict)
    usage: Counter[tuple[int, str]] = field(default_factory=Counter)
    audit: Counter[str] = field(default_factory=Counter)

    def _gcra(self, s: Spec, now: int, reserve: int) -> Check:
        cost = 1 if s.kind == "r" else min(reserve, s.limit)
        interval = -(-MINUTE // s.limit)
        tat = max(self.tats.get(s.key, now), now)
        new = tat + cost * interval
        depth = max(s.burst, cost) * interval
        return {
            "ok": new - now <= depth,
            "wait": new - depth - now,
            "after": ((s.burst * interval - (new - now)) // interval, new - now),
            "before": ((s.burst * interval - (tat - now)) // interval, tat - now),
            "apply": lambda lease: self.tats.__setitem__(s.key, new),
            "record": (cost, interval),
        }

    def _quota(self, s: Spec, now: int, reserve: int) -> Check:
        index, end = period(s.kind, now)
        stored = self.quotas.get(s.key)
        used = stored[1] if stored and stored[0] == index else 0
        cost = min(reserve, s.limit)
        return {
            "ok": used + cost <= s.limit,
            "wait": end - now,
            "after": (s.limit - used - cost, end - now),
            "before": (s.limit - used, end - now),
            "apply": lambda lease: self.quotas.__setitem__(s.key, (index, used + cost)),
            "record": (cost, index),
        }

    def _inflight(self, s: Spec, now: int, lease_ttl_us: int, retry_cap: int) -> Check:
        live = [e for e in self.leases.get(s.key, {}).values() if e > now]
        reset = min(live) - now if live else lease_ttl_us

        def apply(lease: str) -> None:
            held = {k: e for k, e in self.leases.get(s.key, {}).items() if e > now}
            if lease:
                held[lease] = now + lease_ttl_us
            self.leases[s.key] = held

        return {
            "ok": len(live) < s.limit,
            "wait": min(reset, retry_cap),
            "after": (s.limit - len(live) - 1, reset),
            "before": (s.limit - len(live), reset),
            "apply": apply,
            "record": (0, 0),
        }

    def admit(self, now: int, specs: list[Spec], reserve: int, lease: str, **ttl: int) -> list[int]:
        checks: list[Check] = []
        for s in specs:
            if s.kind in "rt":
                checks.append(self._gcra(s, now, reserve))
            elif s.kind in "dm":
                checks.append(self._quota(s, now, reserve))
            else:
                checks.append(self._inflight(s, now, ttl["lease_ms"] * 1000, ttl["retry_us"]))
        binding, retry, binding_quota = 0, 0, False
        for i, (s, c) in enumerate(zip(specs, checks, strict=True), start=1):
            if c["ok"]:
                continue
            quota = s.kind in "dm"
            if binding == 0 or (quota and not binding_quota):
                binding, retry, binding_quota = i, c["wait"], quota
            elif quota == binding_quota and c["wait"] > retry:
                binding, retry = i, c["wait"]
        allowed = binding == 0
        reply = [1 if allowed else 0, binding, retry, now]
        for c in checks:
            left, reset = c["after"] if allowed else c["before"]
            reply += [max(left, 0), max(reset, 0)]
        if not allowed:
            self.audit[specs[binding - 1].name] += 1
            return reply
        for c in checks:
            c["apply"](lease)
        if lease:
            items = [(s.kind, s.key, *c["record"]) for s, c in zip(specs, checks, strict=True)]
            self.records[lease] = Record(reserve, items, now + ttl["record_ms"] * 1000)
        return reply

    def _live_record(self, lease: str, now: int) -> Record | None:
        record = self.records.get(lease)
        if record is not None and record.expires_us <= now:
            del self.records[lease]
            return None
        return record

    def settle(self, now: int, lease: str, prompt: int, completion: int) -> list[int]:
        record = self._live_record(lease, now)
        if record is None:
            return [0, 0, now]
        actual = prompt + completion
        for kind, key, cost, x in record.items:
            delta = actual - cost
            if kind == "t" and delta:
                new = max(self.tats.get(key, now), now) + delta * x
                if new <= now:
                    self.tats.pop(key, None)
                else:
                    self.tats[key] = new
            elif kind in "dm" and delta and key in self.quotas and self.quotas[key][0] == x:
                self.quotas[key] = (x, max(self.quotas[key][1] + delta, 0))
            elif kind == "c":
                self.leases.get(key, {}).pop(lease, None)
        del self.records[lease]
        minute = now // MINUTE * 60
        self.usage[(minute, "r")] += 1
        self.usage[(minute, "p")] += prompt
        self.usage[(minute, "c")] += completion
        return [1, actual - record.reserve, now]

    def heartbeat(self, now: int, lease: str, lease_ms: int, record_ms: int) -> list[int]:
        record = self._live_record(lease, now)
        if record is None:
            return [0, now]
        alive = 1
        for kind, key, _, _ in record.items:
            if kind != "c":
                continue
            expiry = self.leases.get(key, {}).get(lease)
            if expiry is not None and expiry > now:
                self.leases[key][lease] = now + lease_ms * 1000
            else:
                alive = 0
        record.expires_us = now + record_ms * 1000
        return [alive, now]
