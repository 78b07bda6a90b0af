"""The bounded queue between the event loop and the one model thread, how batches form, which
waiting jobs join a running batch between two decoder steps, and how long a job may wait.

The order in which waiting jobs are admitted is the JobQueue's (FIFO here); the Scheduler
owns the bounds: the queue's length, rows per batch, the token budget and the encoder tokens
run between two steps.
"""

import asyncio
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from engine import metrics
from engine.generation import GenerationRequest, ModelNotReady, QueueFull, QueueTimeout
from engine.messages import Delta, Event, Failed

Deliver = Callable[[Event], None]


class Job:
    """One request from submit() to its result, shared by the event loop and the model thread."""

    def __init__(
        self,
        request: GenerationRequest,
        prompt_ids: list[int],
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        deliver: Deliver | None = None,
        record: bool = True,
    ) -> None:
        self.request = request
        self.prompt_ids = prompt_ids
        self._loop = loop
        self._deliver = deliver
        self.record = record  # False for the warm-up pass: it must not show in metrics
        self.submitted_at = time.perf_counter()
        # Written by the event loop (cancel) or the model thread (loop gone), read by the
        # model thread once per decoding step; a bool store is atomic under the GIL, and a
        # step of lag only costs one more token.
        self.cancelled = False
        # Written by whoever ends the job: the model thread, or (for a job still queued) the
        # one that took it out of the queue under the scheduler's lock.
        self.finished = False
        self.queued_at = 0.0  # set by Scheduler.put(), under its lock
        self.remote_id: int | None = None  # its id in the model process (EngineConfig.process)
        # Its adapter while it decodes (engine/lora.py's Adapter and bank key; None: the base).
        self.adapter: Any = None
        self.adapter_key: tuple[str, str] | None = None
        self._last_delta_at: float | None = None  # only ever touched by the thread that sends
        # Set once a piece of its answer was sent (by whoever sends: the model thread, or the
        # serving process's reader of a model process); read by the scheduler's fairness
        # (_Room): a row not answering yet waits for an encoder pass or its first token.
        self.answering = False

    @property
    def tokens(self) -> int:
        """What the job may come to hold in the caches: its prompt and its max_tokens."""
        return len(self.prompt_ids) + self.request.max_tokens

    def send(self, event: Event) -> None:
        """Hand an event to the consumer's event loop (called from the model thread)."""
        if isinstance(event, Delta):
            self.answering = True
            if self.record:
                self._time_delta()
        if self._loop is None or self._deliver is None:
            return
        try:
            # The only way across: the event loop never runs model code, and the model thread
            # never touches asyncio objects directly.
            self._loop.call_soon_threadsafe(self._deliver, event)
        except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
            self.cancelled = True

    def _time_delta(self) -> None:
        # The gap a client sees between two pieces of text (a token that completes no
        # character adds to the next gap); the first piece's wait is time to first token.
        now = time.perf_counter()
        if self._last_delta_at is not None:
            metrics.TOKEN_GAP_SECONDS.observe(now - self._last_delta_at)
        self._last_delta_at = now


# Between two steps: given the running rows' jobs, the jobs that join now (never blocks).
# (the rows holding places, urgent) -> the newcomers that start now; urgent asks only for the
# tenant headroom's rows, whose pass runs whole at once (Scheduler.take_joiners).
Admit = Callable[[Sequence[Job], bool], list[Job]]


def prefill_group_limit(max_prefill_tokens: int, step_tokens: int, layers: int) -> int:
    """The encoder tokens admitted together into one pass (0: no bound): max_prefill_tokens,
    and, when passes are cut at layer boundaries, no more than one layer's worth of the
    per-step budget (step_tokens through `layers` layers), so that a group's layer also fits
    between two steps; a single newcomer always fits (prefill_fits)."""
    if step_tokens <= 0:
        return max_prefill_tokens
    bound = step_tokens * max(1, layers)
    return bound if max_prefill_tokens <= 0 else min(max_prefill_tokens, bound)


def prefill_fits(count: int, widest: int, limit: int) -> bool:
    """Whether `count` newcomers whose longest prompt has `widest` tokens fit one admission's
    encoder budget (0: no bound): they are encoded together, padded to the longest."""
    return limit == 0 or count * widest <= limit


