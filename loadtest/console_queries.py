"""How long the console's pages take at the scale of issue 17: 2 million per-minute usage
rows over 30 days, 200 tenants, one of them (bench-0) with 40 keys, read through the hourly and
daily rollups (migration tenants 0007), measured in the same process as the server time of each
page (Django's test client: middleware, view, queries and template, no network).

Seeds (once) a scratch PostgreSQL database: the tenants and keys through the services, the
usage rows by one INSERT ... SELECT over generate_series (about 19% of key-minutes in use, so
--rows rows in all), the rollups by the same rebuild as `manage.py rollup_usage` (timed), and a
429 row every 7th minute for the keys of one tenant in ten. Then it times, median of ROUNDS
runs: the overview, the tenants list and bench-0's page for the 24 h, 7-day and 30-day windows,
and the tenants' usage sums over 30 days from the raw minutes against the rollups. Run it
against a database of its own:

  psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE inference_node_console_bench"
  DATABASE_URL=postgres://postgres@127.0.0.1:5432/inference_node_console_bench \\
  REDIS_URL=redis://127.0.0.1:6379/13 .venv/bin/python loadtest/console_queries.py

It prints one line per read: the median and the slowest run in milliseconds.
"""

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.models import Sum  # noqa: E402
from django.test import Client  # noqa: E402

from pages import selectors  # noqa: E402
from tenants.models import ApiKey, Tenant, ThrottleEvent, UsageDay, UsageMinute  # noqa: E402
from tenants.services import api_key_issue, tenant_create, usage_rollups_rebuild  # noqa: E402
from tenants.usage import usage_sums  # noqa: E402

# Key-minutes in use: a fixed pattern (no randomness), `permille` of every key's minutes.
SEED_USAGE = """
INSERT INTO tenants_usageminute
    (tenant_id, api_key_id, minute, requests, prompt_tokens, completion_tokens, errors)
SELECT k.tenant_id, k.id, m, 1 + (k.id + i) %% 40, 40 * (1 + (k.id + i) %% 40), 900,
       (k.id + i) %% 3 / 2
FROM tenants_apikey k
CROSS JOIN generate_series(0, %s) AS i
CROSS JOIN LATERAL (SELECT date_trunc('minute', now()) - make_interval(mins => i) AS m) AS t
WHERE (k.id::bigint * 7919 + i::bigint * 104729) %% 1000 < %s
"""
SEED_THROTTLES = """
INSERT INTO tenants_throttleevent
    (tenant_id, api_key_id, reason, minute, count, first_seen, last_seen, sample_addresses)
SELECT tenant_id, api_key_id, 'key-rpm', minute, 1 + requests %% 9, minute, minute, '[]'::jsonb
FROM tenants_usageminute
WHERE extract(minute from minute)::int %% 7 = 0 AND tenant_id %% 10 = 0
"""
WINDOWS = ("24h", "7d", "30d")


def seed(tenants: int, big_keys: int, rows: int, days: int) -> None:
    """Each part once: a rerun after an interrupted seed completes it."""
    for t in range(tenants if not Tenant.objects.exists() else 0):
        tenant = tenant_create(slug=f"bench-{t}", actor="bench")
        for k in range(big_keys if t == 0 else 1):
            api_key_issue(tenant=tenant, name=f"k{k}", actor="bench")
    minutes = days * 24 * 60
    permille = max(1, round(1000 * rows / (ApiKey.objects.count() * minutes)))
    started = time.perf_counter()
    with connection.cursor() as cursor:
        if not UsageMinute.objects.exists():
            cursor.execute(SEED_USAGE, [minutes - 1, permille])
        if not ThrottleEvent.objects.exists():
            cursor.execute(SEED_THROTTLES, [])
    print(f"seeded usage in {time.perf_counter() - started:.1f} s")
    if not UsageDay.objects.exists():
        started = time.perf_counter()
        written = usage_rollups_rebuild()
        print(f"rollups rebuilt in {time.perf_counter() - started:.1f} s: {written}")
        with connection.cursor() as cursor:
            for table in ("usageminute", "usagehour", "usageday", "throttleevent"):
                cursor.execute(f"ANALYZE tenants_{table}")


def timings(read: Callable[[], object], rounds: int) -> tuple[float, float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        read()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times)


def console_client() -> Client:
    # Console pages need the tenants app's permissions besides staff status (pages/access.py).
    user, _ = get_user_model().objects.update_or_create(
        username="bench", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)
    return client


def page(client: Client, url: str) -> Callable[[], object]:
    def get() -> object:
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        return response

    return get


def raw_tenant_sums(start: object) -> object:
    rows = UsageMinute.objects.filter(minute__gte=start).values("tenant_id")
    return list(rows.order_by().annotate(requests=Sum("requests"), errors=Sum("errors")))


def reads(client: Client) -> dict[str, Callable[[], object]]:
    found: dict[str, Callable[[], object]] = {}
    for name in WINDOWS:
        query = f"?window={name}"
        found[f"GET /console/{query}"] = page(client, f"/console/{query}")
        found[f"GET /console/tenants/{query}"] = page(client, f"/console/tenants/{query}")
        found[f"GET /console/tenants/bench-0/{query}"] = page(
            client, f"/console/tenants/bench-0/{query}"
        )
    month = selectors.window("30d")
    found["tenant sums 30 d, raw minutes"] = lambda: raw_tenant_sums(month.start)
    found["tenant sums 30 d, rollups"] = lambda: usage_sums(
        month.start, month.end, by=("tenant_id",)
    )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--big-keys", type=int, default=40, help="keys of tenant bench-0")
    parser.add_argument("--rows", type=int, default=2_000_000, help="usage rows, about")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    seed(args.tenants, args.big_keys, args.rows, args.days)
    client = console_client()
    todo = reads(client)
    for read in todo.values():
        read()  # warm: templates compiled, connections open, caches filled
    counts = (UsageMinute.objects.count(), Tenant.objects.count(), ApiKey.objects.count())
    print(f"usage rows: {counts[0]}, tenants: {counts[1]}, keys: {counts[2]}")
    print(f"median and slowest of {args.rounds} runs (ms)")
    print(f"{'read':44s} {'median':>8s} {'max':>8s}")
    for name, read in todo.items():
        median, slowest = timings(read, args.rounds)
        print(f"{name:44s} {median:8.1f} {slowest:8.1f}")


if __name__ == "__main__":
    main()
