import io
import logging
import subprocess
import sys
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.db import connection
from django.test import AsyncClient, override_settings

from tenants.auth import authenticate_token
from tenants.services import api_key_issue, api_key_rotate
from tests.childproc import child_env

pytestmark = pytest.mark.django_db(transaction=True)


async def test_the_secret_is_never_stored_or_logged(tenant, caplog) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, SQL included
    caplog.set_level(logging.DEBUG, logger="django.db.backends")
    # DEBUG makes every thread's connection log its SQL with parameters.
    with override_settings(DEBUG=True):
        issued = await sync_to_async(api_key_issue)(tenant=tenant, name="k", actor="t")
        rotated = await sync_to_async(api_key_rotate)(
            api_key=issued.api_key, grace=timedelta(hours=1), actor="t"
        )
        for token in (issued.token, rotated.token):
            assert await authenticate_token(token) is not None
            bad = token[:-1] + ("A" if token[-1] != "A" else "B")
            await AsyncClient().get("/v1/models", headers={"Authorization": f"Bearer {bad}"})
            await AsyncClient().get("/v1/models", headers={"X-API-Key": token})
        dump = io.StringIO()
        await sync_to_async(call_command)("dumpdata", stdout=dump)
    assert "INSERT" in caplog.text or "SELECT" in caplog.text  # SQL logging really was on
    for token in (issued.token, rotated.token):
        secret = token.rsplit("_", 1)[1]
        assert secret not in dump.getvalue()
        assert secret not in caplog.text
        assert secret[:16] not in caplog.text


def test_the_pg_dump_of_the_database_holds_no_secret(issued) -> None:
    secret = issued.token.rsplit("_", 1)[1]
    settings = connection.settings_dict
    dump = subprocess.run(
        [
            "pg_dump",
            "-h",
            settings["HOST"] or "127.0.0.1",
            "-p",
            str(settings["PORT"] or 5432),
            "-U",
            settings["USER"],
            settings["NAME"],
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert issued.api_key.key_id in dump  # the dump really holds the key row
    assert secret not in dump


def test_the_commands_print_the_token_but_nothing_else(tenant) -> None:
    env = child_env(database=True)
    result = subprocess.run(
        [sys.executable, "manage.py", "issue_key", "acme"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert result.stdout == token + "\n" and result.stderr == ""
    assert token.startswith("sk_")
