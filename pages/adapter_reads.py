"""What the console's adapter pages read: the registry with each adapter's tenant count, the
grants of an adapter or of a tenant (with when they were made), and the usage of an adapter
(per day and tenant) or of a tenant (per adapter) over a window's days. A fixed number of
queries per page, however many rows."""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Count, QuerySet

from pages.access import MANAGE_ADAPTERS, READ_ADAPTER
from pages.adapter_forms import GrantAdapterForm
from tenants.adapter_selectors import AdapterUsageRow, adapter_usage
from tenants.models import Adapter, AdapterGrant, Tenant


def adapters_with_counts() -> QuerySet[Adapter]:
    """Every registered adapter by name, with `tenant_count`: how many tenants hold it."""
    return Adapter.objects.annotate(tenant_count=Count("grants")).order_by("name")


def grants_of_adapter(adapter: Adapter) -> list[AdapterGrant]:
    """The adapter's grants by tenant slug, each with its tenant."""
    return list(adapter.grants.select_related("tenant").order_by("tenant__slug"))


def grants_of_tenant(tenant: Tenant) -> list[AdapterGrant]:
    """The tenant's grants by adapter name, each with its adapter."""
    return list(tenant.adapter_grants.select_related("adapter").order_by("adapter__name"))


@dataclass(frozen=True)
class UsageTotals:
    """Sums of adapter usage rows (one adapter of a tenant, or a whole table)."""

    adapter: str = ""
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def plus(self, row: "AdapterUsageRow | UsageTotals") -> "UsageTotals":
        return UsageTotals(
            self.adapter,
            self.requests + row.requests,
            self.prompt_tokens + row.prompt_tokens,
            self.completion_tokens + row.completion_tokens,
        )


def usage_total(rows: Iterable[AdapterUsageRow | UsageTotals]) -> UsageTotals:
    """The sums of usage rows, or of per-adapter sums."""
    total = UsageTotals()
    for row in rows:
        total = total.plus(row)
    return total


def usage_per_adapter(tenant: Tenant, first: date, last: date) -> list[UsageTotals]:
    """The tenant's usage of each adapter over the days first..last, by adapter name (removed
    adapters included: usage keeps the name)."""
    sums: dict[str, UsageTotals] = {}
    for row in adapter_usage(start=first, end=last, tenant=tenant):
        sums[row.adapter] = sums.get(row.adapter, UsageTotals(row.adapter)).plus(row)
    return [sums[name] for name in sorted(sums)]


def tenant_section(
    user: User | AnonymousUser,
    tenant: Tenant,
    days: tuple[date, date],
    form: GrantAdapterForm | None = None,
) -> dict | None:
    """The tenant page's Adapters section, or None for an account that may not read it."""
    if not user.has_perms(READ_ADAPTER):
        return None
    grants = grants_of_tenant(tenant)
    usage = usage_per_adapter(tenant, *days)
    # Usage keeps the name of a removed adapter: only registered ones get a link.
    names = [total.adapter for total in usage]
    registered = set(Adapter.objects.filter(name__in=names).values_list("name", flat=True))
    if form is None and user.has_perm(MANAGE_ADAPTERS):
        form = GrantAdapterForm(tenant=tenant)
    return {
        "grants": grants,
        "usage": usage,
        "usage_total": usage_total(usage),
        "granted": {grant.adapter.name for grant in grants},
        "registered": registered,
        "form": form,
    }
