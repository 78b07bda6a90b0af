"""A decoder step's attention over half-precision caches (engine/csrc/attend.c).

At 16 rows of flan-t5-base a decoder step spent about 40% of its time in torch's batched
matrix-vector products over the fp32 self- and cross-attention caches, reading them at the
memory's speed (docs/engine.md, "The attention kernel"). With this kernel an 8-bit model on
the CPU keeps its caches in half precision (half the bytes) and one call per layer does the
scores, T5's position bias, each row's own columns, the softmax and the weighted sum.

Each (row, head) is computed whole on one thread in a fixed order, so a row's result does not
depend on its batch-mates or on where its columns sit in the shared clock: the 8-bit backends
stay batch-invariant (engine/tests/test_attention.py).

Built and found by engine/native.py; without a compiler or a CPU with AVX2 and F16C, or with
INFERENCE_ATTENTION_KERNEL=off, `load()` returns None and the step stays in torch (fp32
caches; correct, slower).
"""

import ctypes
import functools
import os
from pathlib import Path

import torch

from engine import native

# Half precision's largest finite value: keys and values are clamped to it when stored (an
# overflow would be an infinite score, then NaN), which no T5 projection comes near.
HALF_MAX = 65504.0


class Kernel:
    """The loaded library: `run` attends one query per row and head over its columns."""

    def __init__(self, path: Path, target: str) -> None:
        self.path, self.target = path, target
        library = ctypes.CDLL(str(path))
        self.max_d = int(library.attend_max_d())
        # The self-attention keys' columns per block: (slots, H, cap / block, D, block).
        self.key_block = int(library.attend_key_block())
        self.lanes = 16 if target == "avx512" else 8
        self._run = library.attend_run
        pointer, integer, long = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
        self._run.argtypes = [pointer] * 4 + [long] + [pointer] * 5 + [integer] * 3 + [long]
        self._run.argtypes += [long, integer]
        self._run.restype = integer
        self._store = library.attend_store
        self._store.argtypes = [pointer] * 5 + [integer] * 3 + [long] * 3
        self._store.restype = integer
        self._rows = library.attend_rows
        self._rows.argtypes = [pointer] * 7 + [integer] * 3 + [long, integer]
        self._rows.restype = integer
        self._shift = library.attend_shift
        self._shift.argtypes = [pointer] * 3 + [integer] * 3 + [long] * 4
        self._shift.restype = integer

    def run(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        bias: torch.Tensor | None,
        slot: torch.Tensor,
        lo: torch.Tensor,
        hi: torch.Tensor,
        threads: int,
    ) -> torch.Tensor:
        """query (rows, H, D) fp32; keys (slots, H, cap / B, D, B) in blocks of B = key_block
        columns (`blocked`) and values (slots, H, cap, D), in half precision, row r's in
        slot[r]; bias (H, at least hi's largest) fp32 or None; slot, lo, hi (rows) int64, each
        row's slot and the columns it attends to. Returns (rows, H, D)."""
        rows, heads, width = query.shape
        slots, cap = self._self_caches(keys, values, heads, width)
        # C reads raw memory: anything that does not fit is an error here, never a stray read.
        fits = (
            cap > 0
            and query.dtype == torch.float32
            and slot.shape == lo.shape == hi.shape == (rows,)
            and slot.dtype == lo.dtype == hi.dtype == torch.int64
            and width <= self.max_d
            and (bias is None or (bias.dtype == torch.float32 and bias.dim() == 2))
            and all(t.is_contiguous() for t in (query, slot, lo, hi))
        )
        if fits and bias is not None:
            fits = bias.shape[0] == heads and bias.is_contiguous()
        if not fits:
            raise ValueError("attention: the query, caches and columns do not fit together")
        out = torch.empty_like(query)
        scratch = torch.empty(max(1, threads) * (cap + 2 * self.lanes))
        # The slots and columns are checked in C (it reads nothing where one does not fit):
        # here they cost four reductions a call, 24 calls a step.
        failed = self._run(
            query.data_ptr(),
            keys.data_ptr(),
            values.data_ptr(),
            0 if bias is None else bias.data_ptr(),
            0 if bias is None else bias.shape[1],
            slot.data_ptr(),
            lo.data_ptr(),
            hi.data_ptr(),
            out.data_ptr(),
            scratch.data_ptr(),
            rows,
            heads,
            width,
            cap,
            slots,
            max(1, threads),
        )
        if failed:
            raise ValueError("attention: the query, caches and columns do not fit together")
        return out

    def store(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        slot: torch.Tensor,
        position: int,
    ) -> None:
        """Write a step's key and value (rows, H, D) fp32 into column `position` of each row's
        slot of keys (slots, H, cap / B, D, B: `blocked`) and values (slots, H, cap, D), in half
        precision, clamped to HALF_MAX: what `keys[slot, :, :, position] = key.clamp(...).half()`
        does in the keys' plain layout (slots, H, D, cap)."""
        rows, heads, width = key.shape
        slots, cap = self._self_caches(keys, values, heads, width)
        fits = (
            cap > 0
            and key.dtype == value.dtype == torch.float32
            and value.shape == key.shape
            and slot.shape == (rows,)
            and slot.dtype == torch.int64
            and all(t.is_contiguous() for t in (key, value, slot))
        )
        if not fits:
            raise ValueError("attention: the new keys, values and caches do not fit together")
        failed = self._store(
            key.data_ptr(),
            value.data_ptr(),
            keys.data_ptr(),
            values.data_ptr(),
            slot.data_ptr(),
            rows,
            heads,
            width,
            cap,
            slots,
            position,
        )
        if failed:  # a slot or the column outside the caches: C wrote nothing
            raise ValueError("attention: the new keys, values and caches do not fit together")

    def _self_caches(
        self, keys: torch.Tensor, values: torch.Tensor, heads: int, width: int
    ) -> tuple[int, int]:
        """(slots, columns) of self-attention caches of this many heads this wide: keys
        (slots, H, cap / B, D, B) and values (slots, H, cap, D), contiguous half precision;
        (0, 0) where they are not."""
        if keys.dim() != 5 or values.dim() != 4:
            return 0, 0
        slots, cap = int(values.shape[0]), int(values.shape[2])
        fits = (
            keys.dtype == values.dtype == torch.float16
            and cap % self.key_block == 0
            and keys.shape == (slots, heads, cap // self.key_block, width, self.key_block)
            and values.shape == (slots, heads, cap, width)
            and keys.is_contiguous()
            and values.is_contiguous()
        )
        return (slots, cap) if fits else (0, 0)

    def blocked(self, keys: torch.Tensor) -> torch.Tensor:
        """Keys (..., D, cap) in the kernel's blocked layout (..., cap / B, D, B), cap a
        multiple of key_block B (a copy)."""
        *lead, width, cap = keys.shape
        if cap % self.key_block:
            raise ValueError(f"attention: {cap} columns are not whole blocks of {self.key_block}")
        split = keys.reshape(*lead, width, cap // self.key_block, self.key_block)
        return split.transpose(-3, -2).contiguous()

    def plain(self, keys: torch.Tensor) -> torch.Tensor:
        """The blocked keys (..., cap / B, D, B) as (..., D, cap) (a copy)."""
        *lead, blocks, width, block = keys.shape
        return keys.transpose(-3, -2).reshape(*lead, width, blocks * block)

    def run_rows(
        self, query: torch.Tensor, caches: "RowCaches", layer: int, hi: torch.Tensor, threads: int
    ) -> torch.Tensor:
        """query (rows, H, D) fp32 over each row's own cross-attention caches of `layer`
        (RowCaches), columns 0..hi (rows) int64. Returns (rows, H, D)."""
        rows, heads, width = query.shape
        fits = (
            query.dtype == torch.float32
            and query.is_contiguous()
            and len(caches) == rows
            and (caches.heads, caches.width) == (heads, width)
            and 0 <= layer < caches.layers
            and width <= self.max_d
            and hi.shape == (rows,)
            and hi.dtype == torch.int64
            and hi.is_contiguous()
        )
        if not fits:
            raise ValueError("attention: the query, caches and columns do not fit together")
        out = torch.empty_like(query)
        scratch = torch.empty(max(1, threads) * (caches.widest + self.lanes))
        keys, values = caches.keys[layer], caches.values[layer]
        failed = self._rows(
            query.data_ptr(),
            keys.data_ptr(),
            values.data_ptr(),
            caches.columns.data_ptr(),
            hi.data_ptr(),
            out.data_ptr(),
            scratch.data_ptr(),
            rows,
            heads,
            width,
            caches.widest,
            max(1, threads),
        )
        if failed:
            raise ValueError("attention: the query, caches and columns do not fit together")
        return out

    def shift(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        slots: torch.Tensor,
        offset: int,
        kept: int,
    ) -> None:
        """Move columns offset..offset + kept of these slots of keys (slots, H, cap / B, D, B:
        `blocked`) and values (slots, H, cap, D) to 0..kept, in place: what copying those
        columns of `keys[slots]` to the front does, without new buffers."""
        count = slots.shape[0]
        heads, width = (values.shape[1], values.shape[3]) if values.dim() == 4 else (0, 0)
        total, cap = self._self_caches(keys, values, heads, width)
        fits = cap > 0 and slots.dtype == torch.int64 and slots.dim() == 1 and slots.is_contiguous()
        if not fits:
            raise ValueError("attention: the caches and columns to move do not fit together")
        failed = self._shift(
            keys.data_ptr(),
            values.data_ptr(),
            slots.data_ptr(),
            count,
            heads,
            width,
            cap,
            total,
            offset,
            kept,
        )
        if failed:  # a slot or the columns outside the caches: C moved nothing
            raise ValueError("attention: the caches and columns to move do not fit together")


class RowCaches:
    """Each row's own cross-attention keys (heads, head width, columns) and values (heads,
    columns, head width) of every layer, in half precision, where its encoder pass made them:
    rows join and leave without a copy (`Kernel.run_rows` reads them by address). It holds
    each row's tensors alive (`owners`) and checked, when they came, what the addresses point
    at: the kernel trusts them."""

    def __init__(self, layers: int, heads: int, width: int) -> None:
        self.layers, self.heads, self.width = layers, heads, width
        self.keys = torch.zeros((layers, 0), dtype=torch.int64)  # addresses, (layers, rows)
        self.values = torch.zeros((layers, 0), dtype=torch.int64)
        self.columns = torch.zeros(0, dtype=torch.int64)  # each row's cap
        self.widest = 1
        self.owners: list[list[tuple[torch.Tensor, torch.Tensor]]] = []  # each row's pass caches

    def __len__(self) -> int:
        return len(self.owners)

    @classmethod
    def made(cls, cross: list[tuple[torch.Tensor, torch.Tensor]]) -> "RowCaches":
        """The rows of one pass's caches (cross_caches: per layer keys (rows, H, D, columns)
        and values (rows, H, columns, D), contiguous half precision)."""
        keys, values = cross[0]
        rows, heads, width, columns = keys.shape
        caches = cls(len(cross), heads, width)
        for keys, values in cross:
            if not (
                keys.shape == (rows, heads, width, columns)
                and values.shape == (rows, heads, columns, width)
                and keys.dtype == values.dtype == torch.float16
                and keys.is_contiguous()
                and values.is_contiguous()
                and columns >= 1
            ):
                raise ValueError("attention: cross-attention caches that do not fit together")
        step = heads * width * columns * 2  # bytes from one row's caches to the next's
        starts = torch.arange(rows, dtype=torch.int64) * step
        caches.keys = torch.stack([k.data_ptr() + starts for k, _ in cross])
        caches.values = torch.stack([v.data_ptr() + starts for _, v in cross])
        caches.columns = torch.full((rows,), columns, dtype=torch.int64)
        caches.widest = columns
        caches.owners = [cross] * rows
        return caches

    def joined(self, other: "RowCaches") -> "RowCaches":
        """These rows, then the other's."""
        if not self.owners:
            return other
        if (other.layers, other.heads, other.width) != (self.layers, self.heads, self.width):
            raise ValueError("attention: cross-attention caches that do not fit together")
        caches = RowCaches(self.layers, self.heads, self.width)
        caches.keys = torch.cat([self.keys, other.keys], dim=1)
        caches.values = torch.cat([self.values, other.values], dim=1)
        caches.columns = torch.cat([self.columns, other.columns])
        caches.widest = max(self.widest, other.widest)
        caches.owners = self.owners + other.owners
        return caches

    def kept(self, rows: torch.Tensor) -> "RowCaches":
        """Only these rows (indices), in that order."""
        caches = RowCaches(self.layers, self.heads, self.width)
        caches.keys = self.keys[:, rows].contiguous()
        caches.values = self.values[:, rows].contiguous()
        caches.columns = self.columns[rows]
        caches.widest = int(caches.columns.max()) if len(rows) else 1
        caches.owners = [self.owners[index] for index in rows.tolist()]
        return caches


def load() -> Kernel | None:
    """This CPU's kernel, built if need be (once per process); None where it cannot run or
    INFERENCE_ATTENTION_KERNEL is off (read at each call: only the kernel is kept, never an
    "off")."""
    if os.environ.get("INFERENCE_ATTENTION_KERNEL", "auto").strip().lower() == "off":
        return None
    return _found()


@functools.cache
def _found() -> Kernel | None:
    return native.find("attend", "attention", Kernel)
