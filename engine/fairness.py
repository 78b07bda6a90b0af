"""The waiting queue, fair between tenants: who joins the running batch next.

Start-time fair queuing (Goyal, Vin and Cheng, 1996), a weighted fair queuing, counted in
tokens. A job costs what it may hold in the caches, its prompt's tokens plus its max_tokens, so
a tenant of many short requests and one of a few long ones get the same tokens, not the same
requests. Virtual time advances by cost / weight: each tenant's head job carries a start tag
(where the tenant's previous job finished in virtual time, or the queue's virtual time when the
tenant was idle), and the head with the smallest tag goes next. So:

- within a tenant, first come first served (one queue each, taken from its head);
- two backlogged tenants are served tokens in the ratio of their weights, within one job of
  each at any moment (the tags of both stay within one job's cost / weight of each other);
- a tenant that was idle starts at the queue's virtual time, not behind the others' backlog:
  its first job goes before any backlogged tenant's next one (within one round), and it gets
  no credit for the time it was idle;
- a long prompt is never starved: its tag is fixed when it reaches its tenant's head, and
  every other job served meanwhile moves its own tenant's tag past it.

`take()` hands out jobs while the caller's `fits` says they fit its budgets (rows, tokens in
the caches). A head that does not fit blocks its tenant (first come first served) but not the
others, except that no job whose tag is at or past the blocked job's finish tag may overtake
it: the others get at most one such job's worth of tokens ahead, then budget that frees is kept
for it. A job larger than the caller's whole budget would block its tenant for ever: the
caller refuses those at submission (or lets anything fit an empty batch).

The scheduler keeps one bound on all waiting jobs. When it is full, displace() lets a newcomer
of a tenant holding fewer waiting jobs (per unit of weight) than the fullest tenant take the
place of that tenant's newest job, which is refused as the newcomer would have been
(QueueFull); otherwise the newcomer is refused. Without it a flooding tenant would keep the
queue full and every other tenant refused.

Not thread-safe: the scheduler calls it under its own lock.
"""

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from engine.generation import GenerationRequest


class Queued(Protocol):
    """What the queue reads of a job (engine.batcher.Job has it)."""

    @property
    def request(self) -> GenerationRequest: ...

    @property
    def prompt_ids(self) -> Sequence[int]: ...


J = TypeVar("J", bound=Queued)


def job_cost(job: Queued) -> int:
    """The tokens a job may hold in the caches: its prompt plus every token it may generate."""
    return len(job.prompt_ids) + job.request.max_tokens


@dataclass
class _Tenant(Generic[J]):
    """One tenant's waiting jobs (oldest first, each with its arrival number)."""

    start: float  # the head's start tag in virtual time
    jobs: deque[tuple[int, J]] = field(default_factory=deque)


