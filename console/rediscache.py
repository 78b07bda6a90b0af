"""django-redis on a Redis Cluster: a connection factory that hands django-redis a RedisCluster.

django-redis speaks to one server (or a Sentinel master) through a connection pool; a cluster
client routes each command to the master of its key's slot instead. The cache's commands are
single-key (GET, SET NX for cache.add, DEL, INCR), so django-redis's DefaultClient works on it
unchanged; the multi-key helpers (get_many, delete_many) are split per slot by redis-py.
Selected in console/settings.py when REDIS_URL names a cluster.
"""

from typing import Any

import redis.cluster
from django.conf import settings
from django_redis.pool import ConnectionFactory  # type: ignore[import-untyped]

from core.redisurl import parse_redis_url


class ClusterConnectionFactory(ConnectionFactory):
    """connect(url) -> one RedisCluster per URL, shared by the cache's clients."""

    _clients: dict[str, redis.cluster.RedisCluster] = {}

    def connect(self, url: str) -> Any:
        client = self._clients.get(url)
        if client is None:
            target = parse_redis_url(url, cluster=settings.REDIS_CLUSTER)
            nodes = [redis.cluster.ClusterNode(host, port) for host, port in target.nodes]
            params = self.make_connection_params(url)
            client = redis.cluster.RedisCluster(
                startup_nodes=nodes,
                username=target.username,
                password=target.password,
                ssl=target.ssl,
                socket_timeout=params.get("socket_timeout"),
                socket_connect_timeout=params.get("socket_connect_timeout"),
            )
            self._clients[url] = client
        return client

    def disconnect(self, connection: Any) -> None:
        connection.close()
