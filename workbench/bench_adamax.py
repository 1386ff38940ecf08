"""`make bench` until the harness lands: Adamax, every backend, against torch.optim.Adamax.

Steps 100 tensors of 100k elements (the issue's reference size) with each implementation, in
rounds that visit every implementation once per round, so that drift of the machine (clocks,
other load) hits all of them alike. Prints medians, IQRs and the ratio to torch's best, and
writes the raw samples to results/<run id>/adamax.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

from workbench.harness.timing import Timing, time_steps
from workbench.optim import Adamax


def _make_case(
    factory: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    n_tensors: int,
    numel: int,
    dtype: torch.dtype,
    device: torch.device,
) -> Callable[[], None]:
    gen = torch.Generator(device="cpu").manual_seed(0)
    params = [torch.randn(numel, generator=gen).to(device, dtype) for _ in range(n_tensors)]
    for p in params:
        p.requires_grad_(True)
        # real-looking grads: timing zeros would let max/abs short-cut nothing, but would hide
        # denormal and NaN slow paths; random normals are the honest input.
        p.grad = torch.randn(numel, generator=gen).to(device, dtype)
    opt = factory(params)
    return opt.step


def implementations(device: torch.device) -> dict[str, Callable]:
    impls: dict[str, Callable] = {
        "torch forloop": lambda ps: torch.optim.Adamax(ps, foreach=False),
        "torch foreach": lambda ps: torch.optim.Adamax(ps, foreach=True),
    }
    for backend in Adamax.backends:
        if backend == "fused" and device.type != "cuda":
            continue  # the Triton kernel needs a GPU; on CPU it only runs in the interpreter
        impls[f"workbench {backend}"] = lambda ps, b=backend: Adamax(ps, backend=b)
    return impls


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=100)
    parser.add_argument("--numel", type=int, default=100_000)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    impls = implementations(device)
    steps = {
        name: _make_case(f, args.tensors, args.numel, dtype, device) for name, f in impls.items()
    }
    first: dict[str, float] = {}
    samples: dict[str, list[float]] = {name: [] for name in impls}
    for r in range(args.rounds):
        for name, step in steps.items():
            t: Timing = time_steps(step, device, warmup_s=0.2, min_steps=10, budget_s=0.5)
            first.setdefault(name, t.first_call_s)
            samples[name].extend(t.samples_s)
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    numel = args.tensors * args.numel
    minimal_bytes = Adamax.minimal_bytes(numel, dtype)
    medians = {name: Timing(0.0, s).median_s for name, s in samples.items()}
    torch_best = min(v for k, v in medians.items() if k.startswith("torch"))
    print(
        f"\nAdamax step, {args.tensors} x {args.numel:,} {args.dtype} on {device.type} "
        f"({torch.get_num_threads()} threads, torch {torch.__version__})"
    )
    print(f"{'implementation':<20}{'median ms':>11}{'IQR ms':>9}{'GB/s':>8}{'vs torch best':>15}")
    for name, s in samples.items():
        t = Timing(first[name], s)
        print(
            f"{name:<20}{t.median_s * 1e3:>11.2f}{t.iqr_s * 1e3:>9.2f}"
            f"{minimal_bytes / t.median_s / 1e9:>8.1f}{torch_best / t.median_s:>14.2f}x"
        )

    run_dir = args.out / time.strftime("adamax-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "case": {"tensors": args.tensors, "numel": args.numel, "dtype": args.dtype},
        "device": device.type,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "git_sha": _git_sha(),
        "minimal_bytes": minimal_bytes,
        "first_call_s": first,
        "samples_s": samples,
    }
    (run_dir / "adamax.json").write_text(json.dumps(record, indent=1))
    print(f"\nraw samples: {run_dir / 'adamax.json'}")


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
            cwd=os.path.dirname(__file__),
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


if __name__ == "__main__":
    main()
