"""A circuit breaker so a Redis outage costs one timeout per probe, not one per request."""

import threading
import time
from collections.abc import Callable

from ratelimit.metrics import circuit_open


class CircuitBreaker:
    """Closed: calls go through. After `threshold` consecutive failures it opens for
    `open_seconds`: calls are refused at once. Then one probe at a time is let through
    (half-open); a success closes it, a failure opens it again."""

    def __init__(
        self,
        threshold: int,
        open_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = max(1, threshold)
        self.open_seconds = open_seconds
        self._clock = clock
        self._failures = 0
        self._open_until: float | None = None
        # The flusher thread settles through the same breaker as the event loop.
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def allow(self) -> bool:
        """True when a call may go to Redis now (closed, or this is the half-open probe)."""
        with self._lock:
            if self._open_until is None:
                return True
            now = self._clock()
            if now < self._open_until:
                return False
            # Half-open: this caller probes; others keep failing fast until it reports back
            # (or until another open period passes, should the probe never report).
            self._open_until = now + self.open_seconds
            return True

    def success(self) -> None:
        with self._lock:
            self._failures = 0
            if self._open_until is not None:
                self._open_until = None
                circuit_open.set(0)

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._open_until is not None or self._failures >= self.threshold:
                self._open_until = self._clock() + self.open_seconds
                circuit_open.set(1)

    def reset(self) -> None:
        """Back to closed with no failures (tests; a settings change)."""
        with self._lock:
            self._failures = 0
            self._open_until = None
            circuit_open.set(0)
