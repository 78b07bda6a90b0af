"""What serving a model needs without its weights: the tokenizer and the facts the scheduler,
/readyz and the metrics read (ServedModel). No torch import: with INFERENCE_MODEL_PROCESS the
serving process holds only this (engine/remote.py), the weights live in the model process.

A loaded model (engine/loading.py's LoadedModel) is a ServedModel with its network. Both
processes set their long-lived objects aside from the collector once started (settle_heap).
"""

import gc
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Prompts longer than this many characters per allowed token are refused before tokenizing,
# so a huge body costs no tokenizer time (ordinary text is about 4 characters a token).
PROMPT_CHARS_PER_TOKEN_CAP = 64

# A run of non-space characters holding an ASCII letter or digit: T5's tokenizer splits its
# input at spaces (Metaspace) and no normalization drops such a character, so each run is at
# least one token. Counting them is a lower bound on the prompt's tokens, 50x cheaper than
# encoding it.
_WORD = re.compile(r"[^ ]*[A-Za-z0-9][^ ]*")


@dataclass(kw_only=True)
class ServedModel:
    """A model's tokenizer and facts: what the serving process encodes and reports with."""

    tokenizer: Any  # anything with a `backend_tokenizer` (a tokenizers.Tokenizer)
    device_type: str  # "cpu" or "cuda"
    quantization: str
    decoder_start_id: int
    eos_id: int
    pad_id: int
    max_input_tokens: int
    load_seconds: float
    # What the model holds (its weights, packed or not, and every other tensor of it) and what
    # a token held in the caches costs (each row counted as prompt + max_tokens): item 8 of
    # the continuous-batching issue measures the process against them (docs/engine.md).
    model_bytes: int = 0
    cache_token_bytes: int = 0

    @property
    def max_prompt_chars(self) -> int:
        return self.max_input_tokens * PROMPT_CHARS_PER_TOKEN_CAP

    def encode(self, text: str) -> list[int]:
        """The prompt's ids as the model sees them (end-of-sequence token included)."""
        # encode_batch, not encode: it lets go of the interpreter lock while it works, so a
        # long prompt encoded on another thread does not stall the event loop (measured:
        # encode holds it for the whole call).
        ids: list[int] = self.tokenizer.backend_tokenizer.encode_batch([text])[0].ids
        return ids

    def min_tokens(self, text: str) -> int:
        """A lower bound on len(encode(text)), without encoding: its words, plus end-of-sequence."""
        return sum(1 for _ in _WORD.finditer(text)) + 1

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids, special tokens skipped, no clean-up (it cannot be done incrementally)."""
        text: str = self.tokenizer.backend_tokenizer.decode(list(ids), skip_special_tokens=True)
        return text

    def piece(self, token_id: int) -> str:
        """One vocabulary entry as text, out of context (sentencepiece's word marker as a
        space): how a log-probability's alternatives are named."""
        piece = self.tokenizer.backend_tokenizer.id_to_token(token_id)
        return "" if piece is None else piece.replace("\u2581", " ")

    @property
    def vocab_size(self) -> int:
        """The tokenizer's ids (added tokens included): a token-id prompt stays below it."""
        size: int = self.tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=True)
        return size


def settle_heap(*, release: bool = False) -> int:
    """Set what is alive now aside from the cyclic garbage collector (gc.freeze), once the
    model is loaded and warmed up; the number of objects set aside.

    A model process holds a few hundred thousand long-lived objects (torch, transformers, the
    model's modules and the tokenizer). Every full collection walked them all: measured at 90%
    load on flan-t5-base's shape (docs/benchmarks.md), one pause of 190-226 ms about every
    30-60 s in the decoding thread, a gap of that much in every running stream. Frozen
    objects are never walked again, so a full collection costs what the requests' own objects
    cost (no pause above 0.5 ms in the same runs). Frozen objects are never collected either:
    `release` first gives back the earlier frozen set (a base swap dropped the model it held,
    and its reference cycles are garbage now)."""
    if release:
        gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
