"""Real multi-node Redis topologies for the tests, from the redis-server binary: a three-master
Redis Cluster (redis-cli --cluster create) and a master, a replica and three Sentinels. Each
runs in a temporary directory on fixed loopback ports of this suite's range and is stopped on
teardown. A missing redis-server fails the test (it is installed wherever the suite runs)."""

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import redis

CLUSTER_PORTS = (7601, 7602, 7603)
MASTER_PORT, REPLICA_PORT = 7611, 7612
SENTINEL_PORTS = (7621, 7622, 7623)
SERVICE = "node"


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed: the Redis topology tests need it")
    return path


def _wait(check, what: str, timeout: float = 60.0) -> None:
    # Generous: the box is shared, and a cluster's gossip or a Sentinel's discovery take time.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(redis.RedisError, OSError):
            if check():
                return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def _ping(port: int) -> bool:
    return bool(redis.Redis(port=port, socket_timeout=0.5).ping())


class Nodes:
    """The redis-server processes of one topology; stop() ends them all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, port: int, *args: str, sentinel_conf: str | None = None) -> None:
        for other in self.processes:
            assert other != port, port
        home = self.workdir / str(port)
        home.mkdir(parents=True, exist_ok=True)
        command = [_binary("redis-server")]
        if sentinel_conf is not None:
            conf = home / "sentinel.conf"
            conf.write_text(sentinel_conf)
            command += [str(conf), "--sentinel"]
        command += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(home)]
        command += ["--save", "", "--appendonly", "no", "--logfile", str(home / "log"), *args]
        self.processes[port] = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        _wait(lambda: _ping(port), f"redis-server on port {port}")

    def kill(self, port: int) -> None:
        process = self.processes.pop(port)
        process.kill()
        process.wait()

    def stop(self) -> None:
        for port in list(self.processes):
            self.kill(port)


def _cluster_ok(port: int) -> bool:
    info = redis.Redis(port=port, socket_timeout=0.5, decode_responses=True).cluster("INFO")
    return bool(info["cluster_state"] == "ok" and int(info["cluster_slots_assigned"]) == 16384)


@contextmanager
def redis_cluster(workdir: Path) -> Iterator[str]:
    """Three masters, no replicas; yields the redis+cluster:// URL of two of them."""
    nodes = Nodes(workdir)
    try:
        for port in CLUSTER_PORTS:
            nodes.start(
                port,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(workdir / str(port) / "nodes.conf"),
                "--cluster-node-timeout",
                "5000",
            )
        subprocess.run(
            [_binary("redis-cli"), "--cluster", "create"]
            + [f"127.0.0.1:{port}" for port in CLUSTER_PORTS]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        for port in CLUSTER_PORTS:
            _wait(lambda port=port: _cluster_ok(port), f"cluster state ok on {port}")
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in CLUSTER_PORTS[:2])
    finally:
        nodes.stop()


def sentinel_conf(port: int) -> str:
    return (
        f"port {port}\nbind 127.0.0.1\n"
        f"sentinel monitor {SERVICE} 127.0.0.1 {MASTER_PORT} 2\n"
        f"sentinel down-after-milliseconds {SERVICE} 1000\n"
        f"sentinel failover-timeout {SERVICE} 10000\n"
        f"sentinel parallel-syncs {SERVICE} 1\n"
    )


def master_port(sentinel_port: int = SENTINEL_PORTS[0]) -> int:
    """The master's port as this Sentinel sees it now."""
    client = redis.Redis(port=sentinel_port, socket_timeout=0.5)
    address: Any = client.sentinel_get_master_addr_by_name(SERVICE)
    _, port = address
    return int(port)


def _knows_replica_and_peers(port: int) -> bool:
    client = redis.Redis(port=port, socket_timeout=0.5, decode_responses=True)
    state: Any = client.sentinel_master(SERVICE)
    return int(state["num-slaves"]) >= 1 and int(state["num-other-sentinels"]) >= 2


@contextmanager
def redis_sentinel(workdir: Path) -> Iterator[tuple[Nodes, str]]:
    """A master, a replica of it and three Sentinels (quorum 2); yields the nodes (to kill the
    master) and the redis+sentinel:// URL of database 0."""
    nodes = Nodes(workdir)
    try:
        nodes.start(MASTER_PORT)
        nodes.start(REPLICA_PORT, "--replicaof", "127.0.0.1", str(MASTER_PORT))
        for port in SENTINEL_PORTS:
            nodes.start(port, sentinel_conf=sentinel_conf(port))
        for port in SENTINEL_PORTS:
            _wait(lambda port=port: _knows_replica_and_peers(port), f"sentinel {port} ready")
        hosts = ",".join(f"127.0.0.1:{p}" for p in SENTINEL_PORTS)
        yield nodes, f"redis+sentinel://{hosts}/{SERVICE}/0"
    finally:
        nodes.stop()