class FairQueue(Generic[J]):
    """The waiting jobs: first come first served within a tenant, fair between tenants.
    A drop-in for engine.batcher's FifoQueue (the JobQueue methods), plus take() and displace().
    """

    def __init__(self) -> None:
        self._tenants: dict[str, _Tenant[J]] = {}
        # Where tenants that emptied their queue finished, while that is ahead of the virtual
        # time: one that comes back at once does not start afresh (no credit for a short gap).
        self._idle_finish: dict[str, float] = {}
        self._now = 0.0  # virtual time: the start tag of the last job taken
        self._arrivals = 0  # arrival numbers: ties go to the older job
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[J]:
        """Every waiting job, oldest first."""
        entries = (entry for tenant in self._tenants.values() for entry in tenant.jobs)
        return (job for _, job in sorted(entries, key=lambda entry: entry[0]))

    def push(self, job: J) -> None:
        """Add a job at the end of its tenant's queue (the caller keeps the bound)."""
        name = job.request.tenant
        tenant = self._tenants.get(name)
        if tenant is None:
            start = max(self._now, self._idle_finish.pop(name, self._now))
            tenant = self._tenants[name] = _Tenant(start)
        self._arrivals += 1
        tenant.jobs.append((self._arrivals, job))
        self._size += 1

    def displace(self, job: J) -> J | None:
        """For a full queue: take out and return the newest job of the fullest tenant (per
        unit of weight) when `job`'s tenant holds less, to be refused in its stead; None when
        `job` itself is to be refused."""
        if not self._tenants:
            return None
        fullest = max(self._tenants.values(), key=_share)
        own = self._tenants.get(job.request.tenant)
        held = len(own.jobs) if own is not None else 0
        # Strictly less after the newcomer joins: two tenants never displace each other in turn.
        if (held + 1) / job.request.weight >= _share(fullest):
            return None
        victim = fullest.jobs[-1][1]
        self.remove(victim)
        return victim

    def remove(self, job: J) -> bool:
        """Take a waiting job out (cancelled, expired, displaced); False when not queued."""
        name = job.request.tenant
        tenant = self._tenants.get(name)
        if tenant is None:
            return False
        for index, (_, queued) in enumerate(tenant.jobs):
            if queued is job:  # identity: jobs compare by it, and two may look alike
                del tenant.jobs[index]
                break
        else:
            return False
        # A head that leaves unserved costs nothing: the next one keeps its start tag.
        self._size -= 1
        if not tenant.jobs:
            self._went_idle(name, tenant.start)
        return True

    def oldest(self) -> J | None:
        """The job that has waited longest (deadlines run from it), None when empty."""
        heads = [tenant.jobs[0] for tenant in self._tenants.values()]
        return min(heads, key=lambda entry: entry[0])[1] if heads else None

    def peek(self) -> J | None:
        """The job to admit next in fair order, None when empty."""
        name = self._next(set(), float("inf"))
        return self._tenants[name].jobs[0][1] if name is not None else None

    def pop(self) -> J:
        """Take the job peek() returns; IndexError when empty."""
        name = self._next(set(), float("inf"))
        if name is None:
            raise IndexError("pop from an empty queue")
        return self._serve(name, self._tenants[name])

    def take(self, max_rows: int, fits: Callable[[J], bool]) -> list[J]:
        """Take up to max_rows jobs in fair order while `fits` accepts them. `fits` is asked
        once per candidate, in the order returned: True means the job is taken (so it may
        count the job against its budget), False blocks that job's tenant for this call."""
        taken: list[J] = []
        blocked: set[str] = set()
        limit = float("inf")  # no job starting at or past a blocked job's finish overtakes it
        while len(taken) < max_rows and (name := self._next(blocked, limit)) is not None:
            tenant = self._tenants[name]
            job = tenant.jobs[0][1]
            if fits(job):
                taken.append(self._serve(name, tenant))
            else:
                blocked.add(name)
                limit = min(limit, tenant.start + _charge(job))
        return taken

    def _next(self, blocked: set[str], limit: float) -> str | None:
        """The tenant whose head starts first (the older head on a tie), None if none may."""
        best: tuple[float, int] | None = None
        chosen = None
        for name, tenant in self._tenants.items():
            rank = (tenant.start, tenant.jobs[0][0])
            if name not in blocked and tenant.start < limit and (best is None or rank < best):
                best, chosen = rank, name
        return chosen

    def _serve(self, name: str, tenant: _Tenant[J]) -> J:
        _, job = tenant.jobs.popleft()
        self._size -= 1
        self._now = max(self._now, tenant.start)
        tenant.start += _charge(job)
        if not tenant.jobs:
            self._went_idle(name, tenant.start)
        return job

    def _went_idle(self, name: str, finish: float) -> None:
        del self._tenants[name]
        if not self._tenants:
            # Nobody waits: nobody is owed anything. Starting over keeps the tags small.
            self._now = 0.0
            self._idle_finish.clear()
            return
        self._idle_finish[name] = finish
        if len(self._idle_finish) > 2 * len(self._tenants) + 16:
            # Finishes the virtual time has passed carry no advantage: forget them.
            self._idle_finish = {n: f for n, f in self._idle_finish.items() if f > self._now}

    def clear(self) -> list[J]:
        """Take every waiting job out; returns them, oldest first."""
        jobs = list(self)
        self._tenants.clear()
        self._idle_finish.clear()
        self._now = 0.0
        self._size = 0
        return jobs


def _charge(job: Queued) -> float:
    """A job's length in virtual time: its tokens over its tenant's weight."""
    return job_cost(job) / job.request.weight


def _share(tenant: _Tenant[J]) -> float:
    """Waiting jobs per unit of weight (the newest job's weight is the tenant's current one)."""
    return len(tenant.jobs) / tenant.jobs[-1][1].request.weight
