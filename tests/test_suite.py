"""Suites: validation (file, key and reason in every error), expansion, overrides, case ids, and
the size profiles' parameter counts against the published totals."""

from __future__ import annotations

import dataclasses
import itertools
import math
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.optim_table import TABLE
from workbench.harness.cases import Case
from workbench.harness.shapes import UnknownProfileError, known_profiles, profile_shapes
from workbench.harness.suite import SuiteError, TimingSettings
from workbench.harness.suite_loader import implementation_backends, load_suite, torch_backends
from workbench.optim import OPTIMIZERS, Adamax

ROOT = Path(__file__).resolve().parents[1]

MINIMAL = """
[axes]
optimizers = ["Adamax"]
sizes = ["2x1k"]
"""


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def suite_error(path: Path, overrides: tuple[str, ...] = ()) -> SuiteError:
    with pytest.raises(SuiteError) as info:
        load_suite(path, overrides)
    return info.value


# --- expansion -------------------------------------------------------------------------------


def test_minimal_suite_fills_defaults(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, MINIMAL, "tiny.toml"))
    assert suite.name == "tiny"  # the file's stem
    assert suite.timing == TimingSettings(0.5, 20, 1000, 2.0)
    assert suite.measure.memory and suite.measure.launches and suite.measure.bandwidth_probe
    pairs = [(c.implementation, c.backend) for c in suite.cases()]
    # torch.optim.Adamax has no `fused` argument, and torch has no compiled backend of its own
    assert pairs == [
        ("workbench", "forloop"),
        ("workbench", "foreach"),
        ("workbench", "fused"),
        ("workbench", "compiled"),
        ("torch", "forloop"),
        ("torch", "foreach"),
    ]
    assert {(c.dtype, c.device, c.repeat, c.flags) for c in suite.cases()} == {
        ("float32", "cpu", 0, ())
    }


def test_expansion_is_the_full_product(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [axes]
        optimizers = ["Adamax"]
        implementations = ["workbench", "torch"]
        backends = ["forloop", "foreach"]
        sizes = ["2x1k", "1x10k"]
        dtypes = ["float32", "bfloat16"]
        devices = ["cpu"]
        repeats = 2
        [flags]
        weight_decay = [0.0, 0.1]
        maximize = [false, true]
        """,
    )
    cases = load_suite(path).cases()
    assert len(cases) == 2 * 2 * 2 * 2 * 4 * 2  # impl x backend x size x dtype x flags x repeat
    assert len({c.case_id for c in cases}) == len(cases)
    got = {(c.implementation, c.backend, c.size, c.dtype, c.flags, c.repeat) for c in cases}
    want = set(
        itertools.product(
            ["workbench", "torch"],
            ["forloop", "foreach"],
            ["2x1k", "1x10k"],
            ["float32", "bfloat16"],
            [
                (("maximize", m), ("weight_decay", w))
                for m, w in itertools.product([False, True], [0.0, 0.1])
            ],
            [0, 1],
        )
    )
    assert got == want


def test_order_puts_compared_cases_side_by_side(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [axes]
        optimizers = ["Adamax"]
        backends = ["forloop", "foreach"]
        sizes = ["2x1k", "1x10k"]
        repeats = 2
        """,
    )
    cases = load_suite(path).cases()
    # one full round per repeat, implementations and backends innermost
    assert [c.repeat for c in cases] == [0] * 8 + [1] * 8
    assert [(c.size, c.implementation, c.backend) for c in cases[:4]] == [
        ("2x1k", "workbench", "forloop"),
        ("2x1k", "workbench", "foreach"),
        ("2x1k", "torch", "forloop"),
        ("2x1k", "torch", "foreach"),
    ]
    assert cases == load_suite(path).cases()  # deterministic


