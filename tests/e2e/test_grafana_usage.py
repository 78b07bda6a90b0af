"""The per-tenant dashboard's SQL, run as Grafana's read-only role on the real schema."""

import os
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlparse

import psycopg
import pytest
from psycopg import errors

from tests.e2e.dashboards import DASHBOARDS, load, sql_queries
from tests.e2e.servers import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SCRIPT = REPO / "deploy" / "postgres" / "grafana-reader.sql"
MINUTE = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


def psql(url: str, env: dict[str, str], *args: str) -> None:
    result = subprocess.run(
        ["psql", url, "--no-psqlrc", "--quiet", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture
def reader(transactional_db: None) -> Iterator[psycopg.Connection]:
    """A connection as the role the grafana-db-grant job creates (a unique name per test)."""
    from conftest import database_url_for_current_test_db

    url = database_url_for_current_test_db()
    role, password = f"grafana_e2e_{uuid.uuid4().hex[:8]}", secrets.token_hex(16)
    env = {"GRAFANA_DB_USER": role, "GRAFANA_DB_PASSWORD": password}
    psql(url, env, "-f", str(SCRIPT))
    psql(url, env, "-f", str(SCRIPT))  # idempotent: the job runs after every migrate
    parsed = urlparse(url)
    connection = psycopg.connect(
        host=parsed.hostname,
        port=parsed.port,
        dbname=parsed.path.lstrip("/"),
        user=role,
        password=password,
        autocommit=True,
    )
    try:
        yield connection
    finally:
        connection.close()
        psql(url, {}, "-c", f'DROP OWNED BY "{role}"', "-c", f'DROP ROLE "{role}"')


@pytest.fixture
def usage() -> str:
    """A tenant with three minutes of usage and some 429s; its slug."""
    from tenants.models import ThrottleEvent, UsageMinute
    from tenants.services import api_key_issue, tenant_create

    tenant = tenant_create(slug="acme", name="Acme", actor="test")
    other = tenant_create(slug="other", name="Other", actor="test")
    for owner in (tenant, other):
        key = api_key_issue(tenant=owner, name="k", actor="test").api_key
        for n in range(3):
            minute = MINUTE + timedelta(minutes=n)
            UsageMinute.objects.create(
                tenant=owner,
                api_key=key,
                minute=minute,
                requests=2,
                prompt_tokens=10,
                completion_tokens=5,
                errors=n,
            )
        ThrottleEvent.objects.create(
            tenant=owner,
            api_key=key,
            reason="key-rpm",
            minute=MINUTE,
            count=7,
            first_seen=MINUTE,
            last_seen=MINUTE,
            sample_addresses=["203.0.113.7"],
        )
    return tenant.slug


def expand(sql: str, tenant: str) -> str:
    """Grafana's $__timeFilter macro and the $tenant variable, as Grafana sends them."""
    start, end = MINUTE - timedelta(hours=1), MINUTE + timedelta(hours=1)
    for column in ("u.minute", "e.minute"):
        sql = sql.replace(
            f"$__timeFilter({column})",
            f"{column} BETWEEN '{start.isoformat()}' AND '{end.isoformat()}'",
        )
    return sql.replace("$tenant", tenant)


def tenant_board() -> dict:
    return load(next(path for path in DASHBOARDS if path.stem == "tenant"))


def test_every_per_tenant_query_runs_as_the_reader_and_counts_one_tenant(
    reader: psycopg.Connection, usage: str
) -> None:
    results = [reader.execute(expand(sql, usage)).fetchall() for sql in sql_queries(tenant_board())]
    requests, tokens, throttles, total = results
    assert requests == [(MINUTE + timedelta(minutes=n), 2, n) for n in range(3)]
    assert all(row[1:] == (10, 5) for row in tokens)
    assert throttles == [(MINUTE, "key-rpm", 7)]
    assert total == [(45,)]


def test_the_tenant_variable_lists_tenants(reader: psycopg.Connection, usage: str) -> None:
    variable = tenant_board()["templating"]["list"][0]["query"]
    assert reader.execute(variable).fetchall() == [("acme",), ("other",)]


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT secret_hash FROM tenants_apikey",
        "SELECT sample_addresses FROM tenants_throttleevent",
        "SELECT * FROM tenants_tenant",
        "SELECT * FROM auth_user",
        "UPDATE tenants_tenant SET name = 'x'",
    ],
)
def test_the_reader_sees_nothing_else_and_writes_nothing(
    reader: psycopg.Connection, usage: str, statement: str
) -> None:
    with pytest.raises((errors.InsufficientPrivilege, errors.ReadOnlySqlTransaction)):
        reader.execute(statement)
