"""A limit change made with set_limits applies in another OS process within 2 s."""

import time

import pytest
from django.core.management import call_command

from tests.childproc import child_env, django_script, start_child

pytestmark = pytest.mark.django_db(transaction=True)

# A second process authenticates and admits every 20 ms, reporting each change of outcome.
CHILD = """
import asyncio, sys, time
from core.errors import RateLimited
from ratelimit import limiter
from tenants.auth import authenticate_token

async def main():
    token, last = sys.stdin.readline().strip(), None
    deadline = time.time() + 20
    while time.time() < deadline:
        record = await authenticate_token(token)
        try:
            admission = await limiter.admit(record, tokens=1)
            await limiter.settle(admission, prompt_tokens=1, completion_tokens=0)
            outcome = "allowed"
        except RateLimited:
            outcome = "limited"
        if outcome != last:
            print(outcome, time.time(), flush=True)
            last = outcome
            if outcome == "limited":
                return
        await asyncio.sleep(0.02)

asyncio.run(main())
"""


def test_a_new_limit_reaches_a_running_process_within_two_seconds(tenant, issued) -> None:
    child = start_child(django_script(CHILD), child_env(database=True))
    try:
        assert child.stdin is not None and child.stdout is not None  # pipes (start_child)
        call_command("set_limits", tenant.slug, "--rpm", "none", "--tpm", "none")
        child.stdin.write(issued.token + "\n")
        child.stdin.flush()
        first = child.stdout.readline().split()
        assert first and first[0] == "allowed"  # unlimited, and cached in the child
        time.sleep(1.0)  # many admissions on the cached record
        changed_at = time.time()
        # One request a minute, burst 1: at most one more is admitted, then 429.
        call_command("set_limits", tenant.slug, "--rpm", "1")
        second = child.stdout.readline().split()
        assert second and second[0] == "limited"
        assert float(second[1]) - changed_at < 2.0
    finally:
        child.kill()
        child.wait()
