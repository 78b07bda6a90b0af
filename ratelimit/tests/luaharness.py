"""Run the limiter's real Lua files in-process (lupa, Lua 5.1 as in Redis) against a small
Python stand-in for the Redis commands they use, with a clock the test sets.

Only the commands our scripts call are implemented, with Redis's reply shapes: nil bulk as
false, arrays as 1-based tables, integers as numbers, Lua numbers in replies truncated.
"""

import math
from collections.abc import Sequence
from typing import Any, TypeVar

import lupa.lua51 as lua51

from ratelimit.decision import decode_reply
from ratelimit.scripts import ADMIT, HEARTBEAT, SETTLE, Script

R = TypeVar("R")  # a script's reply


def _arg(value: Any) -> str:
    # How Redis turns a Lua argument into a string: integral numbers print as integers.
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def _score(text: str) -> tuple[float, bool]:
    """(bound, exclusive) from a ZRANGEBYSCORE bound like '(123', '+inf' or '5'."""
    exclusive = text.startswith("(")
    text = text[1:] if exclusive else text
    return float(text), exclusive


def _in_range(score: float, low: tuple[float, bool], high: tuple[float, bool]) -> bool:
    above = score > low[0] if low[1] else score >= low[0]
    below = score < high[0] if high[1] else score <= high[0]
    return above and below


