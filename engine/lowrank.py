"""The per-row LoRA side path's kernel (engine/csrc/lowrank.c), built for this CPU.

With per-row adapters on an 8-bit CPU base, a decoder step reads every row's own low-rank
matrices: 217 MB a step at rank 16 for 16 rows of flan-t5-base in fp32, at the memory's speed.
The kernel halves that (the matrices in half precision, converted in registers, summed in
fp32) and reads B in blocks laid out for one sequential run each, where torch's batched GEMV
read it at about half the memory's speed; in an encoder pass it takes four positions per
weight loaded, where torch's small batched GEMMs ran at a fifth of the CPU's peak
(docs/adapters.md, "What adapters cost").

The library is built and found by engine/native.py. Without a compiler or a CPU with AVX2
and F16C, or with INFERENCE_ADAPTER_KERNEL=off, `load()` returns None and the side path stays in
torch (fp32 tables; correct, slower).

Only the standard library at import.
"""

import ctypes
import functools
import os
from pathlib import Path
from typing import Any

from engine import native

BLOCK = 64  # B's output columns per block (the C file's BLOCK)


class Kernel:
    """The loaded library: `run` adds the rows' low-rank updates to a pass's output."""

    def __init__(self, path: Path, target: str) -> None:
        self.path, self.target = path, target
        library = ctypes.CDLL(str(path))
        if library.lowrank_block() != BLOCK:
            raise RuntimeError("the library's block size differs from engine/lowrank.py's")
        self.max_low = int(library.lowrank_max_low())  # n * R at most
        self._run = library.lowrank_run
        pointer, integer, long = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
        self._run.argtypes = [pointer] * 4 + [integer] * 4 + [long] * 2 + [integer]
        self._run.restype = None

    def run(self, a: Any, b: Any, x: Any, out: Any, threads: int) -> None:
        """a (rows, n*R, in) and b (rows, n, W/BLOCK, R, BLOCK) in half precision, x (rows, P,
        in) and out (rows, P, n*W) in fp32, all contiguous on the CPU (the caller checks)."""
        rows, n, blocks, rank, _ = b.shape
        positions, width = x.shape[1], x.shape[2]
        # C reads raw memory: a shape that does not fit is an error here, never a stray read.
        half = str(a.dtype) == str(b.dtype) == "torch.float16"
        single = str(x.dtype) == str(out.dtype) == "torch.float32"
        fits = (
            a.shape == (rows, n * rank, width)
            and x.shape[0] == rows
            and out.shape == (rows, positions, n * blocks * BLOCK)
            and n * rank <= self.max_low
        )
        packed = all(t.is_contiguous() for t in (a, b, x, out))
        if not (half and single and fits and packed):
            raise ValueError("lowrank: the tables, input and output do not fit together")
        self._run(
            a.data_ptr(),
            b.data_ptr(),
            x.data_ptr(),
            out.data_ptr(),
            rows,
            positions,
            n,
            rank,
            width,
            blocks * BLOCK,
            threads,
        )


def load() -> Kernel | None:
    """This CPU's kernel, built if need be (once per process); None where it cannot run or
    INFERENCE_ADAPTER_KERNEL is off (read at each call: only the kernel is kept, never an "off")."""
    if os.environ.get("INFERENCE_ADAPTER_KERNEL", "auto").strip().lower() == "off":
        return None
    return _found()


@functools.cache
def _found() -> Kernel | None:
    return native.find("lowrank", "adapters' side path", Kernel)
