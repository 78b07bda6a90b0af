"""Writes of the LoRA adapter registry and its grants: each one atomic, audited with its actor,
and announced after commit, to the key caches of every process (a key's record carries its
tenant's granted adapters) and, for the registry itself, to every engine (inference/adapters.py
polls REGISTRY_VERSION_KEY and hands the engine the whole registry when it moved)."""

import logging
import re
import uuid
from collections.abc import Iterable
from functools import partial
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction

from core.adapters import AdapterInvalid, check_adapter_folder
from core.redis import get_sync_redis
from tenants import keycache
from tenants.models import ADAPTER_NAME_REGEX, Adapter, AdapterGrant, AdminAction, ApiKey, Tenant

logger = logging.getLogger(__name__)

# models.ADAPTER_NAME_REGEX, matched whole (fullmatch: a trailing newline does not pass `$`).
NAME_PATTERN = re.compile(ADAPTER_NAME_REGEX)
# Moved by every add and remove, after commit: a random value, not a counter, so a Redis restart
# can never replay an old version.
REGISTRY_VERSION_KEY = "adapters:v1:version"


class AdapterRefused(ValueError):
    """An adapter operation that cannot be done as asked; the message is fit to show a user."""


def adapter_add(*, name: str, path: str, actor: str) -> Adapter:
    """Register the peft LoRA folder at `path` under `name`, once it checks out against the
    served base (core/adapters.py); the engines learn of it within their registry poll."""
    if not NAME_PATTERN.fullmatch(name or ""):
        raise AdapterRefused(
            "an adapter name is 1-64 characters: lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if name in _base_model_names():
        raise AdapterRefused(f"{name!r} is the served base model's name; choose another")
    if not (path or "").strip():
        raise AdapterRefused("give the adapter's folder on this server")
    folder = Path(path.strip()).expanduser().resolve()
    try:
        info = check_adapter_folder(folder)
    except AdapterInvalid as exc:
        raise AdapterRefused(f"the folder is not an adapter this node can serve: {exc}") from None
    try:
        with transaction.atomic():
            adapter = Adapter.objects.create(
                name=name,
                path=str(folder),
                rank=info.rank,
                target_modules=list(info.target_modules),
            )
            _audit(AdminAction.Action.ADAPTER_ADDED, actor=actor, after=_described(adapter))
            transaction.on_commit(registry_bump)
    except IntegrityError:
        raise AdapterRefused(f"an adapter named {name!r} already exists") from None
    return adapter


def adapter_remove(*, adapter: Adapter, actor: str) -> None:
    """Remove an adapter and its grants: its tenants lose it within the key cache's poll, the
    engines within their registry poll (running rows finish); its usage rows stay."""
    with transaction.atomic():
        adapter = _locked(adapter)
        tenants = list(Tenant.objects.filter(adapter_grants__adapter=adapter))
        before = {**_described(adapter), "tenants": [t.slug for t in tenants]}
        adapter.delete()
        _audit(AdminAction.Action.ADAPTER_REMOVED, actor=actor, before=before)
        _announce_grants(tenants)
        transaction.on_commit(registry_bump)


def adapter_grant(*, adapter: Adapter, tenant: Tenant, actor: str) -> AdapterGrant:
    """Let a tenant's keys decode with an adapter (`model: NAME`), within the key cache's poll."""
    with transaction.atomic():
        adapter = _locked(adapter)
        if AdapterGrant.objects.filter(adapter=adapter, tenant=tenant).exists():
            raise AdapterRefused(f"{adapter.name!r} is already granted to {tenant.slug!r}")
        grant = AdapterGrant.objects.create(adapter=adapter, tenant=tenant)
        after = {"adapter": adapter.name}
        _audit(AdminAction.Action.ADAPTER_GRANTED, actor=actor, tenant=tenant, after=after)
        _announce_grants([tenant])
    return grant


def adapter_revoke(*, adapter: Adapter, tenant: Tenant, actor: str) -> None:
    """Take an adapter from a tenant: its keys get 404 model_not_found for it within the key
    cache's poll, open WebSockets included."""
    with transaction.atomic():
        adapter = _locked(adapter)
        deleted, _ = AdapterGrant.objects.filter(adapter=adapter, tenant=tenant).delete()
        if not deleted:
            raise AdapterRefused(f"{adapter.name!r} is not granted to {tenant.slug!r}")
        before = {"adapter": adapter.name}
        _audit(AdminAction.Action.ADAPTER_REVOKED, actor=actor, tenant=tenant, before=before)
        _announce_grants([tenant])


def registry_bump() -> None:
    """Tell every process's engine that the registry changed (call after commit)."""
    try:
        get_sync_redis().set(REGISTRY_VERSION_KEY, uuid.uuid4().hex)
    except Exception as exc:  # Redis down: the registry poll rereads once it can reach Redis
        logger.warning("adapters: cannot bump the registry version (%s)", type(exc).__name__)


def _base_model_names() -> set[str]:
    # The names of the base a request may send that an adapter's could equal (no slash): as
    # inference/engines.py served_model_names() derives them from the same two settings.
    names = {settings.INFERENCE_MODEL_NAME, Path(settings.INFERENCE_MODEL).name}
    return names - {""}


def _locked(adapter: Adapter) -> Adapter:
    # Grants and removal of one adapter take its row lock first: a grant cannot slip in beside
    # a removal and be announced for an adapter that is gone.
    try:
        return Adapter.objects.select_for_update().get(pk=adapter.pk)
    except Adapter.DoesNotExist:
        raise AdapterRefused(f"the adapter {adapter.name!r} no longer exists") from None


def _announce_grants(tenants: Iterable[Tenant]) -> None:
    # After commit only: a process that reloads on the signal must see the committed grants.
    key_ids = list(ApiKey.objects.filter(tenant__in=list(tenants)).values_list("key_id", flat=True))
    transaction.on_commit(partial(keycache.bump_version, key_ids))


def _described(adapter: Adapter) -> dict[str, object]:
    return {
        "name": adapter.name,
        "path": adapter.path,
        "rank": adapter.rank,
        "target_modules": adapter.target_modules,
    }


def _audit(action: str, *, actor: str, tenant: Tenant | None = None, **data: object) -> None:
    AdminAction.objects.create(
        actor=actor,
        action=action,
        tenant=tenant,
        before=data.get("before"),
        after=data.get("after"),
    )
