"""Row-wise passes of an 8-bit CPU model in C (engine/csrc/rows.c): T5's layer norm and the
per-row activation scaling of engine/rowint8.py.

A decoder step of flan-t5-base makes 73 int8 products, each after four small torch ops that
scale its input's rows and before a `mul_` that scales the product back, and 37 layer norms
that torch's `rms_norm` runs as a composite of six ops on the CPU. At a step's few rows that is
dispatch more than arithmetic (16 rows in isolation: the scaling 14 against 12 us here, the
norm 19 against 8), and from 32768 elements (16 rows of a fused product) torch runs an
elementwise op on several threads, each time a barrier the model thread waits at. One call
each here, on the calling thread unless the pass is large (an encoder pass). Each row is whole
on one thread, so a row's result does not depend on its batch-mates; the scaling and the
rescaling are bitwise what the torch ops give (tested), so they are used wherever the library
loads.

Built and found by engine/native.py; without a compiler or a CPU with AVX2 and F16C, or with
INFERENCE_ROWS_KERNEL=off, `load()` returns None and both stay in torch.
"""

import ctypes
import functools
import os
from pathlib import Path

import torch

from engine import native


class Kernel:
    """The loaded library."""

    def __init__(self, path: Path, target: str) -> None:
        self.path, self.target = path, target
        library = ctypes.CDLL(str(path))
        pointer, integer, long = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
        self._norm = library.rows_rms_norm
        self._norm.argtypes = [pointer] * 3 + [long, integer, ctypes.c_float, integer]
        self._norm.restype = None
        self._scale = library.rows_scale
        self._scale.argtypes = [pointer] * 3 + [long, integer, integer]
        self._scale.restype = None
        self._quantize = library.rows_quantize
        self._quantize.argtypes = [pointer] * 3 + [long, integer, integer]
        self._quantize.restype = None
        self._rescale = library.rows_rescale
        self._rescale.argtypes = [pointer] * 2 + [long, integer, integer]
        self._rescale.restype = None

    def rms_norm(self, hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """weight * hidden / sqrt(mean(hidden ** 2, -1) + eps), fp32 (T5LayerNorm)."""
        hidden = _packed(hidden)
        width = hidden.shape[-1]
        if weight.dtype != torch.float32 or weight.shape != (width,) or not weight.is_contiguous():
            raise ValueError("rows: the layer norm's weight does not fit its input")
        out = torch.empty_like(hidden)
        rows = hidden.numel() // max(1, width)
        threads = torch.get_num_threads()
        self._norm(hidden.data_ptr(), weight.data_ptr(), out.data_ptr(), rows, width, eps, threads)
        return out

    def scale(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden / m, m), m each row's largest magnitude, at least the smallest normal float."""
        hidden = _packed(hidden)
        width = hidden.shape[-1]
        scaled = torch.empty_like(hidden)
        peak = hidden.new_empty((*hidden.shape[:-1], 1))
        rows = hidden.numel() // max(1, width)
        threads = torch.get_num_threads()
        self._scale(hidden.data_ptr(), scaled.data_ptr(), peak.data_ptr(), rows, width, threads)
        return scaled, peak

    def quantize(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, m / 63): each row on the 7-bit grid as uint8, q = round(hidden / m * 63) + 64,
        m its largest magnitude (as `scale`); (rows, width) and (rows, 1), rows every position."""
        hidden = _packed(hidden)
        width = hidden.shape[-1]
        rows = hidden.numel() // max(1, width)
        quantized = torch.empty((rows, width), dtype=torch.uint8)
        factor = torch.empty((rows, 1))
        threads = torch.get_num_threads()
        self._quantize(
            hidden.data_ptr(), quantized.data_ptr(), factor.data_ptr(), rows, width, threads
        )
        return quantized, factor

    def rescale(self, out: torch.Tensor, peak: torch.Tensor) -> None:
        """out *= peak in place, each row by its own (peak: out's shape with a last axis of 1)."""
        width = out.shape[-1] if out.dim() else 0
        rows = out.numel() // max(1, width)
        fits = (
            out.dtype == peak.dtype == torch.float32
            and out.is_contiguous()
            and peak.is_contiguous()
            and peak.numel() == rows
            and out.device.type == peak.device.type == "cpu"
        )
        if not fits:
            raise ValueError("rows: the scales do not fit the product")
        self._rescale(out.data_ptr(), peak.data_ptr(), rows, width, torch.get_num_threads())


def _packed(hidden: torch.Tensor) -> torch.Tensor:
    # C reads raw memory: anything else is an error here, never a stray read.
    if hidden.dtype != torch.float32 or hidden.device.type != "cpu" or hidden.dim() == 0:
        raise ValueError("rows: the input must be an fp32 CPU tensor")
    return hidden.contiguous()


class NativeRMSNorm(torch.nn.Module):
    """T5LayerNorm (fp32) through the kernel."""

    def __init__(self, weight: torch.nn.Parameter, eps: float, kernel: Kernel) -> None:
        super().__init__()
        self.weight, self.eps, self.kernel = weight, eps, kernel

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.kernel.rms_norm(hidden, self.weight.detach(), self.eps)


def load() -> Kernel | None:
    """This CPU's kernel, built if need be (once per process); None where it cannot run or
    INFERENCE_ROWS_KERNEL is off (read at each call: only the kernel is kept, never an "off")."""
    if os.environ.get("INFERENCE_ROWS_KERNEL", "auto").strip().lower() == "off":
        return None
    return _found()


@functools.cache
def _found() -> Kernel | None:
    return native.find("rows", "row-wise kernels", Kernel)
