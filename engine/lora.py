"""Per-row LoRA adapters over one shared base (Punica's BGMV, gathered once per row).

Once adapters are registered (Engine.set_adapters) the model is the base WITHOUT any adapter
merged, and every adapted Linear adds, per row, `scale * (x @ A[row]^T) @ B[row]^T`:

- `attach(network)` wraps T5's q, k, v, o, wi_0, wi_1, wo (encoder, decoder self- and
  cross-attention) of any backend: a `LoraLinear` around a Linear (fp32, bf16, bitsandbytes'
  8-bit, rowint8's RowInt8Linear), and for rowint8's fused groups (q+k+v, cross k+v, wi_0+wi_1)
  ONE side product for the group: x @ concat(A_q, A_k, A_v)^T, then one bmm over rows x
  targets with each target's B, added to the group's packed output before it is sliced.
- A wrapper reads the row tables of the pass being run (`Lora.using(tables)`): per unit, the
  rows' A (rows, n*R, in) and B (rows, n, R, out) stacked when the rows join (zero-padded to the
  largest rank among them; zeros for a row whose adapter leaves the unit alone, or that has
  none) and indexed with the batch's rows when rows leave: never gathered per step.
- On an 8-bit CPU base, where engine/lowrank.py's kernel runs, the tables are half precision
  and B is blocked, (rows, n, out/64, R, 64), and every pass (decoder step, encoder pass,
  cross-attention's keys and values) runs the kernel instead of torch's bmm.
- `AdapterHost` (on the model thread, or in the model process) owns the registry, the bank of
  loaded adapters (at most `max_adapters`, least recently used evicted, never one with rows),
  the loader thread (rows whose adapter loads are parked while the others run; a load that
  fails fails only its rows, with AdapterLoadError) and the switch of the base itself (an
  empty registry serves today's merged model; the switch loads the other base on a thread
  and swaps between batches: the old batch takes no newcomers, drains, then the new one
  starts).

No Django imports.
"""

import contextlib
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from engine import lowrank, rowint8
from engine.generation import AdapterLoadError, UnknownAdapter

if TYPE_CHECKING:
    from engine.batcher import Job
    from engine.config import EngineConfig
    from engine.loading import LoadedModel

logger = logging.getLogger(__name__)

# T5's Linears an adapter may adapt (v1.0's single `wi` too).
TARGETS = ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo")
DEFAULT = ""  # the name rows without an adapter use: INFERENCE_ADAPTER, or none at all
PEFT_PREFIX = "base_model.model."
HALF = 65504.0  # the largest half-precision value: the kernel's tables hold at most this

# A test hook: called on the loader thread with the folder before each adapter load (a slow
# disk, in tests). Never set in production.
load_hook: Callable[[str], None] | None = None

Tables = dict[str, tuple[Tensor, Tensor]]


@dataclass
class Unit:
    """One side product: the targets (module paths) a packed group reads with one input (one
    target for a plain Linear), its input width and each target's output width."""

    key: str
    targets: tuple[str, ...]
    in_features: int
    widths: tuple[int, ...]

    @property
    def cross_kv(self) -> bool:
        """Cross-attention's k or v: run once per row, when it joins (not kept per step)."""
        return all(".EncDecAttention." in t and t[-1] in "kv" for t in self.targets)


class LoraState:
    """The row tables of the pass being run (None: no side path), and the side path's kernel
    where the tables are laid out for it (engine/lowrank.py)."""

    def __init__(self, kernel: lowrank.Kernel | None = None) -> None:
        # Per thread: an encoder pass beside the decoder steps (engine/prefill.py) runs its
        # rows' tables on its own thread while the model thread runs the step's.
        self._local = threading.local()
        self.kernel = kernel

    @property
    def tables(self) -> Tables | None:
        tables: Tables | None = getattr(self._local, "tables", None)
        return tables

    @tables.setter
    def tables(self, tables: Tables | None) -> None:
        self._local.tables = tables


