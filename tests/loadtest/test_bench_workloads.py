"""The benches' generated workloads: the open loop's Poisson arrivals and mixed sizes, and the
quality bench's reverse-the-words task with its held-out split."""

import statistics

from loadtest.bench_quality import MAX_WORDS, MIN_WORDS, examples, is_held_out, reverse_words
from loadtest.openloop import (
    NEW_TOKENS,
    PROMPT_TOKENS,
    Record,
    mixed_plan,
    poisson_arrivals,
    summarize,
)


def test_poisson_arrivals_come_at_the_asked_mean_rate() -> None:
    times = poisson_arrivals(rate=20.0, duration=500.0, seed=3)
    # 10,000 expected; a Poisson count's standard deviation is 100, so 3% is 3 of them.
    assert abs(len(times) / 500.0 - 20.0) < 0.6
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # Exponential gaps: their standard deviation equals their mean (1/rate).
    assert abs(statistics.mean(gaps) - 0.05) < 0.003
    assert abs(statistics.stdev(gaps) - 0.05) < 0.005


def test_poisson_arrivals_are_sorted_inside_the_duration() -> None:
    times = poisson_arrivals(rate=5.0, duration=30.0, seed=1)
    assert times == sorted(times)
    assert all(0.0 < at < 30.0 for at in times)


def test_the_same_seed_gives_the_same_plan_and_another_seed_another() -> None:
    assert mixed_plan(4.0, 60.0, seed=7) == mixed_plan(4.0, 60.0, seed=7)
    assert mixed_plan(4.0, 60.0, seed=7) != mixed_plan(4.0, 60.0, seed=8)


def test_the_plan_mixes_sizes_across_their_whole_bounds() -> None:
    plan = mixed_plan(50.0, 60.0, seed=2)
    prompts = [item.prompt_tokens for item in plan]
    new = [item.max_tokens for item in plan]
    assert PROMPT_TOKENS[0] <= min(prompts) < 30 and 240 < max(prompts) <= PROMPT_TOKENS[1]
    assert NEW_TOKENS[0] <= min(new) < 15 and 120 < max(new) <= NEW_TOKENS[1]


def test_summarize_measures_from_the_arrival_not_the_submission() -> None:
    # Arrived at 0, first token at 0.5 s, then tokens 0.1 s apart, done at 0.8 s.
    record = Record(0.0, token_times=[0.5, 0.6, 0.7, 0.8], end=0.8)
    figures = summarize([record, Record(0.0, refused=True)])
    assert figures["requests"] == 1.0 and figures["refused"] == 1.0
    assert round(figures["ttft_p50"]) == 500
    assert round(figures["gap_p99"]) == 100
    assert round(figures["e2e_p99"]) == 800
    assert round(figures["tokens_per_s"]) == 5


def test_the_answer_is_the_words_in_reverse_order() -> None:
    assert reverse_words("the quick model runs") == "runs model quick the"


def test_held_out_examples_are_never_training_examples() -> None:
    held_out = examples(300, seed=1, held_out=True)
    training = examples(3000, seed=1, held_out=False)
    assert all(is_held_out(source) for source, _ in held_out)
    assert not {source for source, _ in held_out} & {source for source, _ in training}


def test_examples_are_seeded_and_within_the_word_bounds() -> None:
    assert examples(50, seed=4, held_out=False) == examples(50, seed=4, held_out=False)
    lengths = {len(source.split()) for source, _ in examples(500, seed=4, held_out=False)}
    assert lengths == set(range(MIN_WORDS, MAX_WORDS + 1))
    for source, answer in examples(50, seed=4, held_out=True):
        assert answer.split() == source.split()[::-1]
        assert len(set(source.split())) == len(source.split())  # distinct words


def test_the_single_reference_is_the_quicker_of_its_runs_before_and_after_the_load(
    capsys,
) -> None:
    from loadtest.bench_engine import quicker
    from loadtest.openloop import print_goals

    before, after = {"ttft": 136.0, "per_token": 8.7}, {"ttft": 108.0, "per_token": 12.8}
    single = quicker(before, after)
    assert (single["ttft"], single["per_token"]) == (108.0, 8.7)  # each the quicker
    row = {"requests": 10.0, "ttft_p95": 540.0, "gap_p99": 26.1, "tokens_per_s": 1.0}
    print_goals("continuous", {"continuous": {0.9: row}}, single)
    out = capsys.readouterr().out
    assert "ttft p95 / single ttft         5.00x" in out  # against 108, not 136
    assert "gap p99 / single per token     3.00x" in out  # against 8.7, not 12.8


def test_the_memory_goal_counts_the_budget_as_written_and_the_caches_held_at_the_peak(
    capsys,
) -> None:
    from loadtest.openloop import Peak, memory_figures, print_memory_goal

    peak = Peak(rss_mib=900.0, cache_tokens=2048.0, most_cache_tokens=4096.0, start_rss_mib=600)
    status = {"model_bytes": 300 * 2**20, "cache_token_bytes": 36 * 1024}
    row = memory_figures(peak, status, token_budget=16384)
    print_memory_goal(row)
    out = capsys.readouterr().out
    # 1.5 x 300 + 16384 x 36 KiB = 450 + 576 = 1026 MiB; with 2048 tokens held, 450 + 72.
    assert "peak RSS / (1.5 x model + budget)    0.88x" in out
    assert "= 1026 MiB" in out
    assert "peak RSS / (1.5 x model + held)      1.72x" in out
    assert "at their most 4096" in out
    assert "resident growth a token held      150.0 KiB" in out  # 300 MiB over 2048 tokens


def test_the_peak_is_the_largest_resident_set_with_the_caches_held_at_that_moment() -> None:
    import os
    import time

    from loadtest.openloop import peak_rss

    held = [1000.0]
    with peak_rss(os.getpid(), lambda: held[0]) as peak:
        start = peak.start_rss_mib
        ballast = bytearray(300 * 2**20)  # zero pages: touched so they are resident
        ballast[::4096] = b"\x01" * len(ballast[::4096])
        deadline = time.monotonic() + 60
        while peak.rss_mib < start + 250 and time.monotonic() < deadline:
            time.sleep(0.05)
        del ballast
        held[0] = 7.0
        time.sleep(0.6)  # samples after the drop: smaller sets, fewer tokens
    assert peak.rss_mib >= start + 250
    assert peak.cache_tokens == 1000.0  # what the caches held when the set was largest
    assert peak.most_cache_tokens == 1000.0