def test_backends_per_implementation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert torch_backends("Adamax") == ("forloop", "foreach")
    assert torch_backends("Adam") == ("forloop", "foreach", "fused")  # Adam takes fused=
    assert torch_backends("NoSuchOptimizer") == ()  # torch.optim lacks it: no torch case
    assert implementation_backends("Adamax", "heavyball") == ("default",)
    # the workbench gets the intersection with what its class implements
    monkeypatch.setattr(Adamax, "backends", ("forloop", "compiled"))
    path = write(
        tmp_path,
        """
        [axes]
        optimizers = ["Adamax"]
        implementations = ["workbench", "heavyball", "mypkg.peers:make_adamax"]
        backends = ["foreach", "fused", "compiled"]
        sizes = ["2x1k"]
        """,
    )
    pairs = [(c.implementation, c.backend) for c in load_suite(path).cases()]
    assert pairs == [
        ("workbench", "compiled"),
        ("heavyball", "default"),
        ("mypkg.peers:make_adamax", "default"),
    ]


def test_matrices_only_optimizer_needs_sizes_of_matrices(tmp_path: Path) -> None:
    """Muon takes 2-D params only: torch's has no foreach, and a size with other params is the
    suite's mistake, refused before any work unless an exclude rule drops those cases."""
    assert torch_backends("Muon") == ("forloop",)
    text = """
        [axes]
        optimizers = ["Muon", "AdamW"]
        implementations = ["workbench", "torch"]
        sizes = ["mlp-2d", "2x1k"]
        [flags.Muon]
        weight_decay = [0.0]
        """
    error = suite_error(write(tmp_path, text))
    assert error.key == "axes.sizes"
    assert "Muon takes 2-D params only" in error.reason and "'2x1k'" in error.reason
    assert "mlp-2d" in error.reason  # the way out
    path = write(tmp_path, text + '[[exclude]]\noptimizer = "Muon"\nsize = "2x1k"\n')
    cases = load_suite(path).cases()
    muon = [(c.implementation, c.backend) for c in cases if c.optimizer == "Muon"]
    ours = [("workbench", b) for b in ("forloop", "foreach", "compiled")]
    assert muon == [*ours, ("torch", "forloop")]


