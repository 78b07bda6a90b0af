"""Small display helpers for the console templates."""

from typing import SupportsFloat

from django import template
from django.http import QueryDict

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
    """Whether an audited action belongs to a tenant (sign-ins, console users and adding or
    removing an adapter do not; granting and revoking one do)."""
    if action in ("adapter.added", "adapter.removed"):
        return False
    return not action.startswith(("console.", "user."))


@register.simple_tag
def sort_href(query: str, current: str, column: str) -> str:
    """The link of a sortable column header: sorts by `column`, descending first for numbers
    ("-requests"), and flips the direction when it is the current sort; keeps the other query
    parameters (search, window) and goes back to page 1."""
    params = QueryDict(query, mutable=True)
    params.pop("page", None)
    numeric = column not in ("slug", "name", "key_id")
    first = f"-{column}" if numeric else column
    flipped = column if current == f"-{column}" else f"-{column}"
    params["sort"] = flipped if current in (column, f"-{column}") else first
    return "?" + params.urlencode()


@register.filter
def num(value: object) -> str:
    """Counts as cards, tables and chart legends show them: whole, with thousands separators
    (12,345; None -> 0), so one figure reads the same wherever it appears."""
    if value is None or value == "":
        return "0"
    try:
        return f"{int(value):,}"  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return str(value)


@register.filter
def error_links(form: object) -> list[dict]:
    """A failed form's errors for its summary: each with the id of the field it links to
    (a multi-choice field links to its first option); errors of the whole form have none."""
    rows: list[dict] = []
    errors = getattr(form, "errors", None) or {}
    for name, messages in errors.items():
        field = form[name] if name != "__all__" else None  # type: ignore[index]
        anchor = ""
        if field is not None:
            anchor = field.id_for_label or (f"{field.auto_id}_0" if field.auto_id else "")
        label = str(field.label) if field is not None else ""
        rows.extend({"anchor": anchor, "label": label, "message": m} for m in messages)
    return rows
