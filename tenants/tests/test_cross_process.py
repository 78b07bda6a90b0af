import time

import pytest

from tenants.services import api_key_revoke
from tests.childproc import child_env, django_script, start_child

pytestmark = pytest.mark.django_db(transaction=True)

# A second process authenticates the token every 20 ms and reports each change of outcome.
CHILD = """
import asyncio, os, sys, time
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
    child = start_child(django_script(CHILD), child_env(database=True))
    try:
        assert child.stdin is not None and child.stdout is not None  # both piped
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
