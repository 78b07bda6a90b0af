"""Open-loop load for loadtest/bench_engine.py: Poisson arrivals of mixed requests, the same
arrivals driven through our engine (as streams) and through CTranslate2 the way a server
would use it (one batch per arrival window), the model process's peak memory, and the
figures and goals of one run.

Open loop: a request arrives at its planned time whether or not the earlier ones are done, as
clients of a public API do; a closed loop (N clients each waiting for its answer) slows its
own arrivals down as the server slows and hides queueing.
"""

import asyncio
import contextlib
import itertools
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.percentiles import percentile_nearest_rank

PROMPT_TOKENS = (16, 256)  # inclusive bounds, end-of-sequence token included
NEW_TOKENS = (8, 128)
Figures = dict[str, float]


@dataclass(frozen=True)
class Planned:
    """One request of the plan: when it arrives (seconds after the start) and its size."""

    at: float
    prompt_tokens: int
    max_tokens: int
    tenant: str = ""  # whose request (the engine's fair queue); "" for one anonymous tenant


SINGLE = Planned(0.0, 128, 64)  # the single request the goals compare with: mid-sized


@dataclass
class Record:
    """What the client saw of one request (perf_counter times)."""

    arrival: float
    token_times: list[float] = field(default_factory=list)
    end: float = 0.0
    refused: bool = False


def poisson_arrivals(rate: float, duration: float, seed: int) -> list[float]:
    """Arrival times in [0, duration) of a Poisson process of `rate` per second."""
    rng, now = random.Random(seed), 0.0
    times: list[float] = []
    while True:
        now += rng.expovariate(rate)
        if now >= duration:
            return times
        times.append(now)


def mixed_plan(rate: float, duration: float, seed: int) -> list[Planned]:
    """Poisson arrivals, each with a prompt and a max_tokens drawn uniformly from the bounds."""
    rng = random.Random(seed + 1)
    return [
        Planned(at, rng.randint(*PROMPT_TOKENS), rng.randint(*NEW_TOKENS))
        for at in poisson_arrivals(rate, duration, seed)
    ]


def prompt_ids(tokenizer: Any, count: int, seed: int = 7) -> list[int]:
    """Exactly `count` ids of ordinary words, ending with the end-of-sequence token."""
    from engine.tiny_model import _WORDS

    rng = random.Random(seed + count)
    text = " ".join(rng.choice(_WORDS) for _ in range(count))
    ids: list[int] = tokenizer(text).input_ids
    return ids[: count - 1] + [tokenizer.eos_token_id]


