"""The HTTP gateway's own cost: the 429 path against a trivial endpoint on the same server, and
the admitted path's overhead around the engine.

    .venv/bin/python loadtest/bench_http.py [--seconds 5] [--rounds 3] [--workers 8]
                                            [--requests 300] [--cpu-rounds 10]

It starts everything it measures and stops it at the end: its own redis-server on a free port,
a scratch PostgreSQL database (`inference_node_bench` on DATABASE_URL's server, default
127.0.0.1), the tiny random T5 (built into a temp dir), and one daphne serving the project.

- Throughput: `--workers` keep-alive clients hammer for `--seconds` each, in `--rounds`
  interleaved rounds: GET /healthz (no key, no limiter: the trivial endpoint) and
  POST /v1/completions with a key whose limit is spent (after the first refusal from Redis,
  every one comes from the denial cache, answered before ninja: console/fastpath.py). Goal:
  429 rps >= 0.8x. Each round's ratio is printed too: this machine's speed drifts between
  rounds, and a round's two paths ran seconds apart.
- CPU, in process (after the server is gone): the same 429 through the server's ASGI layers
  with the shortcut and without it (ninja's path), and /healthz, `--cpu-rounds` interleaved
  rounds of 500 each, timed by this thread's CPU clock: what the paths cost, whatever else
  the machine runs.
- Overhead: `--requests` sequential admitted streamed completions; overhead = the client's time
  to its first content chunk minus the engine's own time to first token for that request (the
  growth of inference_time_to_first_token_seconds_sum on /metrics around it). What is left is
  HTTP, auth, validation, the prompt's token count, admission, queueing into the engine and
  the first chunk's way out. Goal: p99 <= 5 ms.
"""

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

from loadtest.harness import own_redis  # noqa: E402
from loadtest.percentiles import percentile_nearest_rank  # noqa: E402

PARSER = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
PARSER.add_argument("--seconds", type=float, default=5.0)
PARSER.add_argument("--rounds", type=int, default=3)
PARSER.add_argument("--workers", type=int, default=8)
PARSER.add_argument("--requests", type=int, default=300)
PARSER.add_argument("--cpu-rounds", type=int, default=10)


def scratch_database() -> str:
    """A fresh database named after DATABASE_URL's with _bench appended (inference_node_bench
    by default), on its server: runs against different databases never share one."""
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/inference_node")
    server, name = base.rsplit("/", 1)
    name = name.split("?")[0] + "_bench"
    host = server.split("@")[-1].split(":")[0]
    for command in (["dropdb", "--if-exists"], ["createdb"]):
        subprocess.run([*command, "-h", host, "-U", "postgres", name], check=True)
    return f"{server}/{name}"


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,  # noqa: S603
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def start_server(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    daphne = Path(sys.executable).with_name("daphne")
    sink = log.open("wb")
    process = subprocess.Popen(
        [
            str(daphne),
            "-b",
            "127.0.0.1",
            "-p",
            "0",  # noqa: S603
            "console.asgi:application",
        ],
        cwd=ROOT,
        env=env,
        stdout=sink,
        stderr=subprocess.STDOUT,
    )
    for _ in range(600):
        text = log.read_text(errors="replace")
        if "Listening on TCP address" in text:
            port = text.split("Listening on TCP address 127.0.0.1:")[1].split()[0]
            url = f"http://127.0.0.1:{port}"
            if asyncio.run(one_request(url, "GET", "/readyz"))[0] == 200:
                return process, url
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"daphne did not become ready:\n{log.read_text()[-3000:]}")


def prepare(workdir: Path, redis_url: str) -> tuple[dict[str, str], str, str]:
    """Environment for the server, a key with a spent limit, a key with room."""
    from engine.loading import quiet_libraries
    from engine.tiny_model import make_tiny_model

    quiet_libraries()
    model = make_tiny_model(workdir / "tiny", seed=0)
    env = {
        **os.environ,
        "DATABASE_URL": scratch_database(),
        "REDIS_URL": redis_url,
        "DEBUG": "false",
        "INFERENCE_MODEL": str(model),
        "INFERENCE_MODEL_NAME": "tiny",
        "INFERENCE_QUANTIZATION": "none",
        "INFERENCE_THREADS": "1",
        "INFERENCE_MAX_WAIT_MS": "0",
        "RATELIMIT_FLUSH_SECONDS": "0",
        # Production settings (DEBUG off) need real secrets; these live for one run only.
        "SECRET_KEY": secrets.token_urlsafe(48),
        "API_KEY_PEPPER": secrets.token_urlsafe(48),
    }
    manage(env, "migrate", "--noinput", "-v0")
    manage(env, "create_tenant", "spent", "--preset", "unlimited", "--rpm", "1", "--burst", "1")
    manage(
        env,
        "create_tenant",
        "roomy",
        "--preset",
        "unlimited",
        "--rpm",
        "100000",
        "--tpm",
        "100000000",
    )
    return env, manage(env, "issue_key", "spent"), manage(env, "issue_key", "roomy")