def _side(state: LoraState, key: str, hidden: Tensor, out: Tensor) -> Tensor:
    """out + the rows' low-rank update of `hidden` (rows, positions, in), in place: one bmm
    with the rows' A (all the unit's targets at once), one with their B's (rows x targets)."""
    tables = state.tables
    if tables is None or (pair := tables.get(key)) is None:
        return out
    a, b = pair
    positions = hidden.shape[1]
    if b.dim() == 5:  # half precision, B blocked: the kernel's layout
        kernel = state.kernel
        if kernel is not None and a.shape[1] <= kernel.max_low and _fits(hidden, out):
            kernel.run(a, b, hidden.contiguous(), out, _threads(hidden))
            return out
        a, b = a.to(hidden.dtype), unblock(b).to(hidden.dtype)
    rows, n, rank, width = b.shape
    x = hidden if hidden.dtype == a.dtype else hidden.to(a.dtype)
    # A is kept (n * rank, in) per row: in a decoder step A x^T reads it at about the memory's
    # speed on the CPU, where x A on an (in, n * rank) layout took a third longer.
    low = torch.bmm(a, x.transpose(1, 2))  # (rows, n * rank, positions)
    if positions == 1:
        low = low.view(rows * n, 1, rank)
    else:
        low = low.view(rows, n, rank, positions).transpose(2, 3).reshape(rows * n, positions, rank)
    if out.dtype == a.dtype and out.is_contiguous() and (n == 1 or positions == 1):
        # A decoder step (one position): rows x targets products of (1, rank) by (rank,
        # width), added in place to the packed output [target 0 | target 1 | ...] (views).
        shape = (rows * n, positions, width)
        out.view(shape).baddbmm_(low, b.view(shape[0], rank, width))
        return out
    # (rows * n) products of (positions, rank) by (rank, width), then back to the packed layout.
    delta = torch.bmm(low, b.view(rows * n, rank, width))
    delta = delta.view(rows, n, positions, width).transpose(1, 2)
    delta = delta.reshape(rows, positions, n * width)
    if out.dtype == delta.dtype:
        return out.add_(delta)
    return out + delta.to(out.dtype)


# Positions (rows x length) below which the kernel runs on the model thread alone: a decoder
# step's units take tens of microseconds each, and a parallel region's wake-up and barrier
# cost more than they save whenever the other core is busy (bench_adapters --threads 0: 0.76-0.79x
# merged at rank 16 with two threads here against 0.80-0.82x with one).
PARALLEL_POSITIONS = 128


def _threads(hidden: Tensor) -> int:
    if hidden.shape[0] * hidden.shape[1] < PARALLEL_POSITIONS:
        return 1
    return torch.get_num_threads()


def _fits(hidden: Tensor, out: Tensor) -> bool:
    """The kernel's inputs: fp32 activations on the CPU, the output packed."""
    fp32 = hidden.dtype == out.dtype == torch.float32
    return fp32 and hidden.device.type == "cpu" and out.is_contiguous()


def block(b: Tensor) -> Tensor:
    """B (rows, n, R, W) in the kernel's layout (rows, n, W/64, R, 64)."""
    rows, n, rank, width = b.shape
    blocks = width // lowrank.BLOCK
    b = b.view(rows, n, rank, blocks, lowrank.BLOCK).permute(0, 1, 3, 2, 4)
    return b.contiguous()


def unblock(b: Tensor) -> Tensor:
    """The kernel's layout back to B (rows, n, R, W)."""
    rows, n, blocks, rank, size = b.shape
    return b.permute(0, 1, 3, 2, 4).reshape(rows, n, rank, blocks * size)