def test_exclusions(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [axes]
        optimizers = ["Adamax"]
        implementations = ["workbench", "torch"]
        sizes = ["2x1k", "1x10k"]
        devices = ["cpu", "cuda"]
        [flags]
        betas = [[0.9, 0.999], [0.8, 0.99]]
        [[exclude]]
        device = "cpu"
        backend = ["fused", "compiled"]
        [[exclude]]
        implementation = "torch"
        size = "1x10k"
        [[exclude]]
        betas = [0.8, 0.99]
        device = "cuda"
        """,
    )
    cases = load_suite(path).cases()
    assert not [c for c in cases if c.device == "cpu" and c.backend in ("fused", "compiled")]
    assert not [c for c in cases if c.implementation == "torch" and c.size == "1x10k"]
    assert {c.flags for c in cases if c.device == "cuda"} == {(("betas", (0.9, 0.999)),)}
    # what is left, counted by hand: per size and betas, cpu: wb 2 + torch 2, cuda: wb 4 + torch 2
    per_betas = {"cpu": 2 + 2 + 2, "cuda": 4 + 2 + 4}  # 2x1k (wb+torch) + 1x10k (wb only)
    assert len(cases) == 2 * per_betas["cpu"] + per_betas["cuda"]


def test_cuda_cases_are_kept_without_a_gpu(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("[axes]", '[axes]\ndevices = ["cuda"]'))
    cases = load_suite(path).cases()
    assert cases and all(c.device == "cuda" for c in cases)


def test_flag_values_are_normalised(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "[flags]\nweight_decay = [0]\nbetas = [[0.9, 0.99]]\n")
    case = load_suite(path).cases()[0]
    assert case.flags == (("betas", (0.9, 0.99)), ("weight_decay", 0.0))
    assert isinstance(case.kwargs()["weight_decay"], float)
    axes = case.axes()
    assert axes["flag_betas"] == "(0.9, 0.99)" and axes["flag_weight_decay"] == 0.0
    assert (axes["n_tensors"], axes["numel"]) == (2, 2000)
    assert {"optimizer", "implementation", "backend", "size", "dtype", "device", "repeat"} <= set(
        axes
    )


def test_per_optimizer_flag_table(tmp_path: Path) -> None:
    text = MINIMAL + "[flags]\nweight_decay = [0.0]\n[flags.Adamax]\nweight_decay = [0.5]\n"
    cases = load_suite(write(tmp_path, text)).cases()
    assert {c.flags for c in cases} == {(("weight_decay", 0.5),)}  # the optimizer's table wins


# --- overrides -------------------------------------------------------------------------------


def test_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    suite = load_suite(
        path,
        [
            "timing.budget_s=1",
            'axes.dtypes=["bfloat16", "float16"]',
            "suite.name=smoke",
            "flags.weight_decay=[0.0, 0.1]",
            "measure.memory=false",
        ],
    )
    assert suite.timing.budget_s == 1.0 and isinstance(suite.timing.budget_s, float)
    assert suite.name == "smoke"
    assert not suite.measure.memory
    cases = suite.cases()
    assert {c.dtype for c in cases} == {"bfloat16", "float16"}
    assert {dict(c.flags)["weight_decay"] for c in cases} == {0.0, 0.1}
    assert len(cases) == 6 * 2 * 2
    assert suite.overrides[0] == "timing.budget_s=1"
    assert load_suite(path).timing.budget_s == 2.0  # the file itself is untouched


@pytest.mark.parametrize(
    ("override", "key", "reason"),
    [
        ("timing.budget_s", "--set timing.budget_s", "expected key=value"),
        ("axis.dtypes=[]", "--set axis.dtypes", "did you mean 'axes'"),
        ("timing.budget=1", "--set timing.budget", "did you mean 'budget_s'"),
        ("axes.dtypes=[float32", "--set axes.dtypes", "is not a TOML value"),
        ("axes.repeats.x=1", "--set axes.repeats.x", "too many parts"),
        ('axes.dtypes=["float8"]', "axes.dtypes[0]", "set by --set axes.dtypes"),
        ("timing.budget_s=-1", "timing.budget_s", "set by --set timing.budget_s"),
        ("axes.dtypes=bfloat16", "axes.dtypes", "expected a list of strings"),
    ],
)
def test_bad_overrides(tmp_path: Path, override: str, key: str, reason: str) -> None:
    path = write(tmp_path, MINIMAL)
    err = suite_error(path, (override,))
    assert str(err).startswith(f"{path}: {key}: ")
    assert reason in str(err)


# --- validation ------------------------------------------------------------------------------

AXES_HEAD = '[axes]\noptimizers = ["Adamax"]\nsizes = ["2x1k"]\n'

BAD_SUITES = [
    # (suite text, key, reason fragment)
    ('[axes]\noptimizers = ["Adamax"]\nsizes = ["2x1k"\n', "line 3", "Unclosed array"),
    ('[axes]\noptimizers = ["Adamax"]\nsizes = ["2x1k",,]\n[x]\n', "line 3", "not valid TOML"),
    (AXES_HEAD + "[axis]\ndtypes = []\n", "axis", "did you mean 'axes'"),
    (AXES_HEAD + "[timing]\nbudget = 1\n", "timing.budget", "did you mean 'budget_s'"),
    (AXES_HEAD + 'optimizer = ["Adamax"]\n', "axes.optimizer", "did you mean 'optimizers'"),
    (AXES_HEAD + "[measure]\nmemory = 1\n", "measure.memory", "expected a boolean, got int 1"),
    (AXES_HEAD + '[timing]\nbudget_s = "1"\n', "timing.budget_s", "expected a number"),
    (AXES_HEAD + "repeats = 0\n", "axes.repeats", "at least 1"),
    (AXES_HEAD + 'repeats = "2"\n', "axes.repeats", "expected an integer"),
    (AXES_HEAD + "[timing]\nmin_steps = 20\nmax_steps = 10\n", "timing.max_steps", ">= min_steps"),
    ('[axes]\noptimizers = "Adamax"\nsizes = ["2x1k"]\n', "axes.optimizers", "a list of strings"),
    ('[axes]\nsizes = ["2x1k"]\n', "axes.optimizers", "required"),
    ('[axes]\noptimizers = ["Adamx"]\nsizes = ["2x1k"]\n', "axes.optimizers[0]", "'Adamax'"),
    ('[axes]\noptimizers = []\nsizes = ["2x1k"]\n', "axes.optimizers", "at least one value"),
    (AXES_HEAD + 'backends = ["forloop", "fussed"]\n', "axes.backends[1]", "unknown backend"),
    (AXES_HEAD + 'implementations = ["torchh"]\n', "axes.implementations[0]", "'torch'"),
    (AXES_HEAD + 'implementations = ["a b:c"]\n', "axes.implementations[0]", "module:factory"),
    (AXES_HEAD + 'dtypes = ["fp32"]\n', "axes.dtypes[0]", "unknown dtype 'fp32'"),
    (AXES_HEAD + 'dtypes = ["float32", "float32"]\n', "axes.dtypes[1]", "listed twice"),
    (AXES_HEAD + 'devices = ["tpu"]\n', "axes.devices[0]", "unknown device 'tpu'"),
    ('[axes]\noptimizers = ["Adamax"]\nsizes = ["100x"]\n', "axes.sizes[0]", "unknown size"),
    ('[axes]\noptimizers = ["Adamax"]\nsizes = ["0x10"]\n', "axes.sizes[0]", "at least 1"),
    ('[axes]\noptimizers = ["Adamax"]\nsizes = ["2Gx1"]\n', "axes.sizes[0]", "tensors"),
    (AXES_HEAD + "[flags]\nmomentum = [0.9]\n", "flags.momentum", "takes no argument"),
    (AXES_HEAD + "[flags]\nweight_decy = [0.1]\n", "flags.weight_decy", "'weight_decay'"),
    (AXES_HEAD + "[flags]\nforeach = [true]\n", "flags.foreach", "backends axis"),
    (AXES_HEAD + "[flags]\nweight_decay = 0.1\n", "flags.weight_decay", "non-empty list"),
    (AXES_HEAD + "[flags]\nmaximize = [1]\n", "flags.maximize[0]", "expected a boolean"),
    (AXES_HEAD + "[flags]\nlr = [true]\n", "flags.lr[0]", "expected a number"),
    (AXES_HEAD + "[flags]\nbetas = [[0.9]]\n", "flags.betas[0]", "an array of 2"),
    (AXES_HEAD + "[flags]\nweight_decay = [0, 0.0]\n", "flags.weight_decay[1]", "listed twice"),
    (AXES_HEAD + "[flags]\nweight_decay = [-1.0]\n", "flags", "Invalid weight_decay value"),
    (AXES_HEAD + "[flags]\nbetas = [[0.9, 1.5]]\n", "flags", "Invalid beta parameter"),
    (AXES_HEAD + "[flags.Adamx]\nlr = [0.1]\n", "flags.Adamx", "did you mean 'Adamax'"),
    (AXES_HEAD + "[flags.Adamax]\nmomentum = [0.1]\n", "flags.Adamax.momentum", "no argument"),
    (AXES_HEAD + '[[exclude]]\nbackends = "fused"\n', "exclude[0].backends", "'backend'"),
    (AXES_HEAD + '[[exclude]]\nbackend = "fussed"\n', "exclude[0].backend", "unknown backend"),
    (AXES_HEAD + '[[exclude]]\nsize = "huge"\n', "exclude[0].size", "unknown size"),
    (AXES_HEAD + "[[exclude]]\nrepeat = -1\n", "exclude[0].repeat", "repeat index"),
    (AXES_HEAD + "[[exclude]]\n", "exclude[0]", "non-empty table"),
    (AXES_HEAD + '[exclude]\ndevice = "cpu"\n', "exclude", "array of tables"),
    (AXES_HEAD + '[[exclude]]\ndevice = "cpu"\n', "exclude", "drop all 6 cases"),
    (
        AXES_HEAD + 'implementations = ["torch"]\nbackends = ["compiled"]\n',
        "axes.backends",
        "offers any of",
    ),
]


@pytest.mark.parametrize(("text", "key", "reason"), BAD_SUITES, ids=[b[1] for b in BAD_SUITES])
def test_invalid_suite_names_file_key_and_reason(
    tmp_path: Path, text: str, key: str, reason: str
) -> None:
    path = write(tmp_path, text)
    err = suite_error(path)
    assert (err.path, err.key) == (path, key)
    assert str(err).startswith(f"{path}: {key}: ")
    assert reason in err.reason


def test_missing_file_is_a_suite_error(tmp_path: Path) -> None:
    err = suite_error(tmp_path / "nope.toml")
    assert err.key == "file" and "nope.toml" in str(err)


def test_suite_error_survives_pickling() -> None:
    # the runner may hand errors across processes
    err = pickle.loads(pickle.dumps(SuiteError("a.toml", "axes.sizes", "bad")))
    assert str(err) == "a.toml: axes.sizes: bad"


# --- case ids --------------------------------------------------------------------------------


def _case(**changes: object) -> Case:
    base = Case(
        optimizer="Adamax",
        implementation="workbench",
        backend="foreach",
        size="2x1k",
        shapes=((1000,), (1000,)),
        dtype="float32",
        device="cpu",
        flags=(("betas", (0.9, 0.999)), ("weight_decay", 0.0)),
        repeat=0,
    )
    return dataclasses.replace(base, **changes)


def test_case_id_is_pinned() -> None:
    # Runs resumed with --resume match rows by case_id: changing the scheme orphans old runs.
    assert _case().case_id == "e02d1c238b4fc1bf"


def test_case_id_is_the_same_in_another_process() -> None:
    code = (
        "from workbench.harness.cases import Case; "
        "print(Case('Adamax', 'workbench', 'foreach', '2x1k', ((1000,), (1000,)), 'float32', "
        "'cpu', (('betas', (0.9, 0.999)), ('weight_decay', 0.0)), 0).case_id)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == _case().case_id


@pytest.mark.parametrize(
    "change",
    [
        {"optimizer": "Adam"},
        {"implementation": "torch"},
        {"backend": "forloop"},
        {"size": "1x2k"},
        {"shapes": ((2000,),)},
        {"dtype": "bfloat16"},
        {"device": "cuda"},
        {"flags": (("betas", (0.9, 0.99)), ("weight_decay", 0.0))},
        {"flags": (("betas", (0.9, 0.999)),)},
        {"repeat": 1},
    ],
)
def test_case_id_changes_with_every_axis(change: dict[str, object]) -> None:
    assert _case(**change).case_id != _case().case_id


# --- size profiles ---------------------------------------------------------------------------


def _count(name: str) -> tuple[int, int]:
    shapes = profile_shapes(name)
    return len(shapes), sum(math.prod(s) for s in shapes)


def test_grid_profiles() -> None:
    assert profile_shapes("100x100k") == ((100_000,),) * 100
    assert profile_shapes("1x64M") == ((64_000_000,),)
    assert profile_shapes("2kx3") == ((3,),) * 2000
    assert _count("10x1G") == (10, 10_000_000_000)


def test_model_profiles_match_published_totals() -> None:
    assert _count("resnet50") == (161, 25_557_032)  # torchvision resnet50
    assert _count("gpt2-small") == (148, 124_439_808)  # HF gpt2, lm_head tied to wte
    # Llama 3.2 1B config: hidden 2048, 32 heads, 8 kv heads (head_dim 64), ffn 8192, 16 layers,
    # vocab 128256, tied embeddings
    d, kv, ffn, vocab = 2048, 8 * 2048 // 32, 8192, 128256
    block = 2 * d * d + 2 * kv * d + 3 * d * ffn + 2 * d
    assert _count("llama-1b-block") == (9, block)
    assert _count("llama-1b") == (1 + 16 * 9 + 1, vocab * d + 16 * block + d)
    assert vocab * d + 16 * block + d == 1_235_814_400  # meta-llama/Llama-3.2-1B's count
    # matrices only, for Muon: 784-256-256-256-10 without biases
    assert profile_shapes("mlp-2d") == ((256, 784), (256, 256), (256, 256), (10, 256))
    assert _count("mlp-2d") == (4, 334_336)


def test_unknown_profile_lists_the_known_names() -> None:
    for bad in ("gpt3", "100x", "x100", "1.5x10"):
        with pytest.raises(ValueError) as info:
            profile_shapes(bad)
        assert isinstance(info.value, KeyError) and isinstance(info.value, UnknownProfileError)
        assert all(name in str(info.value) for name in known_profiles())
        assert repr(bad) in str(info.value)


# --- the shipped suites ----------------------------------------------------------------------


def test_quick_suite_loads_and_stays_small() -> None:
    suite = load_suite(ROOT / "suites" / "quick.toml")
    cases = suite.cases()
    assert 0 < len(cases) <= 80  # `make bench` in at most 4 minutes on 2 cores
    assert {c.device for c in cases} == {"cpu"}
    # our fused backend is timed on CPU where it runs a C kernel (the Triton interpreter is not
    # worth timing); torch's where torch has CPU fused kernels
    ours_fused = {
        c.optimizer for c in cases if c.backend == "fused" and c.implementation == "workbench"
    }
    assert ours_fused == {n for n, cls in OPTIMIZERS.items() if cls.cpu_kernel is not None}
    # ... which are the optimizers whose table entries declare C-kernel configs
    assert ours_fused == {e.name for e in TABLE if e.fused_cpu_configs}
    torch_fused = {
        c.optimizer for c in cases if c.backend == "fused" and c.implementation == "torch"
    }
    assert torch_fused == {"Adam", "AdamW", "SGD", "Adagrad"}
    assert {"workbench", "torch"} <= {c.implementation for c in cases}
    # every optimizer against torch.optim's, those with a closure step (LBFGS) or sparse grads
    # (SparseAdam) included, and those torch lacks against a peer's; the compiled backend is
    # the full sweep's (minutes of compiling)
    assert {c.optimizer for c in cases} == set(OPTIMIZERS)
    in_torch = {name for name in OPTIMIZERS if hasattr(torch.optim, name)}
    assert {c.optimizer for c in cases if c.implementation == "torch"} == in_torch
    for name in set(OPTIMIZERS) - in_torch:
        assert {c.implementation for c in cases if c.optimizer == name} >= {
            "workbench",
            "pytorch_optimizer",
        }
    assert "compiled" not in {c.backend for c in cases}
    assert {"LBFGS", "SparseAdam"} <= {c.optimizer for c in cases if c.implementation == "torch"}
    assert suite.sparse.density == 0.01


def test_gpu_suite_loads_and_spans_sizes() -> None:
    cases = load_suite(ROOT / "suites" / "gpu.toml").cases()
    assert {c.device for c in cases} == {"cuda"}
    assert {c.dtype for c in cases} == {"float32", "bfloat16"}
    wb = {c.backend for c in cases if c.implementation == "workbench"}
    assert wb == {"forloop", "foreach", "fused", "compiled"}
    numels = {c.numel for c in cases}
    assert min(numels) <= 1_000_000 and max(numels) > 1_000_000_000
