"""Building the C kernels of the fused CPU backend: the system C compiler, on first use, cached.

Each `<kernel>.c` here is compiled once per storage dtype into its own shared library, under
``$WORKBENCH_CACHE_DIR`` (default ``~/.cache/optim-workbench/cpu-kernels``), named by a hash of the
sources, the flags, the compiler and the CPU (the code is built for this CPU: -march=native).
A build takes a fraction of a second; later processes load the cached library.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

SOURCE_DIR = Path(__file__).parent

DTYPE_DEFINES = {"f32": "WB_DTYPE_F32", "f64": "WB_DTYPE_F64", "bf16": "WB_DTYPE_BF16",
                 "f16": "WB_DTYPE_F16"}  # fmt: skip

# -ffp-contract=off: each operation of the source rounds on its own, in the forloop backend's order
# (ATen's kernels fuse a few multiply-adds of their own: results stay within an ulp or two of
# forloop's, not bit-equal). -fno-math-errno lets sqrt vectorize. OpenMP is the runtime torch
# already loaded (the same soname, libgomp.so.1), so no second thread pool.
FLAGS = ("-O3", "-march=native", "-std=gnu11", "-fPIC", "-shared", "-fopenmp",
         "-fno-math-errno", "-ffp-contract=off", "-fvisibility=hidden")  # fmt: skip


class CpuKernelBuildError(RuntimeError):
    """The C compiler refused a kernel source (its message is included)."""


@cache
def compiler() -> str | None:
    """The C compiler to build with: $CC, else cc, gcc or clang on the PATH; None if none is."""
    named = os.environ.get("CC")
    if named:
        return shutil.which(named)
    for candidate in ("cc", "gcc", "clang"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


def cache_dir() -> Path:
    root = os.environ.get("WORKBENCH_CACHE_DIR")
    if root:
        return Path(root) / "cpu-kernels"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "optim-workbench" / "cpu-kernels"


@cache
def _cpu_identity() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine() + platform.processor()
    lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
    return platform.machine() + "\n".join(sorted(set(lines)))


@cache
def _compiler_identity(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return cc


def library_path(kernel: str, suffix: str, defines: tuple[str, ...] = ()) -> Path:
    """Where the build of `kernel` for dtype `suffix` lives in the cache (built or not)."""
    cc = compiler() or "cc"
    digest = hashlib.sha256()
    for source in (SOURCE_DIR / f"{kernel}.c", *sorted(SOURCE_DIR.glob("*.h"))):
        digest.update(source.read_bytes())
    for part in (*FLAGS, *defines, suffix, _compiler_identity(cc), _cpu_identity()):
        digest.update(part.encode())
    return cache_dir() / f"{kernel}_{suffix}-{digest.hexdigest()[:16]}.so"


@cache
def load(kernel: str, suffix: str, defines: tuple[str, ...] = ()) -> ctypes.CDLL:
    """The shared library of `kernel` for one dtype, compiled first if the cache lacks it.

    defines: ``NAME=value`` macros the source is compiled with (an UpdateSpec's ABI indices)."""
    source = SOURCE_DIR / f"{kernel}.c"
    if not source.is_file():
        raise FileNotFoundError(f"no CPU kernel source {source}")
    cc = compiler()
    if cc is None:
        raise CpuKernelBuildError(
            "the fused CPU kernels need a C compiler (cc, gcc or clang, or $CC); none was found"
        )
    target = library_path(kernel, suffix, defines)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # build beside the target and rename: concurrent processes (pytest -n) never load a
        # half-written library
        fd, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        macros = [f"-D{DTYPE_DEFINES[suffix]}", *(f"-D{define}" for define in defines)]
        command = [cc, *FLAGS, *macros, f"-I{SOURCE_DIR}", str(source), "-o", partial, "-lm"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            os.unlink(partial)
            raise CpuKernelBuildError(
                f"{source}: {Path(cc).name} failed for dtype {suffix} (exit {result.returncode}):\n"
                f"{result.stderr.strip()}"
            )
        os.replace(partial, target)
    return ctypes.CDLL(str(target))