class LoraLinear(torch.nn.Module):
    """A Linear (of any backend) plus the rows' low-rank updates (see the module)."""

    def __init__(self, base: torch.nn.Module, key: str, state: LoraState) -> None:
        super().__init__()
        self.base, self.key, self.state = base, key, state

    @property
    def weight(self) -> Any:
        # transformers' T5 feed-forward probes `wo.weight` for its dtype.
        return self.base.weight

    def forward(self, hidden: Tensor) -> Tensor:
        out: Tensor = self.base(hidden)
        return _side(self.state, self.key, hidden, out)


class _FusedSide:
    """A FusedRowInt8 group's product plus the rows' updates of all its targets at once."""

    def __init__(self, group: rowint8.FusedRowInt8, key: str, state: LoraState) -> None:
        self.group, self.key, self.state = group, key, state

    def __call__(self, hidden: Tensor) -> tuple[Tensor, ...]:
        out = rowint8._row_int8(hidden, self.group.packed, self.group.bias)
        out = _side(self.state, self.key, hidden, out)
        return tuple(out[..., start:end] for start, end in self.group.bounds)


class Lora:
    """The side path of one wrapped network: its units and the tables' state."""

    def __init__(
        self,
        units: dict[str, Unit],
        state: LoraState,
        dtype: torch.dtype,
        device: torch.device | None = None,
    ) -> None:
        self.units = units
        self.state = state
        self.dtype = dtype
        self.device = device or torch.device("cpu")
        # The tables' dtype: half precision where the kernel reads them.
        self.table_dtype = torch.float16 if state.kernel is not None else dtype
        # Which unit (and which place in it) each target module path belongs to.
        self.target_of = {t: (u.key, i) for u in units.values() for i, t in enumerate(u.targets)}

    @contextlib.contextmanager
    def using(self, tables: Tables | None) -> Iterator[None]:
        """Run the block with these rows' tables (on the calling thread)."""
        previous, self.state.tables = self.state.tables, tables
        try:
            yield
        finally:
            self.state.tables = previous

    def gather(self, adapters: Sequence["Adapter | None"], prefix: str) -> Tables:
        """The rows' tables for the units under `prefix` ("encoder." or "decoder."): each row's
        A (n * rank, in) and B (n, rank, out; blocked for the kernel) stacked, zero-padded to
        the largest rank among the rows: one concatenation per unit."""
        tables: Tables = {}
        for key, unit in self.units.items():
            if not key.startswith(prefix):
                continue
            parts = [None if a is None else a.units.get(key) for a in adapters]
            if all(part is None for part in parts):
                continue
            rank = max(part[2] for part in parts if part is not None)
            zeros = _to_rank(_pad_rank(None, 1, unit, self), rank)
            rows = [zeros if p is None else _to_rank((p[0][None], p[1][None]), rank) for p in parts]
            tables[key] = (torch.cat([a for a, _ in rows]), torch.cat([b for _, b in rows]))
        return tables

    def lay_out(self, b: Tensor) -> Tensor:
        """Rows' B (rows, n, R, W) as the side path reads it (blocked for the kernel)."""
        return block(b) if self.state.kernel is not None else b


def keep_rows(tables: Tables, rows: Tensor) -> Tables:
    """The tables of these rows (indices), for rows leaving a batch."""
    return {key: (a[rows], b[rows]) for key, (a, b) in tables.items()}


def join_tables(old: Tables, old_rows: int, new: Tables, new_rows: int, lora: Lora) -> Tables:
    """The tables of a batch's rows followed by newcomers' (ranks padded to the larger)."""
    joined: Tables = {}
    for key in old.keys() | new.keys():
        unit = lora.units[key]
        pairs = [
            _pad_rank(t.get(key), rows, unit, lora)
            for t, rows in ((old, old_rows), (new, new_rows))
        ]
        rank = max(p[1].shape[-2] for p in pairs)
        pairs = [_to_rank(p, rank) for p in pairs]
        joined[key] = (torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs]))
    return joined