# --- the model and the model process ------------------------------------------------------------
def stream_model(workdir: Path, base: Path) -> Path:
    """The same weights, with a tokenizer that has a piece for every id the model can write.

    The random model writes ids from its whole 32,128-row lm_head, and 97% are past the
    1,000-piece tokenizer: they have no text, so no delta, and a client could not time them.
    Pieces w1000... give each its own delta, as flan-t5's 32,100 pieces do."""
    import json

    from transformers import AutoTokenizer

    folder = workdir / "base-stream"
    if not (folder / "tokenizer.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "generation_config.json", "model.safetensors"):
            if (base / name).is_file() and not (folder / name).exists():
                (folder / name).symlink_to(base / name)
        tokenizer = AutoTokenizer.from_pretrained(base)
        vocab = json.loads((base / "config.json").read_text())["vocab_size"]
        tokenizer.add_tokens([f"w{i}" for i in range(len(tokenizer), vocab)])
        tokenizer.save_pretrained(folder)
    return folder


@dataclass
class Peak:
    """A process's largest resident set while a block ran (MiB), and the tokens the running
    rows held in the caches then and at their most (the engine's inference_cache_tokens)."""

    rss_mib: float = 0.0
    cache_tokens: float = 0.0
    most_cache_tokens: float = 0.0
    start_rss_mib: float = 0.0  # when the block began (the model loaded, no rows)


@contextlib.contextmanager
def peak_rss(pid: int, cache_tokens: Callable[[], float] | None = None) -> Iterator[Peak]:
    """The largest resident set of process pid while the block runs, sampled every 0.25 s,
    with the caches' tokens from `cache_tokens` at each sample."""
    import psutil

    process, done = psutil.Process(pid), threading.Event()
    peak = Peak(start_rss_mib=process.memory_info().rss / 2**20)

    def take() -> None:
        rss = process.memory_info().rss / 2**20
        tokens = cache_tokens() if cache_tokens else 0.0
        peak.most_cache_tokens = max(peak.most_cache_tokens, tokens)
        if rss >= peak.rss_mib:
            peak.rss_mib, peak.cache_tokens = rss, tokens

    def sample() -> None:
        while not done.wait(0.25):
            take()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()
        take()


def engine_cache_tokens() -> float:
    """The engine's inference_cache_tokens gauge in this process (its scheduler's)."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("inference_cache_tokens") or 0.0


def memory_figures(peak: Peak, status: dict[str, Any], token_budget: int) -> Figures:
    """A run's memory figures for the goal (issue 14, item 8): the model process's peak, the
    model's own bytes, a cache token's bytes and the budget (MiB, KiB)."""
    return {
        "rss_mib": peak.rss_mib,
        "start_rss_mib": peak.start_rss_mib,
        "cache_tokens_at_peak": peak.cache_tokens,
        "most_cache_tokens": peak.most_cache_tokens,
        "model_mib": status.get("model_bytes", 0) / 2**20,
        "cache_token_kib": status.get("cache_token_bytes", 0) / 1024,
        "budget_tokens": float(token_budget),
    }


# --- driving our engine --------------------------------------------------------------------------
async def drive_engine(engine: Any, plan: list[Planned], tokenizer: Any) -> list[Record]:
    """Submit each planned request at its time as a greedy stream; record what arrives."""
    return list(await asyncio.gather(*await launch(engine, plan, tokenizer)))


async def launch(engine: Any, plan: list[Planned], tokenizer: Any) -> list[asyncio.Task[Record]]:
    """Start each planned request's stream at its time; returns once the last has started."""
    from engine.runtime import GenerationRequest

    requests = [
        GenerationRequest(
            prompt="",  # the ids are given: the engine does not encode
            prompt_ids=tuple(prompt_ids(tokenizer, item.prompt_tokens)),
            max_tokens=item.max_tokens,
            temperature=0.0,
            ignore_eos=True,  # exact token counts, as in the closed-loop runs
            tenant=item.tenant,
        )
        for item in plan
    ]
    start, tasks = time.perf_counter(), []
    for item, request in zip(plan, requests, strict=True):
        if (delay := start + item.at - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(stream_one(engine, request, start + item.at)))
    return tasks


async def stream_one(engine: Any, request: Any, arrival: float) -> Record:
    """One stream: the time each token reached the client (tokens that came in one delta
    share its time)."""
    from engine.generation import QueueFull

    record = Record(arrival)
    try:
        stream = await engine.submit(request)
    except QueueFull:
        record.refused, record.end = True, time.perf_counter()
        return record
    async for _ in stream:
        now = time.perf_counter()
        record.token_times += [now] * (stream.tokens_streamed - len(record.token_times))
    record.end = time.perf_counter()
    return record


async def closed_loop_capacity(
    engine: Any, tokenizer: Any, clients: int, seconds: float, seed: int
) -> float:
    """Requests per second with `clients` clients, each sending mixed requests back to back."""
    plan = mixed_plan(1000.0, 10_000.0, seed)  # sizes only: times are ignored here
    done, start = 0, time.perf_counter()

    async def client(offset: int) -> None:
        nonlocal done
        index = offset
        while time.perf_counter() - start < seconds:
            item = plan[index % len(plan)]
            await drive_engine(
                engine, [Planned(0.0, item.prompt_tokens, item.max_tokens)], tokenizer
            )
            done, index = done + 1, index + clients

    await asyncio.gather(*(client(offset) for offset in range(clients)))
    return done / (time.perf_counter() - start)


# --- driving CTranslate2 -------------------------------------------------------------------------
def drive_ct2(translator: Any, plan: list[Planned], tokenizer: Any, max_batch: int) -> list[Record]:
    """A CTranslate2 server's loop: whatever arrived while the last batch ran is the next batch
    (at most max_batch); each row stops at its own max_tokens; tokens timed as they come."""
    sources = [
        tokenizer.convert_ids_to_tokens(prompt_ids(tokenizer, item.prompt_tokens)) for item in plan
    ]
    records = [Record(0.0) for _ in plan]
    start, served = time.perf_counter(), 0
    while served < len(plan):
        if (delay := start + plan[served].at - time.perf_counter()) > 0:
            time.sleep(delay)
        now = time.perf_counter() - start
        window = [i for i in range(served, len(plan)) if plan[i].at <= now][:max_batch]
        for index in window:
            records[index].arrival = start + plan[index].at
        ct2_batch(
            translator,
            [sources[i] for i in window],
            [plan[i] for i in window],
            [records[i] for i in window],
        )
        served += len(window)
    return records


def ct2_batch(
    translator: Any, sources: list[list[str]], items: list[Planned], records: list[Record]
) -> None:
    """One greedy batch; the callback times each token and ends a row at its max_tokens."""
    lock = threading.Lock()

    def on_token(step: Any) -> bool:
        with lock:  # the callback may come from CTranslate2's worker threads
            record = records[step.batch_id]
            record.token_times.append(time.perf_counter())
            return len(record.token_times) >= items[step.batch_id].max_tokens

    longest = max(item.max_tokens for item in items)
    translator.translate_batch(
        sources,
        beam_size=1,
        max_decoding_length=longest,
        min_decoding_length=longest,  # end-of-sequence ignored, as in our engine's runs
        callback=on_token,
    )
    end = time.perf_counter()
    for record in records:
        record.end = end


# --- figures -------------------------------------------------------------------------------------
def summarize(records: list[Record]) -> dict[str, float]:
    """Throughput (tokens over first arrival to last answer) and latency percentiles, ms."""
    served = [record for record in records if not record.refused and record.token_times]
    if not served:
        return {"requests": 0.0, "refused": float(len(records))}
    ttft = [(record.token_times[0] - record.arrival) * 1000 for record in served]
    gaps = [(b - a) * 1000 for r in served for a, b in itertools.pairwise(r.token_times)]
    e2e = [(record.end - record.arrival) * 1000 for record in served]
    wall = max(record.end for record in served) - min(record.arrival for record in served)
    figures = {
        "requests": float(len(served)),
        "refused": float(len(records) - len(served)),
        "tokens_per_s": sum(len(record.token_times) for record in served) / wall,
    }
    for name, values in (("ttft", ttft), ("gap", gaps), ("e2e", e2e)):
        for q in (0.5, 0.95, 0.99):
            figures[f"{name}_p{round(q * 100)}"] = percentile_nearest_rank(values, q)
    return figures


def single_request(run: Callable[[], Record], runs: int = 7) -> dict[str, float]:
    """Median time to first token and time per token of one request on an idle server, ms
    (of 7: with 3 the reference, and every ratio against it, moved by up to 25% between runs)."""
    records = [run() for _ in range(runs)]
    ttft = sorted((r.token_times[0] - r.arrival) * 1000 for r in records)
    per_token = sorted(
        (r.token_times[-1] - r.token_times[0]) * 1000 / max(1, len(r.token_times) - 1)
        for r in records
    )
    return {"ttft": ttft[len(ttft) // 2], "per_token": per_token[len(per_token) // 2]}


# --- report ---------------------------------------------------------------------------------------
def open_row(load: float, row: Figures) -> str:
    if not row.get("requests"):
        return f"{load:4.0%}  nothing served"
    return (
        f"{load:4.0%} {row['requests']:5.0f} {row['refused']:4.0f} {row['tokens_per_s']:7.1f}"
        f"  {row['ttft_p50']:6.0f} {row['ttft_p95']:6.0f} {row['ttft_p99']:6.0f}"
        f"  {row['gap_p50']:5.0f} {row['gap_p99']:5.0f}"
        f"  {row['e2e_p50']:6.0f} {row['e2e_p99']:6.0f}  {row['rss_mib']:6.0f}"
    )


def print_open_loop(rows: dict[str, dict[float, Figures]], singles: dict[str, Figures]) -> None:
    print("\nopen loop (ms; tok/s over first arrival to last answer; RSS MiB, peak)")
    print(
        f"  {'system':<12} {'load':>4} {'req':>5} {'refd':>4} {'tok/s':>7}  {'ttft50':>6}"
        f" {'ttft95':>6} {'ttft99':>6}  {'gap50':>5} {'gap99':>5}  {'e2e50':>6} {'e2e99':>6}"
        f"  {'RSS':>6}"
    )
    for name, by_load in rows.items():
        for load, row in by_load.items():
            print(f"  {name:<12} {open_row(load, row)}")
    for name, single in singles.items():
        runs = ""
        if "ttft_after" in single:  # measured before and after the loaded runs: the quicker
            runs = (
                f" (before / after the load: {single['ttft_before']:.0f} / "
                f"{single['ttft_after']:.0f} ms, {single['per_token_before']:.1f} / "
                f"{single['per_token_after']:.1f})"
            )
        print(
            f"  {name:<12} single request: ttft {single['ttft']:6.0f} ms, "
            f"{single['per_token']:5.1f} ms per token{runs}"
        )
    for name in (name for name in rows if name != "ct2-int8"):
        print_goals(name, rows, singles[name])


def print_goals(name: str, rows: dict[str, dict[float, Figures]], single: Figures) -> None:
    """The issue's goals at 90% load (the load nearest it)."""
    load = min(rows[name], key=lambda found: abs(found - 0.9))
    row, ct2 = rows[name][load], rows.get("ct2-int8", {}).get(load)
    if not row.get("requests"):
        return
    print(f"goals, {name} at {load:.0%} load:")
    print(f"  ttft p95 / single ttft        {row['ttft_p95'] / single['ttft']:5.2f}x (goal <= 3x)")
    if ct2 and ct2.get("requests"):
        ratio = row["tokens_per_s"] / ct2["tokens_per_s"]
        print(f"  tok/s / ct2-int8 tok/s        {ratio:5.2f}x (goal >= 1.2x)")
    ratio = row["gap_p99"] / single["per_token"]
    print(f"  gap p99 / single per token    {ratio:5.2f}x (goal <= 2x)")
    print_memory_goal(row)


def print_memory_goal(row: Figures) -> None:
    """Item 8: the model process at most 1.5x the model's own bytes plus its cache budget, as
    written (the whole budget) and against the caches the rows held at the peak."""
    if not row.get("model_mib") or not row.get("cache_token_kib"):
        return
    model, per_token = row["model_mib"], row["cache_token_kib"] / 1024
    written = 1.5 * model + row["budget_tokens"] * per_token
    held = 1.5 * model + row["cache_tokens_at_peak"] * per_token
    print(
        f"  peak RSS / (1.5 x model + budget)   {row['rss_mib'] / written:5.2f}x (goal <= 1x;"
        f" {row['rss_mib']:.0f} MiB against 1.5 x {model:.0f} MiB + {row['budget_tokens']:.0f}"
        f" tokens x {row['cache_token_kib']:.0f} KiB = {written:.0f} MiB)"
    )
    print(
        f"  peak RSS / (1.5 x model + held)     {row['rss_mib'] / held:5.2f}x (the caches the"
        f" rows held at the peak: {row['cache_tokens_at_peak']:.0f} tokens, {held:.0f} MiB;"
        f" at their most {row['most_cache_tokens']:.0f})"
    )
    if row["cache_tokens_at_peak"]:
        grown = (row["rss_mib"] - row["start_rss_mib"]) * 1024 / row["cache_tokens_at_peak"]
        print(
            f"  resident growth a token held      {grown:5.1f} KiB (from {row['start_rss_mib']:.0f}"
            f" MiB loaded and idle; a token's keys and values {row['cache_token_kib']:.0f} KiB)"
        )
