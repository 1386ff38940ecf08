"""Each UpdateSpec agrees with what it declares for: its C kernel's source, its class, its bytes.

The C kernels read hyperparameters, flags and table rows by the names their spec generates
(``hyper[WB_H_LR]``), so a name the source uses and the spec lacks fails to compile. The other
way round is silent: a hyperparameter the spec passes and the source never reads would be ignored
by the fused step. Both directions are checked here, for every optimizer declared by a spec.
"""

from __future__ import annotations

import re

import pytest
import torch

from workbench.optim import OPTIMIZERS
from workbench.optim._kernels.cpu.build import SOURCE_DIR

SPECCED = {name: cls for name, cls in OPTIMIZERS.items() if cls.spec is not None}
_MACRO = re.compile(r"\bWB_(H|F|ROW)_(\w+)")


def test_some_optimizers_are_declared_by_a_spec() -> None:
    # every optimizer with a fused kernel, once the redesign is through; these so far
    assert len(SPECCED) >= 8


@pytest.mark.parametrize("name", sorted(SPECCED))
def test_c_kernel_reads_every_name_its_spec_defines(name: str) -> None:
    spec = SPECCED[name].spec
    source = (SOURCE_DIR / f"{spec.kernel}.c").read_text()
    used = {f"WB_{kind}_{macro}" for kind, macro in _MACRO.findall(source)}
    defined = {define.partition("=")[0] for define in spec.c_defines()} - {"WB_ROWS"}
    assert used <= defined, f"{spec.kernel}.c uses names its spec lacks: {used - defined}"
    # every hyperparameter and flag the launch passes is read; every row the table holds too
    assert defined <= used, f"{spec.kernel}.c never reads {defined - used}"


@pytest.mark.parametrize("name", sorted(SPECCED))
def test_class_attributes_follow_from_the_spec(name: str) -> None:
    cls = SPECCED[name]
    spec = cls.spec
    assert cls.state_names == spec.state_names and cls.cpu_kernel == spec.kernel
    assert cls.minimal_bytes(1000, torch.float32) == (spec.reads + spec.writes) * 1000 * 4
    # state_dict keys under the default flags: step (where the spec counts steps) and the
    # declared state, but what a flag turns on
    param = torch.nn.Parameter(torch.randn(4))
    param.grad = torch.randn(4)
    optimizer = cls([param], backend="forloop")
    optimizer.step()
    keys = set(optimizer.state_dict()["state"].get(0, {}))  # (a stateless step keeps no entry)
    wanted = {*spec.state_names, *(("step",) if spec.has_step else ())} - set(spec.optional)
    assert keys == wanted
