"""The app through the real PgBouncer in transaction pooling, as the non-superuser app role.

PgBouncer runs on the project's own deploy/pgbouncer/pgbouncer.ini (only the Postgres address,
the listen address and the file paths replaced) in front of the test database; the role is the
one deploy/postgres/app-role.sql makes. A live daphne on the tiny model loads keys, serves
completions and flushes usage through it; many threads repeat the same ORM queries and stream
rows with .iterator() through it. Transaction pooling breaks a server-side cursor (a control
test shows it without DATABASE_POOLER) and statements psycopg prepares (Django binds on the
client by default, so only with OPTIONS server_side_binding; DATABASE_POOLER turns both off).
"""

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import psycopg
import pytest
from psycopg import errors

from tests.e2e.live_daphne import start_daphne, wait_ready
from tests.e2e.servers import REPO, Server, require_binary, start, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ROLE_SQL = REPO / "deploy" / "postgres" / "app-role.sql"
INI = REPO / "deploy" / "pgbouncer" / "pgbouncer.ini"
# This suite's loopback ports (the range its helper was given), so parallel runs never collide.
PORTS = range(7800, 7900)
# One pepper for every process a test starts: the keys they issue and check must agree.
PEPPER = secrets.token_urlsafe(48)
# What transaction pooling does to a statement prepared, or a cursor opened, on another server
# connection.
PREPARED_ERROR = re.compile(
    r'(prepared statement|cursor|portal) "[^"]+" (does not exist|already exists)', re.I
)


@dataclass
class AppRole:
    """The app role and the test database, as the owner and as the role see them."""

    name: str
    password: str
    owner_url: str
    database: str


@dataclass
class Bouncer:
    """A running PgBouncer and the URL the app role connects with."""

    server: Server
    port: int
    url: str


