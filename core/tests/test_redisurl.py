"""The Redis URL forms REDIS_URL accepts: one server, a Sentinel service, a Cluster."""

import pytest

from core.redisurl import RedisTarget, parse_redis_url


def test_a_plain_url_is_one_server_unless_redis_cluster_is_set() -> None:
    assert parse_redis_url("redis://:pw@redis:6379/3") == RedisTarget(
        "single", "redis://:pw@redis:6379/3"
    )
    clustered = parse_redis_url("redis://:pw@redis-1:6379", cluster=True)
    assert (clustered.kind, clustered.nodes, clustered.password) == (
        "cluster",
        (("redis-1", 6379),),
        "pw",
    )


def test_a_sentinel_url_names_its_sentinels_service_and_database() -> None:
    target = parse_redis_url(
        "redis+sentinel://user:p%40ss@s1:26379,s2:26380/node/2?sentinel_password=spw"
    )
    assert target.kind == "sentinel"
    assert target.nodes == (("s1", 26379), ("s2", 26380))
    assert (target.service, target.db, target.username, target.password) == (
        "node",
        2,
        "user",
        "p@ss",
    )
    assert target.sentinel_password == "spw"
    assert parse_redis_url("redis+sentinel://s1:26379/node").db == 0


def test_a_cluster_url_lists_its_seed_nodes() -> None:
    target = parse_redis_url("rediss+cluster://r1:7000,r2:7001")
    assert (target.kind, target.nodes, target.ssl) == (
        "cluster",
        (("r1", 7000), ("r2", 7001)),
        True,
    )


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://:secret@s1:26379",  # no service
        "redis+sentinel://:secret@s1/node/0",  # no port
        "redis+cluster://:secret@r1:7000/2",  # a cluster has only database 0
        "redis+sentinel://:secret@s1:26379/node/x",
        "memcached://:secret@m1:11211",
    ],
)
def test_a_malformed_url_is_refused_without_showing_the_password(url: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_redis_url(url)
    assert "secret" not in str(error.value) and "***" in str(error.value)
