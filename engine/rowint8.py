"""Batch-invariant int8 Linear layers for the CPU: int8 weights, activations scaled per row.

torch's dynamic quantization (`quantize_dynamic`) picks one activation scale for the whole
input, so a row's rounding, and with it its greedy tokens, depends on its batch-mates. Here
each row is divided by its own largest magnitude `m` and quantized on one fixed 7-bit grid
(scale 1/63, zero point 64: [-1, 1] maps to [1, 127]), multiplied by the per-channel int8
weights that fbgemm packs (the kernel `linear_dynamic` uses), accumulated in integers, and
multiplied back by `m`. Integer accumulation is exact and every other step is elementwise or
per row, so a row's output is bitwise the same whatever its batch-mates and batch size.

Layers that read the same input (T5's q, k and v; wi_0 and wi_1) are best fused into one
packed matrix (`quantize_rows`' groups): one scaling, one larger product, and the layers become
slices of its output. Per-channel weight scales and per-row activation scales make the fused
product bitwise the unfused ones side by side. Unfused siblings share one `RowScale`, so `m`
and `x / m` are computed once for them. No Django imports.
"""

import itertools
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import torch

from engine import qgemm, rowops

# The fixed activation grid: x / m lies in [-1, 1]; 63 steps a side keeps the products inside
# the 16-bit pair sums of fbgemm's AVX2 kernel (the same 7-bit range as reduce_range=True).
GRID_SCALE = 1.0 / 63
GRID_ZERO = 64
_TINY = torch.finfo(torch.float32).tiny
_KERNEL = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32.default
Result = TypeVar("Result")


def supported() -> bool:
    """Whether this torch build has fbgemm, the x86 kernels the packed weights need."""
    return "fbgemm" in torch.backends.quantized.supported_engines


class LastInput(Generic[Result]):
    """What was computed from the last input, reused while that very tensor is passed again.

    Only the model thread calls it. The input is held through a weak reference whose callback
    drops the result when the input is freed, so a long encoder input's result does not
    outlive it; a different input simply replaces it.
    """

    def __init__(self, compute: Callable[[torch.Tensor], Result]) -> None:
        self._compute = compute
        self._source: weakref.ref[torch.Tensor] | None = None
        self._scaled: Result | None = None

    def __call__(self, hidden: torch.Tensor) -> Result:
        source, result = self._source, self._scaled
        # Identity, not equality: q, k and v are called with the very same tensor, and T5
        # does not write into it between the calls.
        if result is not None and source is not None and source() is hidden:
            return result
        result = self._compute(hidden)
        self._source, self._scaled = weakref.ref(hidden, self._forget), result
        return result

    def _forget(self, source: "weakref.ref[torch.Tensor]") -> None:
        if self._source is source:
            self._source, self._scaled = None, None


class RowScale(LastInput[tuple[torch.Tensor, torch.Tensor]]):
    """(hidden / m, m) with m each row's largest magnitude, shared by layers of one input."""

    def __init__(self) -> None:
        super().__init__(_scale_rows)