def _pad_rank(
    pair: tuple[Tensor, Tensor] | None, rows: int, unit: Unit, lora: Lora
) -> tuple[Tensor, Tensor]:
    if pair is not None:
        return pair
    n, dtype, device = len(unit.targets), lora.table_dtype, lora.device
    return (
        torch.zeros((rows, n, unit.in_features), dtype=dtype, device=device),
        lora.lay_out(torch.zeros((rows, n, 1, unit.widths[0]), dtype=dtype, device=device)),
    )


def _to_rank(pair: tuple[Tensor, Tensor], rank: int) -> tuple[Tensor, Tensor]:
    a, b = pair
    rows, n, have = b.shape[0], b.shape[1], b.shape[-2]  # R is next to last in either layout
    if have == rank:
        return pair
    width = a.shape[2]
    a = torch.nn.functional.pad(a.view(rows, n, have, width), (0, 0, 0, rank - have))
    b = torch.nn.functional.pad(b, (0, 0, 0, rank - have))
    return a.reshape(rows, n * rank, width), b


def attach(network: torch.nn.Module, compact: bool = False) -> Lora:
    """Wrap every adaptable Linear of a T5 network in place (see the module); its Lora.
    compact: an 8-bit base on the CPU, whose side path may run engine/lowrank.py's kernel."""
    state = LoraState()
    units: dict[str, Unit] = {}
    groups: dict[int, tuple[str, rowint8.FusedRowInt8]] = {}
    for path, parent in list(network.named_modules()):
        for name, child in list(parent.named_children()):
            if name not in TARGETS:
                continue
            target = f"{path}.{name}"
            if isinstance(child, rowint8.RowInt8Slice):
                groups.setdefault(id(child.group), (path, child.group))
                continue
            in_features, out_features = _shape(child)
            units[target] = Unit(target, (target,), in_features, (out_features,))
            setattr(parent, name, LoraLinear(child, target, state))
    for path, group in groups.values():
        slices = [
            (child.index, name)
            for name, child in network.get_submodule(path).named_children()
            if isinstance(child, rowint8.RowInt8Slice) and child.group is group
        ]
        names = [name for _, name in sorted(slices)]
        key = f"{path}.{'+'.join(names)}"
        targets = tuple(f"{path}.{name}" for name in names)
        if len(set(group.widths)) != 1:
            raise ValueError(f"{key}: a fused group's Linears differ in width")
        units[key] = Unit(key, targets, group.in_features, tuple(group.widths))
        group.outputs = rowint8.LastInput(_FusedSide(group, key, state))
    # The activations' dtype (the embedding's: int8 backends keep fp32 activations).
    embedding: Any = network.get_input_embeddings()  # type: ignore[operator]
    dtype = embedding.weight.dtype
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        dtype = torch.float32
    device = embedding.weight.device
    if compact and dtype == torch.float32 and device.type == "cpu":
        widths = {w for unit in units.values() for w in unit.widths}
        if all(w % lowrank.BLOCK == 0 for w in widths):
            state.kernel = lowrank.load()
    return Lora(units, state, dtype, device)


def _shape(module: torch.nn.Module) -> tuple[int, int]:
    return int(getattr(module, "in_features")), int(getattr(module, "out_features"))  # noqa: B009


# --- adapters: loading a peft folder -------------------------------------------------------------


@dataclass
class Adapter:
    """A loaded adapter: per unit (A (n*r, in): the n targets' A's stacked, B (n, r, out):
    each target's, zeros for a target it leaves alone, blocked for the kernel; r), peft's scale
    folded into B, in the tables' dtype and on the model's device."""

    name: str
    folder: str
    rank: int
    units: dict[str, tuple[Tensor, Tensor, int]]
    nbytes: int = 0
    load_seconds: float = 0.0


