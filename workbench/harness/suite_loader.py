"""Loading a suite (the schema and vocabulary are in workbench.harness.suite).

``load_suite`` reads the TOML file and applies the ``--set`` overrides; ``_Loader`` checks the
document key by key, each error a SuiteError naming its key, then expands the axes and flag
matrices into cases; the helpers say which backends each implementation offers for an optimizer.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from workbench.harness.cases import PEER_BACKEND, Case
from workbench.harness.shapes import profile_shapes
from workbench.harness.step_protocols import DENSE, SPARSE, protocol_for
from workbench.optim import BACKENDS, OPTIMIZERS
from workbench.problems import PROBLEMS

from .suite import (
    _FACTORY,
    _INTS,
    _KIND_AXIS,
    _KIND_TABLES,
    _LIST,
    _RESERVED_FLAGS,
    _SCHEMA,
    _TABLES,
    AXES,
    DEVICES,
    DIST_BACKENDS,
    DTYPES,
    KINDS,
    NAMED_IMPLEMENTATIONS,
    TORCH_BACKENDS,
    ConvergenceSettings,
    DistributedSettings,
    MeasureSettings,
    SparseSettings,
    Suite,
    SuiteError,
    TimingSettings,
    _did_you_mean,
)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

_BARE_WORD = re.compile(r"^[\w.:+\-]+$")


def load_suite(path: Path | str, overrides: Sequence[str] = ()) -> Suite:
    """Read, override, validate and expand a suite; raise SuiteError on the first mistake."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SuiteError(path, "file", f"cannot read it: {e.strerror or e}") from None
    except UnicodeDecodeError as e:  # TOML is UTF-8 by definition: say where the bad byte is
        bad = e.object[e.start : e.start + 1].hex()
        raise SuiteError(
            path, f"byte {e.start}", f"not UTF-8 text: {e.reason} (0x{bad}); save it as UTF-8"
        ) from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SuiteError(path, f"line {_error_line(e, text)}", f"not valid TOML: {e}") from None
    overridden = _apply_overrides(path, document, overrides)
    return _Loader(path, overridden).build(document, tuple(overrides))


def _error_line(error: Exception, text: str) -> int:
    """The line a TOML error is on: its `lineno` (Python 3.14+), else parsed from the message,
    which says "(at line N, column M)" or "(at end of document)"."""
    if isinstance(getattr(error, "lineno", None), int):
        return error.lineno  # type: ignore[attr-defined]
    found = re.search(r"line (\d+)", str(error))
    return int(found[1]) if found else max(1, len(text.splitlines()))


# --- overrides -------------------------------------------------------------------------------


def _apply_overrides(path: Path, document: dict[str, Any], overrides: Sequence[str]) -> list[str]:
    keys = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        where = f"--set {key or item}"
        if not sep or not key:
            raise SuiteError(path, where, "expected key=value, e.g. timing.budget_s=1")
        parts = key.split(".")
        _check_override_key(path, where, parts)
        value = _parse_value(path, where, text.strip())
        node = document
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                prefix = ".".join(parts[: depth + 1])
                raise SuiteError(path, where, f"{prefix} is not a table")
        node[parts[-1]] = value
        keys.append(key)
    return keys


def _check_override_key(path: Path, where: str, parts: list[str]) -> None:
    table = parts[0]
    if any(not part for part in parts) or table not in _TABLES:
        raise SuiteError(path, where, f"unknown table {table!r}{_did_you_mean(table, _TABLES)}")
    if table in _SCHEMA and len(parts) == 2 and parts[1] not in _SCHEMA[table]:
        hint = _did_you_mean(parts[1], _SCHEMA[table])
        raise SuiteError(path, where, f"unknown key {parts[1]!r} in [{table}]{hint}")
    depth = {"exclude": 1, "flags": 3}.get(table, 2)
    if len(parts) > depth:
        raise SuiteError(path, where, f"too many parts: [{table}] keys go {depth - 1} deep")


def _parse_value(path: Path, where: str, text: str) -> Any:
    try:
        parsed = tomllib.loads(f"value = {text}")
    except tomllib.TOMLDecodeError as e:
        if _BARE_WORD.match(text):
            return text  # a bare word: suite.name=smoke
        raise SuiteError(path, where, f"{text!r} is not a TOML value ({e})") from None
    if set(parsed) != {"value"}:
        raise SuiteError(path, where, f"{text!r} is not a single TOML value")
    return parsed["value"]