def psql(url: str, env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        ["psql", url, "--no-psqlrc", "--quiet", "-At", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def loopback_port() -> int:
    for port in PORTS:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 7800-7899")


@pytest.fixture
def app_role(transactional_db: None) -> Iterator[AppRole]:
    from conftest import database_url_for_current_test_db

    url = database_url_for_current_test_db()
    role = AppRole(f"node_app_e2e_{uuid.uuid4().hex[:8]}", secrets.token_hex(16), url, "")
    role.database = urlparse(url).path.lstrip("/")
    env = {"APP_DB_USER": role.name, "APP_DB_PASSWORD": role.password}
    psql(url, env, "-f", str(ROLE_SQL))
    psql(url, env, "-f", str(ROLE_SQL))  # idempotent: compose runs it after every migrate
    try:
        yield role
    finally:
        psql(url, {}, "-c", f'DROP OWNED BY "{role.name}"', "-c", f'DROP ROLE "{role.name}"')


def bouncer_config(directory: Path, port: int) -> Path:
    """The project's pgbouncer.ini with this machine's addresses and paths."""
    text = INI.read_text()
    replacements = {
        "* = host=postgres port=5432": "* = host=127.0.0.1 port=5432",
        "listen_addr = 0.0.0.0": "listen_addr = 127.0.0.1",
        "listen_port = 6432": f"listen_port = {port}",
        "/tmp/pgbouncer/": f"{directory}/",  # noqa: S108 (the container path, replaced)
    }
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    path = directory / "pgbouncer.ini"
    path.write_text(text)
    return path


def as_unprivileged(argv: list[str], directory: Path) -> list[str]:
    """PgBouncer refuses to run as root (CI runs as root): run it as nobody, as the image does."""
    if os.geteuid() != 0:
        return argv
    os.chown(directory, 65534, 65534)
    for path in directory.iterdir():
        os.chown(path, 65534, 65534)
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]


@pytest.fixture
def bouncer(app_role: AppRole) -> Iterator[Bouncer]:
    port = loopback_port()
    # Its own folder: pytest's tmp_path sits under a folder only root may enter.
    directory = Path(tempfile.mkdtemp(prefix="pgbouncer-e2e-"))
    (directory / "userlist.txt").write_text(f'"{app_role.name}" "{app_role.password}"\n')
    config = bouncer_config(directory, port)
    argv = as_unprivileged([require_binary("pgbouncer"), str(config)], directory)
    server = start("pgbouncer", argv, directory)
    url = f"postgres://{app_role.name}:{app_role.password}@127.0.0.1:{port}/{app_role.database}"

    def accepts() -> bool:
        server.assert_running()
        try:
            with psycopg.connect(url, connect_timeout=3) as connection:
                return connection.execute("select 1").fetchone() == (1,)
        except psycopg.OperationalError:
            return False  # not listening yet

    try:
        wait_until(accepts, "pgbouncer", timeout=60)
        yield Bouncer(server, port, url)
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def app_env(bouncer: Bouncer, **extra: str) -> dict[str, str]:
    from django.conf import settings

    return {
        "DJANGO_SETTINGS_MODULE": "console.settings",
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "API_KEY_PEPPER": PEPPER,
        "DATABASE_URL": bouncer.url,
        "DATABASE_POOLER": "pgbouncer",
        "REDIS_URL": settings.REDIS_URL,
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(  # noqa: S603 (our own manage.py)
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def complete(url: str, token: str, model: str, n: int) -> int:
    body = json.dumps({"model": model, "prompt": f"Question {n}?", "max_tokens": 3}).encode()
    request = urllib.request.Request(  # noqa: S310 (a test URL)
        f"{url}/v1/completions",
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
        return response.status


def server_connections(app_role: AppRole) -> int:
    query = f"select count(*) from pg_stat_activity where usename = '{app_role.name}'"  # noqa: S608
    return int(psql(app_role.owner_url, {}, "-c", query))


def test_the_app_serves_and_bills_through_pgbouncer_as_the_app_role(
    bouncer: Bouncer, app_role: AppRole, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from tenants.models import UsageMinute

    env = app_env(bouncer)
    # Writes as the app role: the tenant, the key (and their audit rows).
    manage(env, "create_tenant", "bounced", "--rpm", "6000", "--tpm", "1000000")
    token = manage(env, "issue_key", "bounced", "--name", "e2e")
    server = start_daphne(
        {
            **env,
            "INFERENCE_MODEL": str(tiny_model_dir),
            "INFERENCE_QUANTIZATION": "none",
            "INFERENCE_THREADS": "1",
            "INFERENCE_MAX_QUEUE": "256",
            "RATELIMIT_FLUSH_SECONDS": "1",
            "RATELIMIT_REDIS_TIMEOUT_MS": "1000",
            "DATABASE_POOL_MAX": "10",
        },
        tmp_path / "daphne.log",
        # Importing torch and Django on a loaded 2-core machine took more than the default 30 s.
        timeout=180,
    )
    try:
        wait_ready(server.url)
        model = Path(str(tiny_model_dir)).name
        with ThreadPoolExecutor(max_workers=24) as pool:
            statuses = list(pool.map(lambda n: complete(server.url, token, model, n), range(48)))
        assert statuses == [200] * 48
        # The in-process flusher moves the usage to Postgres through PgBouncer.
        wait_until(
            lambda: sum(UsageMinute.objects.values_list("requests", flat=True)) == 48,
            "usage flushed through pgbouncer",
            timeout=90,
        )
        log = server.log_text()
    finally:
        server.stop()
    assert not PREPARED_ERROR.search(log), log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    # The pool behind PgBouncer, not one connection per client.
    assert server_connections(app_role) <= 25


# Thirty threads, each with its own connection from the process's pool, repeat the same ORM
# queries and stream one through .iterator() (a server-side cursor unless disabled): thirty
# clients at once on PgBouncer's 20 (+5 reserve) server connections, five rounds each.
STRESS = """
import django, os
from concurrent.futures import ThreadPoolExecutor
django.setup()
from django.db import connection
from tenants.models import ApiKey, Tenant

def work(n):
    for _ in range(5):
        list(Tenant.objects.filter(active=True).values_list("slug", flat=True))
        ApiKey.objects.filter(tenant__slug="nobody").exists()
        if os.environ["STRESS_ITERATOR"] == "1":
            sum(1 for _ in Tenant.objects.all().iterator(chunk_size=2))
    connection.close()
    return n

with ThreadPoolExecutor(max_workers=30) as pool:
    assert sorted(pool.map(work, range(30))) == list(range(30))
print("ok")
"""


def stress(env: dict[str, str], iterator: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 (our own interpreter)
        [sys.executable, "-c", STRESS],
        cwd=REPO,
        env={
            **os.environ,
            **env,
            "DATABASE_POOL_MAX": "30",
            "DATABASE_POOL_TIMEOUT": "60",
            "STRESS_ITERATOR": "1" if iterator else "0",
        },
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_many_connections_repeat_queries_without_prepared_statement_errors(
    bouncer: Bouncer,
) -> None:
    env = app_env(bouncer)
    manage(env, "create_tenant", "stress-a")
    manage(env, "create_tenant", "stress-b")
    result = stress(env)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
    assert not PREPARED_ERROR.search(result.stderr)


def test_without_the_pooler_setting_psycopg_prepares_and_pgbouncer_breaks_it(
    bouncer: Bouncer,
) -> None:
    """The control: the same load without DATABASE_POOLER fails (.iterator()'s server-side
    cursor is gone on the next transaction's server connection), so the test above would."""
    env = app_env(bouncer)
    manage(env, "create_tenant", "stress-c")
    manage(env, "create_tenant", "stress-d")
    result = stress({**env, "DATABASE_POOLER": "none"})
    assert result.returncode != 0, result.stdout
    assert PREPARED_ERROR.search(result.stderr), result.stderr[-400:]


def test_the_app_role_can_use_the_rows_but_not_change_the_schema(
    bouncer: Bouncer, app_role: AppRole
) -> None:
    with psycopg.connect(bouncer.url, autocommit=True) as connection:
        flags = connection.execute(
            "select rolsuper, rolcreatedb, rolcreaterole from pg_roles where rolname = current_user"
        ).fetchone()
        assert flags == (False, False, False)
        connection.execute("select count(*) from tenants_tenant")
        for ddl in (
            "create table intruder (id int)",
            "alter table tenants_tenant add column intruder int",
            "drop table tenants_usageminute",
            "truncate django_migrations",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                connection.execute(ddl)
    owners = psql(
        app_role.owner_url,
        {},
        "-c",
        f"select count(*) from pg_tables where tableowner = '{app_role.name}'",  # noqa: S608
    )
    assert owners.strip() == "0"
