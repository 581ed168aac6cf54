"""Previous-token and induction heads read off a transformer's attention, and the circuit between them.

On repeated sequences (a segment of distinct tokens followed by its copy, see tasks/induction.py):

  previous-token score of head (l, h): its mean attention from query t to key t - 1, over every example
    and every query 1 <= t < T - L (the positions before the repeat: the keys an induction head reads;
    what a head does in the repeat, where no key is read, does not count);
  induction score: its mean attention from a query t of the repeated half to key t - L + 1 (L the
    segment length: the position just after the earlier occurrence of the current token), over every
    example and every query of the repeated half.

A head is a previous-token head when its previous-token score is >= PREV_THRESHOLD, an induction head
when its induction score is >= INDUCTION_THRESHOLD and some previous-token head sits in an earlier
layer (the key it needs, "which token came before me", must be written before it reads). Attention
spread evenly over the t + 1 keys a causal head sees scores 1 / (t + 1): about 0.12-0.19 as a
previous-token score (by the repeat length) and under 0.1 as an induction score. Trained models often
split the previous-token job between two heads of block 0 (measured: 0.6 and 0.3, together > 0.9), so
PREV_THRESHOLD is 0.25; an induction head is one head that puts most of its attention on the one key.

The canonical circuit (HeadTruth, q/k/v-apart names) for induction heads I and previous-token heads P
in earlier layers:
  A{P} -> A{I}.k      the previous token, which the induction head's key matches (K-composition);
  embed -> A{I}.q     the current token, the query;
  embed -> A{I}.v     the token attended to, which the head copies to the output;
  embed -> A{P}.q, A{P}.k   positions (the "attend one back" rule is positional);
  embed -> A{P}.v     the previous token's identity, which is what the previous-token head moves
                      (without it A{P}'s output would carry nothing for the key to match);
  A{I} -> output (in a model with MLPs only when it carries >= EDGE_DROP of accuracy, see below).
MLPs (the `induction` task's model) enter only where the model needs them, by mean ablation on the same
held-out sequences (a source's output replaced, in one destination's input only, by its mean over the
examples at each position; accuracy = next-token accuracy on the repeated half):
  MLP{l} takes part when its whole output at the mean (in every reader) costs >= MLP_DROP of accuracy;
  then MLP{l} -> a destination group (the induction heads' q, their k, their v, each later MLP that takes
  part, output) is a true edge when that group's inputs with MLP{l} at the mean cost >= EDGE_DROP, and
  a source (embed, a detected head, an earlier MLP that takes part) -> MLP{l} when that source at the
  mean in MLP{l}'s input alone costs >= EDGE_DROP.
Groups rather than single edges, because a model with two induction heads is redundant: one head's key
without the MLP costs little while both together cost much. (Measured on a vanilla `induction` model:
MLP0 at the mean costs 0.19, the embedding into MLP0 0.24, MLP0 into the induction heads' q 0.04 and k
0.05, into their v 0.01, MLP1 0.003: MLP0 enters as a processed embedding feeding q and k.)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ModcircuitError
from .truth import HeadTruth

PREV_THRESHOLD = 0.25
INDUCTION_THRESHOLD = 0.5
MLP_DROP = 0.05  # accuracy an MLP's whole output must carry for it to take part
EDGE_DROP = 0.02  # accuracy a path into or out of such an MLP must carry to be a true edge


@dataclass
class InductionHeads:
    prev_scores: torch.Tensor  # [n_layers, n_heads]
    induction_scores: torch.Tensor  # [n_layers, n_heads]
    prev_heads: list = field(default_factory=list)  # (layer, head)
    induction_heads: list = field(default_factory=list)
    accuracy: float = float("nan")  # the model's accuracy on the repeated half of the held-out sequences
    mlp_drops: dict = field(default_factory=dict)  # accuracy lost with an MLP / an MLP edge at the mean
    truth: HeadTruth | None = None
    reason: str = ""  # why there is no truth (empty when there is one)

    def summary(self) -> dict:
        return {"prev_heads": [f"A{l}.{h}" for l, h in self.prev_heads],
                "induction_heads": [f"A{l}.{h}" for l, h in self.induction_heads],
                "prev_scores": [[round(float(v), 4) for v in row] for row in self.prev_scores],
                "induction_scores": [[round(float(v), 4) for v in row] for row in self.induction_scores],
                "accuracy": self.accuracy, "mlp_drops": self.mlp_drops,
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
    q = torch.arange(T)[None, :].expand(B, T)
    t = torch.arange(1, T)
    before = (q[:, 1:] < (T - lengths)[:, None]).double()  # queries 1 <= t < T - L
    prev = (patterns[:, :, :, t, t - 1] * before[None, :, None, :]).sum((1, 3)) / before.sum()  # [n_layers, H]
    rep = q >= (T - lengths)[:, None]  # queries of the repeated half
    k = (q - lengths[:, None] + 1).clamp(min=0)
    b = torch.arange(B)[:, None].expand(B, T)
    # attention of query q to key q - L + 1 (the token after the earlier occurrence), per example and query
    to_next = patterns.permute(1, 3, 4, 0, 2)[b, q, k]  # [B, T, n_layers, H]
    ind = (to_next * rep[:, :, None, None]).sum((0, 1)) / rep.sum()
    return prev, ind


def _logits(model, x, at_mean=()) -> torch.Tensor:
    """Outputs at every position with the (source, destination) edges in `at_mean` mean-ablated: the source's
    output in that destination's input replaced by its mean over the examples (per position). Names as in
    circuits/truth.py; attention output biases are constants, never ablated."""
    at_mean = set(at_mean)
    outs = {"embed": model.embed(x)}

    def stream(dst):
        r = sum(outs.values())
        for src, d in at_mean:
            if d == dst and src in outs:
                r = r - outs[src] + outs[src].mean(0, keepdim=True)
        return r

    for l, blk in enumerate(model.blocks):
        ins = [torch.stack([stream(f"A{l}.{h}.{c}") for h in range(blk.n_heads)], 2) for c in "qkv"]
        res = blk.head_results(blk.head_z(*ins))
        outs.update({f"A{l}.{h}": res[:, :, h] for h in range(blk.n_heads)})
        outs[f"b_O{l}"] = blk.b_O.expand_as(outs["embed"])
        if not model.attn_only:
            outs[f"MLP{l}"] = blk.mlp(stream(f"MLP{l}"), model.act)
    return model.unembed(stream("output"))


def _accuracy(model, x, y, at_mean=()) -> float:
    with torch.no_grad():
        pred = _logits(model, x, at_mean).argmax(-1)
    keep = y >= 0
    return float((pred[keep] == y[keep]).double().mean())


def _readers(model, src_layer: int) -> list[str]:
    """Every destination that reads what block src_layer's MLP writes."""
    out = [f"A{l}.{h}.{c}" for l in range(src_layer + 1, model.n_layers) for h in range(model.n_heads) for c in "qkv"]
    return out + [f"MLP{l}" for l in range(src_layer + 1, model.n_layers)] + ["output"]


