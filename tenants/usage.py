"""Reads of usage over any span, from the coarsest rows that cover it.

Usage is stored three times, in one transaction (tenants.services.usage_minutes_add): per key
and UTC minute (UsageMinute), hour (UsageHour) and day (UsageDay). A read of [start, end) is cut
into whole days, the whole hours at its edges and the minutes of its partial hours; each piece
is summed by the database from its own table, and Python adds the already-summed pieces. A
30-day read so touches about 30 rows per key instead of 43,200.
"""

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.db import models
from django.db.models import QuerySet, Sum
from django.db.models.functions import Trunc

from tenants.models import ThrottleEvent, UsageDay, UsageHour, UsageMinute

MINUTE, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
COLUMNS = ("requests", "prompt_tokens", "completion_tokens", "errors")
# Sums carried per group: the stored columns and tokens (prompt + completion).
Sums = dict[str, int]


@dataclass(frozen=True)
class Grain:
    """One of the three usage tables: its model, its time column and the span of a row."""

    model: type[models.Model]
    field: str
    step: timedelta
    kind: str  # Trunc's name for the step


GRAINS = (
    Grain(UsageDay, "day", DAY, "day"),
    Grain(UsageHour, "hour", HOUR, "hour"),
    Grain(UsageMinute, "minute", MINUTE, "minute"),
)


@dataclass(frozen=True)
class Piece:
    """A part [start, end) of a read, summed from one grain's rows."""

    grain: Grain
    start: datetime
    end: datetime


def _floor(moment: datetime, step: timedelta) -> datetime:
    # UTC days and hours both start at whole multiples of their length from the epoch.
    seconds = step.total_seconds()
    return datetime.fromtimestamp(moment.timestamp() // seconds * seconds, tz=UTC)


def _ceil(moment: datetime, step: timedelta) -> datetime:
    floor = _floor(moment, step)
    return floor if floor == moment else floor + step


def pieces(start: datetime, end: datetime, grains: Sequence[Grain] = GRAINS) -> list[Piece]:
    """Cut [start, end) into pieces, each the coarsest of `grains` whose rows tile it."""
    if start >= end:
        return []
    grain, finer = grains[0], grains[1:]
    if not finer:
        return [Piece(grain, start, end)]
    inner_start, inner_end = _ceil(start, grain.step), _floor(end, grain.step)
    if inner_start >= inner_end:
        return pieces(start, end, finer)
    return [
        *pieces(start, inner_start, finer),
        Piece(grain, inner_start, inner_end),
        *pieces(inner_end, end, finer),
    ]


def _rows(piece: Piece, where: dict[str, Any]) -> QuerySet[Any]:
    field = piece.grain.field
    bounds = {f"{field}__gte": piece.start, f"{field}__lt": piece.end}
    return piece.grain.model.objects.filter(**bounds, **where).order_by()  # type: ignore[attr-defined]


def _summed(rows: QuerySet[Any], by: Sequence[str]) -> Iterable[dict[str, Any]]:
    sums = {name: Sum(name) for name in COLUMNS}
    if not by:
        # values() of no column is every column: grouped by all of them, nothing is summed.
        return [rows.aggregate(**sums)]
    return rows.values(*by).annotate(**sums)


def _add(total: dict[tuple, Sums], rows: Iterable[dict[str, Any]], by: Sequence[str]) -> None:
    for row in rows:
        if all(row[name] is None for name in COLUMNS):
            continue  # an aggregate over no rows
        sums = total.setdefault(tuple(row[name] for name in by), dict.fromkeys(COLUMNS, 0))
        for name in COLUMNS:
            sums[name] += int(row[name] or 0)


def _with_tokens(total: dict[tuple, Sums]) -> dict[tuple, Sums]:
    for sums in total.values():
        sums["tokens"] = sums["prompt_tokens"] + sums["completion_tokens"]
    return total


def usage_sums(
    start: datetime, end: datetime, *, by: Sequence[str] = (), **where: Any
) -> dict[tuple, Sums]:
    """Requests, prompt/completion tokens, tokens and errors in [start, end) per group of `by`
    (columns such as "tenant_id" or "api_key_id"; none: one group, `()`), rows filtered by
    `where`. Groups without rows are absent."""
    total: dict[tuple, Sums] = {}
    for piece in pieces(start, end):
        _add(total, _summed(_rows(piece, where), by), by)
    return _with_tokens(total)


def usage_totals(start: datetime, end: datetime, **where: Any) -> Sums:
    """The sums of usage_sums over one group: zeros when there is no row."""
    empty = {**dict.fromkeys(COLUMNS, 0), "tokens": 0}
    return usage_sums(start, end, **where).get((), empty)


def usage_series(
    start: datetime, end: datetime, step: timedelta, *, by: Sequence[str] = (), **where: Any
) -> dict[tuple, Sums]:
    """usage_sums per bucket of `step` (a minute, an hour or a day) as well: keys are
    (bucket start, *group). Reads no grain finer than needed, none coarser than `step`."""
    grains = [g for g in GRAINS if g.step <= step]
    kind = next(g.kind for g in GRAINS if g.step == step)
    total: dict[tuple, Sums] = {}
    for piece in pieces(start, end, grains):
        bucket = Trunc(piece.grain.field, kind, output_field=models.DateTimeField(), tzinfo=UTC)
        rows = _rows(piece, where).annotate(bucket=bucket)
        _add(total, _summed(rows, ("bucket", *by)), ("bucket", *by))
    return _with_tokens(total)


# --- The billing export: per UTC day and key, usage and 429s ---------------------------------

EXPORT_COLUMNS = (
    "day",
    "tenant",
    "key_id",
    "key_name",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "errors",
    "throttled",
)
# A spreadsheet runs a cell that starts with one of these as a formula (key names are free text).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Days read per pair of queries: memory holds one chunk of rows, whatever the range.
EXPORT_CHUNK_DAYS = 7


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _export_chunk(start: datetime, end: datetime, where: dict[str, Any]) -> list[tuple]:
    key = ("day", "tenant__slug", "api_key__key_id", "api_key__name")
    usage = _summed(UsageDay.objects.filter(day__gte=start, day__lt=end, **where), key)
    day = Trunc("minute", "day", output_field=models.DateTimeField(), tzinfo=UTC)
    refused = (
        ThrottleEvent.objects.filter(minute__gte=start, minute__lt=end, **where)
        .order_by()
        .annotate(day=day)
        .values(*key)
        .annotate(throttled=Sum("count"))
    )
    rows: dict[tuple, list[int]] = {}
    for row in usage:
        rows[tuple(row[k] for k in key)] = [int(row[c]) for c in COLUMNS] + [0]
    for row in refused:
        rows.setdefault(tuple(row[k] for k in key), [0, 0, 0, 0, 0])[4] += int(row["throttled"])
    return [(k[0].date().isoformat(), k[1], k[2], _safe(k[3]), *v) for k, v in sorted(rows.items())]


def _safe(text: str) -> str:
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def usage_export_rows(first: date, last: date, *, tenant_id: int | None = None) -> Iterator[tuple]:
    """One row per UTC day and key (in EXPORT_COLUMNS order) with usage or 429s, days `first`
    to `last` inclusive, ordered by day, tenant slug and key id; read a few days at a time."""
    where = {"tenant_id": tenant_id} if tenant_id is not None else {}
    start, stop = day_start(first), day_start(last) + DAY
    while start < stop:
        end = min(start + EXPORT_CHUNK_DAYS * DAY, stop)
        yield from _export_chunk(start, end, where)
        start = end
