"""A decoder step's int8 products in C (engine/csrc/qgemm.c), for an 8-bit CPU model.

At a step's 1-32 rows every weight of the decoder (124 MB on flan-t5-base) streams from memory
once per step, and fbgemm's kernel, made for large inputs, reads that stream at about half the
memory's speed and then does its arithmetic, where the kernel here multiplies every row of the
step by each group of weights as it arrives. One call also quantizes the rows on
engine/rowint8.py's grid and scales the product back, with the very operations of the fbgemm
path (`_KERNEL` then the row's rescale): the products are bitwise the same (tested), only
faster: a whole step's products 1.5-1.6x at 1-16 rows, 1.2-1.3x at 32 (docs/benchmarks.md).

`auto` (INFERENCE_STEP_KERNEL) uses it where it was measured: on a CPU with AVX-512 VNNI, and
on a CPU with AVX2 but no AVX-512 (its AVX2 path); `on` also takes the AVX2 path on an AVX-512
CPU without VNNI (unmeasured there); `off` keeps fbgemm. Built and found by
engine/native.py; `load()` returns None where it cannot be had, and the step stays on fbgemm.
"""

import ctypes
import functools
import os
import threading
from pathlib import Path

import torch

from engine import native

MODES = ("auto", "on", "off")
VNNI, AVX2 = 1, 2


class Kernel:
    """The loaded library: packs a weight, runs a product."""

    def __init__(self, path: Path, target: str) -> None:
        self.path, self.target = path, target
        self._local = threading.local()
        library = ctypes.CDLL(str(path))
        pointer, integer, long = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
        single = ctypes.c_float
        library.qgemm_path.restype = integer
        library.qgemm_path.argtypes = []
        self.path_used = int(library.qgemm_path())
        library.qgemm_panel.restype = integer
        library.qgemm_panel.argtypes = []
        self.panel = int(library.qgemm_panel())  # output channels per packed panel
        self._bytes = library.qgemm_packed_bytes
        self._bytes.restype = long
        self._bytes.argtypes = [long, long]
        self._pack = library.qgemm_pack
        self._pack.restype = None
        self._pack.argtypes = (pointer, long, long, pointer, single, pointer, pointer, pointer)
        self._run = library.qgemm_run
        self._run.restype = None
        self._run.argtypes = (pointer, long, long, pointer, pointer, pointer, pointer, long)
        self._run.argtypes += (single, pointer, pointer, integer)

    def pack(
        self, weight: torch.Tensor, scales: torch.Tensor, grid: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(packed, colsum, mult) of an int8 weight (out, in) and its per-channel fp32 scales."""
        out, width = weight.shape
        if weight.dtype != torch.int8 or scales.dtype != torch.float32 or scales.numel() != out:
            raise ValueError("qgemm: an int8 (out, in) weight and out fp32 scales are needed")
        weight, scales = weight.contiguous(), scales.contiguous()
        packed = torch.empty(int(self._bytes(out, width)), dtype=torch.int8)
        colsum = torch.empty(out, dtype=torch.int32)
        mult = torch.empty(out, dtype=torch.float32)
        self._pack(
            weight.data_ptr(), out, width, scales.data_ptr(), grid,
            packed.data_ptr(), colsum.data_ptr(), mult.data_ptr(),
        )  # fmt: skip
        return packed, colsum, mult

    def run(
        self,
        hidden: torch.Tensor,
        packed: torch.Tensor,
        colsum: torch.Tensor,
        mult: torch.Tensor,
        inverse: float,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The grid product of hidden (..., in) fp32: (..., out) fp32."""
        out_features = colsum.numel()
        width = hidden.shape[-1] if hidden.dim() else 0
        if hidden.dtype != torch.float32 or not hidden.is_cpu or width == 0:
            raise ValueError("qgemm: the input must be an fp32 CPU tensor")
        stride = -(-width // 4) * 4  # qgemm_packed_bytes, without a call into C
        if -(-out_features // self.panel) * self.panel * stride != packed.numel():
            raise ValueError("qgemm: the input's width does not fit the packed weight")
        if bias is not None:
            if bias.dtype != torch.float32 or bias.numel() != out_features:
                raise ValueError("qgemm: the bias does not fit the packed weight")
            bias = bias.contiguous()  # held here while C reads it
        hidden = hidden.contiguous()
        rows = hidden.numel() // width
        result = torch.empty((*hidden.shape[:-1], out_features))
        # The rows on the grid, then (64-byte aligned) their peaks: this thread's buffer.
        scratch = self._scratch(rows * stride + 64 + 4 * rows)
        bias_pointer = None if bias is None else bias.data_ptr()
        self._run(
            hidden.data_ptr(), rows, width, packed.data_ptr(), colsum.data_ptr(),
            mult.data_ptr(), bias_pointer, out_features, inverse, result.data_ptr(),
            scratch.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        return result

    def _scratch(self, size: int) -> torch.Tensor:
        """At least size bytes of the calling thread's own scratch (kept: a step calls the
        kernel 73 times; threads never share one)."""
        held: torch.Tensor | None = getattr(self._local, "scratch", None)
        if held is None or held.numel() < size:
            held = torch.empty(max(size, 1 << 16), dtype=torch.uint8)
            self._local.scratch = held
        return held


def mode() -> str:
    """INFERENCE_STEP_KERNEL, checked: auto, on or off."""
    wanted = os.environ.get("INFERENCE_STEP_KERNEL", "auto").strip().lower() or "auto"
    if wanted not in MODES:
        raise ValueError(f"INFERENCE_STEP_KERNEL={wanted!r}: expected auto, on or off.")
    return wanted


def wanted(kernel: Kernel | None) -> bool:
    """Whether a decoder's step products go through this kernel under INFERENCE_STEP_KERNEL:
    `auto` where it was measured faster than fbgemm, the VNNI path and the AVX2 build (what a
    CPU with AVX2 and no AVX-512 loads); not the AVX2 path of the AVX-512 build (a CPU with
    AVX-512 but no VNNI, where fbgemm's products are AVX-512's, unmeasured)."""
    if kernel is None:
        return False
    chosen = mode()
    measured = kernel.path_used == VNNI or kernel.target == "avx2"
    return chosen == "on" or (chosen == "auto" and measured)


def load() -> Kernel | None:
    """This CPU's kernel, built if need be (once per process); None where it cannot run or
    INFERENCE_STEP_KERNEL is off (read at each call: only the kernel is kept, never an "off")."""
    if mode() == "off":
        return None
    return _found()


@functools.cache
def _found() -> Kernel | None:
    return native.find("qgemm", "step products kernel", Kernel)
