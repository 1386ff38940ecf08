"""Suites: sweeps declared as TOML data, validated before any work, expanded into cases.

Schema (every table but ``[axes]`` is optional; defaults in brackets)::

    [suite]
    name = "quick"                      # [the file's stem]
    description = "what it is for"      # [""]
    kind = "latency"                    # ["latency"]; or "convergence": steps on test problems

    [axes]                              # every axis is a list of distinct values
    optimizers = ["Adamax"]             # required; names in workbench.optim.OPTIMIZERS
    implementations = ["workbench", "torch"]   # [these two]; also "heavyball",
                                        #   "pytorch_optimizer", or "package.module:factory"
    backends = ["forloop", "foreach", "fused", "compiled"]  # [all of workbench.optim.BACKENDS]
    sizes = ["100x100k", "gpt2-small"]  # required (latency only); see workbench.harness.shapes
    problems = ["quadratic"]            # required (convergence only); workbench.problems.PROBLEMS
    dtypes = ["float32"]                # [float32]; float32 | bfloat16 | float16 | float64
    devices = ["cpu"]                   # [cpu]; cpu | cuda (cuda without a GPU: error rows later)
    repeats = 1                         # [1]; each case is measured this many times
    world_size = [1, 2]                 # [[1]]; > 1: params sharded over that many ranks, one
                                        #   process each (workbench.harness.distributed_worker)

    [flags]                             # the flag matrix: each key is one axis, its list the
    weight_decay = [0.0, 0.01]          #   values; keys are keyword arguments of the torch.optim
    betas = [[0.9, 0.999]]              #   constructor (arrays become tuples). [no flags]
    [flags.Adam]                        # a table named after an optimizer: flags for that
    amsgrad = [false, true]             #   optimizer only (added to / overriding [flags])

    [[exclude]]                         # drop every case matching all keys of one rule; keys are
    device = "cpu"                      #   axis names in the singular (optimizer, implementation,
    backend = ["fused", "compiled"]     #   backend, size, dtype, device, repeat) or flag names;
                                        #   a list means "any of these"

    [timing]                            # passed to workbench.harness.timing.time_steps
    warmup_s = 0.5                      # [0.5] time-based warm-up after the first call
    min_steps = 20                      # [20]  timed steps at least ...
    max_steps = 1000                    # [1000] ... at most ...
    budget_s = 2.0                      # [2.0] ... and until this much time is spent
    interleave = false                  # [false] time the implementations and backends of one
                                        #   optimizer/size/dtype/flags in alternating rounds, so
                                        #   interference on a shared machine hits them alike
    target_noise = 0.05                 # [0.05] past budget_s, time on until every median's 95%
                                        #   CI is within +-this (relative; 0: never extend) ...
    max_extension = 4.0                 # [4.0] ... or this many times budget_s: then `noisy`
    max_interference = 0.1              # [0.1] other processes' share of our CPUs above which a
                                        #   group is re-measured once, then flagged `interference`
    noop_check = true                   # [true] after timing, a step must change the params
    visits = 1                          # [1] time each group in this many visits, one per pass
                                        #   over the suite, and pool their samples (budget_s and
                                        #   min_steps are shared out): see runner.py
    extra_visits = 0                    # [0] groups whose medians still miss target_noise
                                        #   after those visits get up to this many more, each
                                        #   in a pass of its own over those groups

    [measure]                           # what to measure besides latency
    memory = true                       # [true] peak memory of a step, exact state bytes
    launches = true                     # [true] kernel launches per step (torch.profiler)
    bandwidth_probe = true              # [true] streaming-bandwidth probe to compare against

    [sparse]                            # latency suites: optimizers that take sparse grads
    density = 0.01                      # [0.01] row indices per step, as a fraction of each
                                        #   param's rows (0 < density <= 1; see step_protocols)

    [distributed]                       # cases with world_size > 1
    backend = "gloo"                    # ["gloo"]; or "nccl" (one GPU per rank; fewer: skipped)
    timeout_s = 300                     # [300] ranks still running then are killed: an error row

    [convergence]                       # convergence suites only ([timing] and [measure] are
    steps = 200                         #   latency's); [200] optimizer steps per case
    seed = 0                            # [0] seed of the problems' starting params

Optimizers whose step needs a closure (LBFGS) or sparse grads (SparseAdam) run their step protocol
(workbench.harness.step_protocols) in both kinds of suite. Neither can be sharded
(``world_size`` > 1), and a sparse-grad optimizer runs only on problems that give every param a
sparse grad (``matrix-factorization``): the suite refuses those combinations.

A convergence suite has ``problems`` in place of ``sizes`` (each problem makes its own params;
its name is the case's ``size`` too); learning rates and other hyperparameters are flags as in any
suite, and ``[[exclude]]`` rules may name a ``problem``.

Backends per implementation: the workbench gets the listed backends its optimizer class
implements; torch gets forloop and foreach, plus fused where torch.optim.<name> has a ``fused``
argument (it has no compiled backend of its own); peers have one way of running, "default".

``suite_loader.load_suite(path, overrides)`` takes ``--set key=value`` strings: a dotted key
(``timing.budget_s=1``, ``axes.dtypes=["bfloat16"]``, ``flags.Adam.amsgrad=[true]``) and a TOML
value; a bare word (``suite.name=smoke``) is taken as a string. Everything is checked before any
case runs: a mistake raises :class:`SuiteError` naming the file, the key and the reason.
This module holds the vocabulary and the settings, and imports nothing of the loader: reading the
file, the overrides, the key-by-key checks and the expansion into cases are in ``suite_loader``,
which imports this module (one way, so that the two can be read and tested apart).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workbench.harness.cases import Case
from workbench.optim import BACKENDS

DTYPES = ("float32", "bfloat16", "float16", "float64")
DEVICES = ("cpu", "cuda")
NAMED_IMPLEMENTATIONS = ("workbench", "torch", "heavyball", "pytorch_optimizer")
TORCH_BACKENDS = ("forloop", "foreach", "fused")
AXES = (
    "optimizer", "implementation", "backend", "size", "dtype", "device", "repeat", "problem",
    "world_size",
)  # fmt: skip
DIST_BACKENDS = ("gloo", "nccl")
KINDS = ("latency", "convergence")
# The axis that makes the params, and the tables that apply, per kind of suite.
_KIND_AXIS = {"latency": "sizes", "convergence": "problems"}
_KIND_TABLES = {"latency": ("timing", "measure", "sparse"), "convergence": ("convergence",)}

_FACTORY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")

# Keyword arguments the harness sets itself, so a suite may not.
_RESERVED_FLAGS = {
    "params": "the harness makes the parameters from the size axis",
    "foreach": "the backends axis chooses it",
    "fused": "the backends axis chooses it",
    "backend": "the backends axis chooses it",
}

# table -> key -> (expected type, default); [flags] and [[exclude]] are free-form.
_LIST = "a list of strings"
_INTS = "a list of integers"
_SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {
    "suite": {
        "name": ("a string", None),
        "description": ("a string", ""),
        "kind": ("a string", "latency"),
    },
    "axes": {
        "optimizers": (_LIST, None),
        "implementations": (_LIST, ["workbench", "torch"]),
        "backends": (_LIST, list(BACKENDS)),
        "sizes": (_LIST, None),
        "problems": (_LIST, None),
        "dtypes": (_LIST, ["float32"]),
        "devices": (_LIST, ["cpu"]),
        "world_size": (_INTS, [1]),  # ranks a case is sharded over (> 1: a launched process group)
        "repeats": ("an integer", 1),
    },
    "timing": {
        "warmup_s": ("a number", 0.5),
        "min_steps": ("an integer", 20),
        "max_steps": ("an integer", 1000),
        "budget_s": ("a number", 2.0),
        "interleave": ("a boolean", False),
        "target_noise": ("a number", 0.05),
        "max_extension": ("a number", 4.0),
        "max_interference": ("a number", 0.1),
        "noop_check": ("a boolean", True),
        "visits": ("an integer", 1),
        "extra_visits": ("an integer", 0),
    },
    "measure": {
        "memory": ("a boolean", True),
        "launches": ("a boolean", True),
        "bandwidth_probe": ("a boolean", True),
    },
    "convergence": {"steps": ("an integer", 200), "seed": ("an integer", 0)},
    "sparse": {"density": ("a number", 0.01)},
    "distributed": {"backend": ("a string", "gloo"), "timeout_s": ("a number", 300.0)},
}
_TABLES = (*_SCHEMA, "flags", "exclude")


class SuiteError(Exception):
    """An invalid suite: ``str()`` is ``"<file>: <key>: <reason>"``."""

    def __init__(self, path: Path | str, key: str, reason: str) -> None:
        super().__init__(path, key, reason)
        self.path, self.key, self.reason = Path(path), key, reason

    def __str__(self) -> str:
        return f"{self.path}: {self.key}: {self.reason}"


@dataclass(frozen=True)
class TimingSettings:
    warmup_s: float = 0.5
    min_steps: int = 20
    max_steps: int = 1000
    budget_s: float = 2.0
    # time the cases that compare with each other (one optimizer, size, dtype, device, flags)
    # side by side, in alternating rounds (workbench.harness.interleave)
    interleave: bool = False
    # adaptive stopping (timing.time_interleaved): the precision a median is timed to, and the
    # most time per step spent reaching it, as a multiple of budget_s
    target_noise: float = 0.05
    max_extension: float = 4.0
    # other processes' share of our CPUs (meters.Interference) that makes a group re-measured
    max_interference: float = 0.1
    # a step after timing must change the params (else the row is `no-op`)
    noop_check: bool = True
    # passes over the suite in which each latency group is timed, its samples pooled: the
    # machine's speed drifts over seconds, and one window of a few seconds is one draw of it
    visits: int = 1
    # more visits, up to this many, for the groups whose pooled medians still miss target_noise:
    # a spread between moments narrows only with more moments (runner.py)
    extra_visits: int = 0


@dataclass(frozen=True)
class MeasureSettings:
    memory: bool = True
    launches: bool = True
    bandwidth_probe: bool = True


@dataclass(frozen=True)
class DistributedSettings:
    backend: str = "gloo"  # torch.distributed backend of cases with world_size > 1
    timeout_s: float = 300.0  # a case whose ranks have not all finished by then is an error row


@dataclass(frozen=True)
class SparseSettings:
    density: float = 0.01  # a sparse grad's row indices per step, as a fraction of the rows


@dataclass(frozen=True)
class ConvergenceSettings:
    steps: int = 200
    seed: int = 0


@dataclass(frozen=True, eq=False)
class Suite:
    name: str
    description: str
    path: Path
    timing: TimingSettings
    measure: MeasureSettings
    overrides: tuple[str, ...] = ()
    document: dict[str, Any] = field(default_factory=dict, repr=False)  # the TOML after --set
    kind: str = "latency"  # one of KINDS: what run_cases measures per case
    convergence: ConvergenceSettings = field(default_factory=ConvergenceSettings)
    distributed: DistributedSettings = field(default_factory=DistributedSettings)
    sparse: SparseSettings = field(default_factory=SparseSettings)
    _cases: tuple[Case, ...] = field(default=(), repr=False)

    def cases(self) -> list[Case]:
        """Every case, in a fixed order: repeat, optimizer, device, dtype, size, flags,
        implementation, backend (outermost first).

        Cases compared with each other (implementations and backends on one problem) run back to
        back, and each repeat is a full round over the suite, so that drift of the machine
        (clocks, heat, other load) falls on all of them alike instead of on one.
        Cases on a device this machine lacks are kept: the runner records them as error rows.
        """
        return list(self._cases)

    def to_dict(self) -> dict[str, Any]:
        """What a run manifest records about its suite."""
        return {
            "name": self.name,
            "description": self.description,
            "path": str(self.path),
            "kind": self.kind,
            "overrides": list(self.overrides),
            "timing": asdict(self.timing),
            "measure": asdict(self.measure),
            "convergence": asdict(self.convergence) if self.kind == "convergence" else None,
            "distributed": asdict(self.distributed),
            "sparse": asdict(self.sparse) if self.kind == "latency" else None,
            "n_cases": len(self._cases),
            "document": self.document,
        }


# --- validation ------------------------------------------------------------------------------


def _did_you_mean(word: str, choices: Sequence[str] | dict[str, Any]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
