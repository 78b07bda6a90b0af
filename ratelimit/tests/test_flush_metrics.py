"""ratelimit_flushes_total: the series the "usage buffers not flushing" alert reads."""

import pytest
import redis

from ratelimit import backlog, flush, metrics

pytestmark = pytest.mark.django_db(transaction=True)


def runs(result: str) -> float:
    return float(metrics.flushes.labels(result)._value.get())


def test_a_run_that_moves_the_buffers_counts_ok(issued) -> None:
    backlog.count_usage(issued.api_key.tenant_id, issued.api_key.pk, 3, 4)
    ok, failed = runs("ok"), runs("failed")
    flush.run_once()
    assert (runs("ok"), runs("failed")) == (ok + 1, failed)


def test_a_run_that_cannot_reach_redis_counts_failed_and_raises_nothing(
    issued, monkeypatch
) -> None:
    # A real client on a port nothing listens on (the OS's discard port): connection refused.
    unreachable = redis.Redis(host="127.0.0.1", port=9, socket_connect_timeout=1)
    monkeypatch.setattr(flush, "get_sync_redis", lambda *_: unreachable)
    ok, failed = runs("ok"), runs("failed")
    flush.run_once()
    assert (runs("ok"), runs("failed")) == (ok, failed + 1)
