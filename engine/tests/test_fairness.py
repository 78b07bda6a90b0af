"""The fair waiting queue: first come first served within a tenant, tokens shared by weight
between tenants, late arrivals served within a round, long prompts not starved, the bound."""

from collections import Counter
from dataclasses import dataclass, field
from itertools import count

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.batcher import Job, Scheduler
from engine.fairness import FairQueue, job_cost
from engine.generation import GenerationRequest

_numbers = count()


@dataclass(eq=False)
class FakeJob:
    """What the queue reads of a job: its request (tenant, weight, max_tokens) and prompt."""

    request: GenerationRequest
    prompt_ids: list[int]
    number: int = field(default_factory=lambda: next(_numbers))


def job(tenant: str, cost: int = 10, weight: float = 1.0) -> FakeJob:
    """A job of `cost` tokens: a prompt of one token and max_tokens for the rest."""
    request = GenerationRequest("x", max_tokens=cost - 1, tenant=tenant, weight=weight)
    return FakeJob(request, [0])


def fits_all(job: FakeJob) -> bool:
    return True


def test_one_tenant_is_first_come_first_served() -> None:
    queue: FairQueue[FakeJob] = FairQueue()
    jobs = [job("a") for _ in range(5)]
    for item in jobs:
        queue.push(item)
    assert queue.take(3, fits_all) + queue.take(10, fits_all) == jobs
    assert len(queue) == 0


def test_a_late_tenant_goes_before_the_backlog() -> None:
    queue: FairQueue[FakeJob] = FairQueue()
    flood = [job("a") for _ in range(50)]
    for item in flood:
        queue.push(item)
    assert queue.take(4, fits_all) == flood[:4]
    late = job("b")
    queue.push(late)
    assert queue.take(1, fits_all) == [late]


def test_a_blocked_head_blocks_its_tenant_but_not_the_others() -> None:
    queue: FairQueue[FakeJob] = FairQueue()
    big, after_big, small = job("a", cost=500), job("a", cost=5), job("b", cost=5)
    for item in (big, after_big, small):
        queue.push(item)
    assert queue.take(10, lambda j: job_cost(j) < 100) == [small]
    assert queue.take(10, fits_all) == [big, after_big]


def test_a_long_prompt_is_not_starved_by_a_stream_of_short_ones() -> None:
    # A token budget of 1000 with short requests arriving as fast as room frees: the long one
    # waits for at most its own tokens' worth of short ones, then the budget is kept for it.
    queue: FairQueue[FakeJob] = FairQueue()
    long = job("long", cost=800)
    queue.push(job("short", cost=10))
    queue.push(long)
    held: list[FakeJob] = []
    overtaken = 0
    for _ in range(500):
        while sum(1 for j in queue if j.request.tenant == "short") < 5:
            queue.push(job("short", cost=10))
        room = 1000 - sum(map(job_cost, held))

        def fits(j: FakeJob) -> bool:
            nonlocal room
            if job_cost(j) > room:
                return False
            room -= job_cost(j)
            return True

        taken = queue.take(8, fits)
        if long in taken:
            break
        overtaken += len(taken)
        held = (held + taken)[2:]  # the two oldest rows finish each step
    else:
        pytest.fail("the long request never ran")
    assert overtaken * 10 <= 800 + 10


def test_remove_takes_a_job_out_of_the_middle() -> None:
    queue: FairQueue[FakeJob] = FairQueue()
    jobs = [job("a"), job("a"), job("a")]
    for item in jobs:
        queue.push(item)
    assert queue.remove(jobs[1]) and not queue.remove(jobs[1])
    assert list(queue) == [jobs[0], jobs[2]]
    assert queue.take(10, fits_all) == [jobs[0], jobs[2]]
    assert not queue.remove(jobs[0])


def test_a_full_queue_refuses_the_fullest_tenant() -> None:
    queue: FairQueue[FakeJob] = FairQueue()
    flood = [job("a") for _ in range(3)]
    for item in flood:
        queue.push(item)
    assert queue.displace(job("a")) is None  # the flood's own newcomer is refused
    other = job("b")
    assert queue.displace(other) is flood[-1]  # the flood's newest is refused in its stead
    queue.push(other)
    assert list(queue) == [*flood[:2], other]
    # One each: a third tenant cannot displace anyone (it would hold as much as they do).
    queue.remove(flood[1])
    assert queue.displace(job("c")) is None
    assert queue.displace(job("c", weight=2)) is not None  # a heavier one may


