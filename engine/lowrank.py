"""The per-row LoRA side path's kernel (engine/csrc/lowrank.c), built for this CPU.

With per-row adapters on an 8-bit CPU base, a decoder step reads every row's own low-rank
matrices: 217 MB a step at rank 16 for 16 rows of flan-t5-base in fp32, at the memory's speed.
The kernel halves that (the matrices in half precision, converted in registers, summed in
fp32) and reads B in blocks laid out for one sequential run each, where torch's batched GEMV
read it at about half the memory's speed; in an encoder pass it takes four positions per
weight loaded, where torch's small batched GEMMs ran at a fifth of the CPU's peak
(docs/adapters.md, "What adapters cost").

The library is compiled with the host's C compiler (`CC`, else `cc`) the first time a model
process needs it, for AVX-512 or for AVX2 with FMA and F16C (whichever the CPU runs), and kept
under a cache folder by a digest of its source and flags; an image may ship it prebuilt
(`python engine/lowrank.py --build DIR`, deploy/Dockerfile). Without a compiler or such a CPU,
or with INFERENCE_ADAPTER_KERNEL=off, `load()` returns None and the side path stays in torch
(fp32 tables; correct, slower).

Only the standard library at import: the image's build stage runs this file as a script.
"""

import argparse
import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "lowrank.c"
BLOCK = 64  # B's output columns per block (the C file's BLOCK)
COMMON_FLAGS = ("-O3", "-std=c11", "-shared", "-fPIC", "-fopenmp")
TARGETS = {
    "avx512": ("-mavx512f", "-mfma", "-mf16c"),
    "avx2": ("-mavx2", "-mfma", "-mf16c"),
}
# Where an image ships the libraries prebuilt (read only), before the per-user cache.
PREBUILT = Path(sys.prefix) / "lib" / "inference-node"


def cpu_target(flags: set[str] | None = None) -> str | None:
    """The best target this CPU runs (None: neither)."""
    if flags is None:
        flags = _cpu_flags()
    if "avx512f" in flags and {"fma", "f16c"} <= flags:
        return "avx512"
    if {"avx2", "fma", "f16c"} <= flags:
        return "avx2"
    return None


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def library_name(target: str) -> str:
    """The file name of the target's library: its source and flags' digest in it."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(" ".join(COMMON_FLAGS + TARGETS[target]).encode())
    return f"lowrank-{target}-{digest.hexdigest()[:16]}.so"


def build(target: str, folder: Path) -> Path:
    """Compile the target's library into `folder` (atomically: a concurrent build of the same
    library by another process is harmless); RuntimeError with the compiler's reason."""
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler ({compiler!r} is not on PATH)")
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / library_name(target)
    handle, partial = tempfile.mkstemp(dir=folder, prefix=".lowrank-", suffix=".so")
    os.close(handle)
    command = [compiler, *COMMON_FLAGS, *TARGETS[target], str(SOURCE), "-o", partial]
    try:
        # The command is ours: the compiler named by CC, fixed flags, our own source file.
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["failed"])[-1]
            raise RuntimeError(f"{compiler} failed: {reason}")
        os.replace(partial, final)
    finally:
        Path(partial).unlink(missing_ok=True)
    return final


def _cache_folders() -> list[Path]:
    configured = os.environ.get("INFERENCE_KERNEL_DIR")
    if configured:
        return [Path(configured)]
    temporary = Path(tempfile.gettempdir()) / f"inference-node-{os.getuid()}"
    try:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    except RuntimeError:  # no home directory (a service user without one)
        return [temporary]
    return [cache / "inference-node", temporary]


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


@functools.cache
def load() -> Kernel | None:
    """This CPU's kernel, built if need be (once per process); None where it cannot run."""
    if os.environ.get("INFERENCE_ADAPTER_KERNEL", "auto").strip().lower() == "off":
        return None
    target = cpu_target()
    if target is None:
        logger.info("adapters: the CPU lacks AVX2/F16C; the side path stays in torch")
        return None
    name = library_name(target)
    reasons = []
    for folder in [PREBUILT, *_cache_folders()]:
        path = folder / name
        try:
            if not path.is_file():
                if folder == PREBUILT:
                    continue
                build(target, folder)
            return Kernel(path, target)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            reasons.append(str(exc))
    logger.warning(
        "adapters: the side path's kernel could not be built (%s); using torch, slower",
        "; ".join(reasons)[:300],
    )
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the side path's kernel libraries.")
    parser.add_argument("--build", type=Path, required=True, metavar="DIR")
    parser.add_argument("--targets", default=",".join(TARGETS))
    args = parser.parse_args(argv)
    for target in args.targets.split(","):
        print(build(target, args.build))
    return 0


if __name__ == "__main__":
    sys.exit(main())
