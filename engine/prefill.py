"""Newcomers' encoder passes while a batch decodes (engine/decoding.py's run_batch).

A pass runs one of two ways:

- beside the decoder steps, on a thread of its own (`PrefillThread`): on a CPU of n cores
  the steps of a small batch run on one thread (decoding.STEP_THREADS_FROM_ROWS) and the other
  cores would idle; the pass takes half of them and the running streams' steps go on while
  it runs, so a long prompt neither stalls them nor waits for their steps; a short prompt
  does not wait for a long one's whole pass either (shorter work first, once a pass). The
  newcomers' cross-attention keys and values are computed there too; their join between two
  steps only copies them into the caches.
- in pauses between two decoder steps (`Prefill.run(budget)`): the layers `budget` encoder
  tokens buy, then a step, and so on; the newcomers join after the last layer.

Either way the maths is the encoder's (engine/t5_encoder.py) and a row's output is bitwise the
same as a pass run whole on the model thread (tested): the 8-bit and half-precision kernels
give each row the same sums whatever the thread count.
"""

import collections
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from engine.loading import LoadedModel
from engine.lora import Tables
from engine.t5_decoder import CrossCaches, cross_caches
from engine.t5_encoder import EncoderPass

if TYPE_CHECKING:
    from engine.decoding import Row


