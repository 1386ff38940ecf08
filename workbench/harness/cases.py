"""One case of a sweep: the contract between the suite (which makes cases) and the runner and run
store (which measure them and write one row each).

A case is plain data: names, not objects. The runner turns ``optimizer`` + ``implementation`` +
``backend`` into an optimizer, ``shapes`` + ``dtype`` + ``device`` into parameters, and passes
``flags`` as keyword arguments.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

# Implementations that are not the workbench or torch have a single way of running ("default"):
# the backend axis does not apply to them.
PEER_BACKEND = "default"


@dataclass(frozen=True)
class Case:
    optimizer: str  # torch.optim class name, e.g. "Adamax"
    implementation: str  # "workbench" | "torch" | "heavyball" | "pytorch_optimizer" | "mod:factory"
    backend: str  # workbench/torch: a name from workbench.optim.BACKENDS; peers: "default"
    size: str  # size profile as written in the suite, e.g. "100x100k"; convergence: the problem
    shapes: tuple[tuple[int, ...], ...]  # the parameter shapes of that profile
    dtype: str  # "float32" | "bfloat16" | "float16" | "float64"
    device: str  # "cpu" | "cuda"
    flags: tuple[tuple[str, Any], ...]  # optimizer kwargs, sorted by key; lists made tuples
    repeat: int  # 0 .. repeats - 1
    problem: str | None = None  # convergence cases: a name in workbench.problems.PROBLEMS
    world_size: int = 1  # ranks the params are sharded over (> 1: one process per rank)

    @property
    def case_id(self) -> str:
        """A hash of every axis, the same in every process and on every machine.

        ``--resume`` matches finished rows by it, so it must not depend on anything but the axes:
        no ``hash()`` (salted per process), no object ids. The shapes are part of it, so a
        resumed run whose size profile changed in between measures the case again.
        """
        axes: dict[str, Any] = {
            "optimizer": self.optimizer,
            "implementation": self.implementation,
            "backend": self.backend,
            "size": self.size,
            "shapes": self.shapes,
            "dtype": self.dtype,
            "device": self.device,
            "flags": self.flags,
            "repeat": self.repeat,
        }
        if self.problem is not None:  # only when set: latency cases keep the ids they had
            axes["problem"] = self.problem
        if self.world_size != 1:  # likewise: single-process cases keep their ids
            axes["world_size"] = self.world_size
        canonical = json.dumps(axes, sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(canonical.encode()).hexdigest()[:16]

    @property
    def numel(self) -> int:
        return sum(math.prod(shape) for shape in self.shapes)

    @property
    def n_tensors(self) -> int:
        return len(self.shapes)

    def kwargs(self) -> dict[str, Any]:
        """The flags as constructor keyword arguments."""
        return dict(self.flags)

    def axes(self) -> dict[str, Any]:
        """A flat dict of the axes, the identifying columns of this case's row in the run store.

        Every value is a scalar so that the column has one parquet type: tuple-valued flags
        (betas) become their string, e.g. "(0.9, 0.999)".
        """
        row: dict[str, Any] = {
            "optimizer": self.optimizer,
            "implementation": self.implementation,
            "backend": self.backend,
            "size": self.size,
            "dtype": self.dtype,
            "device": self.device,
            "repeat": self.repeat,
            "n_tensors": self.n_tensors,
            "numel": self.numel,
            "world_size": self.world_size,
        }
        if self.problem is not None:
            row["problem"] = self.problem
        for key, value in self.flags:
            row[f"flag_{key}"] = str(value) if isinstance(value, tuple) else value
        return row

    def label(self) -> str:
        """A short human-readable name for progress lines and logs."""
        flags = ",".join(f"{k}={v}" for k, v in self.flags)
        parts = [self.optimizer, self.implementation, self.backend, self.size, self.dtype]
        parts.append(self.device)
        if flags:
            parts.append(flags)
        if self.world_size != 1:
            parts.append(f"world_size={self.world_size}")
        return "/".join(parts) + f"#{self.repeat}"
