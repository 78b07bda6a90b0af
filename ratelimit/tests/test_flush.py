"""Usage counters and the 429 audit move from Redis to Postgres in batches, exactly once:
also when the flushing process is killed between its Redis and Postgres steps, and when
several flushers run while requests keep settling."""

import asyncio
import subprocess
import threading
import time
from io import StringIO

import pytest
from django.core.management import call_command
from django.db.models import Sum
from django.test import override_settings

from core.errors import RateLimited
from core.redis import get_sync_redis
from ratelimit import backlog, flush, limiter
from ratelimit.tests.helpers import make_record
from tenants.models import ThrottleEvent, UsageBatch, UsageMinute
from tests.childproc import child_env, django_script

pytestmark = pytest.mark.django_db(transaction=True)


def _record(issued, **limits):
    key = issued.api_key
    return make_record(tenant_id=key.tenant_id, api_key_pk=key.pk, key_id=key.key_id, **limits)


def _serve(record, count: int, prompt: int = 7, completion: int = 5) -> None:
    async def run() -> None:
        for _ in range(count):
            admission = await limiter.admit(record, tokens=prompt + completion)
            await limiter.settle(admission, prompt_tokens=prompt, completion_tokens=completion)

    asyncio.run(run())


def _totals() -> dict[str, int | None]:
    return UsageMinute.objects.aggregate(
        r=Sum("requests"), p=Sum("prompt_tokens"), c=Sum("completion_tokens")
    )


def _buffers() -> list[bytes]:
    return sorted(get_sync_redis().scan_iter("rlbuf:*"))


@override_settings(RATELIMIT_DENY_CACHE=False)  # every refusal through Redis's own buffer
def test_it_moves_usage_and_refusals_once_and_empties_the_buffers(issued) -> None:
    record = _record(issued, key={"rpm": 3}, burst_percent=100)

    async def refuse() -> None:
        for i in range(4):
            with pytest.raises(RateLimited):
                await limiter.admit(record, tokens=1, client_addr=f"198.51.100.{i % 2}")

    _serve(record, 3)
    asyncio.run(refuse())
    report = flush.flush()
    assert (report.usage_rows, report.requests, report.throttle_rows, report.refusals) == (
        1,
        3,
        1,
        4,
    )
    assert _totals() == {"r": 3, "p": 21, "c": 15}
    event = ThrottleEvent.objects.get()
    assert (event.api_key_id, event.tenant_id, event.reason) == (
        issued.api_key.pk,
        issued.api_key.tenant_id,
        "key-rpm",
    )
    assert event.count == 4 and event.first_seen <= event.last_seen
    assert event.sample_addresses == ["198.51.100.0", "198.51.100.1"]
    assert _buffers() == []
    again = flush.flush()
    assert (again.usage_batches, again.throttle_batches) == (0, 0)
    assert _totals() == {"r": 3, "p": 21, "c": 15}


def test_later_batches_add_to_the_same_minute_row(issued) -> None:
    record = _record(issued)
    _serve(record, 2)
    flush.flush()
    _serve(record, 3, prompt=1, completion=1)
    flush.flush()
    if UsageMinute.objects.count() == 1:  # both runs fell in one UTC minute
        assert UsageMinute.objects.get().requests == 5
    assert _totals() == {"r": 5, "p": 17, "c": 13}
    assert UsageBatch.objects.count() == 2


CHILD = """
import os, sys
from django.db import transaction
from core.redis import get_sync_redis
from ratelimit import flush
from tenants.models import UsageBatch
client = get_sync_redis("ratelimit")
batches = flush.claim_batches(client, "usage")
print(len(batches), flush=True)
step = sys.argv[1]
if step == "mid-transaction":
    with transaction.atomic():
        for key in batches:
            UsageBatch.objects.create(batch_id=flush.batch_id_of(key))
            flush._write_usage(client.hgetall(key), flush.FlushReport())
        os._exit(9)
if step == "after-commit":
    for key in batches:
        flush.write_batch(client, key, flush.FlushReport())
os._exit(9)  # killed before the next step
"""


