"""Small display helpers for the console templates."""

from typing import SupportsFloat

from django import template

from pages.charts import compact as compact_number
from tenants.models import LIMIT_FIELDS

register = template.Library()


@register.filter
def compact(value: SupportsFloat | None) -> str:
    """12345 -> 12.3k; None -> 0."""
    return compact_number(float(value or 0))


def _show(name: str, value: object) -> str:
    if value is None:
        return "no limit" if name in LIMIT_FIELDS else "—"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "—"
    return str(value)


@register.filter
def changes(action: object) -> list[dict]:
    """An audited action's before/after as rows (field, before, after, changed)."""
    before = getattr(action, "before", None) or {}
    after = getattr(action, "after", None) or {}
    names = list(after) + [name for name in before if name not in after]
    return [
        {
            "field": name,
            "before": _show(name, before.get(name)) if name in before else "",
            "after": _show(name, after.get(name)) if name in after else "",
            "changed": bool(before) and before.get(name) != after.get(name),
        }
        for name in names
    ]


@register.filter
def tenant_scoped(action: str) -> bool:
    """Whether an audited action belongs to a tenant (sign-ins and console users do not)."""
    return not action.startswith(("console.", "user."))