def _mlp_edges(model, x, y, res: "InductionHeads", edges: set) -> set:
    """The MLP edges of the truth (module docstring); records each MLP's cost in res.mlp_drops."""
    full = res.accuracy
    taking_part = []
    for l in range(model.n_layers):
        drop = full - _accuracy(model, x, y, [(f"MLP{l}", d) for d in _readers(model, l)])
        res.mlp_drops[f"MLP{l}"] = round(drop, 4)
        if drop >= MLP_DROP:
            taking_part.append(l)
    new = set()
    for l in taking_part:
        mlp = f"MLP{l}"
        groups = [[f"A{il}.{i}.{c}" for il, i in res.induction_heads if il > l] for c in "qkv"]
        groups += [[f"MLP{m}"] for m in taking_part if m > l] + [["output"]]
        for group in groups:
            if group:
                drop = full - _accuracy(model, x, y, [(mlp, d) for d in group])
                res.mlp_drops[f"{mlp}->{'|'.join(group)}"] = round(drop, 4)
                if drop >= EDGE_DROP:
                    new |= {(mlp, d) for d in group}
        sources = ["embed"] + [f"A{hl}.{h}" for hl, h in sorted(set(res.prev_heads) | set(res.induction_heads))
                               if hl <= l] + [f"MLP{m}" for m in taking_part if m < l]
        for src in sources:
            drop = full - _accuracy(model, x, y, [(src, mlp)])
            res.mlp_drops[f"{src}->{mlp}"] = round(drop, 4)
            if drop >= EDGE_DROP:
                new.add((src, mlp))
    return new


