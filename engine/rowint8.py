"""Batch-invariant int8 Linear layers for the CPU: int8 weights, activations scaled per row.

torch's dynamic quantization (`quantize_dynamic`) picks one activation scale for the whole
input, so a row's rounding, and with it its greedy tokens, depends on its batch-mates. Here
each row is divided by its own largest magnitude `m` and quantized on one fixed 7-bit grid
(scale 1/63, zero point 64: [-1, 1] maps to [1, 127]), multiplied by the per-channel int8
weights that fbgemm packs (the kernel `linear_dynamic` uses), accumulated in integers, and
multiplied back by `m`. Integer accumulation is exact and every other step is elementwise or
per row, so a row's output is bitwise the same whatever its batch-mates and batch size.

Layers that read the same input (T5's q, k and v; wi_0 and wi_1) share one `RowScale`, so
`m` and `x / m` are computed once for them. No Django imports.
"""

import warnings
import weakref
from typing import Any

import torch

# The fixed activation grid: x / m lies in [-1, 1]; 63 steps a side keeps the products inside
# the 16-bit pair sums of fbgemm's AVX2 kernel (the same 7-bit range as reduce_range=True).
GRID_SCALE = 1.0 / 63
GRID_ZERO = 64
_TINY = torch.finfo(torch.float32).tiny
_KERNEL = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32.default


def supported() -> bool:
    """Whether this torch build has fbgemm, the x86 kernels the packed weights need."""
    return "fbgemm" in torch.backends.quantized.supported_engines


class RowScale:
    """Each row's largest magnitude and the input divided by it, shared by layers of one input.

    Only the model thread calls it. The cached input is held through a weak reference whose
    callback drops the cache when the input is freed, so a long encoder input's scaled copy
    does not outlive it; a different input simply replaces the cache.
    """

    def __init__(self) -> None:
        self._source: weakref.ref[torch.Tensor] | None = None
        self._scaled: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden / m, m) with m each row's largest magnitude."""
        source, scaled = self._source, self._scaled
        # Identity, not equality: q, k and v are called with the very same tensor, and T5
        # does not write into it between the calls.
        if scaled is not None and source is not None and source() is hidden:
            return scaled
        # An all-zero row divides by the smallest normal float: zeros in, zeros out.
        peak = hidden.abs().amax(-1, keepdim=True).clamp_min_(_TINY)
        scaled = (hidden / peak, peak)
        self._source, self._scaled = weakref.ref(hidden, self._forget), scaled
        return scaled

    def _forget(self, source: "weakref.ref[torch.Tensor]") -> None:
        if self._source is source:
            self._source, self._scaled = None, None


class RowInt8Linear(torch.nn.Module):
    """A Linear with per-channel int8 weights and per-row int8 activations (see the module)."""

    bias: torch.Tensor | None

    def __init__(self, linear: torch.nn.Linear, scale: RowScale | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = pack_weight(linear.weight.detach())
        # Packed without the bias: the kernel would add it before the output is rescaled.
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias)
        self.scale = scale or RowScale()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        scaled, peak = self.scale(hidden)
        out: torch.Tensor = _KERNEL(scaled, GRID_SCALE, GRID_ZERO, self.packed)
        out.mul_(peak)
        if self.bias is not None:
            out.add_(self.bias)
        return out

    def weight(self) -> torch.Tensor:
        # A method, as on torch.ao's dynamic Linear: transformers' T5 feed-forward probes
        # `wo.weight` and leaves the activations alone when it is not a tensor.
        weight: torch.Tensor = torch.ops.quantized.linear_unpack(self.packed)[0]
        return weight.dequantize()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def pack_weight(weight: torch.Tensor) -> Any:
    """fbgemm's packed form of weight, quantized symmetrically per output channel."""
    peak = weight.float().abs().amax(dim=1).clamp_min(1e-12)
    zeros = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        # torch 2.13 marks quantized tensors deprecated; fbgemm's prepack still takes one.
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        quantized = torch.quantize_per_channel(
            weight.float(), (peak / 127).double(), zeros, 0, torch.qint8
        )
        return torch.ops.quantized.linear_prepack(quantized, None)


def quantize_rows(network: torch.nn.Module) -> torch.nn.Module:
    """Replace every nn.Linear in network, in place, by a RowInt8Linear; returns network.

    Siblings (the Linear children of one module) share a RowScale: in T5 those are the ones
    that read the same input.
    """
    for parent in list(network.modules()):
        linears = [(n, c) for n, c in parent.named_children() if type(c) is torch.nn.Linear]
        scale = RowScale()
        for name, child in linears:
            setattr(parent, name, RowInt8Linear(child, scale))
    return network
