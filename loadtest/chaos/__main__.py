"""`make loadtest`: the chaos benchmark (python -m loadtest.chaos [--smoke]).

Brings up the local stack (loadtest/chaos/stack.py), seeds tenants and keys, runs Locust headless
(loadtest/locustfile.py: a baseline of the well-behaved users, then a 150-user swarm) while it
restarts Redis, SIGKILLs a replica and cuts Postgres, then writes the report and plots to
loadtest/reports/<timestamp>/ and exits 1 if a check failed (--timed-checks-advisory: only the
correctness checks decide, as the smoke test in `make test` wants). --cpu-hog N runs N processes
spinning on a core each beside the stack, from before the baseline to the end (chaos/hog.py).
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from loadtest.chaos.hog import CpuHog  # noqa: E402
from loadtest.chaos.report import write_report  # noqa: E402
from loadtest.chaos.rundata import Leases, RunData, load_access_log, load_records  # noqa: E402
from loadtest.chaos.stack import CpuMeter, Stack  # noqa: E402


@dataclass
class Profile:
    name: str
    model: str
    baseline_s: float
    swarm_s: float
    warmup_s: float
    ramp_s: float
    users: int
    rest: int
    sse: int
    ws: int
    hostile: int
    invalid: int
    oversized: int
    max_tokens: int
    well_behaved_wait: tuple[float, float]
    hostile_wait: tuple[float, float]
    abuse_wait: tuple[float, float]
    redis_restart_at: float  # seconds after the swarm starts
    redis_down_s: float
    kill_at: float
    postgres_cut_at: float
    postgres_cut_s: float
    lease_ttl: float
    isolate_model: bool = False  # the model threads on their own CPUs (Stack.isolate_model)

    @property
    def baseline_users(self) -> int:
        return self.rest + self.sse + self.ws


FULL = Profile(
    name="full",
    model="flan-t5-base shape (random weights), torch-int8, LoRA merged",
    baseline_s=60,
    swarm_s=180,
    warmup_s=10,
    ramp_s=5,
    users=150,
    rest=6,
    sse=2,
    ws=2,
    hostile=110,
    invalid=15,
    oversized=15,
    max_tokens=12,
    # A box that also runs the attacker: the well-behaved load uses about a third of its cores,
    # the flood (about 70 requests/s) about a quarter.
    well_behaved_wait=(5.0, 10.0),
    hostile_wait=(1.0, 2.0),
    abuse_wait=(2.0, 4.0),
    # The first 75 s of the swarm are calm (the latency goals are measured there); then the
    # faults, with time between them to recover.
    redis_restart_at=80,
    redis_down_s=2,
    kill_at=110,
    postgres_cut_at=150,
    postgres_cut_s=5,
    lease_ttl=10,
)
SMOKE = Profile(
    **{
        **asdict(FULL),
        "name": "smoke",
        "model": "tiny random T5 (make_tiny_model)",
        "baseline_s": 8,
        "swarm_s": 22,
        "warmup_s": 2,
        "ramp_s": 3,
        "max_tokens": 8,
        "well_behaved_wait": (0.5, 1.5),
        "redis_restart_at": 4,
        "redis_down_s": 1,
        "kill_at": 9,
        "postgres_cut_at": 14,
        "postgres_cut_s": 3,
        "lease_ttl": 4,
    }
)


def ensure_model(profile: Profile) -> tuple[Path, Path, str, str]:
    """(model folder, adapter folder, served name, quantization)."""
    if profile.name.startswith("smoke"):
        from engine.tiny_model import make_tiny_model

        folder = ROOT / ".cache" / "chaos-tiny-model"
        if not (folder / "config.json").is_file():
            make_tiny_model(folder)
        return folder, folder / "adapter", "tiny-t5", "none"
    from loadtest.bench_engine import ensure_model as ensure_base  # bench_engine's model

    base, adapter = ensure_base(ROOT / ".cache" / "bench")
    return base, adapter, "flan-t5-base", "torch-int8"


def setup_django(stack: Stack) -> None:
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "console.settings",
            "DATABASE_URL": stack.direct_database_url,
            "REDIS_URL": stack.redis_url,
            "API_KEY_PEPPER": stack.pepper,
            "RATELIMIT_FLUSH_SECONDS": "0",
        }
    )
    import django

    django.setup()


class Progress(threading.Thread):
    """One line every few seconds: elapsed, phase, answers so far by status, answers/s."""

    def __init__(self, records: Path, total: float) -> None:
        super().__init__(name="progress", daemon=True)
        self.records, self.total, self.stop = records, total, threading.Event()
        self.phases: dict[str, float] = {}

    def run(self) -> None:
        started, offset, last_total = time.time(), 0, 0
        counts: dict[str, int] = {}
        while not self.stop.wait(5):
            with self.records.open() as handle:
                handle.seek(offset)
                chunk = handle.read()
            complete = chunk[: chunk.rfind("\n") + 1]
            offset += len(complete.encode())
            for line in complete.splitlines():
                entry = json.loads(line)
                if entry.get("event") == "phase":
                    self.phases.setdefault(entry["name"], entry["t"])
                elif entry.get("kind") != "ws_connect":
                    label = str(entry.get("status", 0))
                    counts[label] = counts.get(label, 0) + 1
            total = sum(counts.values())
            phase = "swarm" if "swarm" in self.phases else "baseline"
            print(
                f"  [{time.time() - started:5.0f}s/{self.total:.0f}s] {phase:8} answers {total:6}"
                f" ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))})"
                f"  {(total - last_total) / 5:.0f}/s",
                flush=True,
            )
            last_total = total


def chaos(stack: Stack, profile: Profile, progress: Progress) -> None:
    """The three faults, at fixed offsets from the start of the swarm."""
    while "swarm" not in progress.phases and not progress.stop.is_set():
        time.sleep(0.2)
    swarm = progress.phases.get("swarm", time.time())
    plan = sorted(
        [
            (profile.redis_restart_at, lambda: stack.restart_redis(profile.redis_down_s)),
            (profile.kill_at, lambda: stack.kill_replica(0)),
            (profile.postgres_cut_at, lambda: stack.cut_postgres(profile.postgres_cut_s)),
        ],
        key=lambda item: item[0],
    )
    for offset, action in plan:
        if offset >= profile.swarm_s:
            continue
        delay = swarm + offset - time.time()
        if delay > 0:
            time.sleep(delay)
        action()


def prometheus_series(stack: Stack, start: float, end: float) -> dict:
    queries = {
        "generation_p95": "histogram_quantile(0.95, sum by (le) "
        "(rate(inference_generation_seconds_bucket[10s])))",
        "ttft_p95": "histogram_quantile(0.95, sum by (le) "
        "(rate(inference_time_to_first_token_seconds_bucket[10s])))",
        "queue_depth": "sum(inference_queue_depth)",
        "batch_size": "sum(rate(inference_batch_size_sum[5s])) / "
        "sum(rate(inference_batch_size_count[5s]))",
    }
    series = {}
    for name, query in queries.items():
        params = urllib.parse.urlencode({"query": query, "start": start, "end": end, "step": 1})
        url = f"{stack.prometheus_url}/api/v1/query_range?{params}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (loopback)
                result = json.loads(response.read())["data"]["result"]
        except OSError:
            result = []
        series[name] = [
            (float(t), float(v))
            for t, v in (result[0]["values"] if result else [])
            if v not in ("NaN", "+Inf")
        ]
    return series


def usage_by_key() -> dict[str, dict[str, int]]:
    from django.db.models import Sum

    from tenants.models import UsageMinute

    rows = UsageMinute.objects.values("api_key__name").annotate(
        requests=Sum("requests"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens")
    )
    return {
        row["api_key__name"]: {
            "requests": row["requests"],
            "prompt_tokens": row["prompt"],
            "completion_tokens": row["completion"],
        }
        for row in rows
        if row["requests"]
    }


def dump_usage_minutes(path: Path) -> None:
    """Usage per key and minute, kept in the work directory to trace any difference."""
    from tenants.models import UsageMinute

    rows = UsageMinute.objects.values_list(
        "api_key__name", "minute", "requests", "prompt_tokens", "completion_tokens", "errors"
    )
    path.write_text(json.dumps([[n, m.isoformat(), *rest] for n, m, *rest in rows], indent=0))


def settle_accounting(stack: Stack) -> dict[str, dict[str, int]]:
    """Move what Redis and the replicas' own backlogs hold to Postgres, until it stops moving."""
    from ratelimit.flush import flush

    previous, stable = None, 0
    for _ in range(30):
        flush()
        current = usage_by_key()
        stable = stable + 1 if current == previous else 0
        if stable >= 2:
            return current
        previous = current
        time.sleep(2.5)  # the replicas flush their own backlogs every 2 s
    return previous or {}


