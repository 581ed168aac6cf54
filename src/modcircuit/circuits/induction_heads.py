"""Previous-token and induction heads read off a transformer's attention, and the circuit between them.

On repeated sequences (a segment of distinct tokens followed by its copy, see tasks/induction.py):

  previous-token score of head (l, h): its mean attention from query t to key t - 1, over every example
    and every query t >= 1;
  induction score: its mean attention from a query t of the repeated half to key t - L + 1 (L the
    segment length: the position just after the earlier occurrence of the current token), over every
    example and every query of the repeated half.

A head is a previous-token head when its previous-token score is >= PREV_THRESHOLD, an induction head
when its induction score is >= INDUCTION_THRESHOLD and some previous-token head sits in an earlier
layer (the key it needs, "which token came before me", must be written before it reads). Attention
spread evenly over the t + 1 keys a causal head sees scores about 1 / (t + 1): under 0.1 from t = 9 on,
so 0.5 is far above chance (and means the head puts most of its attention on the one key).

The canonical circuit (HeadTruth, q/k/v-apart names) for induction heads I and previous-token heads P
in earlier layers:
  A{P} -> A{I}.k      the previous token, which the induction head's key matches (K-composition);
  embed -> A{I}.q     the current token, the query;
  embed -> A{I}.v     the token attended to, which the head copies to the output;
  embed -> A{P}.q, A{P}.k   positions (the "attend one back" rule is positional);
  embed -> A{P}.v     the previous token's identity, which is what the previous-token head moves
                      (without it A{P}'s output would carry nothing for the key to match);
  A{I} -> output.
MLPs are not in the truth: the mechanism needs none. A model with MLPs gets a truth only when the heads
alone carry it: with every MLP's output replaced by its mean (over examples, per position) the
repeated-half accuracy must stay >= MLP_KEEP times the full model's; otherwise the MLPs take part in a
way the canonical circuit does not name, and there is no truth (None, with the reason).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ModcircuitError
from .truth import HeadTruth

PREV_THRESHOLD = 0.5
INDUCTION_THRESHOLD = 0.5
MLP_KEEP = 0.9


@dataclass
class InductionHeads:
    prev_scores: torch.Tensor  # [n_layers, n_heads]
    induction_scores: torch.Tensor  # [n_layers, n_heads]
    prev_heads: list = field(default_factory=list)  # (layer, head)
    induction_heads: list = field(default_factory=list)
    accuracy: float = float("nan")  # the model's accuracy on the repeated half of the held-out sequences
    accuracy_mlps_mean_ablated: float | None = None  # the same with every MLP's output at its mean (None: no MLPs)
    truth: HeadTruth | None = None
    reason: str = ""  # why there is no truth (empty when there is one)

    def summary(self) -> dict:
        return {"prev_heads": [f"A{l}.{h}" for l, h in self.prev_heads],
                "induction_heads": [f"A{l}.{h}" for l, h in self.induction_heads],
                "prev_scores": [[round(float(v), 4) for v in row] for row in self.prev_scores],
                "induction_scores": [[round(float(v), 4) for v in row] for row in self.induction_scores],
                "accuracy": self.accuracy, "accuracy_mlps_mean_ablated": self.accuracy_mlps_mean_ablated,
                "truth": None if self.truth is None else self.truth.to_dict(), "reason": self.reason}


def repeat_lengths(x: torch.Tensor) -> torch.Tensor:
    """Per example [B], the longest L <= T/2 whose last L tokens repeat the L before them (0: none)."""
    T = x.shape[1]
    out = torch.zeros(len(x), dtype=torch.long)
    for L in range(1, T // 2 + 1):
        same = (x[:, T - L:] == x[:, T - 2 * L:T - L]).all(1).cpu()
        out[same] = L
    return out


def repeat_mask(x: torch.Tensor) -> torch.Tensor:
    """Bool [B, T]: the repeated half of every example (its last repeat_lengths(x) positions)."""
    lengths = repeat_lengths(x)
    if (lengths == 0).any():
        i = int(torch.nonzero(lengths == 0)[0])
        raise ModcircuitError(f"example {i} is not a repeated sequence (its end does not repeat the tokens before "
                              "it); induction positions need sequences whose second part copies the first")
    T = x.shape[1]
    return torch.arange(T)[None, :] >= (T - lengths)[:, None]


def _scores(model, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    B, T = x.shape
    with torch.no_grad():
        patterns = torch.stack(model.attention_patterns(x)).cpu().double()  # [n_layers, B, H, T, T]
    t = torch.arange(1, T)
    prev = patterns[:, :, :, t, t - 1].mean((1, 3))  # [n_layers, H]
    q = torch.arange(T)[None, :].expand(B, T)
    rep = q >= (T - lengths)[:, None]  # queries of the repeated half
    k = (q - lengths[:, None] + 1).clamp(min=0)
    b = torch.arange(B)[:, None].expand(B, T)
    # attention of query q to key q - L + 1 (the token after the earlier occurrence), per example and query
    to_next = patterns.permute(1, 3, 4, 0, 2)[b, q, k]  # [B, T, n_layers, H]
    ind = (to_next * rep[:, :, None, None]).sum((0, 1)) / rep.sum()
    return prev, ind


def _repeat_accuracy(model, x, y, mlps_at_mean: bool = False) -> float:
    with torch.no_grad():
        resid = model.embed(x)
        for blk in model.blocks:
            resid = resid + blk.attn(resid)
            out = blk.mlp(resid, model.act)
            resid = resid + (out.mean(0, keepdim=True) if mlps_at_mean else out)
        pred = model.unembed(resid).argmax(-1)
    keep = y >= 0
    return float((pred[keep] == y[keep]).double().mean())


def detect_induction_heads(model, x: torch.Tensor, y: torch.Tensor | None = None, *,
                           prev_threshold: float = PREV_THRESHOLD, induction_threshold: float = INDUCTION_THRESHOLD,
                           mlp_keep: float = MLP_KEEP) -> InductionHeads:
    """Score every head of a token GeometricTransformer on repeated sequences x [B, T] (targets y [B, T],
    -100 where unscored, for the accuracies), pick the previous-token and induction heads and build the
    HeadTruth (module docstring)."""
    from ..nn.transformer import GeometricTransformer

    if not isinstance(model, GeometricTransformer) or not model.tokens:
        raise ModcircuitError(f"induction heads are read off a token GeometricTransformer, got {type(model).__name__}")
    model.eval()
    dev = model.W_E.device
    x = x.to(dev)
    lengths = repeat_lengths(x)
    if (lengths < 2).any():
        raise ModcircuitError("induction heads are scored on repeated sequences whose repeat has at least 2 tokens")
    prev, ind = _scores(model, x, lengths)
    res = InductionHeads(prev_scores=prev, induction_scores=ind)
    res.prev_heads = [(l, h) for l in range(model.n_layers) for h in range(model.n_heads) if prev[l, h] >= prev_threshold]
    res.induction_heads = [(l, h) for l in range(model.n_layers) for h in range(model.n_heads)
                           if ind[l, h] >= induction_threshold and any(p < l for p, _ in res.prev_heads)]
    if y is not None:
        y = y.to(dev)
        res.accuracy = _repeat_accuracy(model, x, y)
        if not model.attn_only:
            res.accuracy_mlps_mean_ablated = _repeat_accuracy(model, x, y, mlps_at_mean=True)
    best_ind = max(((float(ind[l, h]), f"A{l}.{h}") for l in range(model.n_layers) for h in range(model.n_heads)))
    best_prev = max(((float(prev[l, h]), f"A{l}.{h}") for l in range(model.n_layers) for h in range(model.n_heads)))
    if not res.induction_heads:
        res.reason = (f"no induction head: the best induction score is {best_ind[0]:.2f} ({best_ind[1]}) and the best "
                      f"previous-token score {best_prev[0]:.2f} ({best_prev[1]}); an induction head needs "
                      f">= {induction_threshold} with a previous-token head (>= {prev_threshold}) in an earlier layer")
        return res
    if res.accuracy_mlps_mean_ablated is not None and res.accuracy_mlps_mean_ablated < mlp_keep * res.accuracy:
        res.reason = (f"the MLPs take part: with their outputs at the mean the repeated-half accuracy falls from "
                      f"{res.accuracy:.3f} to {res.accuracy_mlps_mean_ablated:.3f} (below {mlp_keep} of it), and the "
                      "canonical induction circuit names no MLP")
        return res
    edges = set()
    for l, i in res.induction_heads:
        edges |= {("embed", f"A{l}.{i}.q"), ("embed", f"A{l}.{i}.v"), (f"A{l}.{i}", "output")}
        for pl, p in res.prev_heads:
            if pl < l:
                edges |= {(f"A{pl}.{p}", f"A{l}.{i}.k"), ("embed", f"A{pl}.{p}.q"), ("embed", f"A{pl}.{p}.k"),
                          ("embed", f"A{pl}.{p}.v")}
    rule = (f"induction heads (mean attention to the token after the current token's earlier occurrence >= "
            f"{induction_threshold}): {', '.join(f'A{l}.{h}' for l, h in res.induction_heads)}; previous-token heads "
            f"(mean attention to the previous position >= {prev_threshold}): "
            f"{', '.join(f'A{l}.{h}' for l, h in res.prev_heads)}; on {len(x)} held-out repeated sequences")
    res.truth = HeadTruth(model.n_layers, model.n_heads, frozenset(edges), rule)
    return res
