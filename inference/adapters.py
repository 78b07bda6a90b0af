"""Per-tenant LoRA adapters on the request path: which names a key may send as `model`, and the
engine's registry (Engine.set_adapters) kept equal to the Adapter table.

Every add and remove moves a Redis version key after commit (tenants/adapters.py); a request
reads it at most every API_KEY_VERSION_POLL_SECONDS (as the key cache reads its own) and, when
it moved, the whole registry is read from Postgres once and handed to the engine. No thread, no
read at import: a process that serves no request reads nothing. A grant is not the registry's
business: it travels in the key's record (KeyRecord.adapters) and so reaches open WebSockets
within the key cache's poll."""

import logging
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, close_old_connections

from core.redis import get_redis
from engine.runtime import Engine
from tenants.adapters import REGISTRY_VERSION_KEY
from tenants.keycache import KeyRecord
from tenants.models import Adapter

logger = logging.getLogger(__name__)


def granted_adapters(record: KeyRecord) -> list[str]:
    """The adapter names a key may use, sorted."""
    return sorted(record.adapters)


class AdapterRegistry:
    """What this process last handed its engine, and when it last looked at the version."""

    _NEVER = object()

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything (tests: each starts from the table as it is)."""
        self._version: object = self._NEVER
        self._engine: Engine | None = None
        self._checked_at = float("-inf")

    async def sync(self, engine: Engine) -> bool:
        """Hand `engine` the registry if it moved since this process last looked (or the engine
        is not the one it was handed to); at most one look per poll interval. False when the
        look failed (Redis or Postgres away): the next call looks again."""
        now = time.monotonic()
        fresh = engine is self._engine
        if fresh and now - self._checked_at < settings.API_KEY_VERSION_POLL_SECONDS:
            return True
        # Mark first: concurrent requests in this loop skip the poll instead of piling up.
        self._checked_at = now
        try:
            version = await get_redis().get(REGISTRY_VERSION_KEY)
        except Exception as exc:  # Redis down: keep the registry the engine has
            logger.warning("adapters: cannot read the registry version (%s)", type(exc).__name__)
            return False
        if fresh and version == self._version:
            return True
        try:
            registry = await _load_registry()
        except DatabaseError as exc:  # Postgres away: keep the registry, retry at the next poll
            logger.warning("adapters: cannot read the registry (%s)", type(exc).__name__)
            return False
        # Two reloads may overlap (one slower than the poll): the one that read first may land
        # last, but then its version is not Redis's, and the next poll reloads.
        if registry != engine.adapters:  # an unchanged registry is not handed again
            engine.set_adapters(registry)
        self._version, self._engine = version, engine
        return True


# Not thread-sensitive, as the key cache's loader (tenants/keycache.py): a slow Postgres must not
# hold up the one thread every other synchronous database call of this process waits for.
@sync_to_async(thread_sensitive=False)
def _load_registry() -> dict[str, str]:
    try:
        return dict(Adapter.objects.values_list("name", "path"))
    finally:
        close_old_connections()


adapter_registry = AdapterRegistry()