def leases(stack: Stack) -> Leases:
    """Live in-flight leases (zset members not yet expired), and lease records never settled
    per tenant id (rl:v1:{t:<id>}:lease:<lease id>)."""
    import redis

    client = redis.Redis(port=stack.redis_port, decode_responses=True)
    seconds, micros = client.time()
    now_us = seconds * 1_000_000 + micros
    live = 0
    unsettled: dict[str, int] = {}
    for name in client.scan_iter("rl:v1:*", count=1000):
        if client.type(name) == "zset":
            live += client.zcount(name, f"({now_us}", "+inf")
        elif ":lease:" in name:
            tenant = name.split("{t:", 1)[1].split("}", 1)[0]
            unsettled[tenant] = unsettled.get(tenant, 0) + 1
    return {"live": live, "unsettled_records": sum(unsettled.values()), "by_tenant": unsettled}


def run(profile: Profile, args: argparse.Namespace) -> int:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    workdir = ROOT / ".cache" / "chaos" / stamp
    out = args.report_dir or ROOT / "loadtest" / "reports" / f"{stamp}-{profile.name}"
    print(f"chaos run ({profile.name}): work files in {workdir}", flush=True)
    model, adapter, model_name, quantization = ensure_model(profile)
    stack = Stack(
        workdir,
        model,
        adapter,
        model_name,
        quantization,
        lease_ttl=profile.lease_ttl,
        isolate_model=profile.isolate_model or args.isolate_model,
        model_threads=args.model_threads,
    )
    hog = CpuHog(args.cpu_hog)
    try:
        print("starting Redis, the Postgres proxy, two replicas, Traefik, Prometheus", flush=True)
        stack.up()
        setup_django(stack)
        from loadtest.chaos.seed import seed

        seeded = seed()
        records = workdir / "records.jsonl"
        records.touch()
        config = {
            "seed": seeded,
            "records": str(records),
            "model": model_name,
            "max_tokens": profile.max_tokens,
            "users": {
                "total": profile.users,
                **{k: getattr(profile, k) for k in ("rest", "sse", "ws")},
                **{k: getattr(profile, k) for k in ("hostile", "invalid", "oversized")},
            },
            "phases": {
                "baseline_s": profile.baseline_s,
                "swarm_s": profile.swarm_s,
                "spawn_rate": profile.users / profile.ramp_s,
            },
            "well_behaved_wait": profile.well_behaved_wait,
            "hostile_wait": profile.hostile_wait,
            "abuse_wait": profile.abuse_wait,
        }
        config_path = workdir / "locust.json"  # holds tokens: work directory only
        config_path.write_text(json.dumps(config))
        total = profile.baseline_s + profile.swarm_s
        print(
            f"seeded {len(seeded['keys'])} keys; Locust: {profile.baseline_users} users for "
            f"{profile.baseline_s:.0f} s, then {profile.users} for {profile.swarm_s:.0f} s",
            flush=True,
        )
        # Before the baseline, so that both phases run on the same machine.
        hog.start()
        if hog.count:
            print(f"CPU hog: {hog.count} spinning process(es) beside the stack", flush=True)
        progress = Progress(records, total)
        progress.start()
        with (workdir / "locust.log").open("wb") as log:
            pin = ["taskset", "-c", stack.request_cpus] if stack.request_cpus else []
            locust = subprocess.Popen(  # noqa: S603 (our own locustfile)
                [*pin, sys.executable, "-m", "locust"]
                + ["-f", str(ROOT / "loadtest" / "locustfile.py")]
                + ["--headless", "--host", stack.public, "--only-summary"]
                + ["--stop-timeout", "60", "--loglevel", "WARNING", "--exit-code-on-error", "0"],
                cwd=ROOT,
                env={**os.environ, "CHAOS_CONFIG": str(config_path)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            others = {"locust": locust.pid}
            others |= {f"cpu hog {n}": pid for n, pid in enumerate(hog.pids, 1)}
            meter = CpuMeter(stack.cpu_by_pid(others))
            faults = threading.Thread(target=chaos, args=(stack, profile, progress), daemon=True)
            faults.start()
            while locust.poll() is None:  # the last reading before Locust exits
                meter.sample(stack.cpu_by_pid(others))
                time.sleep(1)
            locust.wait(timeout=total + 180)
            faults.join(timeout=30)
        progress.stop.set()
        if locust.returncode != 0:
            print((workdir / "locust.log").read_text()[-3000:], file=sys.stderr)
            raise SystemExit(f"Locust exited with {locust.returncode}")
        kill = next((e["t"] for e in stack.events if e["kind"] == "replica_killed"), time.time())
        # Leases of requests that died with the killed replica expire after their TTL.
        time.sleep(max(0.0, kill + profile.lease_ttl + 1 - time.time()))
        print("moving usage to Postgres and collecting the figures", flush=True)
        usage = settle_accounting(stack)
        dump_usage_minutes(workdir / "usage_minutes.json")
        # The faults' times (kill, restarts, cut), kept to replay the checks on the work files.
        (workdir / "events.json").write_text(json.dumps(stack.events, indent=0))
        loaded, phases = load_records(records)
        data = RunData(
            records=loaded,
            phases=phases,
            events=stack.events,
            access=load_access_log(stack.access_log),
            usage=usage,
            limits=seeded["limits"],
            leases=leases(stack),
            series=prometheus_series(stack, phases["baseline"], time.time()),
            settings={
                **stack.limiter_settings(),
                "model_cpus": stack.model_cpus,
                "request_cpus": stack.request_cpus,
                "cpu_hog": hog.count,
            },
            cpu=meter.used,
            profile={**asdict(profile), "baseline_users": profile.baseline_users},
        )
        command = {"full": "make loadtest", "smoke": "make loadtest-smoke"}.get(profile.name)
        if command is None or hog.count:
            command = " ".join(["python -m loadtest.chaos", *sys.argv[1:]])
        summary = write_report(data, out, command)
    finally:
        hog.stop()
        stack.down()
        if not args.keep:
            stack.drop_database()
    print(f"\nreport: {out / 'README.md'}")
    failed = False
    for check in summary["checks"]:
        print(f"  {'PASS' if check['passed'] else 'FAIL'}  {check['name']}: {check['detail']}")
        if not check["passed"] and not (check["timed"] and args.timed_checks_advisory):
            failed = True
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="about 30 s on the tiny model")
    parser.add_argument("--report-dir", type=Path, help="default: loadtest/reports/<timestamp>")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument(
        "--isolate-model",
        action="store_true",
        help="model threads on the upper half of the CPUs (INFERENCE_CPUS), the rest on the "
        "lower half (taskset)",
    )
    parser.add_argument(
        "--model-threads", type=int, default=1, help="torch threads per replica (default 1)"
    )
    parser.add_argument(
        "--cpu-hog",
        type=int,
        default=0,
        metavar="N",
        help="N processes spinning on a core each beside the stack, for the whole run",
    )
    parser.add_argument("--baseline-s", type=float, help="override the profile's baseline")
    parser.add_argument("--swarm-s", type=float, help="override the profile's swarm")
    parser.add_argument(
        "--timed-checks-advisory",
        action="store_true",
        help="report the latency goals but exit 0 if only they fail (the smoke test)",
    )
    args = parser.parse_args()
    profile = SMOKE if args.smoke else FULL
    if args.baseline_s or args.swarm_s:  # experiments: faults past the end never happen
        profile = Profile(
            **{
                **asdict(profile),
                "name": f"{profile.name}-custom",
                "baseline_s": args.baseline_s or profile.baseline_s,
                "swarm_s": args.swarm_s or profile.swarm_s,
            }
        )
    return run(profile, args)


if __name__ == "__main__":
    sys.exit(main())