# --- validation and expansion ---------------------------------------------------------------


def _type_name(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _freeze(value: Any) -> Any:
    """TOML arrays become tuples, so that flags are hashable and compare like torch's defaults."""
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@functools.cache
def _signature(optimizer: str) -> inspect.Signature:
    """The reference signature: torch.optim's class of that name (ours where torch has none)."""
    return inspect.signature(getattr(torch.optim, optimizer, None) or OPTIMIZERS[optimizer])


def torch_backends(optimizer: str) -> tuple[str, ...]:
    """The backends torch.optim.<optimizer> offers: foreach and fused where it takes
    ``foreach=`` and ``fused=`` (Muon takes neither: forloop only); none where torch.optim has
    no such optimizer: the `torch` implementation then expands to no case."""
    if not hasattr(torch.optim, optimizer):
        return ()
    takes = _signature(optimizer).parameters
    return tuple(b for b in TORCH_BACKENDS if b == "forloop" or b in takes)


def matrices_only(optimizer: str) -> bool:
    """Whether the optimizer takes 2-D params only (Muon), as torch.optim's refuses others."""
    return bool(getattr(OPTIMIZERS[optimizer], "matrices_only", False))


def implementation_backends(optimizer: str, implementation: str) -> tuple[str, ...]:
    """Every backend an implementation can run an optimizer with (peers: just "default")."""
    if implementation == "workbench":
        return tuple(OPTIMIZERS[optimizer].backends)
    if implementation == "torch":
        return torch_backends(optimizer)
    return (PEER_BACKEND,)


class _Loader:
    """Checks a parsed suite key by key; every error names the key it is about."""

    def __init__(self, path: Path, overridden: Sequence[str]) -> None:
        self.path, self.overridden = path, overridden

    def error(self, key: str, reason: str) -> SuiteError:
        by_set = [o for o in self.overridden if key == o or key.startswith((f"{o}.", f"{o}["))]
        if by_set:
            reason += f" (set by --set {by_set[-1]})"
        return SuiteError(self.path, key, reason)

    def build(self, document: dict[str, Any], overrides: tuple[str, ...]) -> Suite:
        for table, value in document.items():
            if table not in _TABLES:
                raise self.error(table, f"unknown table{_did_you_mean(table, _TABLES)}")
            expected = list if table == "exclude" else dict
            if not isinstance(value, expected):
                shape = "an array of tables [[exclude]]" if expected is list else f"a [{table}]"
                raise self.error(table, f"expected {shape}, got {_type_name(value)}")
        s = {table: self.table(document, table) for table in _SCHEMA}
        kind = self.check_kind(document, s["suite"]["kind"])
        axes = s["axes"]
        self.check_axes(axes, kind)
        flags = self.check_flags(document.get("flags", {}), axes["optimizers"])
        rules = self.check_excludes(document.get("exclude", []), flags)
        timing = TimingSettings(**s["timing"])
        self.check_timing(timing)
        if timing.visits > 1 and axes["repeats"] > 1:
            raise self.error(
                "timing.visits",
                f"{timing.visits} visits with {axes['repeats']} repeats: each repeat is already a "
                "pass over the suite (in its own process); give one of them",
            )
        convergence = ConvergenceSettings(**s["convergence"])
        self.check_convergence(convergence)
        sparse = SparseSettings(**s["sparse"])
        self.check_sparse(sparse)
        cases = self.expand(axes, flags, rules)
        measure = MeasureSettings(**s["measure"])
        if kind == "convergence":  # it times whole steps itself; latency's probes do not apply
            measure = MeasureSettings(memory=False, launches=False, bandwidth_probe=False)
        return Suite(
            name=s["suite"]["name"] or self.path.stem,
            description=s["suite"]["description"],
            path=self.path,
            timing=timing,
            measure=measure,
            overrides=overrides,
            document=document,
            _cases=tuple(cases),
            distributed=self.check_distributed(s["distributed"], axes),
            kind=kind,
            convergence=convergence,
            sparse=sparse,
        )

    def check_kind(self, document: dict[str, Any], kind: str) -> str:
        if kind not in KINDS:
            hint = _did_you_mean(kind, KINDS)
            raise self.error("suite.kind", f"unknown kind {kind!r}{hint}; known: {list(KINDS)}")
        axes = document.get("axes", {})
        for other, axis in _KIND_AXIS.items():
            if other != kind and axis in axes:
                raise self.error(f"axes.{axis}", _other_kind(other, kind))
        if _KIND_AXIS[kind] not in axes:
            raise self.error(f"axes.{_KIND_AXIS[kind]}", f"required in a {kind} suite, and missing")
        for other, tables in _KIND_TABLES.items():
            for table in tables:
                if other != kind and table in document:
                    # named down to its first key, so that a --set of it is named as the cause
                    key = ".".join([table, *list(document[table])[:1]])
                    raise self.error(key, _other_kind(other, kind))
        return kind

    def table(self, document: dict[str, Any], table: str) -> dict[str, Any]:
        """The keys of one fixed-schema table, type-checked, with defaults filled in."""
        given = document.get(table, {})
        for key in given:
            if key not in _SCHEMA[table]:
                hint = _did_you_mean(key, _SCHEMA[table])
                raise self.error(f"{table}.{key}", f"unknown key{hint}")
        out = {}
        for key, (expected, default) in _SCHEMA[table].items():
            if key not in given:
                if default is None and table == "axes" and key not in _KIND_AXIS.values():
                    raise self.error(f"{table}.{key}", "required, and missing")
                out[key] = default
                continue
            value = given[key]
            ok = {
                _LIST: isinstance(value, list) and all(isinstance(v, str) for v in value),
                _INTS: isinstance(value, list)
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value),
                "a string": isinstance(value, str),
                "an integer": isinstance(value, int) and not isinstance(value, bool),
                "a number": _is_number(value),
                "a boolean": isinstance(value, bool),
            }[expected]
            if not ok:
                raise self.error(f"{table}.{key}", f"expected {expected}, got {_type_name(value)}")
            out[key] = float(value) if expected == "a number" else value
        return out

    def check_axes(self, axes: dict[str, Any], kind: str = "latency") -> None:
        vocabularies = {
            "optimizers": ("optimizer", list(OPTIMIZERS)),
            "problems": ("problem", list(PROBLEMS)),
            "backends": ("backend", list(BACKENDS)),
            "dtypes": ("dtype", list(DTYPES)),
            "devices": ("device", list(DEVICES)),
        }
        params_axis = _KIND_AXIS[kind]
        for key in ("optimizers", "implementations", "backends", params_axis, "dtypes", "devices"):
            values = axes[key]
            if not values:
                raise self.error(f"axes.{key}", "must list at least one value")
            for i, value in enumerate(values):
                where = f"axes.{key}[{i}]"
                if value in values[:i]:
                    raise self.error(where, f"{value!r} is listed twice")
                if key in vocabularies:
                    what, known = vocabularies[key]
                    if value not in known:
                        hint = _did_you_mean(value, known)
                        raise self.error(where, f"unknown {what} {value!r}{hint}; known: {known}")
                elif key == "implementations":
                    self.check_implementation(where, value)
                else:
                    self.check_size(where, value)
        sizes = axes["world_size"]
        if not sizes:
            raise self.error("axes.world_size", "must list at least one value")
        for i, n in enumerate(sizes):
            if n < 1 or n in sizes[:i]:
                why = "must be >= 1" if n < 1 else "is listed twice"
                raise self.error(f"axes.world_size[{i}]", f"{why}, got {n}")
        if kind == "convergence" and sizes != [1]:
            raise self.error("axes.world_size", "convergence cases run in one process: use [1]")
        if axes["repeats"] < 1:
            raise self.error("axes.repeats", f"must be at least 1, got {axes['repeats']}")

    def check_implementation(self, where: str, value: str) -> None:
        # Only the syntax: whether the peer package is installed is the runner's question, since
        # a suite must load on every machine (a missing peer makes error rows, like cuda does).
        if value not in NAMED_IMPLEMENTATIONS and not _FACTORY.match(value):
            hint = _did_you_mean(value, NAMED_IMPLEMENTATIONS)
            raise self.error(
                where,
                f"unknown implementation {value!r}{hint}; expected one of "
                f"{list(NAMED_IMPLEMENTATIONS)} or 'package.module:factory'",
            )

    def check_size(self, where: str, value: str) -> None:
        try:
            profile_shapes(value)
        except ValueError as e:
            raise self.error(where, str(e)) from None

    def check_flags(
        self, table: dict[str, Any], optimizers: list[str]
    ) -> dict[str, dict[str, list[Any]]]:
        """The flag matrix of each optimizer: name -> flag -> its values (normalised)."""
        common = {k: v for k, v in table.items() if not isinstance(v, dict)}
        per_optimizer = {k: v for k, v in table.items() if isinstance(v, dict)}
        for name in per_optimizer:
            if name not in OPTIMIZERS:
                hint = _did_you_mean(name, OPTIMIZERS)
                raise self.error(
                    f"flags.{name}",
                    f"a table in [flags] must be named after an optimizer{hint}; "
                    f"known: {list(OPTIMIZERS)}",
                )
        matrices = {}
        for optimizer in optimizers:
            matrix = {k: self.flag_values(f"flags.{k}", optimizer, k, v) for k, v in common.items()}
            for k, v in per_optimizer.get(optimizer, {}).items():
                matrix[k] = self.flag_values(f"flags.{optimizer}.{k}", optimizer, k, v)
            self.try_construct(optimizer, matrix)
            matrices[optimizer] = dict(sorted(matrix.items()))
        # Tables for optimizers not in the axes are still checked: a typo there should not wait
        # for the day someone adds that optimizer.
        for optimizer, flags in per_optimizer.items():
            if optimizer not in optimizers:
                for k, v in flags.items():
                    self.flag_values(f"flags.{optimizer}.{k}", optimizer, k, v)
        return matrices

    def flag_values(self, where: str, optimizer: str, flag: str, values: Any) -> list[Any]:
        if flag in _RESERVED_FLAGS:
            raise self.error(where, f"not a flag a suite may set: {_RESERVED_FLAGS[flag]}")
        params = _signature(optimizer).parameters
        if flag not in params:
            accepted = [p for p in params if p not in _RESERVED_FLAGS]
            raise self.error(
                where,
                f"torch.optim.{optimizer} takes no argument {flag!r}"
                f"{_did_you_mean(flag, accepted)}; it takes {accepted}",
            )
        if not isinstance(values, list) or not values:
            raise self.error(
                where, f"expected a non-empty list of values, got {_type_name(values)}"
            )
        default, annotation = params[flag].default, str(params[flag].annotation)
        out: list[Any] = []
        for i, value in enumerate(values):
            value = _freeze(value)
            if isinstance(default, bool) and not isinstance(value, bool):
                raise self.error(f"{where}[{i}]", f"expected a boolean, got {_type_name(value)}")
            if _is_number(default) and not _is_number(value):
                raise self.error(f"{where}[{i}]", f"expected a number, got {_type_name(value)}")
            if isinstance(default, tuple) and not (
                isinstance(value, tuple) and len(value) == len(default)
            ):
                raise self.error(
                    f"{where}[{i}]",
                    f"expected an array of {len(default)} like {list(default)}, "
                    f"got {_type_name(value)}",
                )
            if isinstance(value, int) and not isinstance(value, bool) and "float" in annotation:
                value = float(value)  # weight_decay = 0 and 0.0 must be one case, one case_id
            if value in out:
                raise self.error(f"{where}[{i}]", f"{value!r} is listed twice")
            out.append(value)
        return out

    def try_construct(self, optimizer: str, matrix: dict[str, list[Any]]) -> None:
        """Build the reference optimizer once per flag combination on a 1-element tensor, so that
        values it refuses (negative lr, beta >= 1) stop the suite now, not as error rows later."""
        cls = getattr(torch.optim, optimizer, None) or OPTIMIZERS[optimizer]
        param = torch.zeros((1, 1) if matrices_only(optimizer) else 1, requires_grad=True)
        for combo in _combinations(matrix):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    cls([param], **dict(combo))
            except Exception as e:  # whatever the constructor raises is the user's message
                shown = ", ".join(f"{k}={v!r}" for k, v in combo)
                raise self.error("flags", f"{cls.__name__}({shown}) refused: {e}") from None

    def check_excludes(
        self, rules: list[Any], flags: dict[str, dict[str, list[Any]]]
    ) -> list[dict[str, Any]]:
        flag_names = sorted({k for matrix in flags.values() for k in matrix})
        known = [*AXES, *flag_names]
        out = []
        for i, rule in enumerate(rules):
            where = f"exclude[{i}]"
            if not isinstance(rule, dict) or not rule:
                raise self.error(where, f"expected a non-empty table, got {_type_name(rule)}")
            checked = {}
            for key, value in rule.items():
                if key not in known:
                    hint = _did_you_mean(key, known)
                    raise self.error(f"{where}.{key}", f"unknown axis{hint}; axes: {known}")
                value = _freeze(value)
                if key in AXES:
                    for alternative in value if isinstance(value, tuple) else (value,):
                        self.check_exclude_value(f"{where}.{key}", key, alternative)
                checked[key] = value
            out.append(checked)
        return out

    def check_exclude_value(self, where: str, axis: str, value: Any) -> None:
        # Checked against the vocabulary, not this suite's axes: a rule for a value that
        # `--set` has removed is fine, a misspelt one would silently exclude nothing.
        if axis == "world_size":
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise self.error(where, f"expected a world size >= 1, got {_type_name(value)}")
            return
        if axis == "repeat":
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                raise self.error(where, f"expected a repeat index >= 0, got {_type_name(value)}")
            return
        if not isinstance(value, str):
            raise self.error(where, f"expected a string or a list of them, got {_type_name(value)}")
        vocabulary = {
            "optimizer": list(OPTIMIZERS),
            "backend": [*BACKENDS, PEER_BACKEND],
            "dtype": list(DTYPES),
            "device": list(DEVICES),
            "problem": list(PROBLEMS),
        }
        if axis in vocabulary and value not in vocabulary[axis]:
            hint = _did_you_mean(value, vocabulary[axis])
            raise self.error(where, f"unknown {axis} {value!r}{hint}; known: {vocabulary[axis]}")
        if axis == "implementation":
            self.check_implementation(where, value)
        if axis == "size":
            self.check_size(where, value)

    def check_convergence(self, convergence: ConvergenceSettings) -> None:
        if convergence.steps < 1:
            raise self.error("convergence.steps", f"must be >= 1, got {convergence.steps}")
        if convergence.seed < 0:
            raise self.error("convergence.seed", f"must be >= 0, got {convergence.seed}")

    def check_sparse(self, sparse: SparseSettings) -> None:
        if not 0 < sparse.density <= 1:
            raise self.error(
                "sparse.density",
                f"must be in (0, 1], a fraction of each param's rows, got {sparse.density}",
            )

    def check_distributed(self, given: dict[str, Any], axes: dict[str, Any]) -> DistributedSettings:
        settings = DistributedSettings(**given)
        if settings.backend not in DIST_BACKENDS:
            hint = _did_you_mean(settings.backend, DIST_BACKENDS)
            raise self.error(
                "distributed.backend",
                f"unknown backend {settings.backend!r}{hint}; known: {list(DIST_BACKENDS)}",
            )
        if settings.timeout_s <= 0:
            raise self.error("distributed.timeout_s", f"must be > 0, got {settings.timeout_s}")
        return settings

    def check_timing(self, timing: TimingSettings) -> None:
        if timing.warmup_s < 0:
            raise self.error("timing.warmup_s", f"must be >= 0, got {timing.warmup_s}")
        if timing.budget_s <= 0:
            raise self.error("timing.budget_s", f"must be > 0, got {timing.budget_s}")
        if timing.min_steps < 1:
            raise self.error("timing.min_steps", f"must be >= 1, got {timing.min_steps}")
        if timing.target_noise < 0:
            raise self.error("timing.target_noise", f"must be >= 0, got {timing.target_noise}")
        if timing.max_extension < 1:
            raise self.error(
                "timing.max_extension", f"must be >= 1 (x budget_s), got {timing.max_extension}"
            )
        if not 0 < timing.max_interference <= 1:
            raise self.error(
                "timing.max_interference", f"must be in (0, 1], got {timing.max_interference}"
            )
        if timing.visits < 1:
            raise self.error("timing.visits", f"must be at least 1, got {timing.visits}")
        if timing.extra_visits < 0:
            raise self.error("timing.extra_visits", f"must be >= 0, got {timing.extra_visits}")
        if timing.extra_visits and timing.visits < 2:
            raise self.error(
                "timing.extra_visits",
                f"needs visits >= 2 (a median's spread between moments), got visits = "
                f"{timing.visits}",
            )
        if timing.max_steps < timing.min_steps:
            raise self.error(
                "timing.max_steps",
                f"must be >= min_steps ({timing.min_steps}), got {timing.max_steps}",
            )

    def expand(
        self,
        axes: dict[str, Any],
        flags: dict[str, dict[str, list[Any]]],
        rules: list[dict[str, Any]],
    ) -> list[Case]:
        cases, before = [], 0
        # A convergence case's params come from its problem, whose name stands as its size.
        problems = axes["problems"] or []
        for repeat, optimizer, device, dtype, size in itertools.product(
            range(axes["repeats"]),
            axes["optimizers"],
            axes["devices"],
            axes["dtypes"],
            problems or axes["sizes"],
        ):
            for combo in _combinations(flags[optimizer]):
                for implementation in axes["implementations"]:
                    offered = implementation_backends(optimizer, implementation)
                    if offered == (PEER_BACKEND,):
                        backends = [PEER_BACKEND]  # peers ignore the backends axis
                    else:
                        backends = [b for b in axes["backends"] if b in offered]
                    for backend, world_size in itertools.product(backends, axes["world_size"]):
                        case = Case(
                            optimizer=optimizer,
                            implementation=implementation,
                            backend=backend,
                            size=size,
                            shapes=PROBLEMS[size].shapes if problems else profile_shapes(size),
                            dtype=dtype,
                            device=device,
                            flags=combo,
                            repeat=repeat,
                            problem=size if problems else None,
                            world_size=world_size,
                        )
                        before += 1
                        if not any(_matches(case, rule) for rule in rules):
                            self.check_matrices(case, "axes.problems" if problems else "axes.sizes")
                            self.check_protocol(case, "axes.problems" if problems else "axes.sizes")
                            cases.append(case)
        if not cases:
            if before:
                raise self.error("exclude", f"the exclude rules drop all {before} cases")
            raise self.error(
                "axes.backends",
                f"no implementation in {axes['implementations']} offers any of {axes['backends']}",
            )
        return cases

    def check_matrices(self, case: Case, key: str) -> None:
        """A 2-D-only optimizer (Muon) on params that are not all matrices is the suite's mistake,
        not an error row per case: refuse it now, and say how to fix it."""
        if not matrices_only(case.optimizer):
            return
        others = [s for s in case.shapes if len(s) != 2]
        if others:
            raise self.error(
                key,
                f"{case.optimizer} takes 2-D params only (as torch.optim.{case.optimizer}), and "
                f"{case.size!r} has {len(others)} of {len(case.shapes)} that are not, e.g. "
                f"{others[0]}: use a size of matrices such as 'mlp-2d', or add "
                f"[[exclude]] optimizer = {case.optimizer!r}, size = {case.size!r}",
            )

    def check_protocol(self, case: Case, key: str) -> None:
        """Refuse what a step protocol cannot do at all (not what merely fails on a machine)."""
        protocol = protocol_for(case.optimizer)
        if protocol != DENSE and case.world_size > 1:
            raise self.error(
                "axes.world_size",
                f"{case.optimizer} cannot be sharded: the sharded runner steps fixed dense grads "
                f"without a closure; add [[exclude]] optimizer = {case.optimizer!r}, "
                f"world_size = {case.world_size}",
            )
        if protocol != SPARSE:
            return
        if case.problem is not None and not PROBLEMS[case.problem].sparse_grads:
            sparse = [name for name, p in PROBLEMS.items() if p.sparse_grads]
            raise self.error(
                key,
                f"{case.optimizer} takes sparse grads only, and problem {case.problem!r} gives "
                f"dense ones; problems with sparse grads: {sparse}, or add [[exclude]] "
                f"optimizer = {case.optimizer!r}, problem = {case.problem!r}",
            )
        if any(len(shape) == 0 for shape in case.shapes):
            raise self.error(
                key,
                f"{case.optimizer} takes sparse grads, which need rows: {case.size!r} has a "
                "0-dim param",
            )


def _other_kind(other: str, kind: str) -> str:
    return f'applies to {other} suites ([suite] kind = "{other}"), and this one is {kind}'


def _combinations(matrix: dict[str, list[Any]]) -> list[tuple[tuple[str, Any], ...]]:
    keys = sorted(matrix)
    return [tuple(zip(keys, values)) for values in itertools.product(*(matrix[k] for k in keys))]


def _matches(case: Case, rule: dict[str, Any]) -> bool:
    """True when every key of the rule matches; a tuple in a rule is a set of alternatives, except
    for a tuple-valued flag (betas), where it may also be the value itself."""
    flags = dict(case.flags)
    for key, wanted in rule.items():
        if key in AXES:
            actual = getattr(case, key)
        elif key in flags:
            actual = flags[key]
        else:
            return False  # a flag this case does not set (another optimizer's)
        if not (actual == wanted or (isinstance(wanted, tuple) and actual in wanted)):
            return False
    return True
