"""The local stack of the chaos run, outside containers, on loopback ports the OS hands out.

Two daphne replicas (each its own process, model and port) behind the real Traefik rendered from
deploy/ (retries, health checks and access log as in production), a Redis of the run's own (append
only, fsync always: a restart loses nothing), Postgres through a cuttable proxy in a scratch
database, and the real Prometheus scraping everything. A supervisor thread restarts a replica
that dies, as a container runtime would.
"""

import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from deploy.render import render_tree
from loadtest.chaos.tcpproxy import CuttableProxy

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def binary(name: str) -> str:
    found = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if not found:
        hint = "apt-get install prometheus" if name == "prometheus" else "make install"
        raise SystemExit(f"{name} is not installed ({hint})")
    return found


def http_status(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback)
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def wait_for(check: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise SystemExit(f"gave up waiting for {what} after {timeout:.0f} s")


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    cpus: str = ""  # taskset's CPU list for the process; empty: any

    def start(self) -> None:
        argv = [binary("taskset"), "-c", self.cpus, *self.argv] if self.cpus else self.argv
        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(  # noqa: S603 (our own argv)
                argv,
                cwd=REPO,
                env={**os.environ, **self.env},
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, wait: float = 15.0) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


@dataclass
class Replica(Proc):
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def ready(self) -> bool:
        return http_status(f"{self.url}/readyz") == 200


class Supervisor(threading.Thread):
    """Restarts any replica that exits, recording when (the run's events)."""

    def __init__(
        self, replicas: list[Replica], on_restart: Callable[[Replica, int | None], None]
    ) -> None:
        super().__init__(name="supervisor", daemon=True)
        self.replicas, self.on_restart = replicas, on_restart
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.1):
            for replica in self.replicas:
                if not replica.alive() and not self.stopping.is_set():
                    code = replica.process.returncode if replica.process else None
                    replica.start()
                    self.on_restart(replica, code)