def load_adapter(name: str, folder: str, lora: Lora, max_rank: int) -> Adapter:
    """Read a peft LoRA folder and lay it out for `lora`'s units; AdapterLoadError with a
    message that names neither the path nor its files' contents otherwise."""
    started = time.perf_counter()
    try:
        config = json.loads((Path(folder) / "adapter_config.json").read_text())
        weights = _read_weights(Path(folder))
    except (OSError, ValueError, RuntimeError) as exc:
        raise AdapterLoadError(
            f"Adapter {name!r} could not be read ({type(exc).__name__})."
        ) from None
    if config.get("peft_type") != "LORA" or config.get("use_dora"):
        raise AdapterLoadError(f"Adapter {name!r} is not a plain LoRA adapter.")
    if config.get("modules_to_save") or config.get("bias", "none") != "none":
        raise AdapterLoadError(f"Adapter {name!r} trains more than LoRA matrices.")
    rank = int(config.get("r", 0))
    if not 0 < rank <= max_rank:
        raise AdapterLoadError(f"Adapter {name!r} has rank {rank}; at most {max_rank}.")
    alpha = float(config.get("lora_alpha", rank))
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    if rank_pattern or alpha_pattern:
        raise AdapterLoadError(f"Adapter {name!r} has per-module ranks; not supported.")
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    pairs: dict[str, dict[str, Tensor]] = {}
    for key, tensor in weights.items():
        module, _, part = key.removeprefix(PEFT_PREFIX).rpartition(".lora_")
        if part not in ("A.weight", "B.weight"):
            raise AdapterLoadError(f"Adapter {name!r} holds weights that are not LoRA's.")
        pairs.setdefault(module, {})[part[0]] = tensor
    found: dict[str, dict[int, tuple[Tensor, Tensor]]] = {}
    for module, pair in pairs.items():
        if module not in lora.target_of or set(pair) != {"A", "B"}:
            raise AdapterLoadError(f"Adapter {name!r} does not fit the served model.")
        unit_key, index = lora.target_of[module]
        unit = lora.units[unit_key]
        a, b = pair["A"], pair["B"]
        if a.shape != (rank, unit.in_features) or b.shape != (unit.widths[index], rank):
            raise AdapterLoadError(f"Adapter {name!r} does not fit the served model's shapes.")
        found.setdefault(unit_key, {})[index] = (a.float(), b.float() * scale)
    units: dict[str, tuple[Tensor, Tensor, int]] = {}
    nbytes = 0
    for unit_key, parts in found.items():
        unit = lora.units[unit_key]
        n = len(unit.targets)
        a_cat = torch.zeros((n * rank, unit.in_features))
        b_all = torch.zeros((n, rank, unit.widths[0]))
        for i, (a, b) in parts.items():
            a_cat[i * rank : (i + 1) * rank] = a
            b_all[i] = b.t()
        if lora.table_dtype == torch.float16 and max(a_cat.abs().max(), b_all.abs().max()) > HALF:
            raise AdapterLoadError(f"Adapter {name!r} has weights beyond half precision's range.")
        a_cat = a_cat.to(dtype=lora.table_dtype, device=lora.device)
        b_all = lora.lay_out(b_all[None].to(dtype=lora.table_dtype, device=lora.device))[0]
        nbytes += a_cat.nbytes + b_all.nbytes
        units[unit_key] = (a_cat, b_all, rank)
    if not units:
        raise AdapterLoadError(f"Adapter {name!r} holds no LoRA weights.")
    seconds = time.perf_counter() - started
    return Adapter(name, folder, rank, units, nbytes, seconds)


# adapter_config.json keys that change what peft's merge computes beyond W + (B @ A) * scale.
_NOT_PLAIN = (
    "use_dora",
    "modules_to_save",
    "rank_pattern",
    "alpha_pattern",
    "fan_in_fan_out",
    "layer_replication",
    "alora_invocation_tokens",
    "trainable_token_indices",
    "target_parameters",
    "use_qalora",
    "arrow_config",
)


