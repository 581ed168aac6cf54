"""The BIMT paper's algebraic tasks: modular addition and composition in the permutation group S4.

Both are two-operand tables, learned from an 80% random subset of all pairs (fixed by the seed;
the test set is the other 20%). An input is an integer pair (a, b), shape (N, 2), dtype long; the
model embeds each operand with a learned 32-dim embedding and concatenates them (64 features),
laid out as one line folded twice (operand a and operand b share the same 32 positions, as in
the BIMT notebooks), so a swap of input position i moves embedding dim i of both operands.

Reference settings (`defaults`) are those of the BIMT authors' notebooks
(github.com/KindXiaoming/BIMT, modular_addition_3.3.ipynb and permutation_S4_3.3.ipynb):
full-batch AdamW (no weight decay), 20,000 steps, swaps every 200 steps of the top 30 neurons
in every neuron layer (inputs and outputs included),
l0 = 0.5, the connection cost averaged (agg "mean");
  modular addition: lr 1e-3, weight_factor 2, lam 0.1, x10 from 25% of the steps, back to x1 at 75%;
  S4:               lr 2e-3, weight_factor 1, lam 1.0 held constant.
The notebooks also put `mean(|embedding|) * l0` into the cost and draw the embedding from N(0,1);
whether the trainer does the same is the trainer's choice, not this module's.
The train set has int(0.8 * n_pairs) pairs (2784 for p = 59, 460 for S4), as in the notebooks.
"""
from __future__ import annotations

import itertools
import math

import torch

from ..errors import ModcircuitError
from .base import Task, register_task

EMBED_DIM = 32

MODADD_DEFAULTS = dict(
    steps=20000, lr=1e-3, batch_size=None, lam=0.1, lam_schedule=[[0.25, 10.0], [0.75, 1.0]],
    l0=0.5, weight_factor=2.0, agg="mean", top_k=30, swap_every=200, swap_inputs=True, swap_outputs=True,
)
S4_DEFAULTS = dict(
    steps=20000, lr=2e-3, batch_size=None, lam=1.0, lam_schedule=[],
    l0=0.5, weight_factor=1.0, agg="mean", top_k=30, swap_every=200, swap_inputs=True, swap_outputs=True,
)


def _check_frac(train_frac) -> float:
    try:
        f = float(train_frac)
    except (TypeError, ValueError):
        raise ModcircuitError(f"train_frac {train_frac!r} must be a number in (0, 1)") from None
    if not 0 < f < 1:
        raise ModcircuitError(f"train_frac {train_frac!r} must be a number in (0, 1)")
    return f


def _check_modulus(p) -> int:
    if isinstance(p, str):
        p = p.strip()
        p = int(p) if p.lstrip("-").isdigit() else p
    if isinstance(p, bool) or not isinstance(p, int) or p < 2:
        raise ModcircuitError(f"p {p!r} must be an integer >= 2")
    return p


def _split(x: torch.Tensor, y: torch.Tensor, train_frac: float, seed: int):
    n = len(x)
    n_train = int(n * train_frac)
    if n_train < 1 or n_train >= n:
        raise ModcircuitError(f"train_frac {train_frac} leaves {n_train} of {n} pairs for training; "
                              "both splits need at least one pair")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    tr, te = perm[:n_train], perm[n_train:]
    return x[tr], y[tr], x[te], y[te]


def _pairs(n: int) -> torch.Tensor:
    """All (a, b) with a, b in 0..n-1, a-major: row a*n + b is (a, b)."""
    a = torch.arange(n).repeat_interleave(n)
    b = torch.arange(n).repeat(n)
    return torch.stack([a, b], 1)


def _layouts(n_out: int) -> list[dict]:
    return [{"kind": "line", "folds": 2}, {"kind": "line", "folds": 1}, {"kind": "line", "folds": 1},
            {"kind": "line", "folds": 1}]


def _input_names() -> list[str]:
    return [f"{op}.e{i}" for op in ("a", "b") for i in range(EMBED_DIM)]


@register_task("modular-addition", "all pairs (a,b) mod p=59, label (a+b) mod p, 80/20; embedding 32 per operand, "
                                   "MLP [64,50,50,p], input fold 2, cross-entropy")
def modular_addition(seed: int = 0, p: int = 59, train_frac: float = 0.8) -> Task:
    """(a, b) -> (a + b) mod p for all p*p pairs; output k is the logit of residue k."""
    p = _check_modulus(p)
    x = _pairs(p)
    y = (x[:, 0] + x[:, 1]) % p
    xtr, ytr, xte, yte = _split(x, y, _check_frac(train_frac), seed)
    return Task(
        name="modular-addition", kind="classification", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte,
        widths=[2 * EMBED_DIM, 50, 50, p], loss="ce", layouts=_layouts(p),
        embedding={"vocab": p, "dim": EMBED_DIM, "n_tokens": 2}, input_names=_input_names(),
        output_names=[str(r) for r in range(p)], seed=seed, defaults=dict(MODADD_DEFAULTS),
        description=f"(a + b) mod {p}, inputs are the integer pair (a, b)",
    )


# ---- S4 ----------------------------------------------------------------------------------------
S4_ELEMENTS: list[tuple[int, ...]] = list(itertools.permutations(range(4)))  # lexicographic, index 0 = identity


def s4_name(perm: tuple[int, ...]) -> str:
    """One-line notation: the images of 0, 1, 2, 3, e.g. "1023" swaps 0 and 1."""
    return "".join(str(v) for v in perm)


def s4_compose(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """a∘b: apply b first, then a, i.e. (a∘b)(k) = a[b[k]]."""
    return tuple(a[b[k]] for k in range(len(b)))


@register_task("permutation-s4", "all 24x24 pairs of S4, label a∘b, 80/20; embedding 32 per operand, "
                                 "MLP [64,50,50,24], input fold 2, cross-entropy")
def permutation_s4(seed: int = 0, train_frac: float = 0.8) -> Task:
    """(a, b) -> index of a∘b in S4.

    Elements: the 24 permutations of (0, 1, 2, 3) in lexicographic order (`S4_ELEMENTS`); a
    permutation is written in one-line notation, perm[k] = the image of k (index 0 is "0123", the
    identity). Composition convention: (a∘b)(k) = a[b[k]] -- b acts first, then a (the usual
    convention for functions, and the one the BIMT notebook's data amounts to). The input pair is
    (index of a, index of b); output k is the logit of S4_ELEMENTS[k], named in one-line notation.
    """
    n = math.factorial(4)
    index = {perm: i for i, perm in enumerate(S4_ELEMENTS)}
    table = torch.tensor([[index[s4_compose(a, b)] for b in S4_ELEMENTS] for a in S4_ELEMENTS])
    x = _pairs(n)
    y = table[x[:, 0], x[:, 1]]
    xtr, ytr, xte, yte = _split(x, y, _check_frac(train_frac), seed)
    return Task(
        name="permutation-s4", kind="classification", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte,
        widths=[2 * EMBED_DIM, 50, 50, n], loss="ce", layouts=_layouts(n),
        embedding={"vocab": n, "dim": EMBED_DIM, "n_tokens": 2}, input_names=_input_names(),
        output_names=[s4_name(p) for p in S4_ELEMENTS], seed=seed, defaults=dict(S4_DEFAULTS),
        description="composition a∘b in the symmetric group S4 ((a∘b)(k) = a[b[k]]), inputs are element indices",
    )
