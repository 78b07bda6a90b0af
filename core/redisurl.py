"""Where a Redis is, read from one URL: a single server, a Sentinel-watched master, or a Cluster.

    redis://[user:password@]host:port/db          one server (rediss:// and unix:// too)
    redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]
                                                  the master Sentinel names `service_name`
    redis+cluster://[user:password@]host:port[,host:port...][/0]
                                                  a Redis Cluster, from any of its nodes

REDIS_CLUSTER=1 makes a plain redis:// URL a cluster's seed node instead. The credentials are
the data nodes' (Sentinels without their own password are asked without one; a Sentinel with
one: ?sentinel_password=...). Plain Python: console/settings.py parses with it at start, so a
malformed URL stops the process there, and core/redis.py builds the clients from the result.
"""

from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

Kind = Literal["single", "sentinel", "cluster"]
SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}


@dataclass(frozen=True)
class RedisTarget:
    """One parsed URL. `url` is the original for a single server; `nodes` the Sentinels (for
    "sentinel") or the seed nodes (for "cluster")."""

    kind: Kind
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False
    sentinel_password: str | None = None


def _nodes(netloc: str, url: str) -> tuple[tuple[str, int], ...]:
    hosts = netloc.rpartition("@")[2]
    nodes = []
    for part in hosts.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"Redis URL {_redacted(url)!r}: each node must be host:port")
        nodes.append((host.strip("[]"), int(port)))
    return tuple(nodes)


def _credentials(netloc: str) -> tuple[str | None, str | None]:
    userinfo, at, _ = netloc.rpartition("@")
    if not at:
        return None, None
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if colon else None)


def _redacted(url: str) -> str:
    # An error message must never carry the password.
    scheme, sep, rest = url.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    return f"{scheme}{sep}***@{hosts}" if at else url


def _db(segment: str, url: str) -> int:
    if segment == "":
        return 0
    if not segment.isdigit():
        raise ValueError(f"Redis URL {_redacted(url)!r}: the database must be a number")
    return int(segment)


def parse_redis_url(url: str, *, cluster: bool = False) -> RedisTarget:
    """Parse `url` (see the module docstring); ValueError with the password hidden if bad."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    user, password = _credentials(parts.netloc)
    query = parse_qs(parts.query)
    if scheme in SENTINEL_SCHEMES:
        path = [p for p in parts.path.split("/") if p]
        if not path or len(path) > 2:
            raise ValueError(
                f"Redis URL {_redacted(url)!r}: write redis+sentinel://host:port,.../service[/db]"
            )
        return RedisTarget(
            "sentinel",
            url,
            _nodes(parts.netloc, url),
            path[0],
            _db(path[1] if len(path) > 1 else "", url),
            user,
            password,
            SENTINEL_SCHEMES[scheme],
            next(iter(query.get("sentinel_password", [])), None),
        )
    if scheme in CLUSTER_SCHEMES or (cluster and scheme in {"redis", "rediss"}):
        db = _db(parts.path.strip("/"), url)
        if db != 0:
            raise ValueError(f"Redis URL {_redacted(url)!r}: a Redis Cluster has only database 0")
        ssl = CLUSTER_SCHEMES.get(scheme, scheme == "rediss")
        return RedisTarget("cluster", url, _nodes(parts.netloc, url), "", 0, user, password, ssl)
    if scheme not in {"redis", "rediss", "unix"}:
        raise ValueError(f"Redis URL {_redacted(url)!r}: unknown scheme {scheme!r}")
    return RedisTarget("single", url)