def merge_plain(network: torch.nn.Module, folder: Path) -> bool:
    """Merge a plain LoRA adapter (peft's folder: LORA on Linears, one rank, no DoRA, no trained
    bias or other weights) into the fp32 network as peft's merge_and_unload does, W + (B @ A)
    * scale, bitwise the same weights, without importing peft (about 900 modules and 38 MiB
    in a model process, docs/engine.md). Each merged weight is a new tensor: the checkpoint's
    file mapping is never written. False, with the network untouched, for anything else (the
    caller merges through peft, which reads every kind it saves, or says why it cannot)."""
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
        weights = _read_weights(folder)
    except (OSError, ValueError, RuntimeError):
        return False
    plain = config.get("peft_type") == "LORA" and config.get("bias", "none") == "none"
    if not plain or any(config.get(key) for key in _NOT_PLAIN):
        return False
    rank = int(config.get("r", 0))
    alpha = float(config.get("lora_alpha", rank))
    if rank <= 0:
        return False
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    pairs: dict[str, dict[str, Tensor]] = {}
    for key, tensor in weights.items():
        module, _, part = key.removeprefix(PEFT_PREFIX).rpartition(".lora_")
        if part not in ("A.weight", "B.weight"):
            return False
        pairs.setdefault(module, {})[part[0]] = tensor
    merges = []
    embedding = network.get_input_embeddings().weight  # type: ignore[operator]
    for module, pair in pairs.items():
        try:
            linear = network.get_submodule(module)
        except AttributeError:
            return False
        if not isinstance(linear, torch.nn.Linear) or set(pair) != {"A", "B"}:
            return False
        out_features, in_features = linear.weight.shape
        a, b = pair["A"], pair["B"]
        if a.shape != (rank, in_features) or b.shape != (out_features, rank):
            return False
        if linear.weight.dtype != torch.float32 or linear.weight is embedding:
            return False  # a tied output layer: peft unties it before it merges
        merges.append((linear, a.float(), b.float()))
    if not merges:
        return False
    for linear, a, b in merges:
        linear.weight.data = linear.weight.data + (b @ a) * scale
    return True


def _read_weights(folder: Path) -> dict[str, Tensor]:
    safe = folder / "adapter_model.safetensors"
    if safe.is_file():
        from safetensors.torch import load_file

        return load_file(str(safe))
    weights: dict[str, Tensor] = torch.load(
        folder / "adapter_model.bin", map_location="cpu", weights_only=True
    )
    return weights


# --- the host: registry, bank, loader, base swap ------------------------------------------------

Key = tuple[str, str]  # (name, folder); the default adapter is (DEFAULT, INFERENCE_ADAPTER)


@dataclass
class _Slot:
    adapter: Adapter
    users: int = 0  # rows holding it (in a batch or an encoder pass)


@dataclass
class _Parked:
    job: "Job"
    key: Key | None


