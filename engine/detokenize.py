"""Incremental detokenization and stop strings, one instance per generated row.

The deltas a row emits concatenate to exactly the text the tokenizer's decoder gives for all
of the row's tokens (with stop strings trimmed). Two things make the naive "decode the new
token" wrong for sentencepiece models: the decoder drops the space of the first word of a
string, and byte-fallback pieces (<0xE2> <0x82> <0xAC>) only form a character together.
"""

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

REPLACEMENT = "\ufffd"  # what a decoder yields for bytes that are not (yet) a whole character
BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")

Decode = Callable[[Sequence[int]], str]


class IncrementalDetokenizer:
    """Turns a stream of token ids into text deltas.

    The algorithm TGI and vLLM use: decode a short window of ids twice, once without and once
    with the new ids, and emit the difference. Both decodes start at the same token, so the
    decoder's first-word space handling cancels out; a delta ending in U+FFFD is held back
    until the character is complete. Byte pieces are held until a non-byte piece follows:
    the ByteFallback decoder turns a whole run of bytes into U+FFFDs when any byte of the run
    is invalid, which would change text already sent.
    """

    def __init__(
        self, decode: Decode, byte_ids: Collection[int] = (), special_ids: Collection[int] = ()
    ) -> None:
        self._decode = decode
        self._byte_ids = byte_ids
        self._special_ids = special_ids  # skipped when decoding: they do not close a byte run
        self._in_byte_run = False
        self.ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def push(self, token_id: int) -> str:
        """Add one id; returns the text it completes (often '', never a partial character)."""
        self.ids.append(token_id)
        if token_id in self._byte_ids:
            self._in_byte_run = True
        elif token_id not in self._special_ids:
            self._in_byte_run = False
        if self._in_byte_run:
            return ""
        prefix_text = self._decode(self.ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self.ids[self._prefix_offset :])
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
        return new_text[len(prefix_text) :]

    def flush(self) -> str:
        """The text still held back (bytes that never formed a character) at the end."""
        prefix_text = self._decode(self.ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self.ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self.ids)
        return new_text[len(prefix_text) :]


def byte_piece_ids(vocab: Mapping[str, int]) -> frozenset[int]:
    """Ids of byte-fallback pieces (<0x00> ... <0xFF>) in a tokenizer's vocabulary."""
    return frozenset(index for piece, index in vocab.items() if BYTE_PIECE.fullmatch(piece))


def special_ids(backend: Any) -> frozenset[int]:
    """Ids a `tokenizers.Tokenizer` drops when decoding with skip_special_tokens."""
    added = backend.get_added_tokens_decoder()
    return frozenset(index for index, token in added.items() if token.special)


class StopStringFilter:
    """Holds back text that may be the start of a stop string; trims at the first match."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [stop for stop in stops if stop]
        self._longest = max((len(stop) for stop in self._stops), default=0)
        self.text = ""
        self._sent = 0
        self.stopped = False

    def feed(self, delta: str) -> str:
        """Add decoded text; returns what may be sent now. Sets `stopped` on a match."""
        if self.stopped:
            return ""
        self.text += delta
        match = self._first_match()
        if match is not None:
            self.text = self.text[:match]
            self.stopped = True
            return self._take(len(self.text))
        return self._take(len(self.text) - self._held_back())

    def finish(self) -> str:
        """Everything not sent yet (the row has ended, so no stop string can complete)."""
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        piece = self.text[self._sent : end]
        self._sent = max(self._sent, end)
        return piece

    def _first_match(self) -> int | None:
        # A match cannot start before _sent: text that might begin a stop string is never sent.
        found = [self.text.find(stop, self._sent) for stop in self._stops]
        found = [index for index in found if index >= 0]
        return min(found) if found else None

    def _held_back(self) -> int:
        unsent = len(self.text) - self._sent
        for size in range(min(self._longest - 1, unsent), 0, -1):
            tail = self.text[-size:]
            if any(stop.startswith(tail) for stop in self._stops):
                return size
        return 0
