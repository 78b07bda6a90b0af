"""manage.py export_usage: the console's usage CSV on stdout, with clear errors."""

import csv
import io
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from django.core.management import CommandError, call_command

from tenants.services import api_key_issue, tenant_create, usage_minutes_add
from tenants.usage import EXPORT_COLUMNS

pytestmark = pytest.mark.django_db


@pytest.fixture
def keys():
    acme = api_key_issue(tenant=tenant_create(slug="acme", actor="t"), name="a", actor="t")
    globex = api_key_issue(tenant=tenant_create(slug="globex", actor="t"), name="g", actor="t")
    a, g = acme.api_key, globex.api_key
    usage_minutes_add(
        rows={
            (a.tenant_id, a.pk, datetime(2026, 11, 30, 23, 59, tzinfo=UTC)): [1, 2, 3, 0],
            (a.tenant_id, a.pk, datetime(2026, 12, 1, 0, 0, tzinfo=UTC)): [4, 40, 20, 1],
            (a.tenant_id, a.pk, datetime(2026, 12, 1, 13, 5, tzinfo=UTC)): [6, 60, 30, 0],
            (g.tenant_id, g.pk, datetime(2026, 12, 2, 9, 0, tzinfo=UTC)): [5, 50, 25, 2],
        }
    )
    return a, g


def export(*args: str) -> list[list[str]]:
    out = io.StringIO()
    call_command("export_usage", *args, stdout=out)
    return list(csv.reader(io.StringIO(out.getvalue())))


def test_it_writes_one_row_per_day_and_key_of_the_range(keys) -> None:
    a, g = keys
    header, *rows = export("--from", "2026-12-01", "--to", "2026-12-02")
    assert header == list(EXPORT_COLUMNS)
    assert rows == [
        ["2026-12-01", "acme", a.key_id, "a", "10", "100", "50", "1", "0"],
        ["2026-12-02", "globex", g.key_id, "g", "5", "50", "25", "2", "0"],
    ]


def test_it_exports_one_tenant(keys) -> None:
    a, _ = keys
    _, *rows = export("--tenant", "acme", "--from", "2026-11-30", "--to", "2026-12-31")
    assert [(r[0], r[2], r[4]) for r in rows] == [
        ("2026-11-30", a.key_id, "1"),
        ("2026-12-01", a.key_id, "10"),
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--from", "2026-12-32", "--to", "2026-12-31"), "expected a date as YYYY-MM-DD"),
        (("--from", "yesterday", "--to", "2026-12-31"), "'yesterday'"),
        (("--from", "2026-12-05", "--to", "2026-12-01"), "is before --from"),
        (("--tenant", "nobody", "--from", "2026-12-01", "--to", "2026-12-01"), "'nobody'"),
    ],
)
def test_bad_input_is_a_clear_error(keys, args, message) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("export_usage", *args, stdout=io.StringIO())


def test_a_missing_date_is_refused(keys) -> None:
    with pytest.raises(CommandError, match="--to"):
        call_command("export_usage", "--from", "2026-12-01", stdout=io.StringIO())


def test_it_exits_non_zero_from_the_shell(keys) -> None:
    # As an operator runs it: manage.py prints the error to stderr and exits 1.
    result = subprocess.run(
        [sys.executable, "manage.py", "export_usage", "--from", "bad", "--to", "2026-12-01"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "expected a date as YYYY-MM-DD, got 'bad'" in result.stderr