def _run_child(step: str) -> None:
    done = subprocess.run(
        django_script(CHILD, step),
        env=child_env(database=True),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 9 and done.stdout.strip() == "1", done.stderr


def _flush_command() -> str:
    out = StringIO()
    call_command("flush_usage", stdout=out)
    return out.getvalue()


@pytest.mark.parametrize("step", ["after-rename", "mid-transaction", "after-commit"])
def test_a_flusher_killed_between_its_steps_loses_and_doubles_nothing(issued, step) -> None:
    _serve(_record(issued), 4)
    _run_child(step)
    batch_keys = [k for k in _buffers() if b":batch:" in k]
    assert len(batch_keys) == 1  # the renamed batch survived the kill
    committed = step == "after-commit"
    assert UsageBatch.objects.count() == (1 if committed else 0)
    assert _totals()["r"] == (4 if committed else None)
    output = _flush_command()
    expected = "already applied: 1" if committed else "usage: 1 rows from 1 batches (4 requests"
    assert expected in output
    assert _totals() == {"r": 4, "p": 28, "c": 20}
    assert _buffers() == []


def test_concurrent_flushers_count_every_settled_request_exactly_once(issued) -> None:
    record = _record(issued)
    stop = threading.Event()
    errors: list[BaseException] = []

    def flusher() -> None:
        from django.db import connection

        try:
            while not stop.is_set():
                flush.flush()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=flusher) for _ in range(2)]
    for thread in threads:
        thread.start()
    _serve(record, 200, prompt=3, completion=2)
    stop.set()
    for thread in threads:
        thread.join(30)
    flush.flush()
    assert errors == []
    assert _totals() == {"r": 200, "p": 600, "c": 400}
    assert UsageBatch.objects.count() > 1  # the flushers really interleaved with settles


def test_rows_of_unknown_keys_are_dropped_and_reported(issued) -> None:
    _serve(make_record(tenant_id=issued.api_key.tenant_id, api_key_pk=999_999), 1)
    _serve(_record(issued), 1)
    report = flush.flush()
    assert report.dropped_rows == 1 and report.usage_rows == 1
    assert _totals()["r"] == 1 and _buffers() == []


def test_usage_admitted_without_redis_is_written_from_the_process(issued) -> None:
    backlog.count_usage(issued.api_key.tenant_id, issued.api_key.pk, 11, 13)
    backlog.count_usage(issued.api_key.tenant_id, issued.api_key.pk, 1, 1)
    assert flush.flush().local_rows == 1
    assert _totals() == {"r": 2, "p": 12, "c": 14}
    assert flush.flush().local_rows == 0


@override_settings(RATELIMIT_FLUSH_SECONDS=0.1)
def test_the_flusher_thread_moves_usage_in_the_background(issued) -> None:
    thread = flush.start_flusher()
    try:
        assert thread is not None and thread.daemon and flush.start_flusher() is thread
        _serve(_record(issued), 2)
        deadline = time.monotonic() + 5
        while _totals()["r"] != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _totals()["r"] == 2
    finally:
        flush.stop_flusher()


@override_settings(RATELIMIT_FLUSH_SECONDS=60)
def test_usage_left_in_the_process_reaches_postgres_at_once(issued) -> None:
    """Counted in process (Redis away), usage is written within moments, not at the next of
    a minute's intervals: a process killed soon after the outage loses nothing."""
    thread = flush.start_flusher()
    try:
        time.sleep(0.5)  # the loop is waiting for its first interval
        backlog.count_usage(issued.api_key.tenant_id, issued.api_key.pk, 5, 7)
        deadline = time.monotonic() + 30
        while _totals()["r"] != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _totals() == {"r": 1, "p": 5, "c": 7}
    finally:
        started = time.monotonic()
        flush.stop_flusher()
        assert thread is not None and not thread.is_alive()
        assert time.monotonic() - started < 10  # stopping does not wait out the interval


@override_settings(RATELIMIT_FLUSH_SECONDS=0)
def test_the_flusher_can_be_turned_off() -> None:
    assert flush.start_flusher() is None
