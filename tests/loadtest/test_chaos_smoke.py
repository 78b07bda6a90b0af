"""The chaos benchmark's whole path in about 30 s (make loadtest-smoke): the stack comes up, the
swarm runs through Redis restarted, a replica SIGKILLed and Postgres cut, and the report's
correctness checks pass. Its latency goals are benchmarks: printed, never asserted here."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.servers import REPO, require_binary

pytestmark = pytest.mark.e2e

CORRECTNESS = (
    "no 5xx except the requests in flight on the killed process",
    "per key, admitted <= the limit's bound",
    "every accepted request accounted in Postgres usage",
    "every lease released at the end",
)


def test_the_smoke_run_passes_every_correctness_check(tmp_path: Path) -> None:
    for name in ("traefik", "prometheus", "redis-server"):
        require_binary(name)
    report = tmp_path / "report"
    result = subprocess.run(  # noqa: S603 (our own script)
        [sys.executable, "-m", "loadtest.chaos", "--smoke", "--timed-checks-advisory"]
        + ["--report-dir", str(report)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-4000:]
    summary = json.loads((report / "checks.json").read_text())
    checks = {check["name"]: check for check in summary["checks"]}
    for name in CORRECTNESS:
        assert checks[name]["passed"], checks[name]["detail"]
    # The faults really happened, and every kind of traffic was there to meet them.
    text = (report / "README.md").read_text()
    for event in ("redis_up", "replica_killed", "replica_restarted", "postgres_restored"):
        assert event in text
    swarm = summary["traffic"]["swarm"]
    for status in ("200", "401", "413", "429"):
        assert swarm.get(status, 0) > 0, swarm
    for image in ("requests_by_status", "admitted_latency", "refusal_latency", "queue_depth"):
        assert (report / f"{image}.png").stat().st_size > 5000
    assert "PASS" in text and "p95 of 429 answers" in text