def _pad_prompts(
    prompts: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts right-padded to the longest, and their mask."""
    width = max(len(ids) for ids in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for index, prompt in enumerate(prompts):
        ids[index, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        mask[index, : len(prompt)] = 1
    return ids.to(device), mask.to(device)


class Prefill:
    """Newcomers and their encoder pass, run over one or several pauses between two decoder
    steps (engine/t5_encoder.py), or beside them on a PrefillThread."""

    def __init__(self, model: LoadedModel, rows: "list[Row]") -> None:
        self.model = model
        self.rows = rows
        self.lora = model.lora
        # Equal prompts (a request's n choices, or the same prompt twice) with the same
        # adapter are encoded once; slots maps each row to its prompt's place in the pass.
        distinct: dict[tuple[int, tuple[int, ...]], int] = {}
        self.adapters: list[Any] = []
        self.slots = []
        for row in rows:
            key = (id(row.job.adapter), tuple(row.job.prompt_ids))
            if key not in distinct:
                distinct[key] = len(distinct)
                self.adapters.append(row.job.adapter)
            self.slots.append(distinct[key])
        prompts = [list(prompt) for _, prompt in distinct]
        ids, self.mask = _pad_prompts(prompts, model.pad_id, model.device)
        # The rows' encoder tables, gathered once for the whole pass (engine/lora.py).
        self.tables = None if self.lora is None else self.lora.gather(self.adapters, "encoder.")
        self.encoder = EncoderPass(model.model, ids, self.mask)
        # Set by a PrefillThread: the cross-attention caches of each distinct prompt (with
        # their adapters), and the pass's end (done, given up or failed: `error`).
        self.cross: CrossCaches | None = None
        self.begun = threading.Event()  # a PrefillThread took it up
        self.ended = threading.Event()
        self.error: BaseException | None = None
        self.given_up = False  # the batch that admitted it has ended: stop at the next layer
        # Called between two of its layers on a PrefillThread: there a shorter pass that
        # waits may run first (PrefillThread._shorter_first).
        self.between_layers: Callable[[Prefill], None] | None = None

    @property
    def waiting(self) -> bool:
        """Some row still waits for its encoder output (the others were cancelled)."""
        return any(row.running for row in self.rows)

    def run(self, budget: int) -> bool:
        """Run the layers `budget` encoder tokens buy (0: all); True when the pass is done."""
        if self.lora is None:
            return self.encoder.run(self.encoder.layers_for(budget))
        with self.lora.using(self.tables):
            return self.encoder.run(self.encoder.layers_for(budget))

    @property
    def work(self) -> int:
        """What is left of the pass, in padded tokens through one encoder layer; its
        cross-attention keys and values count as CROSS_LAYERS more until they are made."""
        layers = self.encoder.layers - self.encoder.layers_run
        return (layers + (CROSS_LAYERS if self.cross is None else 0)) * self.encoder.padded_tokens

    def prepare(self) -> None:
        """The whole pass, a layer at a time (stopping early once no row waits for it, or
        the batch gave it up), then the newcomers' cross-attention caches."""
        while not self.encoder.done:
            if self.given_up or not self.waiting:
                return
            self.run(1)
            if self.between_layers is not None:
                self.between_layers(self)
        tables: Tables | None = None
        if self.lora is not None:
            tables = self.lora.gather(self.adapters, "decoder.")
        with contextlib.nullcontext() if self.lora is None else self.lora.using(tables):
            self.cross = cross_caches(self.model.model, self.encoder.finish(), self.model.attention)

    def running(self) -> "tuple[list[Row], torch.Tensor, torch.Tensor, CrossCaches | None]":
        """The rows still running, their encoder output, mask and (if a PrefillThread made
        them) cross-attention caches. The pass finishes here if it has not."""
        self.run(0)
        encoded = self.encoder.finish()
        keep = [index for index, row in enumerate(self.rows) if row.running]
        slots = [self.slots[index] for index in keep]
        if slots == list(range(len(self.rows))):  # every row, each prompt once: as encoded
            return self.rows, encoded, self.mask, self.cross
        index = torch.tensor(slots, dtype=torch.long, device=encoded.device)
        cross = None
        if self.cross is not None:
            cross = [(keys[index], values[index]) for keys, values in self.cross]
        return [self.rows[i] for i in keep], encoded[index], self.mask[index], cross


# The cross-attention keys and values of every decoder layer, against one encoder layer: on
# flan-t5-base 24 products of 768 x 768 against 4 of them and 3 of 768 x 2048, about 2.
CROSS_LAYERS = 2

# A newcomer shares the pass before it (admitted with it) only while that pass's padded tokens
# stay within this much of its prompts' own, or within SHARED_TOKENS in all.
PASS_PADDING = 1.25
SHARED_TOKENS = 64


def split_passes(rows: "list[Row]") -> "list[list[Row]]":
    """Newcomers admitted together, cut into encoder passes in their order: a pass pads its
    prompts to the longest, so a short prompt beside a long one would pay for the long one's
    width and wait for all of it; rows of like lengths (equal prompts among them) share one.
    Each pass joins as soon as it ends."""
    passes: list[list[Row]] = []
    tokens = widest = 0
    for row in rows:
        length = len(row.job.prompt_ids)
        if passes:
            wider, count = max(widest, length), len(passes[-1]) + 1
            padded = count * wider
            if padded <= SHARED_TOKENS or padded <= PASS_PADDING * (tokens + length):
                passes[-1].append(row)
                tokens, widest = tokens + length, wider
                continue
        passes.append([row])
        tokens, widest = length, length
    return passes


def beside_threads(mode: str, model: LoadedModel) -> int:
    """The torch threads of a pass beside the steps for INFERENCE_PREFILL_THREAD's mode (0:
    passes run in pauses), called on the model thread: half of its threads, at least one.
    auto: on a CPU where the model thread has two threads or more."""
    threads = torch.get_num_threads()
    if mode == "off" or (mode == "auto" and (model.device.type != "cpu" or threads < 2)):
        return 0
    return max(1, threads // 2)


class PrefillThread:
    """One thread that runs passes beside the decoder steps, in the order given, except that
    a pass that waits and has less work in all than what is left of the running one goes
    first, between two of its layers (shortest remaining work first). A pass is set aside so
    at most once, and the one that goes first is never set aside itself: a long prompt waits
    for one shorter pass at most, and no flood of short ones starves it."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._passes: queue.SimpleQueue[Prefill] = queue.SimpleQueue()
        self._waiting: collections.deque[Prefill] = collections.deque()  # taken, not begun
        self._ended = threading.Condition()
        threading.Thread(target=self._serve, name="inference-prefill", daemon=True).start()

    def submit(self, prefill: Prefill) -> None:
        """Run the pass (and its cross-attention caches) on the thread; prefill.ended is set
        when it has ended one way or another."""
        self._passes.put(prefill)

    def wait_any(self, passes: list[Prefill]) -> None:
        """Until one of these passes has ended (any: a shorter one may end first)."""
        with self._ended:
            self._ended.wait_for(lambda: any(prefill.ended.is_set() for prefill in passes))

    def _serve(self) -> None:
        # Its own OpenMP thread count: torch's thread settings are per calling thread.
        torch.set_num_threads(self.threads)
        while True:
            prefill = self._waiting.popleft() if self._waiting else self._passes.get()
            prefill.between_layers = self._shorter_first
            self._run(prefill)

    def _run(self, prefill: Prefill) -> None:
        prefill.begun.set()
        try:
            with torch.inference_mode():
                prefill.prepare()
        except Exception as exc:  # the batch fails with it, on the model thread
            prefill.error = exc
        finally:
            with self._ended:
                prefill.ended.set()
                self._ended.notify_all()

    def _shorter_first(self, running: Prefill) -> None:
        """Between two layers of `running`: the next waiting pass first, whole, if it is less
        work than what is left of `running` (which then goes on, and is not set aside again)."""
        while True:
            try:
                self._waiting.append(self._passes.get_nowait())
            except queue.Empty:
                break
        if not self._waiting or self._waiting[0].work >= running.work:
            return
        running.between_layers = None  # set aside once at most
        self._run(self._waiting.popleft())  # its between_layers is None: never set aside


_THREADS: dict[int, PrefillThread] = {}
_THREADS_LOCK = threading.Lock()


def start_prefill_thread(threads: int) -> PrefillThread:
    """The process's PrefillThread of that many torch threads, started at the first call (from
    a model thread: it inherits its priority and CPUs). One model thread decodes at a time in
    a process, so models that come and go (a base swap) share it rather than each leaving one
    behind."""
    with _THREADS_LOCK:
        if threads not in _THREADS:
            _THREADS[threads] = PrefillThread(threads)
        return _THREADS[threads]
