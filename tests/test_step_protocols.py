"""Step protocols: LBFGS (a closure step) and SparseAdam (sparse grads) in latency and convergence
suites, beside torch.optim's classes of the same name, and the suite's refusals around them."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.test_convergence import run_suite
from tests.test_runner import _only_run
from workbench.cli import main
from workbench.harness import measure, step_protocols
from workbench.harness.cases import Case
from workbench.harness.convergence import ReferenceCache, run_convergence_case, run_steps
from workbench.harness.runner import run_case
from workbench.harness.step_protocols import Workload, build_workload, protocol_for
from workbench.harness.suite import SuiteError
from workbench.harness.suite_loader import load_suite
from workbench.optim import OPTIMIZERS, Adam, SparseAdam
from workbench.problems import PROBLEMS
from workbench.results import load

CPU = torch.device("cpu")

LATENCY = """
[axes]
optimizers = {optimizers}
implementations = ["workbench", "torch"]
backends = ["forloop"]
sizes = {sizes}
[flags.LBFGS]
max_iter = [3]
history_size = [4]
tolerance_grad = [-1.0]
tolerance_change = [-1.0]
[sparse]
density = {density}
[timing]
warmup_s = 0.01
min_steps = 4
max_steps = 6
budget_s = 0.01
[measure]
memory = true
launches = true
bandwidth_probe = false
"""


def latency_suite(
    tmp_path: Path, optimizers: str, sizes: str = '["2x1k"]', density: float = 0.01
) -> Path:
    path = tmp_path / "protocols.toml"
    path.write_text(LATENCY.format(optimizers=optimizers, sizes=sizes, density=density))
    return path


def measured(
    monkeypatch: pytest.MonkeyPatch, path: Path
) -> list[tuple[Case, dict[str, Any], Workload]]:
    """run_case on every case of the suite: (the case, its row, the first workload it timed)."""
    built: list[Workload] = []

    def keep(*args: Any, **kwargs: Any) -> Workload:
        built.append(build_workload(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(measure, "build_workload", keep)
    suite = load_suite(path)
    out = []
    for case in suite.cases():
        built.clear()
        out.append((case, run_case(case, suite, None), built[0]))
    return out


def untouched(case: Case, density: float) -> Workload:
    """The workload a case starts from (same seed as the runner's first copy)."""
    return build_workload(case, CPU, 0, density=density)


# --- the protocols ---------------------------------------------------------------------------


def test_protocols_are_declared_on_the_classes() -> None:
    assert protocol_for("LBFGS") == "closure" and protocol_for("SparseAdam") == "sparse"
    assert protocol_for("Adam") == "dense"
    dense = [n for n in OPTIMIZERS if n not in ("LBFGS", "SparseAdam")]
    assert {protocol_for(n) for n in dense} == {"dense"}


def test_lbfgs_latency_rows_count_closure_evaluations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = measured(monkeypatch, latency_suite(tmp_path, '["LBFGS"]'))
    assert len(rows) == 2  # workbench and torch.optim, both forloop
    for case, row, workload in rows:
        # tolerances below zero: every step runs max_iter iterations, one evaluation each
        assert row["closure_evals_per_step"] == 3
        assert row["closure_evals_samples"] == [3] * row["n_samples"]
        assert row["n_samples"] >= 4 and row["median_s"] > 0
        assert row["minimal_bytes"] is None and "achieved_bw" not in row
        assert "closure_evals_per_step" in row["bandwidth_note"]
        assert row["state_bytes"] > 0 and row["step_peak_bytes"] is not None
        assert row["launches"] > 0
        # the params moved (towards the closure's optimum)
        start = untouched(case, 0.01).params
        assert all(not torch.equal(a, b) for a, b in zip(workload.params, start))


def test_a_closure_step_left_at_default_tolerances_stops_early_and_says_so() -> None:
    case = Case("LBFGS", "torch", "forloop", "1x100", ((100,),), "float32", "cpu", (), 0)
    workload = build_workload(case, CPU, 0, density=0.01)
    evals = [workload.step() for _ in range(60)]
    assert evals[0] == 20  # max_iter's default: the quadratic is not solved in one step
    assert evals[-1] == 1  # solved: the step returns after its first evaluation
    fields = step_protocols.timed_row_fields(workload, evals[-5:])
    assert fields["closure_evals_per_step"] == 1


def test_sparse_adam_latency_grads_are_uncoalesced_sparse_rows(tmp_path: Path) -> None:
    # density 0.5 of 4000 rows, drawn with replacement: duplicates are certain
    path = latency_suite(tmp_path, '["SparseAdam"]', sizes='["3x4k"]', density=0.5)
    case = load_suite(path).cases()[0]
    workload = build_workload(case, CPU, 0, density=0.5)
    before = [p.detach().clone() for p in workload.params]
    workload.step()
    for p, old in zip(workload.params, before):
        grad = p.grad
        assert grad.layout == torch.sparse_coo and not grad.is_coalesced()
        rows = grad._indices()[0]
        assert rows.numel() == 2000 and rows.unique().numel() < rows.numel()
        changed = (p.detach() != old).nonzero().flatten()
        # SparseAdam moves just the rows its grad holds (torch's and ours: lazy)
        assert changed.numel() > 0 and set(changed.tolist()) <= set(rows.tolist())
    first = [p.grad._indices().clone() for p in workload.params]
    workload.step()  # the next batch of the rotation: other rows
    assert not torch.equal(first[0], workload.params[0].grad._indices())


def test_sparse_adam_latency_rows_count_the_bytes_touched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = latency_suite(tmp_path, '["SparseAdam"]', sizes='["mlp-2d"]', density=0.1)
    rows = measured(monkeypatch, path)
    assert len(rows) == 2
    for case, row, workload in rows:
        assert row["sparse_density"] == 0.1 and row["sparse_batches"] == 10
        assert row["median_s"] > 0
        # what the runner stepped on: sparse COO grads, as nn.Embedding(sparse=True) leaves them
        # (torch calls a grad of one row coalesced: there is nothing to sum)
        assert {p.grad.layout for p in workload.params} == {torch.sparse_coo}
        assert not any(p.grad.is_coalesced() for p in workload.params if p.grad._nnz() > 1)
        assert row["achieved_bw"] == row["minimal_bytes"] / row["median_s"]
        # what the rotation's grads touch, counted from the grads themselves: param, exp_avg and
        # exp_avg_sq read and written on the distinct rows, the grad's values and indices read
        probe = untouched(case, 0.1)
        per_step, fractions = [], []
        for _ in range(row["sparse_batches"]):
            probe.step()
            nbytes = touched = 0
            for p in probe.params:
                rows_of_batch = p.grad._indices()[0]
                row_bytes = p[0].numel() * p.element_size()
                nbytes += 6 * rows_of_batch.unique().numel() * row_bytes
                nbytes += rows_of_batch.numel() * (row_bytes + 8)
                touched += rows_of_batch.unique().numel()
            per_step.append(nbytes)
            fractions.append(touched / sum(p.shape[0] for p in probe.params))
        assert row["minimal_bytes"] == round(sum(per_step) / len(per_step))
        assert row["touched_rows_fraction"] == pytest.approx(sum(fractions) / len(fractions))
        dense = OPTIMIZERS["SparseAdam"].minimal_bytes(case.numel, torch.float32)
        assert row["minimal_bytes"] < dense / 5  # a tenth of the rows, not the whole tables
        assert row["step_peak_bytes"] is not None and row["launches"] > 0
        start = untouched(case, 0.1).params
        assert all(not torch.equal(a, b) for a, b in zip(workload.params, start))


def test_a_latency_run_stores_protocol_rows_beside_dense_ones(tmp_path: Path) -> None:
    path = latency_suite(tmp_path, '["Adamax", "LBFGS", "SparseAdam"]', sizes='["3x4k"]')
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    df = load(_only_run(tmp_path / "out")).set_index(["optimizer", "implementation"])
    assert len(df) == 6 and set(df["status"]) == {"ok"}, df["error"]
    assert list(df.loc[("LBFGS", "torch"), "closure_evals_samples"])[0] == 3
    assert math.isnan(df.loc[("LBFGS", "workbench"), "minimal_bytes"])
    assert df.loc[("SparseAdam", "workbench"), "achieved_bw"] > 0
    dense = df.loc[("Adamax", "workbench")]
    assert dense["minimal_bytes"] > 0 and math.isnan(dense["closure_evals_per_step"])


# --- convergence -----------------------------------------------------------------------------

CONVERGENCE = """
[suite]
kind = "convergence"
[axes]
optimizers = {optimizers}
implementations = ["torch", "workbench"]
backends = ["forloop"]
problems = {problems}
[flags]
lr = [{lr}]
{extra}
[convergence]
steps = {steps}
"""


def convergence_suite(tmp_path: Path, **fields: object) -> Path:
    path = tmp_path / "conv.toml"
    path.write_text(textwrap.dedent(CONVERGENCE.format(**fields)))
    return path


def test_lbfgs_reaches_rosenbrocks_target_on_torchs_curve(tmp_path: Path) -> None:
    path = convergence_suite(
        tmp_path,
        optimizers='["LBFGS"]',
        problems='["rosenbrock-2d"]',
        lr=1.0,
        extra='max_iter = [5]\nline_search_fn = ["strong_wolfe"]',
        steps=15,
    )
    by = run_suite(path)
    ours, theirs = by["workbench", "forloop"], by["torch", "forloop"]
    problem = PROBLEMS["rosenbrock-2d"]
    assert ours["steps_to_target"] is not None and ours["final_loss"] <= problem.target_loss
    start = problem.loss(problem.make_params(0, torch.float32, CPU)).item()
    assert ours["loss_curve"][0] == pytest.approx(start)
    assert ours["loss_curve"] == pytest.approx(theirs["loss_curve"], rel=1e-5, abs=1e-9)
    assert ours["evals_curve"] == theirs["evals_curve"]
    assert ours["distance_to_reference"] < 1e-5
    # one step(closure) per step, several closure calls in it (iterations, line search)
    evals = ours["evals_curve"]
    assert len(evals) == len(ours["loss_curve"]) == 16 and evals[0] == 0
    assert all(b > a for a, b in zip(evals, evals[1:])) and ours["evaluations"] > 15


def test_sparse_adam_converges_on_matrix_factorization_as_torch_does(tmp_path: Path) -> None:
    path = convergence_suite(
        tmp_path,
        optimizers='["SparseAdam"]',
        problems='["matrix-factorization"]',
        lr=0.1,
        extra="",
        steps=200,
    )
    suite = load_suite(path)
    references = ReferenceCache()  # torch's case comes first and is the reference run
    rows = {c.implementation: run_convergence_case(c, suite, references) for c in suite.cases()}
    ours = rows["workbench"]
    assert ours["steps_to_target"] is not None and ours["diverged_step"] is None
    assert ours["distance_to_reference"] < 1e-5
    assert ours["loss_curve"] == pytest.approx(rows["torch"]["loss_curve"])
    assert ours["evals_curve"] == list(range(201))


def test_adam_beside_sparse_adam_on_the_same_batches_moves_every_row() -> None:
    problem = PROBLEMS["matrix-factorization"]
    runs = {
        name: run_steps(problem, make, 2, seed=0, dtype=torch.float32, device=CPU, protocol=p)
        for name, make, p in [
            ("Adam", lambda params: Adam(params, lr=0.1, backend="forloop"), "dense"),
            ("SparseAdam", lambda params: SparseAdam(params, lr=0.1), "sparse"),
        ]
    }
    start, adam, sparse = runs["Adam"].points[0], runs["Adam"].points, runs["SparseAdam"].points
    # one step: both move the batch's rows alone (Adam's moments are zero on the others)
    assert torch.equal((adam[1] != start), (sparse[1] != start))
    # the next step: Adam's momentum carries on rows the first batch held and this one misses;
    # SparseAdam moves this batch's rows alone
    assert int((adam[2] != adam[1]).sum()) > int((sparse[2] != sparse[1]).sum()) > 0


def test_matrix_factorization_gives_sparse_or_dense_grads_of_fixed_batches() -> None:
    problem = PROBLEMS["matrix-factorization"]
    for sparse, layout in ((True, torch.sparse_coo), (False, torch.strided)):
        params = problem.make_params(0, torch.float32, CPU)
        problem.training_loss(params, 3, sparse).backward()
        assert [p.grad.layout for p in params] == [layout, layout]
    # the same batch for a step in every call; another batch for the next step
    params = problem.make_params(0, torch.float32, CPU)
    step3 = problem.training_loss(params, 3, False).item()
    assert step3 == problem.training_loss(params, 3, True).item()
    assert step3 != problem.training_loss(params, 4, False).item()
    quadratic = PROBLEMS["quadratic"]
    with pytest.raises(ValueError, match="dense grads only"):
        quadratic.training_loss(quadratic.make_params(0, torch.float32, CPU), 0, True)


# --- suite validation ------------------------------------------------------------------------


@pytest.mark.parametrize("density", ["0", "1.5", "-0.1", '"dense"'])
def test_a_bad_sparse_density_is_refused_naming_the_key(tmp_path: Path, density: str) -> None:
    path = latency_suite(tmp_path, '["SparseAdam"]')
    path.write_text(path.read_text().replace("density = 0.01", f"density = {density}"))
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert info.value.key == "sparse.density" and "protocols.toml" in str(info.value)
    assert ("(0, 1]" if density != '"dense"' else "expected a number") in info.value.reason


@pytest.mark.parametrize(
    ("text", "overrides", "key", "words"),
    [
        # a sparse-grad optimizer on a problem whose grads are dense
        (
            CONVERGENCE.format(
                optimizers='["SparseAdam"]', problems='["quadratic"]', lr=0.1, extra="", steps=5
            ),
            (),
            "axes.problems",
            ["SparseAdam", "quadratic", "matrix-factorization"],
        ),
        # [sparse] belongs to latency suites
        (
            CONVERGENCE.format(
                optimizers='["Adam"]', problems='["quadratic"]', lr=0.1, extra="", steps=5
            ),
            ("sparse.density=0.1",),
            "sparse.density",
            ["latency"],
        ),
        # neither protocol can be sharded
        (
            LATENCY.format(optimizers='["LBFGS"]', sizes='["2x1k"]', density=0.01),
            ("axes.world_size=[1, 2]",),
            "axes.world_size",
            ["LBFGS", "cannot be sharded"],
        ),
    ],
)
def test_impossible_protocol_combinations_are_refused(
    tmp_path: Path, text: str, overrides: tuple[str, ...], key: str, words: list[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(SuiteError) as info:
        load_suite(path, overrides)
    assert info.value.key == key and all(w in info.value.reason for w in words), info.value
