import os
import subprocess
import sys
import time

import pytest

from conftest import database_url_for_current_test_db
from tenants.services import api_key_revoke

pytestmark = pytest.mark.django_db(transaction=True)

# A second process authenticates the token every 20 ms and reports each change of outcome.
CHILD = """
import asyncio, os, sys, time
import django
django.setup()
from tenants.auth import authenticate_token

async def main():
    token, last = sys.stdin.readline().strip(), None
    deadline = time.time() + 20
    while time.time() < deadline:
        ok = await authenticate_token(token) is not None
        if ok != last:
            print(("ok" if ok else "refused"), time.time(), flush=True)
            last = ok
            if not ok:
                return
        await asyncio.sleep(0.02)

asyncio.run(main())
"""


def test_a_second_process_sees_a_revocation_within_a_second(issued) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_current_test_db(),
        "DJANGO_SETTINGS_MODULE": "console.settings",
    }
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        env=env,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        child.stdin.write(issued.token + "\n")
        child.stdin.flush()
        first = child.stdout.readline().split()
        assert first and first[0] == "ok"  # cached in the child before the revocation
        time.sleep(1.0)  # let the child's cache and version poll settle
        revoked_at = time.time()
        api_key_revoke(api_key=issued.api_key, actor="test")
        second = child.stdout.readline().split()
        assert second and second[0] == "refused"
        assert float(second[1]) - revoked_at < 1.0
    finally:
        child.kill()
        child.wait()
