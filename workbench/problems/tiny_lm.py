"""A tiny GPT (1 layer, d=32, 2 heads) learning a synthetic English-like grammar.

The text is generated here from a fixed seed: sentences with subject-verb agreement across
relative clauses ("the cat that the dogs see chases a bird ."), so attention has something
long-range to learn and the loss falls well below the unigram entropy (and on, towards
memorising the batch: it is a test of optimizers, not of generalisation). Full batch over a fixed
set of sequences: every implementation sees the same tokens at every step.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

from ._problem import Problem, leaves

N_LAYERS, D_MODEL, N_HEADS = 1, 32, 2
SEQ_LEN, N_SEQS = 32, 32
_TEXT_SEED = 0

_NOUNS = {"s": ["cat", "dog", "bird", "fox"], "p": ["cats", "dogs", "birds", "foxes"]}
_VERBS = {"s": ["sees", "likes", "chases"], "p": ["see", "like", "chase"]}
_DETS = {"s": ["the", "a"], "p": ["the", "some"]}
_ADJS = ["big", "small", "red"]
VOCAB: tuple[str, ...] = tuple(
    sorted({w for words in (*_NOUNS.values(), *_VERBS.values(), *_DETS.values()) for w in words})
    + [*_ADJS, "that", "."]
)


def _noun_phrase(rng: random.Random, number: str, depth: int) -> list[str]:
    words = [rng.choice(_DETS[number])]
    if rng.random() < 0.3:
        words.append(rng.choice(_ADJS))
    words.append(rng.choice(_NOUNS[number]))
    if depth < 1 and rng.random() < 0.3:
        # an object relative clause: its own subject agrees with its own verb, and the head noun
        # (number `number`) must still agree with the main verb after it
        inner = rng.choice("sp")
        words += ["that", *_noun_phrase(rng, inner, depth + 1), rng.choice(_VERBS[inner])]
    return words


def _sentence(rng: random.Random) -> list[str]:
    number = rng.choice("sp")
    subject = _noun_phrase(rng, number, 0)
    return [*subject, rng.choice(_VERBS[number]), *_noun_phrase(rng, rng.choice("sp"), 0), "."]


def corpus(n_tokens: int, seed: int = _TEXT_SEED) -> list[str]:
    """At least `n_tokens` words of generated text (Python's Mersenne Twister: the same words on
    every machine and Python version)."""
    rng = random.Random(seed)
    words: list[str] = []
    while len(words) < n_tokens:
        words += _sentence(rng)
    return words


@cache
def _tokens_cpu() -> Tensor:
    index = {w: i for i, w in enumerate(VOCAB)}
    words = corpus(N_SEQS * (SEQ_LEN + 1))
    ids = torch.tensor([index[w] for w in words[: N_SEQS * (SEQ_LEN + 1)]])
    return ids.view(N_SEQS, SEQ_LEN + 1)


@cache
def tokens(device: torch.device) -> Tensor:
    """[N_SEQS, SEQ_LEN + 1] token ids: inputs are [:, :-1], targets [:, 1:]."""
    return _tokens_cpu().to(device)


# Parameter order, as GPT's named_parameters() would give them (lm_head tied to tok_emb).
_LAYER = ("ln1_w", "ln1_b", "qkv_w", "qkv_b", "out_w", "out_b", "ln2_w", "ln2_b",
          "fc_w", "fc_b", "proj_w", "proj_b")  # fmt: skip


def _init(seed: int, dtype: torch.dtype, device: torch.device) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    d, v = D_MODEL, len(VOCAB)

    def normal(*shape: int, std: float = 0.02) -> Tensor:
        return torch.randn(shape, generator=gen) * std

    # nanoGPT's init: N(0, 0.02), residual projections scaled down by sqrt(2 * layers)
    residual_std = 0.02 / math.sqrt(2 * N_LAYERS)
    params = [normal(v, d), normal(SEQ_LEN, d)]
    for _ in range(N_LAYERS):
        params += [torch.ones(d), torch.zeros(d), normal(d, 3 * d), torch.zeros(3 * d)]
        params += [normal(d, d, std=residual_std), torch.zeros(d), torch.ones(d), torch.zeros(d)]
        params += [normal(d, 4 * d), torch.zeros(4 * d)]
        params += [normal(4 * d, d, std=residual_std), torch.zeros(d)]
    params += [torch.ones(d), torch.zeros(d)]
    return leaves(params, dtype, device)


def _attention(x: Tensor, qkv_w: Tensor, qkv_b: Tensor, out_w: Tensor, out_b: Tensor) -> Tensor:
    b, t, d = x.shape
    q, k, v = (x @ qkv_w + qkv_b).split(d, dim=-1)
    q, k, v = (z.view(b, t, N_HEADS, d // N_HEADS).transpose(1, 2) for z in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return y.transpose(1, 2).reshape(b, t, d) @ out_w + out_b


def lm_loss(params: Sequence[Tensor]) -> Tensor:
    tok_emb, pos_emb = params[0], params[1]
    ids = tokens(tok_emb.device)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    # F.embedding, not tok_emb[inputs]: indexing's backward accumulates with index_put_, whose
    # order varies between runs on a multi-threaded CPU (grads differ in the last bit), and then
    # no two runs of one optimizer would follow the same trajectory.
    x = F.embedding(inputs, tok_emb) + pos_emb
    d = (D_MODEL,)
    for layer in range(N_LAYERS):
        p = dict(zip(_LAYER, params[2 + layer * len(_LAYER) : 2 + (layer + 1) * len(_LAYER)]))
        h = F.layer_norm(x, d, p["ln1_w"], p["ln1_b"])
        x = x + _attention(h, p["qkv_w"], p["qkv_b"], p["out_w"], p["out_b"])
        h = F.layer_norm(x, d, p["ln2_w"], p["ln2_b"])
        x = x + F.gelu(h @ p["fc_w"] + p["fc_b"]) @ p["proj_w"] + p["proj_b"]
    x = F.layer_norm(x, d, params[-2], params[-1])
    logits = x @ tok_emb.T  # tied output embedding, as GPT-2
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


LM_PROBLEMS: tuple[Problem, ...] = (
    Problem(
        name="tiny-lm",
        description=(
            f"{N_LAYERS}-layer GPT, d={D_MODEL}, {N_HEADS} heads, on {N_SEQS}x{SEQ_LEN} tokens "
            f"of a generated grammar ({len(VOCAB)} words), full batch"
        ),
        make_params=_init,
        loss=lm_loss,
        target_loss=1.5,
    ),
)
