"""What the compiled backend generates on CPU: per-step scalars once per step, outside the loops.

Inductor would otherwise recompute an update's fp64 bias corrections (pow, sqrt of the step
count) for every vector of every param (workbench.optim._materialize); this checks the generated
C++, not a timing.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch._inductor.utils import run_and_get_code

import workbench.optim as W
from tests.optim_table import TABLE

_LOOP = re.compile(r"\bfor\s*\(")


def _lines_inside_loops(source: str) -> list[str]:
    """The lines of C++ `source` that sit in the body of a for loop (by brace depth)."""
    depth, loop_depths, inside = 0, [], []
    pending_loop = False
    for line in source.splitlines():
        if _LOOP.search(line):
            pending_loop = True
        if loop_depths:
            inside.append(line)
        for char in line:
            if char == "{":
                depth += 1
                if pending_loop:
                    loop_depths.append(depth)
                    pending_loop = False
            elif char == "}":
                if loop_depths and loop_depths[-1] == depth:
                    loop_depths.pop()
                depth -= 1
    return inside


def _generated_cpp(optimizer: torch.optim.Optimizer) -> str:
    torch._dynamo.reset()
    _, codes = run_and_get_code(optimizer.step)
    return "\n".join(codes)


@pytest.mark.compile
@pytest.mark.parametrize("name", [e.name for e in TABLE if e.compiled_codegen])
def test_step_scalars_are_computed_outside_the_element_loops(name: str) -> None:
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(4096, generator=gen).requires_grad_() for _ in range(2)]
    for p in params:
        p.grad = torch.randn(4096, generator=gen)
    code = _generated_cpp(W.OPTIMIZERS[name](params, backend="compiled"))
    pows = [line for line in code.splitlines() if "std::pow" in line]
    assert pows, f"{name}: no pow in the generated code; the check below would be vacuous"
    in_loops = [line for line in _lines_inside_loops(code) if "std::pow" in line]
    assert not in_loops, f"{name}: per-step scalar math inside element loops:\n" + "\n".join(
        in_loops[:4]
    )


def test_the_loop_finder_sees_a_pow_inside_a_loop() -> None:
    source = "auto a = std::pow(x, t);\nfor(int i=0; i<n; i++)\n{\n  y[i] = std::pow(b, t);\n}\n"
    assert [line.strip() for line in _lines_inside_loops(source)] == [
        "y[i] = std::pow(b, t);",
        "}",
    ]
