"""Convergence: the test problems (losses fall, optima are right), the convergence runner (our
backends follow torch.optim's trajectory, blow-ups are a status), and convergence suites from the
command line (columns in the run, bad suites refused)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import textwrap
from pathlib import Path

import pytest
import torch

from workbench.cli import main
from workbench.harness.cases import Case
from workbench.harness.convergence import run_convergence_case, run_steps
from workbench.harness.suite import Suite
from workbench.harness.suite_loader import load_suite
from workbench.optim import OPTIMIZERS
from workbench.problems import PROBLEMS
from workbench.problems.functions import QUADRATIC_CONDITION, _quadratic_data
from workbench.results import load

CPU = torch.device("cpu")

SUITE = """
[suite]
kind = "convergence"
[axes]
optimizers = ["{optimizer}"]
implementations = {implementations}
backends = {backends}
problems = {problems}
[flags]
lr = [{lr}]
[convergence]
steps = {steps}
"""


def write_suite(tmp_path: Path, name: str = "conv.toml", **fields: object) -> Path:
    values: dict[str, object] = {
        "optimizer": "Adamax",
        "implementations": '["torch", "workbench"]',
        "backends": '["forloop", "foreach"]',
        "problems": '["quadratic"]',
        "lr": 0.01,
        "steps": 30,
    }
    values.update(fields)
    path = tmp_path / name
    path.write_text(textwrap.dedent(SUITE.format(**values)))
    return path


def run_suite(path: Path) -> dict[tuple[str, str], dict]:
    """The rows of a suite's cases by (implementation, backend)."""
    suite: Suite = load_suite(path)
    return {(c.implementation, c.backend): run_convergence_case(c, suite) for c in suite.cases()}


def adamax_other_eps(params, **flags):
    """A 'peer' that differs from torch.optim.Adamax only in a default: eps 1e-3, not 1e-8."""
    return torch.optim.Adamax(params, eps=1e-3, **flags)


# --- the problems ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_each_problem_falls_under_adam_from_a_seeded_start(name: str) -> None:
    problem = PROBLEMS[name]
    a, b = (problem.make_params(0, torch.float32, CPU) for _ in range(2))
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # the seed fixes the start
    assert tuple(tuple(p.shape) for p in a) == problem.shapes
    loss = problem.loss(a)
    assert loss.dim() == 0 and loss.dtype == torch.float32 and math.isfinite(loss.item())
    steps = run_steps(
        problem,
        lambda params: torch.optim.Adam(params, lr=0.01, foreach=False),
        5,
        seed=0,
        dtype=torch.float32,
        device=CPU,
    )
    assert steps.diverged_step is None and len(steps.losses) == 6
    assert steps.losses[-1] < steps.losses[0]
    assert problem.target_loss < steps.losses[0]  # a target that is not met at the start


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", [n for n, p in sorted(PROBLEMS.items()) if p.optimum])
def test_known_optima_have_the_stated_loss_and_no_gradient(name: str, dtype: torch.dtype) -> None:
    problem = PROBLEMS[name]
    assert problem.optimum is not None
    params = problem.optimum(dtype, CPU)
    loss = problem.loss(params)
    loss.backward()
    assert loss.item() == problem.optimum_loss == 0.0
    assert all(float(p.grad.abs().max()) == 0.0 for p in params)


def test_the_quadratic_is_ill_conditioned_with_its_optimum_where_stated() -> None:
    q, lam, x_star = _quadratic_data(torch.float64, CPU)
    hessian = q @ torch.diag(lam) @ q.T
    eig = torch.linalg.eigvalsh(hessian)
    assert float(eig.max() / eig.min()) == pytest.approx(QUADRATIC_CONDITION, rel=1e-6)
    optimum = PROBLEMS["quadratic"].optimum
    assert optimum is not None
    assert torch.equal(torch.cat([p.reshape(-1) for p in optimum(torch.float64, CPU)]), x_star)
    assert PROBLEMS["rosenbrock-2d"].make_params(0, torch.float32, CPU)[0].tolist() == [-1.5, 2.0]


# --- the runner ------------------------------------------------------------------------------


def test_workbench_backends_follow_torch_and_a_peer_shows_its_difference(tmp_path: Path) -> None:
    impls = '["torch", "workbench", "tests.test_convergence:adamax_other_eps"]'
    by = run_suite(write_suite(tmp_path, implementations=impls, steps=40))
    assert set(by) == {
        ("torch", "forloop"),
        ("torch", "foreach"),
        ("workbench", "forloop"),
        ("workbench", "foreach"),
        ("tests.test_convergence:adamax_other_eps", "default"),
    }
    assert by["torch", "forloop"]["distance_to_reference"] == 0.0  # it is the reference
    for impl, backend in [("torch", "foreach"), ("workbench", "forloop"), ("workbench", "foreach")]:
        row = by[impl, backend]
        assert row["distance_to_reference"] < 1e-5, (impl, backend)
        assert row["loss_curve"][-1] < row["loss_curve"][0]
    assert by["tests.test_convergence:adamax_other_eps", "default"]["distance_to_reference"] > 1e-3


@pytest.mark.compile
def test_the_compiled_backend_follows_torch_on_the_quadratic(tmp_path: Path) -> None:
    path = write_suite(tmp_path, implementations='["workbench"]', backends='["compiled"]', steps=20)
    (row,) = run_suite(path).values()
    assert "status" not in row  # only a diverged case sets one; the runner calls the rest "ok"
    assert row["distance_to_reference"] < 1e-5