def test_oldest_is_the_longest_waiting_job_across_tenants() -> None:
    queue: FairQueue[FakeJob] = FairQueue()
    first, second = job("a"), job("b")
    assert queue.oldest() is None
    queue.push(first)
    queue.push(second)
    assert queue.oldest() is first
    queue.remove(first)
    assert queue.oldest() is second


def test_peek_and_pop_go_in_fair_order() -> None:
    queue: FairQueue[FakeJob] = FairQueue()
    a1, a2, b1 = job("a"), job("a"), job("b")
    for item in (a1, a2, b1):
        queue.push(item)
    order = []
    while (head := queue.peek()) is not None:
        assert queue.pop() is head
        order.append(head)
    assert order == [a1, b1, a2]
    with pytest.raises(IndexError):
        queue.pop()


def test_clear_returns_every_job_oldest_first() -> None:
    queue: FairQueue[FakeJob] = FairQueue()
    jobs = [job("a"), job("b"), job("a")]
    for item in jobs:
        queue.push(item)
    assert queue.clear() == jobs
    assert len(queue) == 0 and queue.peek() is None


def test_the_scheduler_admits_through_it() -> None:
    # A drop-in for the scheduler's FIFO: a late tenant's job is in the next batch.
    scheduler = Scheduler(max_batch=2, max_wait_ms=0, max_queue=10, queue=FairQueue[Job]())
    flood = [Job(GenerationRequest("x", tenant="a"), [0]) for _ in range(4)]
    for item in flood:
        scheduler.put(item)
    late = Job(GenerationRequest("x", tenant="b"), [0])
    scheduler.put(late)
    assert scheduler.take_batch() == [flood[0], late]
    assert scheduler.remove(flood[2]) and len(scheduler) == 2
    assert scheduler.take_batch() == [flood[1], flood[3]]


def decoding(tenant: str) -> Job:
    """A running row that answers already (its pass is over and its first token sent)."""
    running = Job(GenerationRequest("x", tenant=tenant), [0])
    running.answering = True
    return running


def headroom_scheduler(headroom: int) -> Scheduler:
    return Scheduler(
        max_batch=2, max_wait_ms=0, max_queue=10, tenant_headroom=headroom, queue=FairQueue[Job]()
    )


def test_a_tenant_holding_no_row_joins_a_full_batch_within_the_headroom() -> None:
    # Tenant a fills both rows; b and c arrive: each takes a headroom row at the next step,
    # b's second job and a's next wait for a row to end.
    scheduler = headroom_scheduler(2)
    running = [Job(GenerationRequest("x", tenant="a"), [0]) for _ in range(2)]
    waiting = [
        Job(GenerationRequest("x", tenant="a"), [0]),
        Job(GenerationRequest("x", tenant="b"), [0]),
        Job(GenerationRequest("x", tenant="b"), [0]),
        Job(GenerationRequest("x", tenant="c"), [0]),
    ]
    for item in waiting:
        scheduler.put(item)
    assert scheduler.take_joiners(running) == [waiting[1], waiting[3]]
    # A full headroom admits nobody, not even a fourth tenant.
    scheduler.put(late := Job(GenerationRequest("x", tenant="d"), [0]))
    assert scheduler.take_joiners([*running, waiting[1], waiting[3]]) == []
    # Once a's rows end, the queue goes on in fair order.
    assert scheduler.take_joiners([waiting[1], waiting[3]]) == [waiting[0], late]


def test_without_headroom_a_full_batch_admits_nobody() -> None:
    scheduler = headroom_scheduler(0)
    running = [Job(GenerationRequest("x", tenant="a"), [0]) for _ in range(2)]
    scheduler.put(other := Job(GenerationRequest("x", tenant="b"), [0]))
    assert scheduler.take_joiners(running) == []
    assert scheduler.take_joiners(running[:1]) == [other]


def test_the_headroom_is_not_used_by_a_tenant_alone() -> None:
    # One tenant's batch is max_batch rows: the headroom costs a lone tenant nothing.
    scheduler = headroom_scheduler(2)
    for _ in range(4):
        scheduler.put(Job(GenerationRequest("x", tenant="a"), [0]))
    assert len(scheduler.take_batch() or []) == 2


