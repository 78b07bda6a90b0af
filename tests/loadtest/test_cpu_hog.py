"""The chaos run's --cpu-hog: processes that spin until stopped, and never outlive the run."""

import signal
import subprocess
import sys
from functools import partial

import psutil

from loadtest.chaos.hog import CpuHog
from tests.e2e.servers import REPO, alive, wait_until

# Deadlines for a busy machine; what is asserted is that things happen, not how fast.
WAIT_SECONDS = 60


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def burnt_half_a_second(pid: int) -> bool:
    return cpu_seconds(pid) >= 0.5


def test_a_hog_spins_until_it_is_stopped() -> None:
    with CpuHog(2) as hog:
        pids = hog.pids
        assert len(pids) == 2
        for pid in pids:
            wait_until(partial(burnt_half_a_second, pid), "a hog to burn CPU", WAIT_SECONDS)
    assert not any(alive(pid) for pid in pids) and hog.processes == []


def test_hogs_end_with_the_run_that_started_them_even_when_it_is_killed() -> None:
    script = (
        "from loadtest.chaos.hog import CpuHog\n"
        "hog = CpuHog(2).start()\n"
        "print(*hog.pids, flush=True)\n"
        "import time; time.sleep(600)\n"
    )
    run = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    pids: list[int] = []
    try:
        assert run.stdout is not None
        pids = [int(pid) for pid in run.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
        run.send_signal(signal.SIGKILL)  # no finally, no atexit: only the hogs' own watch
        run.wait(timeout=WAIT_SECONDS)
        wait_until(lambda: not any(alive(pid) for pid in pids), "the hogs to end", WAIT_SECONDS)
    finally:
        run.kill()
        for pid in pids:  # only if the test failed
            if alive(pid):
                psutil.Process(pid).kill()
