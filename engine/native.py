"""The engine's C kernels (engine/csrc/*.c), built for this CPU and loaded with ctypes.

- simd.h: the vector vocabulary they share;
- lowrank.c: the per-row LoRA side path on an 8-bit CPU base (engine/lowrank.py);
- attend.c: a decoder step's attention over half-precision caches (engine/attention.py);
- rows.c: an 8-bit model's layer norms and int8 row scaling (engine/rowops.py);
- qgemm.c: a decoder step's int8 products (engine/qgemm.py).

Each library is compiled with the host's C compiler (`CC`, else `cc`) the first time a model
process needs it, for AVX-512 or for AVX2 with FMA and F16C (whichever the CPU runs), and kept
under a cache folder by a digest of its source and flags; an image may ship them prebuilt
(`python engine/native.py --build DIR`, deploy/Dockerfile). Without a compiler or such a CPU,
`find()` returns None and the caller stays in torch (correct, slower).

Only the standard library at import: the image's build stage runs this file as a script.
"""

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

logger = logging.getLogger(__name__)

CSRC = Path(__file__).resolve().parent / "csrc"
STEMS = ("lowrank", "attend", "rows", "qgemm")
COMMON_FLAGS = ("-O3", "-std=c11", "-shared", "-fPIC", "-fopenmp")
TARGETS = {
    "avx512": ("-mavx512f", "-mfma", "-mf16c"),
    "avx2": ("-mavx2", "-mfma", "-mf16c"),
}
Wrapper = TypeVar("Wrapper")
# Where an image ships the libraries prebuilt (read only), before the per-user cache.
PREBUILT = Path(sys.prefix) / "lib" / "inference-node"


def cpu_target(flags: set[str] | None = None) -> str | None:
    """The best target this CPU runs (None: neither)."""
    if flags is None:
        flags = cpu_flags()
    if "avx512f" in flags and {"fma", "f16c"} <= flags:
        return "avx512"
    if {"avx2", "fma", "f16c"} <= flags:
        return "avx2"
    return None


def runnable_targets() -> list[str]:
    """Every target this CPU runs (an AVX-512 machine runs the AVX2 build too)."""
    best = cpu_target()
    return [target for target in TARGETS if best in (target, "avx512")]


def cpu_flags() -> set[str]:
    """This CPU's feature flags (/proc/cpuinfo; empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def source(stem: str) -> Path:
    return CSRC / f"{stem}.c"


def library_name(stem: str, target: str) -> str:
    """The file name of a library for a target: its source's, the shared headers' and the
    flags' digest in it (a changed header builds every kernel again)."""
    digest = hashlib.sha256(source(stem).read_bytes())
    for header in sorted(CSRC.glob("*.h")):
        digest.update(header.read_bytes())
    digest.update(" ".join(COMMON_FLAGS + TARGETS[target]).encode())
    return f"{stem}-{target}-{digest.hexdigest()[:16]}.so"


def build(stem: str, target: str, folder: Path) -> Path:
    """Compile a library for a target into `folder` (atomically: a concurrent build of the
    same library by another process is harmless); RuntimeError with the compiler's reason."""
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler ({compiler!r} is not on PATH)")
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / library_name(stem, target)
    handle, partial = tempfile.mkstemp(dir=folder, prefix=f".{stem}-", suffix=".so")
    os.close(handle)
    command = [compiler, *COMMON_FLAGS, *TARGETS[target], str(source(stem)), "-o", partial]
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


def find(stem: str, what: str, opener: Callable[[Path, str], Wrapper]) -> Wrapper | None:
    """The stem's library for this CPU opened by `opener(path, target)`: prebuilt, cached, or
    built now; None with a warning naming `what` where it cannot be had."""
    target = cpu_target()
    if target is None:
        logger.info("%s: the CPU lacks AVX2/F16C; staying in torch", what)
        return None
    name = library_name(stem, target)
    reasons = []
    for folder in [PREBUILT, *_cache_folders()]:
        path = folder / name
        try:
            if not path.is_file():
                if folder == PREBUILT:
                    continue
                build(stem, target, folder)
            return opener(path, target)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            reasons.append(str(exc))
    logger.warning(
        "%s: the kernel could not be built (%s); using torch, slower",
        what,
        "; ".join(reasons)[:300],
    )
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the engine's kernel libraries.")
    parser.add_argument("--build", type=Path, required=True, metavar="DIR")
    parser.add_argument("--targets", default=",".join(TARGETS))
    args = parser.parse_args(argv)
    for stem in STEMS:
        for target in args.targets.split(","):
            print(build(stem, target, args.build))
    return 0


if __name__ == "__main__":
    sys.exit(main())