class Connection:
    """A minimal keep-alive HTTP/1.1 client: cheap enough not to be what is measured."""

    def __init__(self, url: str) -> None:
        self.host, self.port = url.removeprefix("http://").split(":")
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def streams(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The connection's reader and writer, opened on first use."""
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, int(self.port))
        return self.reader, self.writer

    async def request(
        self, method: str, path: str, headers: dict, body: bytes | None
    ) -> tuple[int, dict[str, str], bytes]:
        reader, writer = await self.streams()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"Content-Length: {len(body or b'')}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status = int(head.split(" ", 2)[1])
        fields = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
        fields = {name.lower(): value for name, value in fields.items()}
        if fields.get("transfer-encoding") == "chunked":
            payload = b""
            while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                payload += (await reader.readexactly(size + 2))[:-2]
            await reader.readuntil(b"\r\n")
        else:
            payload = await reader.readexactly(int(fields.get("content-length", "0")))
        return status, fields, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def one_request(
    url: str, method: str, path: str, headers: dict | None = None, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = Connection(url)
    try:
        return await connection.request(method, path, headers or {}, body)
    except OSError:
        return 0, {}, b""
    finally:
        connection.close()


async def hammer(
    url: str,
    method: str,
    path: str,
    seconds: float,
    workers: int,
    headers: dict,
    body: bytes | None,
) -> tuple[float, list[float], set[int]]:
    latencies: list[float] = []
    statuses: set[int] = set()
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        connection = Connection(url)
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                status, _, _ = await connection.request(method, path, headers, body)
                latencies.append(time.perf_counter() - started)
                statuses.add(status)
        finally:
            connection.close()

    begun = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return len(latencies) / (time.perf_counter() - begun), latencies, statuses


async def throughput(url: str, spent: str, args: argparse.Namespace) -> dict[str, list]:
    body = json.dumps({"model": "tiny", "prompt": "Hello there", "max_tokens": 8}).encode()
    paths = {
        "trivial": ("GET", "/healthz", {}, None),
        "429": (
            "POST",
            "/v1/completions",
            {"Authorization": f"Bearer {spent}", "Content-Type": "application/json"},
            body,
        ),
    }
    runs: dict[str, list] = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, (method, path, headers, payload) in paths.items():
            rps, latencies, statuses = await hammer(
                url, method, path, args.seconds, args.workers, headers, payload
            )
            runs[name].append((rps, latencies, statuses))
    return runs


async def engine_ttft_sum(url: str) -> float:
    """The engine's own time-to-first-token total so far (its histogram's _sum)."""
    _, _, text = await one_request(url, "GET", "/metrics")
    for line in text.decode().splitlines():
        if line.startswith("inference_time_to_first_token_seconds_sum"):
            return float(line.rsplit(" ", 1)[1])
    raise SystemExit("no inference_time_to_first_token_seconds_sum in /metrics")


async def first_content_after(connection: "Connection", headers: dict, body: bytes) -> float:
    """Send one streamed completion; seconds until its first content chunk; read it all."""
    reader, writer = await connection.streams()
    started = time.perf_counter()
    lines = ["POST /v1/completions HTTP/1.1", f"Host: {connection.host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    head = await reader.readuntil(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0], head
    first = None
    while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
        chunk = await reader.readexactly(size + 2)
        if first is None and b"x_completion_tokens" in chunk:
            first = time.perf_counter() - started
    await reader.readuntil(b"\r\n")
    assert first is not None
    return first


async def overhead(url: str, roomy: str, count: int) -> list[float]:
    """Per streamed request: the client's time to its first content chunk minus the engine's
    own time to first token for it (requests run one at a time, so the histogram's _sum grows
    by exactly that request's value)."""
    body = json.dumps({"model": "tiny", "prompt": "Hi", "max_tokens": 4, "stream": True})
    headers = {"Authorization": f"Bearer {roomy}", "Content-Type": "application/json"}
    gaps = []
    connection = Connection(url)
    await connection.streams()
    try:
        for n in range(count + 20):
            before = await engine_ttft_sum(url)
            first = await first_content_after(connection, headers, body.encode())
            engine = await engine_ttft_sum(url) - before
            if n >= 20:  # the first ones warm caches and the connection
                gaps.append(first - engine)
    finally:
        connection.close()
    return gaps


def report(runs: dict[str, list], gaps: list[float], args: argparse.Namespace) -> None:
    print(
        f"load: {os.getloadavg()}, workers {args.workers}, {args.rounds} rounds x "
        f"{args.seconds:.0f} s per path"
    )
    for name, rows in runs.items():
        rps = statistics.median(row[0] for row in rows)
        latencies = [value for row in rows for value in row[1]]
        statuses = sorted(set().union(*(row[2] for row in rows)))
        p50, p99 = (percentile_nearest_rank(latencies, q) * 1000 for q in (0.5, 0.99))
        print(
            f"{name:8s} {rps:8.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  statuses {statuses}"
        )
    ratio = statistics.median(r[0] for r in runs["429"]) / statistics.median(
        r[0] for r in runs["trivial"]
    )
    pairs = zip(runs["429"], runs["trivial"], strict=True)
    rounds = [refused[0] / trivial[0] for refused, trivial in pairs]
    print(f"429 path / trivial endpoint, req/s: {ratio:.2f}x (goal >= 0.80x)")
    print(
        f"  per round: {' '.join(f'{r:.2f}' for r in rounds)}; "
        f"median {statistics.median(rounds):.2f}x"
    )
    p50, p99 = (percentile_nearest_rank(gaps, q) * 1000 for q in (0.5, 0.99))
    print(
        f"admitted path, time to first byte minus the engine's time to first token "
        f"({len(gaps)} sequential streams): p50 {p50:.2f} ms  "
        f"p99 {p99:.2f} ms (goal p99 <= 5 ms)"
    )


def asgi_scope(method: str, path: str, headers: dict) -> dict:
    raw = [(b"host", b"127.0.0.1"), *((k.lower().encode(), v.encode()) for k, v in headers.items())]
    return {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": raw,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }


async def asgi_call(app: Any, scope: dict, body: bytes) -> int:
    """One request through an ASGI app in this process; its status."""
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    status = 0

    async def receive() -> dict:
        if incoming:
            return incoming.pop()
        await asyncio.Event().wait()  # the client stays until the answer is complete
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        nonlocal status
        status = message.get("status", status)

    await app(scope, receive, send)
    return status


async def cpu_rounds(paths: dict[str, tuple], rounds: int, count: int) -> dict[str, list]:
    """Per path and round: this thread's CPU microseconds per request (thread_time, which the
    other processes on the machine do not inflate), the paths interleaved round by round."""
    costs: dict[str, list] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, (app, scope, body, wanted) in paths.items():
            started = time.thread_time()
            for _ in range(count):
                status = await asgi_call(app, scope, body)
                assert status == wanted, (name, status)
            costs[name].append((time.thread_time() - started) / count * 1e6)
    return costs


def in_process(env: dict[str, str], spent: str, args: argparse.Namespace) -> dict[str, list]:
    """The 429 with and without the shortcut (console/fastpath.py) and /healthz, through the
    server's own ASGI layers but without daphne, in this process."""
    os.environ.update(env)
    import django

    django.setup()
    from django.core.handlers.asgi import ASGIHandler

    from console.fastpath import CachedRefusals
    from console.handlers import ApiHandler, PathDispatcher
    from core.errors import RateLimited
    from ratelimit import limiter
    from tenants.auth import authenticate_token

    ninja = PathDispatcher(ApiHandler(), ASGIHandler())
    body = json.dumps({"model": "tiny", "prompt": "Hello there", "max_tokens": 8}).encode()
    headers = {"Authorization": f"Bearer {spent}", "Content-Type": "application/json"}
    refused = asgi_scope("POST", "/v1/completions", headers)
    paths = {
        "trivial": (ninja, asgi_scope("GET", "/healthz", {}), b"", 200),
        "429 via ninja": (ninja, refused, body, 429),
        "429": (CachedRefusals(ninja), refused, body, 429),
    }

    async def run() -> dict[str, list]:
        # One event loop throughout: the Redis clients belong to the loop that opened them.
        record = await authenticate_token(spent)
        assert record is not None
        for _ in range(3):  # until Redis refuses the key: the denial cache holds it from then
            try:
                admission = await limiter.admit(record, tokens=1)
            except RateLimited:
                break
            await limiter.settle(admission, prompt_tokens=0, completion_tokens=0)
        return await cpu_rounds(paths, args.cpu_rounds, 500)

    return asyncio.run(run())


def report_cpu(costs: dict[str, list]) -> None:
    print(f"in process, CPU per request (thread_time, {len(costs['429'])} interleaved rounds):")
    for name, values in costs.items():
        print(f"{name:14s} median {statistics.median(values):6.0f} us  min {min(values):6.0f} us")
    median = {name: statistics.median(values) for name, values in costs.items()}
    print(
        f"429 shortcut / 429 via ninja, CPU: {median['429'] / median['429 via ninja']:.2f}x; "
        f"requests per CPU second, 429 / trivial: {median['trivial'] / median['429']:.2f}x "
        f"(via ninja: {median['trivial'] / median['429 via ninja']:.2f}x)"
    )


def main() -> None:
    args = PARSER.parse_args()
    redis_server, redis_url = own_redis()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            env, spent, roomy = prepare(Path(tmp), redis_url)
            server, url = start_server(env, Path(tmp) / "daphne.log")
            try:
                runs = asyncio.run(throughput(url, spent, args))
                gaps = asyncio.run(overhead(url, roomy, args.requests))
            finally:
                server.terminate()
                server.wait(20)
            report(runs, gaps, args)
            if args.cpu_rounds > 0:
                report_cpu(in_process(env, spent, args))
    finally:
        redis_server.terminate()


if __name__ == "__main__":
    main()
