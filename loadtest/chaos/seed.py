"""The seed step: tenants and keys of the chaos run, made through the node's own services.

Runs in the orchestrator after django.setup() on the run's scratch database. The tokens go to
a file in the run's work directory (never the report, never the repository) for Locust.
"""

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tenants.models import ApiKey

# slug -> (tenant limits, {key name: key limit overrides}). Well-behaved tenants stay far within
# their limits; mallory floods far past hers (each key capped on its own too).
TENANTS: dict[str, tuple[dict, dict[str, dict]]] = {
    "acme": ({"rpm": 600, "tpm": 400_000}, {"acme-web": {}, "acme-batch": {}, "acme-ws": {}}),
    "globex": ({"rpm": 600, "tpm": 400_000}, {"globex-app": {}, "globex-revoked": {}}),
    "initech": ({"rpm": 300, "tpm": 200_000}, {"initech-app": {}, "initech-oversized": {}}),
    "mallory": (
        {"rpm": 12, "tpm": 3_000},
        {"mallory-1": {"rpm": 5}, "mallory-2": {"rpm": 5}, "mallory-3": {"rpm": 5}},
    ),
}
REVOKED = "globex-revoked"


@dataclass
class SeededKey:
    name: str
    tenant: str
    token: str
    key_id: str
    pk: int


def seed() -> dict:
    """Create the tenants and keys; returns the Locust seed (tokens included) and the limits."""
    from tenants.services import (
        api_key_issue,
        api_key_revoke,
        api_key_set_limits,
        tenant_create,
    )

    keys: dict[str, dict] = {}
    limits: dict[str, dict] = {"tenants": {}, "keys": {}}
    for slug, (tenant_limits, key_specs) in TENANTS.items():
        tenant = tenant_create(
            slug=slug, name=slug.title(), limits=tenant_limits, preset="unlimited", actor="chaos"
        )
        limits["tenants"][slug] = {
            **tenant_limits,
            "burst_percent": tenant.burst_percent,
            "pk": tenant.pk,
        }
        for name, overrides in key_specs.items():
            issued = api_key_issue(tenant=tenant, name=name, actor="chaos")
            key = issued.api_key
            if overrides:
                key = api_key_set_limits(api_key=key, changes=overrides, actor="chaos")
            keys[name] = {
                "tenant": slug,
                "token": issued.token,
                "key_id": key.key_id,
                "pk": key.pk,
            }
            limits["keys"][name] = {"tenant": slug, "pk": key.pk, **overrides}
    api_key_revoke(api_key=_key(keys[REVOKED]["pk"]), actor="chaos")
    prefix = keys["acme-web"]["token"].split("_", 1)[0]
    invalid = [
        "not-a-token",
        f"{prefix}_short",
        # Well-formed, but no such key id: the same few over and over, as a leaked list would be.
        *(f"{prefix}_{_base62(12)}_{_base62(40)}" for _ in range(3)),
        # A real key id with a wrong secret, and a revoked key.
        f"{prefix}_{keys['acme-web']['key_id']}_{_base62(40)}",
        keys[REVOKED]["token"],
    ]
    return {"keys": keys, "invalid_tokens": invalid, "limits": limits}


def _key(pk: int) -> "ApiKey":
    # Imported here: the models load only after the orchestrator's django.setup().
    from tenants.models import ApiKey

    return ApiKey.objects.get(pk=pk)


def _base62(length: int) -> str:
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    return "".join(secrets.choice(alphabet) for _ in range(length))