def test_a_tenant_under_its_share_of_a_full_batch_may_take_the_headroom() -> None:
    # A quiet tenant whose last request still decodes holds a row: it may still take the
    # headroom while another tenant holds more than an equal share, not once it has its own.
    scheduler = Scheduler(
        max_batch=4, max_wait_ms=0, max_queue=10, tenant_headroom=2, queue=FairQueue[Job]()
    )
    running = [Job(GenerationRequest("x", tenant="flood"), [0]) for _ in range(3)]
    running.append(Job(GenerationRequest("x", tenant="quiet"), [0]))
    scheduler.put(second := Job(GenerationRequest("x", tenant="quiet"), [0]))
    scheduler.put(third := Job(GenerationRequest("x", tenant="quiet"), [0]))
    # Two of four rows is quiet's share: its second request joins, its third waits.
    assert scheduler.take_joiners(running, urgent=True) == [second]
    assert scheduler.take_joiners([*running, second]) == []
    assert scheduler.take_joiners(running[2:] + [second]) == [third]  # a free row


def test_tenants_at_their_share_of_a_full_batch_do_not_take_the_headroom() -> None:
    scheduler = Scheduler(
        max_batch=4, max_wait_ms=0, max_queue=10, tenant_headroom=2, queue=FairQueue[Job]()
    )
    even = [Job(GenerationRequest("x", tenant=name), [0]) for name in ("a", "a", "b", "b")]
    scheduler.put(Job(GenerationRequest("x", tenant="a"), [0]))
    scheduler.put(Job(GenerationRequest("x", tenant="b"), [0]))
    assert scheduler.take_joiners(even) == []
    assert len(scheduler.take_joiners(even[1:])) == 1  # a row ended: one joins


def test_urgent_joiners_are_only_the_headroom_of_a_full_batch() -> None:
    # Asked between two steps even while a pass is under way (run_batch): only tenants that
    # hold no row, only once the batch is full; the rest waits for the ordinary admission.
    scheduler = headroom_scheduler(1)
    running = [decoding("a")]
    scheduler.put(mine := Job(GenerationRequest("x", tenant="a"), [0]))
    scheduler.put(other := Job(GenerationRequest("x", tenant="b"), [0]))
    assert scheduler.take_joiners(running, urgent=True) == []  # a free row: no hurry
    full = [*running, decoding("a")]
    assert scheduler.take_joiners(full, urgent=True) == [other]
    assert scheduler.take_joiners([*full, other], urgent=True) == []  # b holds one now
    assert scheduler.take_joiners(running, urgent=False) == [mine]


def test_a_flood_makes_other_tenants_urgent_even_with_rows_free() -> None:
    # A tenant holding more than its share (not just one row) is a flood: the others skip the
    # pass under way even before the batch is full; among tenants at their share nobody does.
    scheduler = Scheduler(
        max_batch=6, max_wait_ms=0, max_queue=10, tenant_headroom=1, queue=FairQueue[Job]()
    )
    flood = [Job(GenerationRequest("x", tenant="flood"), [0]) for _ in range(4)]
    scheduler.put(quiet := Job(GenerationRequest("x", tenant="quiet"), [0]))
    assert scheduler.take_joiners(flood, urgent=True) == [quiet]
    even = [decoding(name) for name in ("a", "b", "c")]
    scheduler.put(Job(GenerationRequest("x", tenant="d"), [0]))
    assert scheduler.take_joiners(even, urgent=True) == []
    assert len(scheduler.take_joiners(even)) == 1


def test_a_tenant_is_urgent_rather_than_wait_behind_another_tenants_pass() -> None:
    # The batch is neither full nor flooded, but tenant a's newcomer waits for its encoder
    # pass: b, with no row waiting, skips that pass (and only one of b's jobs does); once a's
    # row answers, or when the waiting row is b's own, nobody is urgent.
    scheduler = Scheduler(
        max_batch=8, max_wait_ms=0, max_queue=10, tenant_headroom=1, queue=FairQueue[Job]()
    )
    in_pass = Job(GenerationRequest("x", tenant="a"), [0])
    running = [decoding("a"), in_pass, decoding("b")]
    scheduler.put(mine := Job(GenerationRequest("x", tenant="a"), [0]))
    scheduler.put(first := Job(GenerationRequest("x", tenant="b"), [0]))
    scheduler.put(second := Job(GenerationRequest("x", tenant="b"), [0]))
    assert scheduler.take_joiners(running, urgent=True) == [first]
    assert scheduler.take_joiners([*running, first], urgent=True) == []  # b's row waits now
    in_pass.answering = first.answering = True
    assert scheduler.take_joiners([*running, first], urgent=True) == []  # nobody waits
    assert scheduler.take_joiners([*running, first]) == [mine, second]