class FakeRedis:
    """Strings, hashes and sorted sets with ms expiry on a test-controlled clock (us)."""

    def __init__(self, now_us: int) -> None:
        self.now_us = now_us
        self.data: dict[str, Any] = {}
        self.expires: dict[str, int] = {}  # key -> expiry instant, us
        self.lua = lua51.LuaRuntime(unpack_returned_tuples=True)
        self._functions: dict[str, Any] = {}
        self._redis_table = self.lua.table_from({"call": self._call})

    # --- keyspace ---------------------------------------------------------------------------
    def _alive(self, key: str) -> bool:
        expiry = self.expires.get(key)
        if expiry is not None and expiry <= self.now_us:
            self.data.pop(key, None)
            self.expires.pop(key, None)
        return key in self.data

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(k for k in list(self.data) if self._alive(k) and k.startswith(prefix))

    def dump(self, prefix: str = "rl:") -> dict[str, Any]:
        """A comparable copy of every live key under prefix, with its expiry."""
        out = {}
        for key in self.keys(prefix):
            value = self.data[key]
            out[key] = (dict(value) if isinstance(value, dict) else value, self.expires.get(key))
        return out

    def pttl(self, key: str) -> int:
        if not self._alive(key):
            return -2
        expiry = self.expires.get(key)
        return -1 if expiry is None else math.ceil((expiry - self.now_us) / 1000)

    # --- commands ---------------------------------------------------------------------------
    def _call(self, name: str, *raw: Any) -> Any:
        args = [_arg(a) for a in raw]
        handler = getattr(self, f"cmd_{_arg(name).lower()}")
        return handler(*args)

    def _table(self, items: Sequence[Any]) -> Any:
        return self.lua.table_from(list(items))

    def cmd_time(self) -> Any:
        return self._table([str(self.now_us // 1_000_000), str(self.now_us % 1_000_000)])

    def cmd_get(self, key: str) -> Any:
        return self.data[key] if self._alive(key) else False

    def cmd_set(self, key: str, value: str, *options: str) -> Any:
        self.data[key] = value
        self.expires.pop(key, None)
        if options and options[0].upper() == "PX":
            self.expires[key] = self.now_us + int(options[1]) * 1000
        return "OK"

    def cmd_del(self, *keys: str) -> int:
        removed = 0
        for key in keys:
            if self._alive(key):
                del self.data[key]
                self.expires.pop(key, None)
                removed += 1
        return removed

    def cmd_pexpire(self, key: str, ms: str) -> int:
        if not self._alive(key):
            return 0
        self.expires[key] = self.now_us + int(ms) * 1000
        return 1

    def cmd_pttl(self, key: str) -> int:
        return self.pttl(key)

    def _hash(self, key: str) -> dict[str, str]:
        if not self._alive(key):
            self.data[key] = {}
        values: dict[str, str] = self.data[key]
        return values

    def _drop_if_empty(self, key: str) -> None:
        if key in self.data and not self.data[key]:
            del self.data[key]
            self.expires.pop(key, None)

    def cmd_hget(self, key: str, field: str) -> Any:
        return self.data[key].get(field, False) if self._alive(key) else False

    def cmd_hmget(self, key: str, *fields: str) -> Any:
        values = self.data[key] if self._alive(key) else {}
        return self._table([values.get(f, False) for f in fields])

    def cmd_hgetall(self, key: str) -> Any:
        values = self.data[key] if self._alive(key) else {}
        return self._table([item for pair in values.items() for item in pair])

    def cmd_hset(self, key: str, *pairs: str) -> int:
        values = self._hash(key)
        added = sum(1 for f in pairs[::2] if f not in values)
        values.update(zip(pairs[::2], pairs[1::2], strict=True))
        return added

    def cmd_hsetnx(self, key: str, field: str, value: str) -> int:
        values = self._hash(key)
        if field in values:
            return 0
        values[field] = value
        return 1

    def cmd_hincrby(self, key: str, field: str, amount: str) -> int:
        values = self._hash(key)
        values[field] = str(int(values.get(field, "0")) + int(amount))
        return int(values[field])

    def cmd_sadd(self, key: str, *members: str) -> int:
        # The dirty-buffer index (a set): members kept as a dict's keys.
        values: dict[str, None] = self.data[key] if self._alive(key) else {}
        self.data[key] = values
        added = sum(1 for m in members if m not in values)
        values.update(dict.fromkeys(members))
        return added

    def _zset(self, key: str) -> dict[str, float]:
        if not self._alive(key):
            self.data[key] = {}
        members: dict[str, float] = self.data[key]
        return members

    def cmd_zadd(self, key: str, *args: str) -> int:
        xx = args[0].upper() == "XX"
        score, member = (args[1], args[2]) if xx else (args[0], args[1])
        members = self._zset(key)
        if xx and member not in members:
            self._drop_if_empty(key)
            return 0
        added = 0 if member in members else 1
        members[member] = float(score)
        return added

    def cmd_zrem(self, key: str, member: str) -> int:
        if not self._alive(key):
            return 0
        removed = 1 if self.data[key].pop(member, None) is not None else 0
        self._drop_if_empty(key)
        return removed

    def cmd_zscore(self, key: str, member: str) -> Any:
        if not self._alive(key) or member not in self.data[key]:
            return False
        return _arg(self.data[key][member])

    def _zrange(self, key: str, low: str, high: str) -> list[tuple[str, float]]:
        if not self._alive(key):
            return []
        bounds = _score(low), _score(high)
        items = sorted(self.data[key].items(), key=lambda item: (item[1], item[0]))
        return [(m, s) for m, s in items if _in_range(s, *bounds)]

    def cmd_zcount(self, key: str, low: str, high: str) -> int:
        return len(self._zrange(key, low, high))

    def cmd_zrangebyscore(self, key: str, low: str, high: str, *options: str) -> Any:
        items = self._zrange(key, low, high)
        upper = [o.upper() for o in options]
        if "LIMIT" in upper:
            at = upper.index("LIMIT")
            offset, count = int(options[at + 1]), int(options[at + 2])
            items = items[offset : offset + count]
        flat: list[str] = []
        for member, score in items:
            flat.append(member)
            if "WITHSCORES" in upper:
                flat.append(_arg(score))
        return self._table(flat)

    def cmd_zremrangebyscore(self, key: str, low: str, high: str) -> int:
        doomed = self._zrange(key, low, high)
        for member, _ in doomed:
            del self.data[key][member]
        self._drop_if_empty(key)
        return len(doomed)

    # --- scripts ----------------------------------------------------------------------------
    def _function(self, script: Script[object]) -> Any:
        if script.name not in self._functions:
            self._functions[script.name] = self.lua.execute(
                "return function(KEYS, ARGV, redis) " + script.source + "\nend"
            )
        return self._functions[script.name]

    def _reply(self, value: Any) -> Any:
        if lupa_typeof(value) == "table":
            items = []
            index = 1
            while value[index] is not None:
                items.append(self._reply(value[index]))
                index += 1
            return items
        if isinstance(value, float):
            return int(value)  # Redis truncates Lua numbers in replies
        return value

    def run(self, script: Script[R], keys: Sequence[str], args: Sequence[Any]) -> R:
        function = self._function(script)
        lua_keys = self._table([str(k) for k in keys])
        lua_args = self._table([str(a) for a in args])
        # Shaped as redis-py replies, so of the type the script declares.
        reply: R = self._reply(function(lua_keys, lua_args, self._redis_table))
        return reply

    def admit(self, keys: Sequence[str], args: Sequence[Any]) -> list[int]:
        return decode_reply(self.run(ADMIT, keys, args))

    def settle(self, keys: Sequence[str], args: Sequence[Any]) -> list[int]:
        return self.run(SETTLE, keys, args)

    def heartbeat(self, keys: Sequence[str], args: Sequence[Any]) -> list[int]:
        return self.run(HEARTBEAT, keys, args)


def lupa_typeof(value: Any) -> str:
    return lua51.lua_type(value) or type(value).__name__
