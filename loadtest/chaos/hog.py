"""`--cpu-hog N`: N processes each spinning on a core beside the stack for the whole run.

The chaos run measures the node on a machine it has to itself; production boxes run other work
too. A hog takes a core away without touching the stack: busy replicas must still pass their
health checks and the correctness checks must still hold (docs/benchmarks.md).

Each hog ends by itself within a fraction of a second once the process that started it is gone
(it watches its parent id), so even a run killed with SIGKILL leaves no spinning process behind;
`stop()` ends them at once otherwise.
"""

import os
import subprocess
import sys
from dataclasses import dataclass, field

# Spins in slices of about 10 ms and stops when its parent changes (the run is gone).
SPIN = (
    "import os, sys\n"
    "parent = int(sys.argv[1])\n"
    "while os.getppid() == parent:\n"
    "    for _ in range(100_000):\n"
    "        pass\n"
)


@dataclass
class CpuHog:
    """N spinning processes, started by `start()` and ended by `stop()` (or with their parent)."""

    count: int
    processes: list[subprocess.Popen] = field(default_factory=list)

    def start(self) -> "CpuHog":
        for _ in range(self.count):
            self.processes.append(
                subprocess.Popen(  # noqa: S603 (our own interpreter and code)
                    [sys.executable, "-c", SPIN, str(os.getpid())],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                )
            )
        return self

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            process.wait(timeout=10)
        self.processes.clear()

    def __enter__(self) -> "CpuHog":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