def test_a_too_large_learning_rate_is_a_diverged_row_with_its_step(tmp_path: Path) -> None:
    if "SGD" not in OPTIMIZERS:
        pytest.skip("the workbench has no SGD yet")
    path = write_suite(
        tmp_path,
        optimizer="SGD",
        implementations='["workbench"]',
        backends='["forloop"]',
        problems='["rosenbrock-2d"]',
        lr=0.01,
        steps=100,
    )
    (row,) = run_suite(path).values()
    assert row["status"] == "diverged"
    step = row["diverged_step"]
    assert isinstance(step, int) and 1 <= step < 100 and f"after {step} steps" in row["error"]
    assert len(row["loss_curve"]) == step + 1 == len(row["trajectory"])
    assert not math.isfinite(row["loss_curve"][-1]) and math.isfinite(row["loss_curve"][-2])
    # torch.optim.SGD blows up the same way: the distance covers the steps both got through
    assert row["distance_to_reference"] < 1e-5


# --- suites from the command line -----------------------------------------------------------


def test_a_convergence_suite_runs_end_to_end_into_convergence_columns(tmp_path: Path) -> None:
    path = write_suite(tmp_path, problems='["rosenbrock-2d", "quadratic"]', lr=0.1, steps=25)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 0
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    df = load(run)
    assert len(df) == 8 and set(df["status"]) == {"ok"}  # 2 problems x torch, workbench x 2
    assert set(df["problem"]) == {"rosenbrock-2d", "quadratic"}
    assert (df["size"] == df["problem"]).all()
    for _, row in df.iterrows():
        assert len(row["loss_curve"]) == len(row["loss_time_s"]) == 26
        assert row["final_loss"] == row["loss_curve"][-1] and row["best_loss"] <= row["final_loss"]
        assert len(row["distance_curve"]) == 26 and row["distance_curve"][0] == 0.0  # same start
        assert row["distance_to_reference"] == max(row["distance_curve"]) < 1e-5
        assert list(row["loss_time_s"]) == sorted(row["loss_time_s"])
        if row["problem"] == "rosenbrock-2d":
            assert len(row["trajectory"]) == 26 and list(row["trajectory"][0]) == [-1.5, 2.0]
        else:
            assert row["trajectory"] is None
    hit = df[df["steps_to_target"].notna()]
    for _, row in hit.iterrows():
        k = int(row["steps_to_target"])
        assert row["loss_curve"][k] <= row["target_loss"] < row["loss_curve"][k - 1]
        assert row["time_to_target_s"] == row["loss_time_s"][k]


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (("quadratic", "quadratik"), ["axes.problems[0]", "unknown problem", "quadratic"]),
        (('kind = "convergence"', 'kind = "latency"'), ["axes.problems", "convergence suites"]),
        (("[convergence]", "[timing]\nbudget_s = 1.0\n[convergence]"), ["timing", "latency"]),
        (("problems =", "sizes ="), ["axes.sizes", "latency suites"]),
        (("steps = 30", "steps = 0"), ["convergence.steps", ">= 1"]),
    ],
)
def test_a_bad_convergence_suite_is_refused_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: tuple[str, str], words: list[str]
) -> None:
    path = write_suite(tmp_path, name="bad.toml")
    path.write_text(path.read_text().replace(*edit))
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    message = capsys.readouterr().out
    assert "bad.toml" in message and all(w in message for w in words), message
    assert not (tmp_path / "out").exists()


def test_latency_case_ids_are_unchanged_and_the_problem_enters_only_when_set() -> None:
    case = Case("Adamax", "torch", "forloop", "2x1k", ((1000,), (1000,)), "float32", "cpu", (), 0)
    before = {  # the canonical form of every case id written before problems existed
        "optimizer": "Adamax", "implementation": "torch", "backend": "forloop", "size": "2x1k",
        "shapes": ((1000,), (1000,)), "dtype": "float32", "device": "cpu", "flags": (),
        "repeat": 0,
    }  # fmt: skip
    canonical = json.dumps(before, sort_keys=True, separators=(",", ":"))
    assert case.case_id == hashlib.sha1(canonical.encode()).hexdigest()[:16]
    assert "problem" not in case.axes()
    with_problem = dataclasses.replace(case, problem="quadratic")
    assert with_problem.case_id != case.case_id
    assert with_problem.axes()["problem"] == "quadratic"


def test_the_shipped_convergence_suite_loads() -> None:
    suite = load_suite(Path(__file__).resolve().parents[1] / "suites" / "convergence.toml")
    cases = suite.cases()
    assert suite.kind == "convergence" and 0 < len(cases) <= 250
    assert {c.problem for c in cases} == {
        "rosenbrock-2d", "quadratic", "logistic-digits", "mlp-digits", "tiny-lm",
        "matrix-factorization",
    }  # fmt: skip
    assert "Adamax" in {c.optimizer for c in cases} <= set(OPTIMIZERS)
    # the closure and sparse-grad optimizers, each where it belongs
    assert {c.problem for c in cases if c.optimizer == "LBFGS"} == {"rosenbrock-2d", "quadratic"}
    on_mf = {c.optimizer for c in cases if c.problem == "matrix-factorization"}
    assert on_mf == {"Adam", "SparseAdam"}
    assert {c.problem for c in cases if c.optimizer == "SparseAdam"} == {"matrix-factorization"}