def _scale_rows(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    kernel = rowops.load()
    if kernel is not None and hidden.dtype == torch.float32 and hidden.dim() > 0:
        return kernel.scale(hidden)  # bitwise the same as below, in one pass
    return scale_rows_torch(hidden)


def _rescale(out: torch.Tensor, peak: torch.Tensor) -> None:
    kernel = rowops.load()
    if kernel is not None and out.dtype == torch.float32 and out.is_contiguous():
        kernel.rescale(out, peak)  # bitwise `mul_`, without waking other threads
    else:
        out.mul_(peak)


def scale_rows_torch(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden / m, m) in torch ops: m each row's largest magnitude."""
    # An all-zero row divides by the smallest normal float: zeros in, zeros out.
    peak = hidden.abs().amax(-1, keepdim=True).clamp_min_(_TINY)
    return hidden / peak, peak


def _row_int8(hidden: torch.Tensor, packed: Any, bias: torch.Tensor | None) -> torch.Tensor:
    """The product itself, without any caching: scale each row, multiply, scale back."""
    if isinstance(packed, StepPacked):
        return packed(hidden, bias)
    if isinstance(packed, OnednnPacked):
        product = packed(hidden)
        if bias is not None:
            product.add_(bias)
        return product
    scaled, peak = _scale_rows(hidden)
    out: torch.Tensor = _KERNEL(scaled, GRID_SCALE, GRID_ZERO, packed)
    _rescale(out, peak)
    if bias is not None:
        out.add_(bias)
    return out


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
        if isinstance(self.packed, OnednnPacked | StepPacked):
            return _row_int8(hidden, self.packed, self.bias)
        scaled, peak = self.scale(hidden)
        out: torch.Tensor = _KERNEL(scaled, GRID_SCALE, GRID_ZERO, self.packed)
        _rescale(out, peak)
        if self.bias is not None:
            out.add_(self.bias)
        return out

    def weight(self) -> torch.Tensor:
        # A method, as on torch.ao's dynamic Linear: transformers' T5 feed-forward probes
        # `wo.weight` and leaves the activations alone when it is not a tensor.
        return dequantized(self.packed)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class FusedRowInt8(torch.nn.Module):
    """Linears that read one input as one packed int8 matrix; call returns their outputs.

    The outputs are views into one product, kept for the last input (`LastInput`): the
    `RowInt8Slice` children that replace the Linears each ask for theirs with that input.
    """

    bias: torch.Tensor | None

    def __init__(self, linears: Sequence[torch.nn.Linear]) -> None:
        super().__init__()
        self.in_features = linears[0].in_features
        self.widths = [linear.out_features for linear in linears]
        ends = list(itertools.accumulate(self.widths))
        self.bounds = list(zip([0, *ends[:-1]], ends, strict=True))
        self.packed = pack_weight(torch.cat([linear.weight.detach() for linear in linears]))
        # A group with any bias adds one for all (zeros where a Linear had none); T5 has none.
        biases = [linear.bias for linear in linears]
        bias = None
        if any(b is not None for b in biases):
            pairs = zip(biases, self.widths, strict=True)
            parts = [torch.zeros(w) if b is None else b.detach() for b, w in pairs]
            bias = torch.cat(parts)
        self.register_buffer("bias", bias)
        self.outputs = LastInput(self._compute)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.outputs(hidden)

    def _compute(self, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = _row_int8(hidden, self.packed, self.bias)
        return tuple(out[..., start:end] for start, end in self.bounds)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={'+'.join(map(str, self.widths))}"


class RowInt8Slice(torch.nn.Module):
    """One Linear of a `FusedRowInt8` group: its slice of the group's product."""

    def __init__(self, group: FusedRowInt8, index: int) -> None:
        super().__init__()
        self.group, self.index = group, index
        self.in_features, self.out_features = group.in_features, group.widths[index]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.group.outputs(hidden)[self.index]
        return out

    def weight(self) -> torch.Tensor:
        # A method, as on RowInt8Linear (transformers probes `weight` and leaves methods alone).
        start, end = self.group.bounds[self.index]
        return dequantized(self.group.packed)[start:end]


def int8_parts(packed: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The int8 values (out, in) and fp32 per-channel scales of fbgemm's packed weight."""
    quantized = torch.ops.quantized.linear_unpack(packed)[0]
    weight = quantized.int_repr().contiguous()
    return weight, quantized.q_per_channel_scales().float().contiguous()


def packed_bytes(packed: Any) -> int:
    """The bytes a packed int8 matrix holds: a byte a weight, plus its per-channel figures."""
    if isinstance(packed, StepPacked):
        parts = (packed.packed, packed.colsum, packed.mult, packed.scales)
        return sum(part.numel() * part.element_size() for part in parts)
    if isinstance(packed, OnednnPacked):  # oneDNN's opaque blocked copy: a byte a weight
        channels = (packed.scales, packed.zeros)
        extra = sum(part.numel() * part.element_size() for part in channels)
        return packed.out_features * packed.in_features + extra
    # fbgemm's: the weights, and per channel a scale, a zero point and a column offset.
    out_features, in_features = torch.ops.quantized.linear_unpack(packed)[0].shape
    return int(out_features * in_features + out_features * 16)


def dequantized(packed: Any) -> torch.Tensor:
    """The (out, in) fp32 weight a packed int8 matrix stands for."""
    if isinstance(packed, OnednnPacked | StepPacked):
        return packed.dequantized()
    weight: torch.Tensor = torch.ops.quantized.linear_unpack(packed)[0]
    return weight.dequantize()


class OnednnPacked:
    """The same int8 weight packed for oneDNN, whose products take AMX where the CPU has it.

    On an Intel Xeon with AMX, an encoder pass's products (hundreds of rows) ran 4-6x faster in
    oneDNN than in fbgemm, which has no AMX path (docs/benchmarks.md); at a decoder step's few
    rows AMX is slower, so only the encoder is packed this way (`repack`), one copy of each
    weight as before. The activations are the same per-row grid: q = round(x / m * 63) + 64
    (rowops' `quantize`, in C), the product's integer sums are exact, oneDNN multiplies them by
    the weight's per-channel scale (the input's scale is 1, so once) and the row is scaled back
    by m / 63: every step elementwise or per row, so a row's output is bitwise the same
    whatever its batch-mates, the batch size or the kernel oneDNN picks for it.
    """

    def __init__(self, packed: Any) -> None:
        weight, self.scales = int8_parts(packed)
        self.out_features, self.in_features = weight.shape
        self.zeros = torch.zeros(self.out_features, dtype=torch.long)
        self.packed = torch.ops.onednn.qlinear_prepack(weight, None)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        kernel = rowops.load()
        if kernel is None:
            raise RuntimeError("oneDNN's int8 path needs the row kernels (engine/rowops.py)")
        quantized, factor = kernel.quantize(hidden)
        rows = quantized.shape[0]
        out: torch.Tensor = torch.ops.onednn.qlinear_pointwise(
            _bucketed(quantized), 1.0, GRID_ZERO, self.packed, self.scales, self.zeros, None,
            1.0, 0, torch.float32, "none", [], "",
        )[:rows]  # fmt: skip
        kernel.rescale(out, factor)
        return out.view(*hidden.shape[:-1], self.out_features)

    def dequantized(self) -> torch.Tensor:
        # oneDNN keeps no unpacked copy: the product of the identity, 63 on the grid, is each
        # input's column of weights times 63 (exact integers), scaled back.
        identity = torch.eye(self.in_features)
        return self(identity).t().contiguous()


# oneDNN compiles a primitive for each product shape and keeps up to 1,024 of them: an encoder
# pass's rows (prompts x tokens) make a new shape almost every pass, four primitives of
# 0.35-0.45 ms each to compile, and at 90% load on an AMX Xeon about 210 MiB of the model
# process's peak (docs/benchmarks.md). Rows padded to a multiple of this many (AMX's tile
# height) make a few dozen shapes, compiled once; a padding row is the grid's zero and its
# output is dropped.
ROW_BUCKET = 16


def _bucketed(quantized: torch.Tensor) -> torch.Tensor:
    """The quantized rows padded with zeros (the grid's GRID_ZERO) to a multiple of ROW_BUCKET."""
    padding = -quantized.shape[0] % ROW_BUCKET
    if not padding:
        return quantized
    return torch.nn.functional.pad(quantized, (0, 0, 0, padding), value=GRID_ZERO)


class StepPacked:
    """The same int8 weight packed for engine/qgemm.py's kernel, which a decoder step's few rows
    multiply faster than fbgemm's (the weights stream from memory once per step; see there).
    Its call is the whole of the fbgemm path (the rows on the grid, the product, the rows
    scaled back, the bias added), bitwise: one copy of each weight, as before."""

    def __init__(self, packed: Any, kernel: "qgemm.Kernel") -> None:
        weight, self.scales = int8_parts(packed)
        self.out_features, self.in_features = weight.shape
        self.kernel = kernel
        self.packed, self.colsum, self.mult = kernel.pack(weight, self.scales, _GRID)

    def __call__(self, hidden: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return self.kernel.run(hidden, self.packed, self.colsum, self.mult, _INVERSE, bias)

    def dequantized(self) -> torch.Tensor:
        # The panels (4 inputs per channel in each group of a panel) back to (out, in).
        groups, panel = -(-self.in_features // 4), self.kernel.panel
        panels = self.packed.numel() // (groups * panel * 4)
        weight = self.packed.view(panels, groups, panel, 4).permute(0, 2, 1, 3)
        weight = weight.reshape(panels * panel, groups * 4)[: self.out_features, : self.in_features]
        dequantized: torch.Tensor = weight.float() * self.scales[:, None]
        return dequantized


# The grid's scale as fbgemm holds it (float), and the inverse it multiplies the input by.
_GRID = float(torch.tensor(GRID_SCALE, dtype=torch.float32))
_INVERSE = float(torch.tensor(1.0, dtype=torch.float32) / torch.tensor(_GRID, dtype=torch.float32))


def onednn_supported() -> bool:
    """Whether this torch build has oneDNN's int8 linear ops."""
    ops = torch.ops.onednn
    return bool(torch._C._has_mkldnn) and all(
        hasattr(ops, name) for name in ("qlinear_prepack", "qlinear_pointwise")
    )


def repack(network: torch.nn.Module, wrap: Callable[[Any], Any], skip: Any = ()) -> int:
    """Repack every row-scaled int8 matrix under network that fbgemm still holds, except the
    modules in skip, as wrap(fbgemm's packed weight): `OnednnPacked`, or a `StepPacked` for a
    kernel. One copy of each weight (the fbgemm one is dropped); returns how many."""
    count = 0
    skipped = {id(module) for module in skip}
    for module in network.modules():
        if id(module) in skipped or not isinstance(module, RowInt8Linear | FusedRowInt8):
            continue
        if not isinstance(module.packed, OnednnPacked | StepPacked):
            module.packed = wrap(module.packed)
            count += 1
    return count


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


def quantize_rows(
    network: torch.nn.Module, groups: Mapping[str, Sequence[Sequence[str]]] | None = None
) -> torch.nn.Module:
    """Replace every nn.Linear in network, in place, by row-scaled int8; returns network.

    groups maps a module's name (its last component: "SelfAttention") to the names of its
    Linear children that read one input and are fused into one `FusedRowInt8`. The other
    Linear children of one module share a RowScale: in T5 those are the ones that read the
    same input (and a different input only misses the shared cache).
    """
    groups = groups or {}
    for path, parent in list(network.named_modules()):
        for names in groups.get(path.rpartition(".")[2], ()):
            _fuse(parent, names)
        linears = [(n, c) for n, c in parent.named_children() if type(c) is torch.nn.Linear]
        scale = RowScale()
        for name, child in linears:
            setattr(parent, name, RowInt8Linear(child, scale))
    return network


def _fuse(parent: torch.nn.Module, names: Sequence[str]) -> None:
    linears = [getattr(parent, name, None) for name in names]
    if not all(type(linear) is torch.nn.Linear for linear in linears):
        return  # not this architecture (T5 v1.0's single `wi`): left to the plain path
    group = FusedRowInt8(linears)  # type: ignore[arg-type]
    for index, name in enumerate(names):
        setattr(parent, name, RowInt8Slice(group, index))
