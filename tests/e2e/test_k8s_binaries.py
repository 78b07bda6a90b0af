"""The Kubernetes manifests' commands and configuration run for real, outside a cluster:
the migration wait of the app's init container against a real Postgres, PgBouncer (Debian's
binary) on the ConfigMap's pgbouncer.ini, and the backup CronJob's script with pg_dump and a
restore with pg_restore. What needs a cluster (scheduling, NetworkPolicies, the HPA) is checked
statically in test_k8s.py."""

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from tests.e2e.kustomize import build
from tests.e2e.servers import REPO, free_port, require_binary, wait_until
from tests.e2e.test_k8s import TARGETS, by_kind, pod_spec

pytestmark = pytest.mark.e2e


def server_url() -> str:
    return os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def scratch_database() -> Iterator[str]:
    """A database of this test's own on the test Postgres, dropped afterwards."""
    name = f"k8s_{uuid.uuid4().hex[:10]}"
    admin = psycopg.conninfo.make_conninfo(server_url(), dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield psycopg.conninfo.make_conninfo(server_url(), dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def as_url(conninfo: str) -> str:
    parts = psycopg.conninfo.conninfo_to_dict(conninfo)
    user, host, port = (
        parts.get("user", "postgres"),
        parts.get("host", "127.0.0.1"),
        parts.get("port", 5432),
    )
    return f"postgres://{user}@{host}:{port}/{parts['dbname']}"


def test_new_pods_wait_until_the_migration_job_has_run(scratch_database: str) -> None:
    resources = build(TARGETS["base"])
    wait = pod_spec(resources, "Deployment", "inference-node")["initContainers"][1]
    job = pod_spec(resources, "Job", "inference-node-migrate")["containers"][0]
    env = {**os.environ, "DATABASE_URL": as_url(scratch_database)}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    waiting = subprocess.Popen(
        wait["command"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        assert waiting.stdout is not None
        # On an empty schema the init container keeps waiting (and says why).
        assert "waiting for the migration Job" in waiting.stdout.readline()
        assert waiting.poll() is None
        migrate = subprocess.run(job["command"], cwd=REPO, env=env, capture_output=True,
                                 text=True, timeout=600)  # fmt: skip
        assert migrate.returncode == 0, migrate.stderr
        # Once the Job has run, the init container ends and the app may start.
        assert waiting.wait(timeout=300) == 0
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()


def pgbouncer_ini(*, port: int, auth_file: Path) -> str:
    """The ConfigMap's pgbouncer.ini with loopback addresses: the only lines that change."""
    ini = by_kind(build(TARGETS["base"]))[("ConfigMap", "inference-node-pgbouncer")]["data"]
    text = ini["pgbouncer.ini"]
    server = psycopg.conninfo.conninfo_to_dict(server_url())
    host, server_port = server.get("host", "127.0.0.1"), server.get("port", 5432)
    replacements = {
        r"host=postgres port=5432": f"host={host} port={server_port}",
        r"listen_addr = 0.0.0.0": "listen_addr = 127.0.0.1",
        r"listen_port = 6432": f"listen_port = {port}",
        r"auth_file = .*": f"auth_file = {auth_file}",
    }
    for pattern, value in replacements.items():
        text, count = re.subn(pattern, value, text)
        assert count == 1, pattern
    return text


@pytest.fixture
def pgbouncer(tmp_path: Path, scratch_database: str) -> Iterator[tuple[str, str, str]]:
    """PgBouncer on the ConfigMap's settings, in front of the scratch database, with a login
    role of its own (not a superuser, as the app's is)."""
    role, password = f"k8s_app_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    tmp_path.chmod(0o755)
    auth_file = tmp_path / "userlist.txt"
    auth_file.write_text(f'"{role}" "{password}"\n')
    port = free_port()
    (tmp_path / "pgbouncer.ini").write_text(pgbouncer_ini(port=port, auth_file=auth_file))
    command = [require_binary("pgbouncer"), str(tmp_path / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        command[1:1] = ["-u", "nobody"]
    log = (tmp_path / "pgbouncer.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    dbname = psycopg.conninfo.conninfo_to_dict(scratch_database)["dbname"]
    url = f"postgres://{role}:{password}@127.0.0.1:{port}/{dbname}"
    try:
        wait_until(lambda: _answers(url) or process.poll() is not None, "pgbouncer", 60)
        assert process.poll() is None, (tmp_path / "pgbouncer.log").read_text()
        yield url, role, scratch_database
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        with psycopg.connect(scratch_database, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role]
            )
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2, prepare_threshold=None) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


def test_pgbouncer_pools_by_transaction_with_the_configmaps_settings(
    pgbouncer: tuple[str, str, str],
) -> None:
    url, role, direct = pgbouncer
    # Thirty app connections (three pods' pools), each running a statement now and then: in
    # transaction mode they share a server connection or two. In session mode each would
    # hold one (and the 26th would wait for default_pool_size + reserve_pool_size).
    clients = [psycopg.connect(url, autocommit=True, prepare_threshold=None) for _ in range(30)]
    try:
        for _ in range(3):
            for client in clients:
                assert client.execute("SELECT current_user").fetchone() == (role,)
        with psycopg.connect(direct, autocommit=True) as conn:
            (servers,) = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", [role]
            ).fetchone()  # type: ignore[misc]
        assert 1 <= servers <= 3, servers
        # A transaction keeps its server connection to the end, so it sees its own work.
        with clients[0].transaction():
            clients[0].execute("CREATE TEMP TABLE t (x int) ON COMMIT DROP")
            clients[0].execute("INSERT INTO t VALUES (1)")
            assert clients[0].execute("SELECT count(*) FROM t").fetchone() == (1,)
    finally:
        for client in clients:
            client.close()


def test_a_wrong_password_is_refused_by_pgbouncer(pgbouncer: tuple[str, str, str]) -> None:
    url, _, _ = pgbouncer
    wrong = re.sub(r":[0-9a-f]{32}@", ":wrong@", url)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(wrong, connect_timeout=5).close()


def backup_script() -> list[str]:
    cron = pod_spec(build(TARGETS["base"]), "CronJob", "inference-node-backup")
    return cron["containers"][0]["command"]


def restore_script() -> list[str]:
    job = yaml.safe_load((REPO / "deploy" / "k8s" / "restore" / "job.yaml").read_text())
    return job["spec"]["template"]["spec"]["containers"][0]["command"]


def test_the_backup_job_dumps_keeps_the_newest_and_the_restore_job_brings_it_back(
    tmp_path: Path, scratch_database: str
) -> None:
    require_binary("pg_dump")
    require_binary("pg_restore")
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE probe (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO probe VALUES (1, 'before the backup')")
    backups = tmp_path / "backups"
    backups.mkdir()
    # Two older dumps, a partial one a killed run left, and a file that is not a dump.
    for stamp in ("20240101T031700Z", "20240102T031700Z"):
        (backups / f"node-{stamp}.dump").write_bytes(b"old")
    (backups / "node-20240103T031700Z.dump.partial").write_bytes(b"cut")
    (backups / "README").write_text("not a dump")
    env = {**os.environ, "DATABASE_URL": as_url(scratch_database), "BACKUP_DIR": str(backups),
           "BACKUP_KEEP": "2"}  # fmt: skip
    result = subprocess.run(backup_script(), env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    names = sorted(path.name for path in backups.iterdir())
    new = next(name for name in names if name.endswith(".dump") and "2024" not in name)
    # Kept: the newest two dumps; the oldest and the partial are gone, other files stay.
    assert names == sorted(["README", "node-20240102T031700Z.dump", new])
    assert "backup " + new + " written; kept: 2" in result.stdout

    # Damage after the backup, then the restore Job's own command.
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        conn.execute("DELETE FROM probe")
        conn.execute("INSERT INTO probe VALUES (2, 'after the backup')")
    missing = subprocess.run(restore_script(), env={**env, "BACKUP_FILE": "node-nope.dump"},
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert missing.returncode != 0 and "no dump node-nope.dump" in missing.stderr
    restore = subprocess.run(restore_script(), env={**env, "BACKUP_FILE": new},
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert restore.returncode == 0, restore.stderr
    assert f"restored {new}" in restore.stdout
    with psycopg.connect(scratch_database) as conn:
        rows = conn.execute("SELECT id, note FROM probe").fetchall()
    assert rows == [(1, "before the backup")]