@dataclass
class Stack:
    workdir: Path
    model: Path
    adapter: Path
    model_name: str
    quantization: str
    replicas_count: int = 2
    lease_ttl: float = 10.0
    # Split the CPUs: the model threads on the upper half (INFERENCE_CPUS), everything else
    # (event loops, Traefik, Redis, Prometheus, Locust) on the lower half.
    isolate_model: bool = False
    model_threads: int = 1  # torch threads per replica's model (INFERENCE_THREADS)
    breaker_seconds: float = 2.0  # how long the limiter's breaker stays open (settings' default)
    database: str = ""
    redis_port: int = 0
    procs: list[Proc] = field(default_factory=list)
    replicas: list[Replica] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    started_at: float = 0.0

    # --- addresses -------------------------------------------------------------------------
    @property
    def request_cpus(self) -> str:
        return self._cpu_split()[0]

    @property
    def model_cpus(self) -> str:
        return self._cpu_split()[1]

    def _cpu_split(self) -> tuple[str, str]:
        cpus = sorted(os.sched_getaffinity(0))
        if not self.isolate_model or len(cpus) < 2:
            return "", ""
        half = len(cpus) // 2
        return ",".join(map(str, cpus[:half])), ",".join(map(str, cpus[half:]))

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST}:{self.redis_port}/0"

    @property
    def direct_database_url(self) -> str:
        return f"postgres://postgres@127.0.0.1:5432/{self.database}"

    def event(self, kind: str, **details: object) -> None:
        entry = {"t": time.time(), "kind": kind, **details}
        self.events.append(entry)
        shown = {k: v for k, v in details.items() if k != "dead_at"}
        print(f"  [{time.time() - self.started_at:6.1f}s] {kind} {shown or ''}", flush=True)

    # --- bring up ----------------------------------------------------------------------------
    def up(self) -> None:
        self.started_at = time.time()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.database = f"chaos_{int(time.time())}_{secrets.token_hex(3)}"
        self._create_database()
        self.redis_port = free_port()
        self.redis = Proc(
            "redis",
            [binary("redis-server"), "--port", str(self.redis_port), "--bind", HOST]
            + ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
            + ["--dir", str(self.workdir)],
            self.workdir / "redis.log",
            cpus=self.request_cpus,
        )
        self.redis.start()
        wait_for(self._redis_up, "Redis", 15)
        self.pg_proxy = CuttableProxy("127.0.0.1", 5432).start()
        env = self.app_env()
        self._manage(env | {"DATABASE_URL": self.direct_database_url}, "migrate", "--noinput")
        self.replicas = [
            Replica(
                f"daphne-{n}",
                [sys.executable, "-m", "daphne", "-b", HOST, "-p", str(port)]
                + ["console.asgi:application"],
                self.workdir / f"daphne-{n}.log",
                env,
                cpus=self.request_cpus,
                port=port,
            )
            for n, port in enumerate([free_port() for _ in range(self.replicas_count)], 1)
        ]
        for replica in self.replicas:
            replica.start()
        self.supervisor = Supervisor(self.replicas, self._restarted)
        self.supervisor.start()
        for replica in self.replicas:
            wait_for(replica.ready, r_name(replica), 300)
        self._start_traefik_and_prometheus()

    def app_env(self) -> dict[str, str]:
        return {
            "DJANGO_SETTINGS_MODULE": "console.settings",
            "DEBUG": "false",
            "SECRET_KEY": secrets.token_urlsafe(48),
            "API_KEY_PEPPER": self.pepper,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "TRUSTED_PROXY_HEADER": "X-Forwarded-For",
            "TRUSTED_PROXY_ADDRESSES": HOST,
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:{self.pg_proxy.port}/{self.database}",
            "DATABASE_POOL_TIMEOUT": "2",
            "REDIS_URL": self.redis_url,
            "RATELIMIT_FAILURE_MODE": "local",
            "RATELIMIT_LOCAL_DIVISOR": str(self.replicas_count),
            "RATELIMIT_BREAKER_SECONDS": str(self.breaker_seconds),
            "RATELIMIT_LEASE_TTL_SECONDS": str(self.lease_ttl),
            "RATELIMIT_HEARTBEAT_SECONDS": str(self.lease_ttl / 3),
            "RATELIMIT_FLUSH_SECONDS": "2",
            # Two replicas, Locust, Traefik, Redis and Postgres share the cores.
            "RATELIMIT_REDIS_TIMEOUT_MS": "250",
            "INFERENCE_MODEL": str(self.model),
            "INFERENCE_ADAPTER": str(self.adapter),
            "INFERENCE_MODEL_NAME": self.model_name,
            "INFERENCE_QUANTIZATION": self.quantization,
            "INFERENCE_DEVICE": "cpu",
            "INFERENCE_THREADS": str(self.model_threads),
            "INFERENCE_MAX_BATCH": "16",
            "INFERENCE_MAX_QUEUE": "64",
            "INFERENCE_CPUS": self.model_cpus,
        }

    def limiter_settings(self) -> dict[str, float]:
        """The replicas' limiter settings the report's bounds are computed from (app_env)."""
        return {
            # One limiter per replica process, each with its share of the limit while Redis
            # is away (RATELIMIT_LOCAL_DIVISOR above).
            "local_divisor": self.replicas_count,
            "processes": self.replicas_count,
            "breaker_seconds": self.breaker_seconds,
        }

    @property
    def pepper(self) -> str:
        if not hasattr(self, "_pepper"):
            self._pepper = secrets.token_urlsafe(48)
        return self._pepper

    def _manage(self, env: dict[str, str], *args: str) -> None:
        result = subprocess.run(  # noqa: S603 (our manage.py)
            [sys.executable, "manage.py", *args, "-v0"],
            cwd=REPO,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            raise SystemExit(f"manage.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")

    def _create_database(self) -> None:
        import psycopg

        with psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres", autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{self.database}"')

    def drop_database(self) -> None:
        import psycopg

        with psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres", autocommit=True) as db:
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (self.database,),
            )
            db.execute(f'DROP DATABASE IF EXISTS "{self.database}"')

    def _redis_up(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.redis_port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def _start_traefik_and_prometheus(self) -> None:
        ports = {name: free_port() for name in ("public", "internal", "prometheus")}
        config = self.workdir / "config"
        self.access_log = self.workdir / "access.log"
        render_tree(
            config,
            {
                "TRAEFIK_PUBLIC_ADDRESS": f"{HOST}:{ports['public']}",
                "TRAEFIK_INTERNAL_ADDRESS": f"{HOST}:{ports['internal']}",
                "TRAEFIK_TRUSTED_FORWARDERS": [],
                "TRAEFIK_DYNAMIC_DIR": str(config / "traefik" / "dynamic"),
                "TRAEFIK_ACCESS_LOG": str(self.access_log),
                "APP_SERVERS": [{"url": replica.url} for replica in self.replicas],
                "APP_HEALTH_PATH": "/readyz",
                "APP_DNS_SD": [],
                "APP_STATIC_TARGETS": [{"targets": [f"{HOST}:{r.port}" for r in self.replicas]}],
                "TRAEFIK_METRICS_TARGETS": [f"{HOST}:{ports['internal']}"],
                "PROMETHEUS_SELF_TARGETS": [f"{HOST}:{ports['prometheus']}"],
                "ALERTMANAGER_TARGETS": [],  # the chaos run reads rules, sends no alert
                "INFERENCE_MAX_QUEUE": 64,
            },
        )
        # A run lasts minutes: scrape every second instead of every 5 s.
        prometheus_yml = config / "prometheus" / "prometheus.yml"
        text = prometheus_yml.read_text()
        for name in ("scrape_interval: 5s", "scrape_timeout: 4s"):
            text = text.replace(name, name.split(":")[0] + ": 1s")
        prometheus_yml.write_text(text)
        self.public = f"http://{HOST}:{ports['public']}"
        self.internal = f"http://{HOST}:{ports['internal']}"
        self.prometheus_url = f"http://{HOST}:{ports['prometheus']}"
        self.traefik = Proc(
            "traefik",
            [binary("traefik"), f"--configFile={config / 'traefik' / 'traefik.yml'}"],
            self.workdir / "traefik.log",
            cpus=self.request_cpus,
        )
        self.traefik.start()
        self.prometheus = Proc(
            "prometheus",
            [binary("prometheus"), f"--config.file={prometheus_yml}"]
            + [f"--storage.tsdb.path={self.workdir / 'tsdb'}"]
            + [f"--web.listen-address={HOST}:{ports['prometheus']}"],
            self.workdir / "prometheus.log",
            cpus=self.request_cpus,
        )
        self.prometheus.start()
        wait_for(lambda: http_status(f"{self.public}/healthz") == 200, "Traefik", 60)
        wait_for(lambda: http_status(f"{self.prometheus_url}/-/ready") == 200, "Prometheus", 60)

    # --- chaos -------------------------------------------------------------------------------
    def _restarted(self, replica: Replica, code: int | None) -> None:
        self.event("replica_restarted", replica=replica.name, url=replica.url, exit_code=code)

    def kill_replica(self, index: int = 0) -> None:
        replica = self.replicas[index]
        process = replica.process  # the supervisor replaces replica.process once it is dead
        assert process is not None
        before = time.time()
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        # [t, dead_at]: the process died in between; a request in flight at its death started
        # before dead_at and ended (at Traefik) after t.
        self.event("replica_killed", replica=replica.name, url=replica.url, dead_at=time.time())
        self.events[-1]["t"] = before

    def restart_redis(self, down_seconds: float) -> None:
        self.event("redis_stopping")
        self.redis.stop(signal.SIGTERM)  # SHUTDOWN: the append-only file is complete
        self.event("redis_down")
        time.sleep(down_seconds)
        self.redis.start()
        wait_for(self._redis_up, "Redis to come back", 30)
        self.event("redis_up")

    def cut_postgres(self, seconds: float) -> None:
        self.pg_proxy.cut()
        self.event("postgres_cut", seconds=seconds)
        time.sleep(seconds)
        self.pg_proxy.restore()
        self.event("postgres_restored")

    def replica_ready(self, index: int) -> bool:
        return http_status(f"{self.replicas[index].url}/readyz") == 200

    def cpu_by_pid(self, extra: dict[str, int] | None = None) -> dict[str, dict[int, float]]:
        """CPU time (user + system) so far of each process of each part of the stack."""
        import psutil

        pids: dict[str, list[int]] = {
            "redis": [self.redis.process.pid] if self.redis.process else [],
            "traefik": [self.traefik.process.pid] if self.traefik.process else [],
            "prometheus": [self.prometheus.process.pid] if self.prometheus.process else [],
            "postgres": [
                p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"
            ],
            "orchestrator": [os.getpid()],
            **{r.name: [r.process.pid] for r in self.replicas if r.process},
            # Each replica's model process (INFERENCE_MODEL_PROCESS), its child.
            **{f"{r.name} model": _children(r.process.pid) for r in self.replicas if r.process},
            **{name: [pid] for name, pid in (extra or {}).items()},
        }
        found: dict[str, dict[int, float]] = {}
        for name, group in pids.items():
            for pid in group:
                try:
                    times = psutil.Process(pid).cpu_times()
                except psutil.Error:
                    continue
                found.setdefault(name, {})[pid] = times.user + times.system
        return found

    # --- tear down ---------------------------------------------------------------------------
    def down(self) -> None:
        supervisor = getattr(self, "supervisor", None)
        if supervisor is not None:
            supervisor.stopping.set()
            supervisor.join(2)
        for proc in (getattr(self, "prometheus", None), getattr(self, "traefik", None)):
            if proc is not None:
                proc.stop()
        for replica in self.replicas:
            replica.stop()
        if getattr(self, "redis", None) is not None:
            self.redis.stop()
        if getattr(self, "pg_proxy", None) is not None:
            self.pg_proxy.stop()


def r_name(replica: Replica) -> str:
    return f"{replica.name} at {replica.url}/readyz"


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.Error:
        return []


class CpuMeter:
    """CPU seconds per part of the stack over a stretch of time, a replica's successive
    processes added up (a process first seen counts from its start)."""

    def __init__(self, first: dict[str, dict[int, float]]) -> None:
        self.last = {pid: cpu for group in first.values() for pid, cpu in group.items()}
        self.used: dict[str, float] = {name: 0.0 for name in first}

    def sample(self, now: dict[str, dict[int, float]]) -> None:
        for name, group in now.items():
            for pid, cpu in group.items():
                self.used[name] = self.used.get(name, 0.0) + cpu - self.last.get(pid, 0.0)
                self.last[pid] = cpu
