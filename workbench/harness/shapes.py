"""Size profiles: the parameter shapes a case steps over.

Two kinds of name:

- a grid ``"NxM"``: N tensors of M elements each, with decimal suffixes k (1e3), M (1e6) and
  G (1e9) on either number: ``"100x100k"`` is 100 tensors of 100_000 elements, ``"1x64M"`` one
  tensor of 64_000_000. Grids isolate one thing: launch overhead (many small tensors) or
  bandwidth (few large ones).
- a model: the shapes of a real network's parameters, generated from its published config (no
  weights, no downloads), in the order ``named_parameters()`` yields them. Real models mix a few
  huge tensors (embeddings) with many tiny ones (norms, biases), which is what multi-tensor
  backends must handle well.

  ``resnet50``        torchvision ResNet-50: 161 tensors, 25,557,032 parameters
  ``gpt2-small``      GPT-2 124M (HF GPT2Model, lm_head tied): 148 tensors, 124,439,808
  ``llama-1b-block``  one decoder block of Llama 3.2 1B: 9 tensors, 60,821,504
  ``llama-1b``        Llama 3.2 1B (16 blocks, tied embeddings, final norm): 146 tensors,
                      1,235,814,400
  ``gpt2-embeddings`` GPT-2's token and position tables (wte, wpe): 2 tensors, 39,383,808; the
                      params an nn.Embedding(sparse=True) model gives sparse grads (SparseAdam)
  ``mlp-2d``          a bias-free MNIST MLP, 784-256-256-256-10: 4 matrices, 334,336; for
                      optimizers of 2-D params only (Muon), which every other profile trips up
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache

Shape = tuple[int, ...]
Shapes = tuple[Shape, ...]

_SUFFIX = {"": 1, "k": 1_000, "K": 1_000, "M": 1_000_000, "G": 1_000_000_000}
MAX_TENSORS = 1_000_000
_GRID = re.compile(r"^(\d+)([kKMG]?)x(\d+)([kKMG]?)$")


class UnknownProfileError(ValueError, KeyError):
    """A size profile name that is neither a grid nor a known model.

    A ValueError for callers validating input, a KeyError for callers treating profiles as a
    mapping; its str is the plain message (KeyError's own str would quote it).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _resnet50() -> Shapes:
    """torchvision.models.resnet50: Bottleneck blocks [3, 4, 6, 3], expansion 4, 1000 classes."""
    shapes: list[Shape] = [(64, 3, 7, 7), (64,), (64,)]  # conv1, bn1 weight and bias

    def conv_bn(out_ch: int, in_ch: int, k: int) -> list[Shape]:
        return [(out_ch, in_ch, k, k), (out_ch,), (out_ch,)]  # convs have no bias in ResNet

    in_ch = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        out_ch = width * 4
        for block in range(blocks):
            shapes += conv_bn(width, in_ch, 1)
            shapes += conv_bn(width, width, 3)
            shapes += conv_bn(out_ch, width, 1)
            if block == 0:  # downsample: 1x1 conv + bn on the residual path
                shapes += conv_bn(out_ch, in_ch, 1)
            in_ch = out_ch
    shapes += [(1000, 2048), (1000,)]  # fc
    return tuple(shapes)


_GPT2 = {"vocab": 50257, "n_positions": 1024, "d": 768, "n_layer": 12}


def _gpt2_embeddings() -> Shapes:
    c = _GPT2
    return ((c["vocab"], c["d"]), (c["n_positions"], c["d"]))  # wte, wpe


def _gpt2_small() -> Shapes:
    """HF GPT2Model for config gpt2: Conv1D weights are stored (in, out)."""
    d, n_layer = _GPT2["d"], _GPT2["n_layer"]
    shapes: list[Shape] = list(_gpt2_embeddings())
    for _ in range(n_layer):
        shapes += [
            (d,), (d,),  # ln_1
            (d, 3 * d), (3 * d,),  # attn.c_attn
            (d, d), (d,),  # attn.c_proj
            (d,), (d,),  # ln_2
            (d, 4 * d), (4 * d,),  # mlp.c_fc
            (4 * d, d), (d,),  # mlp.c_proj
        ]  # fmt: skip
    shapes += [(d,), (d,)]  # ln_f
    return tuple(shapes)


# Llama 3.2 1B config: hidden 2048, 32 heads of 64, 8 kv heads (GQA), ffn 8192, 16 layers,
# vocab 128256, tie_word_embeddings, no biases, RMSNorm (weight only).
_LLAMA_1B = {"d": 2048, "heads": 32, "kv_heads": 8, "ffn": 8192, "layers": 16, "vocab": 128256}


def _llama_block(d: int, heads: int, kv_heads: int, ffn: int) -> Shapes:
    """HF LlamaDecoderLayer: nn.Linear weights are (out, in)."""
    kv = d // heads * kv_heads
    return (
        (d, d), (kv, d), (kv, d), (d, d),  # self_attn q, k, v, o
        (ffn, d), (ffn, d), (d, ffn),  # mlp gate, up, down
        (d,), (d,),  # input_layernorm, post_attention_layernorm
    )  # fmt: skip


def _llama_1b_block() -> Shapes:
    c = _LLAMA_1B
    return _llama_block(c["d"], c["heads"], c["kv_heads"], c["ffn"])


def _llama_1b() -> Shapes:
    c = _LLAMA_1B
    # embed_tokens (lm_head is the same tensor), the blocks, the final norm
    return ((c["vocab"], c["d"]),) + _llama_1b_block() * c["layers"] + ((c["d"],),)


def _mlp_2d() -> Shapes:
    """nn.Linear(bias=False) weights, (out, in): matrices only, and small enough that Muon's
    Newton-Schulz matmuls take a fraction of a second per step on a laptop CPU."""
    widths = (784, 256, 256, 256, 10)
    return tuple((out, inp) for inp, out in zip(widths, widths[1:]))


MODEL_PROFILES: dict[str, Callable[[], Shapes]] = {
    "resnet50": _resnet50,
    "gpt2-small": _gpt2_small,
    "gpt2-embeddings": _gpt2_embeddings,
    "llama-1b-block": _llama_1b_block,
    "llama-1b": _llama_1b,
    "mlp-2d": _mlp_2d,
}


def _grid_number(digits: str, suffix: str) -> int:
    return int(digits) * _SUFFIX[suffix]


@cache
def profile_shapes(name: str) -> Shapes:
    """The parameter shapes of a size profile (a grid "NxM" or a model name)."""
    grid = _GRID.match(name)
    if grid:
        n = _grid_number(grid[1], grid[2])
        numel = _grid_number(grid[3], grid[4])
        if n < 1 or numel < 1:
            raise UnknownProfileError(f"size {name!r}: both counts of a grid must be at least 1")
        if n > MAX_TENSORS:
            # the shape tuple alone would take gigabytes; no real model has this many tensors
            raise UnknownProfileError(f"size {name!r}: more than {MAX_TENSORS:,} tensors")
        return ((numel,),) * n
    if name in MODEL_PROFILES:
        return MODEL_PROFILES[name]()
    raise UnknownProfileError(
        f"unknown size profile {name!r}: expected a grid 'NxM' (N tensors of M elements, "
        f"suffixes k/M/G, e.g. '100x100k') or one of {sorted(MODEL_PROFILES)}"
    )


def known_profiles() -> list[str]:
    """The model profile names (grids are open-ended, so not listed)."""
    return sorted(MODEL_PROFILES)
