"""The backup job's script dumps the real test database, keeps its retention, and the restore
script brings the rows back into a fresh database (docs/deploy.md, "Backups and restore")."""

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.e2e.servers import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

BACKUP = REPO / "deploy" / "postgres" / "backup.sh"
RESTORE = REPO / "deploy" / "postgres" / "restore.sh"
DAY = 86400


def libpq_env(url: str, database: str | None = None) -> dict[str, str]:
    parsed = urlparse(url)
    return {
        "PGHOST": parsed.hostname or "127.0.0.1",
        "PGPORT": str(parsed.port or 5432),
        "PGUSER": parsed.username or "postgres",
        "PGPASSWORD": parsed.password or "",
        "PGDATABASE": database or parsed.path.lstrip("/"),
    }


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 (the project's own scripts, psql)
        argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def fresh_database(transactional_db: None) -> Iterator[dict[str, str]]:
    """An empty database beside the test one (libpq variables that reach it)."""
    from conftest import database_url_for_current_test_db

    name = f"node_h8_restore_{uuid.uuid4().hex[:8]}"
    env = libpq_env(database_url_for_current_test_db(), "postgres")
    assert run(["psql", "-q", "-c", f'CREATE DATABASE "{name}"'], env).returncode == 0
    try:
        yield {**env, "PGDATABASE": name}
    finally:
        run(["psql", "-q", "-c", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'], env)


def test_a_dump_restores_into_a_fresh_database_with_the_rows(
    fresh_database: dict[str, str], tmp_path: Path
) -> None:
    from conftest import database_url_for_current_test_db
    from tenants.services import api_key_issue, tenant_create

    tenant = tenant_create(slug="backed-up", name="Backed Up", actor="test")
    key = api_key_issue(tenant=tenant, name="kept", actor="test").api_key
    backups = tmp_path / "backups"
    backups.mkdir()
    # An old dump past retention, a recent one within it, and a file that is not a dump.
    old, recent, other = backups / "node-old.dump", backups / "node-recent.dump", backups / "x"
    for path in (old, recent, other):
        path.write_bytes(b"earlier")
    os.utime(old, (time.time() - 20 * DAY, time.time() - 20 * DAY))
    os.utime(recent, (time.time() - 2 * DAY, time.time() - 2 * DAY))

    source = libpq_env(database_url_for_current_test_db())
    env = {**source, "BACKUP_DIR": str(backups), "BACKUP_ONCE": "1", "BACKUP_RETENTION_DAYS": "7"}
    result = run(["sh", str(BACKUP)], env)
    assert result.returncode == 0, result.stderr
    dumps = sorted(p.name for p in backups.glob(f"{source['PGDATABASE']}-*.dump"))
    assert len(dumps) == 1 and "wrote" in result.stdout
    assert not old.exists() and recent.exists() and other.exists()
    assert not list(backups.glob(".*partial"))

    result = run(["sh", str(RESTORE), str(backups / dumps[0])], fresh_database)
    assert result.returncode == 0, result.stderr
    query = (
        "select t.slug, k.key_id from tenants_tenant t join tenants_apikey k on k.tenant_id = t.id"
    )
    rows = run(["psql", "-At", "-F", " ", "-c", query], fresh_database)
    assert rows.returncode == 0, rows.stderr
    assert rows.stdout.split() == ["backed-up", key.key_id]
    migrations = run(
        ["psql", "-At", "-c", "select count(*) from django_migrations"], fresh_database
    )
    assert int(migrations.stdout) > 0


def test_a_failing_dump_keeps_the_older_dumps_and_fails(tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    old = backups / "node-old.dump"
    old.write_bytes(b"earlier")
    os.utime(old, (time.time() - 30 * DAY, time.time() - 30 * DAY))
    env = {
        "PGHOST": "127.0.0.1",
        "PGDATABASE": f"no_such_database_{uuid.uuid4().hex[:6]}",
        "PGUSER": "postgres",
        "BACKUP_DIR": str(backups),
        "BACKUP_ONCE": "1",
        "BACKUP_RETENTION_DAYS": "7",
    }
    result = run(["sh", str(BACKUP)], env)
    assert result.returncode != 0 and "older dumps kept" in result.stderr
    assert old.exists() and [p.name for p in backups.iterdir()] == ["node-old.dump"]