def test_a_tenant_alone_is_never_urgent_behind_its_own_pass() -> None:
    scheduler = headroom_scheduler(2)
    scheduler.put(Job(GenerationRequest("x", tenant="a"), [0]))
    assert scheduler.take_joiners([Job(GenerationRequest("x", tenant="a"), [0])], True) == []


def test_without_headroom_nobody_is_urgent() -> None:
    scheduler = headroom_scheduler(0)
    full = [Job(GenerationRequest("x", tenant="a"), [0]) for _ in range(2)]
    scheduler.put(Job(GenerationRequest("x", tenant="b"), [0]))
    assert scheduler.take_joiners(full, urgent=True) == []


def test_a_weight_must_be_positive() -> None:
    with pytest.raises(ValueError, match="weight"):
        GenerationRequest("x", weight=0)


# --- properties --------------------------------------------------------------------------------

TENANTS = ("a", "b", "c")
operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(TENANTS), st.integers(1, 300)),
        st.tuples(st.just("take"), st.integers(1, 4), st.integers(1, 600)),
        st.tuples(st.just("remove"), st.integers(0, 50), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(operations, st.integers(1, 12))
def test_any_history_keeps_order_within_a_tenant_and_the_bound(ops, bound) -> None:
    queue: FairQueue[FakeJob] = FairQueue()
    waiting: list[FakeJob] = []  # what should be queued, oldest first
    served: dict[str, list[int]] = {name: [] for name in TENANTS}
    for op, x, y in ops:
        if op == "put":
            new = job(x, cost=y)
            if len(queue) >= bound:  # what the scheduler's put() does
                if (displaced := queue.displace(new)) is None:
                    continue
                held = Counter(j.request.tenant for j in waiting)
                assert held[displaced.request.tenant] > held[x] + 1  # only from a fuller one
                same = [j for j in waiting if j.request.tenant == displaced.request.tenant]
                assert displaced is same[-1]  # its newest
                waiting.remove(displaced)
            queue.push(new)
            waiting.append(new)
        elif op == "remove" and waiting:
            assert queue.remove(waiting.pop(x % len(waiting)))
        elif op == "take":
            taken = queue.take(x, lambda j: job_cost(j) <= y)  # noqa: B023 (called at once)
            assert len(taken) <= x
            for item in taken:
                waiting.remove(item)
                served[item.request.tenant].append(item.number)
        assert len(queue) <= bound
        assert list(queue) == waiting
    for numbers in served.values():
        assert numbers == sorted(numbers)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 5),
    st.integers(1, 5),
    st.lists(st.integers(1, 100), min_size=1, max_size=20),
    st.integers(200, 400),
)
def test_two_backlogged_tenants_share_tokens_by_weight(w1, w2, costs, steps) -> None:
    queue: FairQueue[FakeJob] = FairQueue()
    made = Counter[str]()
    tokens = Counter[str]()

    def refill(name: str, weight: int) -> None:
        while sum(1 for j in queue if j.request.tenant == name) < 3:
            queue.push(job(name, cost=costs[made[name] % len(costs)], weight=weight))
            made[name] += 1

    for _ in range(steps):
        refill("a", w1)
        refill("b", w2)
        for item in queue.take(1, fits_all):
            tokens[item.request.tenant] += job_cost(item)
        # Start-time fair queuing's bound: the two never drift apart by more than one job each.
        assert abs(tokens["a"] / w1 - tokens["b"] / w2) <= max(costs) / w1 + max(costs) / w2
    # And so the ratio converges: after hundreds of jobs it is within a few percent of w1:w2.
    expected = w1 / (w1 + w2)
    assert abs(tokens["a"] / (tokens["a"] + tokens["b"]) - expected) <= 0.1


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(TENANTS), st.integers(1, 300)), min_size=1, max_size=40),
    st.integers(0, 40),
    st.integers(1, 300),
)
def test_a_tenant_that_arrives_late_is_served_within_one_round(backlog, served, cost) -> None:
    queue: FairQueue[FakeJob] = FairQueue()
    for name, size in backlog:
        queue.push(job(name, cost=size))
    queue.take(served, fits_all)
    backlogged = len({j.request.tenant for j in queue})
    late = job("late", cost=cost)
    queue.push(late)
    # Before any backlogged tenant's next job but at most one of each (a tie at the start).
    assert late in queue.take(backlogged + 1, fits_all)