class AdapterHost:
    """The model thread's view of adapters (see the module). `set_registry` may be called from
    any thread; everything else runs on the model thread, between two decoder steps."""

    def __init__(
        self,
        config: "EngineConfig",
        model: "LoadedModel",
        loader: Callable[[bool], "LoadedModel"],
        registry: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self.loader = loader  # per_row -> a loaded (and warmed) model, off the model thread
        self.registry: dict[str, str] = dict(registry or {})
        self._lock = threading.Lock()
        self._slots: OrderedDict[Key, _Slot] = OrderedDict()
        self._loading: set[Key] = set()
        self._loaded: list[tuple[Key, Adapter | AdapterLoadError]] = []  # from loader threads
        self._parked: list[_Parked] = []
        self._failed: list[tuple[Job, Exception]] = []
        self._next: tuple[LoadedModel, Adapter | None] | None = None  # the other base
        self._switching = False
        self._switch_failed = False  # the other base failed to load: rows parked for it fail
        self._wake = threading.Event()
        if model.lora is not None and config.adapter:
            self._slots[(DEFAULT, config.adapter)] = _Slot(
                load_adapter("default", config.adapter, model.lora, 1 << 20)
            )

    @property
    def per_row(self) -> bool:
        return self.model.lora is not None

    @property
    def max_adapters(self) -> int:
        return max(1, self.config.max_adapters)

    # --- the registry (any thread) -----------------------------------------------------------
    def set_registry(self, registry: Mapping[str, str]) -> None:
        """The whole registry; the base switch starts when it turns empty or non-empty."""
        with self._lock:
            self.registry = dict(registry)
            want = bool(self.registry)
            if want != self.per_row and not self._switching and self._next is None:
                self._switching = True
                threading.Thread(
                    target=self._load_base,
                    args=(want,),
                    name="inference-base-loader",
                    daemon=True,
                ).start()
        self._wake.set()

    def _load_base(self, per_row: bool) -> None:
        try:
            model = self.loader(per_row)
            default = None
            if model.lora is not None and self.config.adapter:
                default = load_adapter("default", self.config.adapter, model.lora, 1 << 20)
        except Exception as exc:
            logger.error("inference: loading the other base failed (%s)", type(exc).__name__)
            with self._lock:
                self._switching = False
                self._switch_failed = True
            self._wake.set()
            return
        with self._lock:
            self._next = (model, default)
        self._wake.set()

    @property
    def swap_ready(self) -> bool:
        """The other base is loaded: the batch takes no newcomers, so that it ends."""
        return self._next is not None

    def swap(self) -> "LoadedModel":
        """Between batches: the model for the next one (the other base, once loaded)."""
        with self._lock:
            if self._next is not None:
                (self.model, default), self._next = self._next, None
                self._switching = False
                self._slots.clear()
                self._loading.clear()
                if default is not None:
                    self._slots[(DEFAULT, default.folder)] = _Slot(default)
                mode = "per-row adapters" if self.per_row else "the merged model"
                logger.info("inference: now serving %s", mode)
        self.set_registry(self.registry)  # switch back if the registry changed meanwhile
        return self.model

    # --- rows (the model thread) ---------------------------------------------------------------
    def _key(self, job: "Job") -> Key | None:
        name = job.request.adapter
        if name == DEFAULT:
            return (DEFAULT, self.config.adapter) if self.config.adapter else None
        folder = self.registry.get(name)
        if folder is None:
            raise UnknownAdapter(name)
        return (name, folder)

    def admit(self, jobs: Sequence["Job"]) -> list["Job"]:
        """The jobs that can decode now (their adapter held: `job.adapter` set); the others
        are parked (their load started) or failed (UnknownAdapter: removed meanwhile, told
        by the next tick)."""
        ready = []
        for job in jobs:
            try:
                key = self._key(job)
            except UnknownAdapter as exc:
                self._failed.append((job, exc))
                continue
            if not self.per_row:
                if job.request.adapter == DEFAULT:
                    job.adapter = None  # merged into the base
                    ready.append(job)
                else:  # the per-row base is on its way
                    self._parked.append(_Parked(job, key))
            elif self._hold(job, key):
                ready.append(job)
            else:
                self._parked.append(_Parked(job, key))
        self._start_loads()
        return ready

    def _hold(self, job: "Job", key: Key | None) -> bool:
        if key is None:
            job.adapter, job.adapter_key = None, None
            return True
        slot = self._slots.get(key)
        if slot is None:
            return False
        slot.users += 1
        self._slots.move_to_end(key)
        job.adapter, job.adapter_key = slot.adapter, key
        return True

    def release(self, job: "Job") -> None:
        """A row ended: its adapter may be evicted (or unloaded at once, if removed)."""
        key, job.adapter_key, job.adapter = job.adapter_key, None, None
        slot = None if key is None else self._slots.get(key)
        if key is not None and slot is not None:
            slot.users = max(0, slot.users - 1)
            if slot.users == 0 and not self._wanted(key):
                del self._slots[key]  # removed from the registry: unloaded

    def _wanted(self, key: Key) -> bool:
        name, folder = key
        if name == DEFAULT:
            return folder == self.config.adapter
        return self.registry.get(name) == folder

    @property
    def parked(self) -> list["Job"]:
        return [p.job for p in self._parked]

    def take_parked(self) -> list["Job"]:
        """Every parked job (for the next batch, on the new base)."""
        jobs = self.parked
        self._parked.clear()
        return jobs

    def tick(self) -> tuple[list["Job"], list[tuple["Job", Exception]]]:
        """Between two steps: (parked jobs that can run now, jobs that failed: their adapter
        failed to load or was removed)."""
        if not (self._loaded or self._parked or self._failed or self._switch_failed):
            return [], []  # the common case, every step: nothing to do
        self._wake.clear()
        with self._lock:
            loaded, self._loaded = self._loaded, []
        failed, self._failed = self._failed, []
        if self._switch_failed and not self.per_row:
            self._switch_failed = False
            error = AdapterLoadError("The model could not be loaded for adapters.")
            failed += [(job, error) for job in self.take_parked()]
        for key, result in loaded:
            self._loading.discard(key)
            if isinstance(result, AdapterLoadError):
                for parked in [p for p in self._parked if p.key == key]:
                    self._parked.remove(parked)
                    failed.append((parked.job, result))
            elif self.per_row and self._wanted(key):
                self._slots[key] = _Slot(result)
                self._evict()
        ready: list[Job] = []
        for parked in list(self._parked):
            name = parked.job.request.adapter
            if name != DEFAULT and name not in self.registry:
                self._parked.remove(parked)
                failed.append((parked.job, UnknownAdapter(name)))
            elif parked.job.cancelled:
                self._parked.remove(parked)
                parked.job.adapter, parked.job.adapter_key = None, None
                ready.append(parked.job)  # ends cancelled at once
            elif self.per_row and self._hold(parked.job, parked.key):
                self._parked.remove(parked)
                ready.append(parked.job)
        self._start_loads()
        return ready, failed

    def wait(self, seconds: float) -> None:
        """Sleep until a load ends or the registry changes (at most `seconds`)."""
        self._wake.wait(seconds)

    def _named(self) -> list[Key]:
        return [key for key in self._slots if key[0] != DEFAULT]

    def _evict(self) -> None:
        """Beyond max_adapters: least recently used first, never one with rows."""
        for key in self._named():
            if len(self._named()) <= self.max_adapters:
                return
            if self._slots[key].users == 0:
                del self._slots[key]

    def _room(self) -> bool:
        """Whether one more adapter can load (evicting an idle one if need be)."""
        loading = sum(1 for key in self._loading if key[0] != DEFAULT)
        if len(self._named()) + loading < self.max_adapters:
            return True
        for key in self._named():  # least recently used first
            if self._slots[key].users == 0:
                del self._slots[key]
                return True
        return False

    def _start_loads(self) -> None:
        lora = self.model.lora
        if lora is None:
            return
        for parked in self._parked:
            key = parked.key
            if key is None or key in self._slots or key in self._loading:
                continue
            if key[0] != DEFAULT and not self._room():
                return  # every held adapter has rows: wait for one to end
            self._loading.add(key)
            threading.Thread(
                target=self._load,
                args=(key, lora),
                name="inference-adapter-loader",
                daemon=True,
            ).start()

    def _load(self, key: Key, lora: Lora) -> None:
        name, folder = key
        try:
            if load_hook is not None:
                load_hook(folder)
            result: Adapter | AdapterLoadError = load_adapter(
                name or "default", folder, lora, self.config.max_adapter_rank
            )
        except AdapterLoadError as exc:
            logger.warning("inference: %s", exc)
            result = exc
        except Exception as exc:
            logger.warning("inference: adapter %r failed to load (%s)", name, type(exc).__name__)
            result = AdapterLoadError(f"Adapter {name!r} could not be loaded.")
        with self._lock:
            self._loaded.append((key, result))
        self._wake.set()

    def held(self) -> list[str]:
        """Names of the adapters held now (tests and status)."""
        return [name for name, _ in self._slots]
