"""How long the console's reads take on a month of per-minute rows, without and with the
indexes on `minute` (migration tenants 0002), measured in the same process.

Seeds (once) a scratch PostgreSQL database with UsageMinute rows for every key and minute of
the last DAYS days and a 429 row every 7th minute, then times the overview's selectors, the
tenant reads and the whole overview page, median of ROUNDS runs each: first with the two
indexes dropped (the baseline), then with them back. Run it against a database of its own:

  DATABASE_URL=postgres://postgres@127.0.0.1:5432/inference_node_console_bench \\
  REDIS_URL=redis://127.0.0.1:6379/13 .venv/bin/python loadtest/console_queries.py

It prints one line per read: the medians in milliseconds and their ratio. The indexes are left
in place, as the migrations define them.
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
from django.test import Client  # noqa: E402

from pages import charts, selectors  # noqa: E402
from tenants.models import Tenant, UsageMinute  # noqa: E402
from tenants.services import api_key_issue, tenant_create  # noqa: E402

SEED_USAGE = """
INSERT INTO tenants_usageminute
    (tenant_id, api_key_id, minute, requests, prompt_tokens, completion_tokens, errors)
SELECT k.tenant_id, k.id, m, 1 + (k.id + extract(minute from m)::int) %% 40,
       40 * (1 + (k.id + extract(minute from m)::int) %% 40), 900,
       (k.id + extract(minute from m)::int) %% 3
FROM tenants_apikey k
CROSS JOIN generate_series(date_trunc('minute', now()) - make_interval(days => %s),
                           date_trunc('minute', now()), interval '1 minute') AS m
"""
INDEXES = {
    "usage_minute_idx": "tenants_usageminute",
    "throttle_minute_idx": "tenants_throttleevent",
}
SEED_THROTTLES = """
INSERT INTO tenants_throttleevent
    (tenant_id, api_key_id, reason, minute, count, first_seen, last_seen, sample_addresses)
SELECT tenant_id, api_key_id, 'key-rpm', minute, 1 + requests % 9, minute, minute, '[]'::jsonb
FROM tenants_usageminute WHERE extract(minute from minute)::int % 7 = 0
"""


def seed(tenants: int, keys: int, days: int) -> None:
    if UsageMinute.objects.exists():
        return
    for t in range(tenants):
        tenant = tenant_create(slug=f"bench-{t}", actor="bench")
        for k in range(keys):
            api_key_issue(tenant=tenant, name=f"k{k}", actor="bench")
    with connection.cursor() as cursor:
        cursor.execute(SEED_USAGE, [days])
        cursor.execute(SEED_THROTTLES)
        cursor.execute("ANALYZE tenants_usageminute; ANALYZE tenants_throttleevent")


def set_indexes(present: bool) -> None:
    with connection.cursor() as cursor:
        for name, table in INDEXES.items():
            if present:
                cursor.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table} (minute)")
            else:
                cursor.execute(f"DROP INDEX IF EXISTS {name}")
            cursor.execute(f"ANALYZE {table}")


def median_ms(read: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        read()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def first_tenant() -> Tenant:
    tenant = Tenant.objects.first()
    assert tenant is not None  # seed() made them
    return tenant


def overview_client() -> Client:
    # Console pages need the tenants app's permissions besides staff status (pages/access.py).
    user, _ = get_user_model().objects.update_or_create(
        username="bench", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)
    return client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--keys", type=int, default=5, help="keys per tenant")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    seed(args.tenants, args.keys, args.days)
    win = selectors.window("24h")
    client = overview_client()
    reads: dict[str, Callable[[], object]] = {
        "node_totals": lambda: selectors.node_totals(win),
        "busiest_tenants": lambda: selectors.busiest_tenants(win),
        "most_throttled_tenants": lambda: selectors.most_throttled_tenants(win),
        "node_charts (3 series)": lambda: charts.node_charts(win),
        "tenants_with_usage": lambda: list(selectors.tenants_with_usage(win.start)),
        "tenant page charts": lambda: charts.key_charts(
            first_tenant(), list(first_tenant().keys.all()), win
        ),
        "GET /console/ (whole page)": lambda: client.get("/console/"),
        "GET /console/tenants/": lambda: client.get("/console/tenants/"),
        "GET /console/tenants/bench-0/": lambda: client.get("/console/tenants/bench-0/"),
    }
    rows = UsageMinute.objects.count()
    print(f"usage rows: {rows}, window: 24h, median of {args.rounds} runs (ms)")
    print(f"{'read':32s} {'no index':>9s} {'indexed':>9s} {'ratio':>6s}")
    set_indexes(False)
    before = {name: median_ms(read, args.rounds) for name, read in reads.items()}
    set_indexes(True)
    after = {name: median_ms(read, args.rounds) for name, read in reads.items()}
    for name in reads:
        ratio = before[name] / after[name]
        print(f"{name:32s} {before[name]:9.1f} {after[name]:9.1f} {ratio:5.1f}x")


if __name__ == "__main__":
    main()