def detect_induction_heads(model, x: torch.Tensor, y: torch.Tensor | None = None, *,
                           prev_threshold: float = PREV_THRESHOLD,
                           induction_threshold: float = INDUCTION_THRESHOLD) -> InductionHeads:
    """Score every head of a token GeometricTransformer on repeated sequences x [B, T], pick the
    previous-token and induction heads and build the HeadTruth (module docstring). y [B, T]: next-token
    targets, -100 where unscored; needed (for the MLP ablations) when the model has MLPs."""
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
        res.accuracy = _accuracy(model, x, y)
    elif not model.attn_only:
        raise ModcircuitError("a model with MLPs needs the targets y: whether its MLPs take part is measured")
    best_ind = max(((float(ind[l, h]), f"A{l}.{h}") for l in range(model.n_layers) for h in range(model.n_heads)))
    best_prev = max(((float(prev[l, h]), f"A{l}.{h}") for l in range(model.n_layers) for h in range(model.n_heads)))
    if not res.induction_heads:
        res.reason = (f"no induction head: the best induction score is {best_ind[0]:.2f} ({best_ind[1]}) and the best "
                      f"previous-token score {best_prev[0]:.2f} ({best_prev[1]}); an induction head needs "
                      f">= {induction_threshold} with a previous-token head (>= {prev_threshold}) in an earlier layer")
        return res
    edges = set()
    for l, i in res.induction_heads:
        edges |= {("embed", f"A{l}.{i}.q"), ("embed", f"A{l}.{i}.v"), (f"A{l}.{i}", "output")}
        for pl, p in res.prev_heads:
            if pl < l:
                edges |= {(f"A{pl}.{p}", f"A{l}.{i}.k"), ("embed", f"A{pl}.{p}.q"), ("embed", f"A{pl}.{p}.k"),
                          ("embed", f"A{pl}.{p}.v")}
    if not model.attn_only:
        edges |= _mlp_edges(model, x, y, res, edges)
        direct = {(f"A{l}.{i}", "output") for l, i in res.induction_heads}  # (an MLP may relay them instead)
        drop = res.accuracy - _accuracy(model, x, y, direct)
        res.mlp_drops["induction heads->output"] = round(drop, 4)
        if drop < EDGE_DROP:
            edges -= direct
    rule = (f"induction heads (mean attention to the token after the current token's earlier occurrence >= "
            f"{induction_threshold}): {', '.join(f'A{l}.{h}' for l, h in res.induction_heads)}; previous-token heads "
            f"(mean attention to the previous position >= {prev_threshold}): "
            f"{', '.join(f'A{l}.{h}' for l, h in res.prev_heads)}; "
            + ("" if model.attn_only else f"MLP edges and the induction heads' direct output by mean ablation "
               f"(accuracy cost >= {MLP_DROP} per MLP, >= {EDGE_DROP} per path); ")
            + f"on {len(x)} held-out repeated sequences")
    res.truth = HeadTruth(model.n_layers, model.n_heads, frozenset(edges), rule)
    return res
