"""The limiter's Lua scripts: read once at import, run by EVALSHA, reloaded on NOSCRIPT.

Redis empties its script cache on restart, on failover and on SCRIPT FLUSH, so any EVALSHA
may answer NOSCRIPT; each reload is counted (ratelimit_noscript_reloads_total).
"""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import redis
import redis.asyncio as aredis
from redis.exceptions import NoScriptError

from ratelimit.metrics import noscript_reloads

LUA_DIR = Path(__file__).resolve().parent / "lua"

Arg = str | int
# A script's reply as redis-py decodes it: a Lua string is bytes (no decode_responses), a
# number an int, a table a list. Covariant: every script's reply is an object (ALL).
Reply = TypeVar("Reply", covariant=True)


@dataclass(frozen=True)
class Script(Generic[Reply]):
    """One Lua file and its SHA1, callable on a sync or an asyncio client."""

    name: str
    source: str
    sha: str

    @classmethod
    def read(cls, name: str) -> "Script[Reply]":
        source = (LUA_DIR / f"{name}.lua").read_text()
        return cls(name, source, hashlib.sha1(source.encode()).hexdigest())  # noqa: S324

    async def run(self, client: aredis.Redis, keys: Sequence[str], args: Sequence[Arg]) -> Reply:
        """EVALSHA; on NOSCRIPT load the source once and call again."""
        # redis-py types every EVALSHA reply Any: what the script returns is in its header.
        reply: Reply
        try:
            reply = await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            noscript_reloads.inc()
            await client.script_load(self.source)
            reply = await client.evalsha(self.sha, len(keys), *keys, *args)
        return reply

    def run_sync(self, client: redis.Redis, keys: Sequence[str], args: Sequence[Arg]) -> Reply:
        """The same as run() for blocking clients (threads, commands)."""
        reply: Reply
        try:
            reply = client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            noscript_reloads.inc()
            client.script_load(self.source)
            reply = client.evalsha(self.sha, len(keys), *keys, *args)
        return reply


# Each one's reply, as its header in lua/ describes it.
ADMIT: Script[bytes | str] = Script.read("admit")
SETTLE: Script[list[int]] = Script.read("settle")
HEARTBEAT: Script[list[int]] = Script.read("heartbeat")
COUNT_ERROR: Script[int] = Script.read("count_error")
COUNT_USAGE: Script[int] = Script.read("count_usage")
CLAIM: Script[list[bytes]] = Script.read("claim")
ALL: tuple[Script[object], ...] = (ADMIT, SETTLE, HEARTBEAT, COUNT_ERROR, COUNT_USAGE, CLAIM)


async def preload(client: aredis.Redis) -> None:
    """Load every script now so the first request pays no NOSCRIPT round trip."""
    for script in ALL:
        await client.script_load(script.source)


def preload_sync(client: redis.Redis) -> None:
    """preload() for blocking clients (the flusher thread runs it when a worker starts)."""
    for script in ALL:
        client.script_load(script.source)