class _Room:
    """The room a batch has for newcomers: asked once per candidate, in admission order; True
    counts the job in (the queue then takes it).

    Rows: up to max_batch, and past it up to `headroom` more for tenants holding fewer rows
    than an equal share of max_batch among the tenants holding rows (one holding none always
    does), so a tenant that arrives while another fills the batch starts at the next step
    instead of waiting for a row to end; a tenant alone never has a share to claim.

    Urgent (asked between every two steps, even while an encoder pass is under way): a tenant
    under its share whose newcomer would otherwise wait behind other tenants' work: the batch
    is full, another tenant floods it (holds more than its share), or another tenant's rows
    wait for their encoder pass or first token while this tenant has none waiting."""

    def __init__(
        self,
        running: Sequence[Job],
        token_budget: int,
        prefill: int,
        max_batch: int,
        headroom: int = 0,
        *,
        urgent: bool = False,
    ) -> None:
        self.rows = len(running)
        self.held = sum(job.tokens for job in running)
        self.holding = Counter(job.request.tenant for job in running)
        # Tenants with rows not answering yet (a pass under way or to come, a first token).
        self.passing = {job.request.tenant for job in running if not job.answering}
        self.token_budget, self.prefill = token_budget, prefill
        self.max_batch, self.headroom = max_batch, headroom
        # Only tenants under their share, of a full or flooded batch or behind others' passes.
        self.urgent = urgent
        self.newcomers = self.widest = 0

    def under_share(self, tenant: str) -> bool:
        """Whether `tenant` holds fewer rows than max_batch split among the holders and it."""
        tenants = len(self.holding) + (tenant not in self.holding)
        return self.holding[tenant] * tenants < self.max_batch

    def flooded(self, tenant: str) -> bool:
        """Whether another tenant holds more than its share (and more than one row)."""
        tenants = len(self.holding) + (tenant not in self.holding)
        return any(
            rows > 1 and rows * tenants > self.max_batch
            for name, rows in self.holding.items()
            if name != tenant
        )

    def behind(self, tenant: str) -> bool:
        """Whether other tenants' rows wait for a pass or a first token and none of `tenant`'s
        does (its newcomer would queue behind their passes)."""
        return tenant not in self.passing and any(name != tenant for name in self.passing)

    def fits(self, job: Job) -> bool:
        rows, tenant = self.rows + self.newcomers, job.request.tenant
        full = rows >= self.max_batch
        if rows >= self.max_batch + self.headroom:
            return False
        if self.urgent:
            # A pass may be under way: only a tenant under its share, and only while the batch
            # is full, another tenant holds more than its share (a flood), or its newcomer
            # would wait behind other tenants' passes, skips it.
            waiting = full or self.flooded(tenant) or self.behind(tenant)
            if not (self.under_share(tenant) and waiting):
                return False
        elif full and not self.under_share(tenant):
            return False
        # The first job of an empty batch always fits: one too large for the budget runs
        # alone rather than never.
        width = max(self.widest, len(job.prompt_ids))
        if rows:
            if self.token_budget and self.held + job.tokens > self.token_budget:
                return False
            if self.newcomers and not prefill_fits(self.newcomers + 1, width, self.prefill):
                return False
        self.newcomers += 1
        self.held += job.tokens
        self.widest = width
        self.holding[tenant] += 1
        self.passing.add(tenant)
        return True


class JobQueue(Protocol):
    """The waiting jobs, in the order they are admitted (engine/fairness.py may reorder them
    across tenants). Called only under the Scheduler's lock."""

    def push(self, job: Job) -> None:
        """Add a job (put() checked the bound)."""

    def remove(self, job: Job) -> bool:
        """Take this job out (a cancel, an expiry); False when it is not queued."""

    def displace(self, job: Job) -> Job | None:
        """For a full queue: a queued job to refuse in `job`'s stead (taken out), or None."""

    def take(self, max_rows: int, fits: Callable[[Job], bool]) -> list[Job]:
        """Take up to max_rows jobs in admission order while `fits` accepts them (asked once
        per candidate; True: the job is taken, and counted by `fits`)."""

    def oldest(self) -> Job | None:
        """The job queued first (deadlines run from it), or None when empty."""

    def clear(self) -> list[Job]:
        """Take every job out and return them."""

    def __iter__(self) -> Iterator[Job]:
        """The queued jobs (any order)."""

    def __len__(self) -> int: ...


class FifoQueue:
    """First come, first served."""

    def __init__(self) -> None:
        self._jobs: deque[Job] = deque()

    def push(self, job: Job) -> None:
        self._jobs.append(job)

    def remove(self, job: Job) -> bool:
        try:
            self._jobs.remove(job)
        except ValueError:
            return False
        return True

    def displace(self, job: Job) -> Job | None:
        return None  # first come, first served: the newcomer is the one refused

    def take(self, max_rows: int, fits: Callable[[Job], bool]) -> list[Job]:
        # In order, stopping at the first job that does not fit: a long prompt is not
        # overtaken for ever by short ones.
        taken: list[Job] = []
        while self._jobs and len(taken) < max_rows and fits(self._jobs[0]):
            taken.append(self._jobs.popleft())
        return taken

    def oldest(self) -> Job | None:
        return self._jobs[0] if self._jobs else None

    def clear(self) -> list[Job]:
        jobs = list(self._jobs)
        self._jobs.clear()
        return jobs

    def __iter__(self) -> Iterator[Job]:
        return iter(list(self._jobs))

    def __len__(self) -> int:
        return len(self._jobs)


