"""Reads of the adapter registry, its grants and the usage per adapter."""

from dataclasses import dataclass
from datetime import date

from django.db.models import Sum

from tenants.models import Adapter, AdapterUsageDay, Tenant


@dataclass(frozen=True)
class AdapterUsageRow:
    """One tenant's requests and tokens with one adapter on one UTC day."""

    day: date
    tenant: str  # the tenant's slug
    adapter: str  # the adapter's NAME (also of one removed since)
    requests: int
    prompt_tokens: int
    completion_tokens: int


def tenant_adapters(tenant: Tenant) -> list[Adapter]:
    """The adapters granted to a tenant, by name."""
    return list(Adapter.objects.filter(grants__tenant=tenant).order_by("name"))


def adapter_tenants(adapter: Adapter) -> list[Tenant]:
    """The tenants an adapter is granted to, by slug."""
    return list(Tenant.objects.filter(adapter_grants__adapter=adapter).order_by("slug"))


def adapter_usage(
    *, start: date, end: date, tenant: Tenant | None = None, adapter: str | None = None
) -> list[AdapterUsageRow]:
    """Usage per day, tenant and adapter for the UTC days start..end (both included), newest
    day first."""
    rows = AdapterUsageDay.objects.filter(day__gte=start, day__lte=end)
    if tenant is not None:
        rows = rows.filter(tenant=tenant)
    if adapter is not None:
        rows = rows.filter(adapter=adapter)
    sums = (
        rows.values("day", "tenant__slug", "adapter")
        .annotate(r=Sum("requests"), p=Sum("prompt_tokens"), c=Sum("completion_tokens"))
        .order_by("-day", "tenant__slug", "adapter")
    )
    return [
        AdapterUsageRow(
            day=row["day"],
            tenant=row["tenant__slug"],
            adapter=row["adapter"],
            requests=row["r"],
            prompt_tokens=row["p"],
            completion_tokens=row["c"],
        )
        for row in sums
    ]