class Scheduler:
    """A bounded queue of jobs; hands the model thread batches of up to max_batch rows, and
    (continuous batching) newcomers for the running batch between two decoder steps."""

    def __init__(
        self,
        *,
        max_batch: int,
        max_wait_ms: int,
        max_queue: int,
        max_queue_wait: float = 0.0,
        token_budget: int = 0,
        max_prefill_tokens: int = 0,
        tenant_headroom: int = 0,
        queue: JobQueue | None = None,
    ) -> None:
        self.max_batch = max(1, max_batch)
        self.max_wait = max(0, max_wait_ms) / 1000.0
        self.max_queue = max(1, max_queue)
        self.max_queue_wait = max(0.0, max_queue_wait)  # seconds; 0: no bound
        self.token_budget = max(0, token_budget)  # 0: no bound
        self.max_prefill_tokens = max(0, max_prefill_tokens)  # 0: no bound
        # Rows past max_batch for tenants that hold none (_Room); 0: max_batch is the bound.
        self.tenant_headroom = max(0, tenant_headroom)
        # One lock guards _pending and _closed; it is held only for queue operations, never
        # while the model runs. Two conditions on it: put()'s notify() must wake the model
        # thread, never the expiry thread in its stead.
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        self._expiry = threading.Condition(lock)
        self._pending: JobQueue = FifoQueue() if queue is None else queue
        self._closed = False
        self._reaper: threading.Thread | None = None
        # Called (under the lock, on the caller's thread) after each put(): the model
        # process's handle waits on its connection and needs a wake-up of its own.
        self.on_put: Callable[[], None] | None = None

    def put(self, job: Job) -> None:
        """Queue a job, or refuse it at once (QueueFull, or ModelNotReady when closed)."""
        self.put_many([job])

    def put_many(self, jobs: Sequence[Job]) -> None:
        """Queue jobs together (one request's rows: the model thread sees all of them or none,
        so they can start in one batch and share its encoder pass), or refuse them all."""
        with self._cond:
            if self._closed:
                raise ModelNotReady("The engine is shutting down.")
            if len(jobs) == 1 and len(self._pending) >= self.max_queue:
                # A fair queue may refuse a flooding tenant's newest job in this one's stead.
                if (displaced := self._pending.displace(jobs[0])) is None:
                    raise QueueFull(self._full())
                self._refuse(displaced)
            elif len(self._pending) + len(jobs) > self.max_queue:
                # Several rows displace nobody: refused whole, nothing of them was queued.
                raise QueueFull(self._full())
            for job in jobs:
                # Stamped under the lock: the oldest job's deadline is the first to come, so
                # the expiry thread only ever looks at the oldest.
                job.queued_at = time.perf_counter()
                self._pending.push(job)
            metrics.QUEUE_DEPTH.set(len(self._pending))
            self._cond.notify()
            if self.on_put is not None:
                self.on_put()
            if self.max_queue_wait and len(self._pending) == len(jobs):
                # The queue was empty: the only moment the expiry thread may be waiting
                # without a deadline.
                self._start_expiry()
                self._expiry.notify()

    def _full(self) -> str:
        return f"The request queue is full ({self.max_queue} waiting)."

    def _refuse(self, job: Job) -> None:
        # Out of the queue under the lock already (a cancel finds nothing to remove): refused
        # as a newcomer is, it never ran and nothing is billed.
        job.finished = True
        metrics.REQUESTS.labels(result="rejected").inc()
        job.send(Failed(QueueFull(self._full())))

    def remove(self, job: Job) -> bool:
        """Take a job out of the queue (a cancel before it ran); False when not queued."""
        with self._cond:
            if not self._pending.remove(job):
                return False
            metrics.QUEUE_DEPTH.set(len(self._pending))
            return True

    def take_batch(self, idle: float | None = None) -> list[Job] | None:
        """Block for the next batch; [] once closed and empty (the model thread then ends);
        None when `idle` seconds pass with nothing queued."""
        with self._cond:
            while True:
                while not self._pending and not self._closed:
                    if not self._cond.wait(idle) and not self._pending and not self._closed:
                        return None
                if not self._pending:
                    return []
                if self._wait_for_company():
                    break
            # A batch that starts stalls no running stream: no bound on its encoder tokens.
            batch = self._take([], prefill=0)
            self.track(batch)
            return batch

    def take_joiners(self, running: Sequence[Job], urgent: bool = False) -> list[Job]:
        """Without blocking: the waiting jobs that join the running batch now (between two
        decoder steps), within the free rows, the token budget and the encoder tokens one
        admission may run. Also updates the running rows' gauges.

        urgent: only jobs of tenants under their share of a batch that is full (the tenant
        headroom), that another tenant floods (holds more than its share), or whose other
        tenants' rows wait for their pass while none of theirs does (_Room.behind); their
        encoder pass runs whole at once, even while another pass is under way, so a tenant
        arriving during another's flood, or as one begins, starts within about one step
        (docs/engine.md, "Fairness"). None without a headroom."""
        if urgent and not self.tenant_headroom:
            return []
        with self._cond:
            prefill = self.max_prefill_tokens if running else 0
            joiners = self._take(running, prefill=prefill, urgent=urgent)
            self.track([*running, *joiners])
            return joiners

    def _take(self, running: Sequence[Job], prefill: int, urgent: bool = False) -> list[Job]:
        room = _Room(
            running, self.token_budget, prefill, self.max_batch, self.tenant_headroom, urgent=urgent
        )
        rows = self.max_batch + self.tenant_headroom - len(running)
        taken = self._pending.take(rows, room.fits)
        if taken:
            metrics.QUEUE_DEPTH.set(len(self._pending))
        return taken

    def track(self, running: Sequence[Job]) -> None:
        """Set the running rows' gauges (rows, and the tokens they may hold)."""
        metrics.RUNNING_ROWS.set(len(running))
        metrics.CACHE_TOKENS.set(sum(job.tokens for job in running))

    def _wait_for_company(self) -> bool:
        # The oldest job waits at most max_wait in all; jobs that queued while the previous
        # batch ran have waited already and start at once. False: the queue emptied (cancels).
        while (oldest := self._pending.oldest()) is not None and not self._closed:
            remaining = oldest.submitted_at + self.max_wait - time.perf_counter()
            if len(self._pending) >= self.max_batch or remaining <= 0:
                break
            self._cond.wait(remaining)
        return bool(self._pending)

    def close(self) -> None:
        """Refuse new jobs; queued ones are still handed out (drain)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            self._expiry.notify_all()

    # --- expiry (max_queue_wait) --------------------------------------------------------------
    def _start_expiry(self) -> None:
        # A thread of its own: the model thread takes jobs only between batches (one may run
        # for minutes), and the event loop must never wait on this. Started on first use.
        if self._reaper is None:
            self._reaper = threading.Thread(
                target=self._expire, name="inference-queue-expiry", daemon=True
            )
            self._reaper.start()

    def _expire(self) -> None:
        while (expired := self._wait_for_expired()) is not None:
            for job in expired:
                self._time_out(job)

    def _time_out(self, job: Job) -> None:
        # Out of the queue under the lock already: no batch can take it, a cancel finds
        # nothing to remove; its stream raises QueueTimeout (never ran, nothing to bill).
        waited = time.perf_counter() - job.queued_at
        job.finished = True
        metrics.REQUESTS.labels(result="expired").inc()  # before anyone hears of it
        message = (
            f"The request waited {waited:.1f}s in the queue without starting "
            f"(the limit is {self.max_queue_wait:g}s)."
        )
        job.send(Failed(QueueTimeout(message)))

    def _wait_for_expired(self) -> list[Job] | None:
        """Block until queued jobs are past their deadline and take them out; None once the
        queue is closed and empty."""
        with self._cond:
            while not (self._closed and not self._pending):
                now = time.perf_counter()
                expired = []
                while (oldest := self._pending.oldest()) is not None and (
                    oldest.queued_at + self.max_queue_wait <= now
                ):
                    self._pending.remove(oldest)
                    expired.append(oldest)
                if expired:
                    metrics.QUEUE_DEPTH.set(len(self._pending))
                    return expired
                # Until the oldest job's deadline (later jobs' are later); a job that becomes
                # the oldest meanwhile has a later one, and an empty queue waits for put().
                self._expiry.wait(
                    None if oldest is None else oldest.queued_at + self.max_queue_wait - now
                )
            return None

    def drop_where(self, unwanted: Callable[[Job], bool]) -> list[Job]:
        """Take out the queued jobs `unwanted` picks (an adapter removed) and return them."""
        with self._cond:
            gone = [job for job in self._pending if unwanted(job)]
            for job in gone:
                self._pending.remove(job)
            metrics.QUEUE_DEPTH.set(len(self._pending))
            return gone

    def drop_all(self) -> list[Job]:
        """Empty the queue and return what was in it (shutdown past its deadline)."""
        with self._cond:
            jobs = self._pending.clear()
            metrics.QUEUE_DEPTH.set(0)
            return jobs

    def __len__(self) -> int:
        with self._cond:
            return len(self._pending)
