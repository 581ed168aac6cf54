"""Patching on the head-level circuit graph of a GeometricTransformer, and the discovery methods.

Graph (the residual-stream graph of Conmy et al. / auto-circuit):
  sources       embed (token or input embedding + positions), every head A{l}.{h} (its result, without
                the layer's b_O), every MLP{l} (its output, b_out included);
  destinations  every head's input A{l}.{h} -- or, with split_qkv, its q, k and v inputs separately
                (A{l}.{h}.q/k/v) --, every MLP{l}'s input and the output (the final residual stream,
                before ln_f and the unembedding);
  edges         source -> destination wherever the source writes before the destination reads:
                embed feeds everything, a head of layer l feeds MLP l and all of layers > l, MLP l
                feeds layers > l. Attention biases b_O are constants of the residual stream, present in
                every run (they are equal in the clean and corrupted runs).

Patching, the same semantics as the MLP engine (circuits/patching.py): an edge outside the circuit
carries the source's ablated value instead of its live one, so destination k reads

    x_k = const_k + sum_s a_s + sum_s M[k, s] * (live_s - a_s)

where live_s is the source's output in this (patched) run and a_s its ablated value: resample = its
output in the full model's run on the corrupted input, zero = 0, mean = its output on the clean batch
averaged over examples (per position). The full circuit (M = 1) is the model; the empty circuit
(M = 0) is the ablated run (with resample ablation: the model on the corrupted input). Everything runs
in float64 (default) or float32 (`dtype`), on a converted copy of the model or, when it already has that
dtype, on a view sharing its storage. Outputs and metrics are taken at the last position. The graph and
the circuit type live in graph.py (TransformerGraph) and circuit.py (TransformerCircuit).

Methods (`discover_transformer(..., method=)`): acdc (fast), acdc-plain (reference), eap, eap-ig,
magnitude, random, probing -- the same names, conventions (score per edge, higher = more important;
ACDC keeps an edge when removing it worsens the metric by >= threshold) and objectives as the MLP ones.
Fast ACDC (`_StageACDC`): while a receiver is processed, every receiver read before it in the forward
pass is still complete, so all its sources have their clean values and removing edge (s -> r) just
subtracts (h_s - a_s) from r's input; candidates are evaluated from the receiver's layer onward only,
per stage (the output, one layer's MLP, one layer's attention inputs) in batches of speculative chains
that keep ACDC's sequential rule exactly.
"""
from __future__ import annotations

import copy
import math
import time
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import ModcircuitError, choice_error
from ..nn.transformer import GeometricTransformer
from .methods.eap import _objective  # the same objectives as the MLP's EAP (needs ctx.full_masks)
from .circuit import TransformerCircuit
from .graph import TransformerGraph
from .inputs import as_tensor, check_inputs, check_parameters
from .patching import check_dtype

METRICS = ("kl", "mse")
ABLATIONS = ("resample", "zero", "mean")
OBJECTIVES = ("recovered", "logit-diff")


def divergence(metric: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(model || circuit) (batchmean) or MSE to the model; out [..., B, n_out], target [B, n_out]."""
    if metric == "kl":
        logp, logq = F.log_softmax(target, -1), F.log_softmax(out, -1)
        return (logp.exp() * (logp - logq)).sum(-1).mean(-1)
    if metric == "mse":
        return ((out - target) ** 2).mean((-1, -2))
    raise choice_error("metric", metric, METRICS)


# ---- patching ------------------------------------------------------------------------------------
_COPIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_VIEWS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _tensors(module) -> list:
    return list(module.parameters()) + list(module.buffers())


def _flat(tensors) -> dict:
    """The tensors flattened into one vector per dtype (a snapshot by value)."""
    groups: dict = {}
    with torch.no_grad():
        for t in tensors:
            groups.setdefault(t.dtype, []).append(t.view(-1) if t.is_contiguous() else t.reshape(-1))
        return {k: torch.cat(v) for k, v in groups.items()}


def _same(model, entry) -> bool:
    """Whether a cached copy still equals the model converted to dtype: same configuration and tensor
    shapes, the model's every parameter and buffer equal by value to when the copy was made (so changes
    made any way, .data included, are seen), and the copy's equal to its own values then (one comparison
    per dtype, not one per tensor)."""
    cfg, shapes, snap, m, snap_m = entry
    ours = _tensors(model)
    if cfg != repr(model.config()) or shapes != [t.shape for t in ours]:
        return False

    def equal(a, b):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return equal(_flat(ours), snap) and equal(_flat(_tensors(m)), snap_m)


def _model_view(model: GeometricTransformer, ours: list) -> GeometricTransformer:
    """An eval-mode module sharing the model's storage, without gradients: it always holds the model's
    current values (in-place changes, .data included, are seen without any check) and nothing done with it
    reaches the model's .grad. Rebuilt when a tensor is replaced (its storage changes) or the
    configuration changes. ours: the model's parameters and buffers (_tensors)."""
    sig = (repr(model.config()), [(t.data_ptr(), t.shape, t.dtype) for t in ours])
    entry = _VIEWS.get(model)
    if entry is not None and entry[0] == sig:
        return entry[1]
    memo = {id(t): (torch.nn.Parameter(t.detach(), requires_grad=False) if isinstance(t, torch.nn.Parameter)
                    else t.detach()) for t in ours}
    view = copy.deepcopy(model, memo).eval()
    _VIEWS[model] = (sig, view)
    return view


def _model_copy(model: GeometricTransformer, dtype) -> GeometricTransformer:
    """An eval-mode copy of model in dtype without gradients, shared by contexts while it still equals the
    model (deep-copying a module costs milliseconds, a sizeable part of a fast EAP run). A model already in
    dtype is not copied but viewed (_model_view)."""
    ours = _tensors(model)
    if all(t.dtype == dtype for t in ours if t.is_floating_point()):
        return _model_view(model, ours)
    key = (dtype, str(next(model.parameters()).device))
    entry = _COPIES.get(model, {}).get(key)
    if entry is not None and _same(model, entry):
        return entry[3]
    m = copy.deepcopy(model).to(dtype).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    _COPIES.setdefault(model, {})[key] = (repr(model.config()), [t.shape for t in ours], _flat(ours), m,
                                          _flat(_tensors(m)))
    return m


class TransformerPatchContext:
    """A float64 copy of the model, the clean source outputs h [n_src, 1, B, T, d], the ablated ones
    a [n_src, 1, B|1, T, d], the model's output (target), and the masked forward pass.

    Tensors carry a leading candidate dimension K (1 for an ordinary run) so fast ACDC can evaluate many
    candidate circuits in one pass."""

    def __init__(self, model, clean, corrupt=None, *, metric: str = "kl", ablation: str = "resample",
                 split_qkv: bool = False, labels=None, means: torch.Tensor | None = None, dtype=torch.float64):
        if not isinstance(model, GeometricTransformer):
            raise ModcircuitError(f"the transformer graph needs a GeometricTransformer, got {type(model).__name__}")
        if metric not in METRICS:
            raise choice_error("metric", metric, METRICS)
        if ablation not in ABLATIONS:
            raise choice_error("ablation", ablation, ABLATIONS)
        self.metric_name, self.ablation, self.dtype = metric, ablation, dtype
        self.model = _model_copy(model, dtype)
        self.device = self.model.W_E.device
        self.graph = TransformerGraph.of(model, split_qkv)
        self.allowed = self.graph.allowed.to(self.device)
        check_parameters(model)
        clean = check_inputs(model, clean, "clean").to(self.device)
        if ablation == "resample":
            if corrupt is None:
                raise ModcircuitError("resample ablation needs corrupt inputs; give corrupt or use ablation 'zero'/'mean'")
            corrupt = as_tensor(corrupt, "corrupt")
            if corrupt.shape != clean.shape:
                raise ModcircuitError(f"corrupt has shape {tuple(corrupt.shape)}, clean {tuple(clean.shape)}; they must match")
            corrupt = check_inputs(model, corrupt, "corrupt").to(self.device)
        self.clean, self.corrupt, self.labels = clean, corrupt, labels
        self.forward_passes = 0
        self._means = means
        with torch.no_grad():  # checks the inputs fit the model (the runs themselves happen on first use)
            self._emb = self.embed(clean), (self.embed(corrupt) if ablation == "resample" else None)
        self._h = self._a = self._target = self._corrupt_out = None
        self._D = self._base = None
        self._cache: dict = {}
        self.forward_passes = 0

    # the clean and ablated source outputs and the model's outputs, computed on first use (EAP computes
    # the clean ones in its own forward pass with gradients, see _full_circuit_grads)
    @property
    def h(self) -> torch.Tensor:
        if self._h is None:
            self._sources()
        return self._h

    @property
    def target(self) -> torch.Tensor:
        if self._target is None:
            self._sources()
        return self._target

    @property
    def a(self) -> torch.Tensor:
        if self._a is None:
            self._sources()
        return self._a

    @property
    def corrupt_out(self) -> torch.Tensor | None:
        if self.ablation == "resample" and self._corrupt_out is None:
            self._sources()
        return self._corrupt_out

    def _sources(self, clean_done: bool = False) -> None:
        """h and target (unless clean_done: already set), then a (and corrupt_out)."""
        g = self.graph
        e, ec = self._emb
        with torch.no_grad():
            if self.ablation == "resample" and not clean_done:  # clean and corrupted inputs in one pass
                h, out = self.source_outputs(None, torch.cat([e, ec]))
                B = len(e)
                self._h, self._target = h[:, :, :B].contiguous(), out[:B]
                self._a, self._corrupt_out = h[:, :, B:].contiguous(), out[B:]
                return
            if not clean_done:
                self._h, self._target = self.source_outputs(None, e)
            shape = self._h.shape[3:]
            if self.ablation == "resample":
                self._a, self._corrupt_out = self.source_outputs(None, ec)
            elif self.ablation == "zero":
                self._a = torch.zeros(g.n_src, 1, 1, *shape, dtype=self.dtype, device=self.device)
            else:
                means = self._h.mean(2, keepdim=True) if self._means is None else self._means
                self._a = means.to(self.device, self.dtype).reshape(g.n_src, 1, 1, *shape)

    @property
    def batch(self) -> int:
        return len(self.clean)

    @property
    def means(self):
        return self.a.cpu() if self.ablation == "mean" else None

    def embed(self, x) -> torch.Tensor:
        """The model's embedding of inputs x [B, T, d] in the context's dtype."""
        try:
            return self.model.embed(x).to(self.dtype)
        except ModcircuitError:
            raise
        except (RuntimeError, IndexError) as err:
            raise ModcircuitError(f"inputs of shape {tuple(x.shape)} do not fit the model: {str(err).splitlines()[0]}")

    def source_outputs(self, x, e: torch.Tensor | None = None):
        """Every source's output in the full model on x (or from its embedding e): [n_src, 1, B, T, d], and
        the output [B, d_out]."""
        if e is None:
            e = self.embed(x)
        outs, out, _ = _fused_pass(self.model, e)
        return torch.cat(outs)[:, None], out

    @property
    def const(self) -> torch.Tensor:
        """Constants of the residual stream per destination [n_dest, d]: the attention biases b_O written
        before it is read."""
        g = self.graph
        bO = torch.stack([b.b_O for b in self.model.blocks])
        cum = torch.cat([torch.zeros_like(bO[:1]), bO.cumsum(0)])  # cum[n] = b_O of layers < n
        n_b = [g.dest_layer(k) + (1 if (k != g.dest_out and k == g.dest_mlp(g.dest_layer(k))) else 0)
               for k in range(g.n_dest)]
        return cum[torch.tensor(n_b, device=self.device)]

    @property
    def D(self) -> torch.Tensor:
        """h - a per source [n_src, 1, B, T, d] (computed on first use)."""
        if self._D is None:
            self._prepare()
        return self._D

    @property
    def base(self) -> torch.Tensor:
        """const_k + sum of the ablated values of k's sources [n_dest, 1, B|1, T, d] (computed on first use)."""
        if self._base is None:
            self._prepare()
        return self._base

    def _prepare(self) -> None:
        self._D = self.h - self.a
        A = self.allowed.to(self.dtype)
        base = torch.einsum("ks,sKbtd->kKbtd", A, self.a.expand(-1, -1, -1, self.h.shape[3], -1))
        self._base = base + self.const[:, None, None, None, :]
        self._cache = {}

    def inputs(self, M: torch.Tensor, dests: list[int], prefix: torch.Tensor | None = None,
               new: list[torch.Tensor] = (), last_only: bool = False) -> torch.Tensor:
        """Inputs [K, B, T, len(dests), d] of destinations `dests` (all fed by the same sources): base +
        sum_s M[k, s] (live_s - a_s), the differences given as a stacked prefix [n0, K|1, B, T, d] (default:
        the clean ones, whose part is cached per mask row) and a list of later ones. last_only: only the
        last position (T = 1)."""
        clean = prefix is None
        prefix = self.D if prefix is None else prefix
        n = self.graph.dest_n_src(dests[0])
        n0 = min(len(prefix), n)
        Md = M[dests].to(self.dtype)
        t = slice(-1, None) if last_only else slice(None)
        key = (tuple(dests), n0, last_only, Md[:, :n0].cpu().numpy().tobytes()) if clean else None
        x = self._cache.get(key) if clean else None
        if x is None:
            x = self.base[dests][:, :, :, t].permute(1, 2, 3, 0, 4) + torch.einsum(
                "ks,sKbtd->Kbtkd", Md[:, :n0], prefix[:n0, :, :, t])
            if clean and not x.requires_grad:
                if len(self._cache) > 4096:
                    self._cache.clear()
                self._cache[key] = x
        if n > n0:
            later = torch.stack(torch.broadcast_tensors(*[v[:, :, t] for v in new[: n - n0]]))
            x = x + torch.einsum("ks,sKbtd->Kbtkd", Md[:, n0:n], later)
        return x

    def _one_head(self, b, h: int, x: torch.Tensor) -> torch.Tensor:
        """Result [K, B, T, d] of head h of block b from its inputs x [K, B, T, nq, d] (q, k, v or one)."""
        K, B, T = x.shape[:3]
        dh = b.d_head
        sl = slice(h * dh, (h + 1) * dh)
        x = b.norm1(x.reshape(K * B, T, x.shape[3], -1))
        qi, ki, vi = (x[:, :, 0], x[:, :, 1], x[:, :, 2]) if x.shape[2] == 3 else (x[:, :, 0],) * 3
        q = qi @ b.W_Q[sl].T + b.b_Q[sl]
        k = ki @ b.W_K[sl].T + b.b_K[sl]
        v = vi @ b.W_V[sl].T + b.b_V[sl]
        scores = q @ k.transpose(1, 2) / math.sqrt(dh)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        pattern = scores.masked_fill(causal, float("-inf")).softmax(-1)
        return ((pattern @ v) @ b.W_O[:, sl].T).reshape(K, B, T, -1)

    def run(self, M: torch.Tensor, start: int = 0, prefix: torch.Tensor | None = None,
            override: tuple[int, torch.Tensor] | None = None, record: dict | None = None) -> torch.Tensor:
        """The circuit M's output [K, B, d_out] at the last position, computed from layer `start` on.

        prefix: live - ablated of the sources written before layer `start` ([n0, K|1, B, T, d]); default
        the clean ones (right when every destination read before layer `start` is complete).
        override=(k, x) replaces destination k's input by x [K, B, T, d] (only head k's or the MLP's output
        is then recomputed per candidate). record: filled with every destination group's input (gradients)."""
        self.forward_passes += 1
        g, m = self.graph, self.model
        H, nq = g.n_heads, g.nq
        r, cands = override if override is not None else (None, None)
        if prefix is not None:
            pass
        elif start < g.n_layers:
            prefix = self.D[: g.n_src_before(start)]
        new: list[torch.Tensor] = []

        def get(dests, last_only=False):
            x = self.inputs(M, dests, prefix, new, last_only)
            if record is not None:
                if x.requires_grad:
                    x.retain_grad()
                record[tuple(dests)] = x
            return x

        for l in range(start, g.n_layers):
            b = m.blocks[l]
            adests = [g.dest_attn(l, h, c) for h in range(H) for c in range(nq)]
            x = get(adests)  # [K, B, T, H*nq, d]
            K, B, T = x.shape[:3]
            xs = x.reshape(K * B, T, H, nq, -1)
            z = b.head_z(xs[..., 0, :], xs[..., 1, :], xs[..., 2, :]) if nq == 3 else b.head_z(xs[..., 0, :])
            heads = list(b.head_results(z).reshape(K, B, T, H, -1).unbind(3))
            if r in adests:
                h, c = divmod(adests.index(r), nq)
                xh = x[..., h * nq:(h + 1) * nq, :]
                xh = xh.expand(cands.shape[0], *xh.shape[1:]).clone()
                xh[..., c, :] = cands
                heads[h] = self._one_head(b, h, xh)
            new += [heads[h] - self.a[g.src_head(l, h)] for h in range(H)]
            # the last MLP only matters at the last position (MLPs are position-wise; the output reads there)
            last = l == g.n_layers - 1
            xm = cands if r == g.dest_mlp(l) else get([g.dest_mlp(l)], last)[..., 0, :]
            if last:
                xm = xm[:, :, -1:]
            new.append(b.mlp(xm, m.act) - self.a[g.src_mlp(l)][:, :, -xm.shape[2]:])
        xo = cands[:, :, -1:] if r == g.dest_out else get([g.dest_out], True)[..., 0, :]
        return m.unembed(xo)[..., -1, :]

    def forward(self, M) -> torch.Tensor:
        """Output [B, d_out] of the circuit M (bool or float [n_dest, n_src], or a one-element list of it as
        the circuit's mask and full_masks give it)."""
        if isinstance(M, (list, tuple)):
            (M,) = M
        return self.run(M.to(self.device))[0]

    def metric(self, out: torch.Tensor) -> torch.Tensor:
        return divergence(self.metric_name, out, self.target)

    def full_mask(self, value: bool = True) -> torch.Tensor:
        return self.allowed.clone() if value else torch.zeros_like(self.allowed)

    def full_masks(self, value: bool = True) -> list[torch.Tensor]:
        """[full_mask(value)]: masks as a list, the convention of the circuit's mask and the MLP context."""
        return [self.full_mask(value)]


# ---- methods -------------------------------------------------------------------------------------
@dataclass
class MethodResult:
    scores: torch.Tensor  # [n_dest, n_src], NaN where there is no edge
    mask: torch.Tensor | None = None
    forward_passes: int = 0
    extra: dict = field(default_factory=dict)


def _order(ctx: TransformerPatchContext, order) -> list[tuple[int, int]]:
    """ACDC's edge order: the graph's default, or a given list of (dest, source) indices, which must list
    every edge once with receivers in reverse topological order at the level of layers (the output, then per
    layer from the last its MLP before its attention inputs; within that, any order, as auto-circuit does)."""
    g = ctx.graph
    if order is None:
        return list(g.acdc_order())
    order = [(int(k), int(s)) for k, s in order]
    if sorted(order) != sorted(g.acdc_order()):
        raise ModcircuitError("an ACDC order must list every edge of the graph exactly once")

    def rank(k):
        l = g.dest_layer(k)
        return 2 * l + (1 if k == g.dest_out or k == g.dest_mlp(l) else 0)
    ranks = [rank(k) for k, _ in order]
    if any(b > a for a, b in zip(ranks, ranks[1:])):
        raise ModcircuitError("an ACDC order must visit receivers from the output back to the inputs "
                              "(per layer: the MLP before the attention inputs)")
    return order


def acdc_plain(ctx: TransformerPatchContext, threshold: float, order=None) -> MethodResult:
    """Reference ACDC: one full masked forward pass per edge."""
    M = ctx.full_mask().to(ctx.dtype)
    scores = torch.full(M.shape, float("nan"), dtype=torch.float64)
    edges = _order(ctx, order)
    with torch.no_grad():
        m_cur = ctx.metric(ctx.forward(M)).item()
        for k, s in edges:
            M[k, s] = 0.0
            m_new = ctx.metric(ctx.forward(M)).item()
            scores[k, s] = m_new - m_cur
            if m_new - m_cur < threshold:
                m_cur = m_new
            else:
                M[k, s] = 1.0
    return MethodResult(scores, M.bool().cpu() & ctx.allowed.cpu(), ctx.forward_passes, {"final_metric": m_cur})


def acdc_fast(ctx: TransformerPatchContext, threshold: float, max_candidates: int = 256, order=None) -> MethodResult:
    """ACDC with exact sequential semantics, evaluated stage by stage with speculative candidate chains
    (same result as acdc_plain; see _StageACDC)."""
    return _StageACDC(ctx, float(threshold), int(max_candidates)).run(_order(ctx, order))


@dataclass
class Changes:
    """A source's live - ablated value for a batch of candidates: base [1, B, T, d] for all of them, plus delta
    [P, B, T, d] for candidates rows [P] (a candidate may appear more than once; its deltas add up)."""

    base: torch.Tensor
    rows: torch.Tensor
    delta: torch.Tensor


# a speculative chain is evaluated lazily in chunks: the first covers the measured guesses ahead plus 8 more
# (unmeasured guesses fail first), then each chunk is twice the previous one
FIRST_CHUNK = 8
GROWTH = 2


class _StageACDC:
    """Fast transformer ACDC.

    A *stage* is a maximal run of the order's edges whose receivers share a rank (the output; one layer's
    MLP; one layer's attention inputs, in any interleaving). While a stage is processed every receiver
    read earlier in the forward pass is complete, so every source feeding the stage's receivers has its
    clean value and a candidate circuit differs from the current one only by removed edges R [n_recv,
    n_src]: receiver j reads U_j - sum_s R[j, s] (h_s - a_s). The receivers read later (already decided)
    are fixed, so a candidate is evaluated from the stage on only:
      * U_k = base_k + sum_{s upstream} M[k, s] (h_s - a_s) once per stage for every later receiver, the
        live values of the sources written from the stage on recomputed per candidate;
      * attention stages recompute only the q/k/v inputs a candidate changes (the other heads' current
        projections and results are cached; candidates giving a head the same inputs share its
        evaluation), and the last layer works at the last position only (the output reads only there;
        keys and values still see every position);
      * later receivers sum the values shared by all candidates once and only the per-candidate changes
        per candidate (see Changes); receivers with the same incoming edges share one normalised input;
      * sources whose outgoing edges are all removed are skipped (they add exactly nothing), and an edge
        into such a dead receiver, or from a source equal to its ablated value, scores exactly 0;
      * ACDC's sequential rule is kept exactly by speculation: a batch evaluates a chain of candidates, each
        built on guessed outcomes (removed / kept) of the stage's earlier edges; the outcomes are checked in
        order and at the first wrong guess the rest of the chain is discarded. A stage starts by guessing
        "kept" for every edge; the effects measured in a chain beyond its first wrong guess become the
        guesses of the next chain. Chains are evaluated lazily in growing chunks (state changes are applied
        after a chain, every chunk is relative to the chain's start). Results never depend on the guesses,
        only the amount of work does. The circuit after a chain is one of its evaluated candidates, whose
        values become the current ones (_adopt) without recomputation.
    """

    def __init__(self, ctx: TransformerPatchContext, thr: float, max_candidates: int):
        self.ctx, self.thr, self.cap = ctx, thr, max(1, max_candidates)
        self.g, self.m = ctx.graph, ctx.model
        self.first = FIRST_CHUNK
        self.M = ctx.full_mask().to(ctx.dtype)
        self.D = ctx.D[:, 0].expand(-1, *ctx.h.shape[2:])  # [n_src, B, T, d]
        self.a = ctx.a[:, 0]  # [n_src, B|1, T, d]
        self.base = ctx.base[:, 0]  # [n_dest, B|1, T, d]
        self.zero = (self.D == 0).flatten(1).all(1).tolist()  # removing an edge from s changes nothing
        self.scores = torch.full(self.M.shape, float("nan"), dtype=torch.float64)
        self.passes, self.candidates = 0, 0
        self.W = []  # per layer: (W^T [H, d, dh], b [H, 1, dh]) for q, k, v, then W_O per head [H, dh, d]
        for b in self.m.blocks:
            H, dh = self.g.n_heads, b.d_head
            proj = [(W.view(H, dh, -1).transpose(1, 2).contiguous(), bias.view(H, 1, dh))
                    for W, bias in ((b.W_Q, b.b_Q), (b.W_K, b.b_K), (b.W_V, b.b_V))]
            self.W.append(proj + [b.W_O.view(-1, H, dh).permute(1, 2, 0).contiguous()])
        self._masks: dict = {}
        self._live: dict = {}
        self._logp = self._p = None

    # ---- the stage's fixed quantities --------------------------------------------------------------
    def _rank(self, k: int) -> int:
        l = self.g.dest_layer(k)
        return 2 * l + (1 if k == self.g.dest_out or k == self.g.dest_mlp(l) else 0)

    def _setup(self, rank: int):
        g = self.g
        L, H, nq = g.n_layers, g.n_heads, g.nq
        self.layer = l = rank // 2
        self.kind = "out" if l == L else ("mlp" if rank % 2 else "attn")
        if self.kind == "out":
            self.recv, self.s0 = [g.dest_out], g.n_src
        elif self.kind == "mlp":
            self.recv, self.s0 = [g.dest_mlp(l)], g.src_mlp(l)
        else:
            self.recv = [g.dest_attn(l, h, c) for h in range(H) for c in range(nq)]
            self.s0 = g.n_src_before(l)
        self.k0 = self.recv[0]  # receivers from k0 on are the stage's and the later (fixed) ones
        s0 = self.s0
        self.U = self.base[self.k0:] + torch.einsum("ks,sbtd->kbtd", self.M[self.k0:, :s0], self.D[:s0])
        self.alive = (self.M != 0).any(0).tolist()  # a source with an outgoing edge (only later ones decided)
        self.Ds = self.D[:s0].contiguous()
        self._lastDU = None
        if self.kind == "attn":
            self.dirty, self.cur = set(range(H)), None
            self.cq, self.ck, self.cv, self.cres, self.cdl = [None] * H, [None] * H, [None] * H, [None] * H, [None] * H
            self.alive_heads = torch.tensor([self.alive[g.src_head(l, h)] for h in range(H)], device=self.ctx.device)

    def _u(self, k: int) -> torch.Tensor:
        return self.U[k - self.k0]

    def _dead(self, k: int) -> bool:
        g = self.g
        if self.kind == "out":
            return False
        if self.kind == "mlp":
            return not self.alive[g.src_mlp(self.layer)]
        h, c = divmod(k - self.k0, g.nq)
        if g.nq == 3 and c < 2 and self.D.shape[2] == 1:  # one position: the pattern is 1 whatever q and k are
            return True
        return not self.alive[g.src_head(self.layer, h)]

    def _remove(self, k: int, s: int, recompute: bool = True):
        """Remove edge s -> k; recompute=False: the caller sets the heads' current values itself (_adopt)."""
        self.M[k, s] = 0.0
        j = k - self.k0
        self.U[j] = self.U[j] - self.D[s]
        self._lastDU = None
        if self.kind == "attn" and recompute:
            self.dirty.add(j // self.g.nq)

    def _mlp(self, b, x: torch.Tensor) -> torch.Tensor:
        """b.mlp(x) with the biases added in the matrix products."""
        h = F.linear(b.norm2(x), b.W_in, b.b_in)
        return F.linear(F.relu(h) if self.m.act == "relu" else F.gelu(h), b.W_out, b.b_out)

    def _metric_out(self, x: torch.Tensor) -> torch.Tensor:
        """The metric [K] of the output read from residual x [K, B, 1, d] (KL: the model's log-probabilities
        computed once)."""
        m = self.m
        if m.ln_f is not None:
            x = m.ln_f(x)
        out = F.linear(x, m.W_U, m.b_U)[..., -1, :]
        if self.ctx.metric_name != "kl":
            return self.ctx.metric(out)
        if self._logp is None:
            self._logp = F.log_softmax(self.ctx.target, -1)
            self._p = self._logp.exp()
        return (self._p * (self._logp - F.log_softmax(out, -1))).sum(-1).mean(-1)

    # ---- pieces of the forward pass (receiver-major layout: [n_receivers or heads, K, B, T, d]) -------
    def _norm1(self, l: int, x: torch.Tensor) -> torch.Tensor:
        return self.m.blocks[l].norm1(x)

    def _project(self, l: int, c: int, heads, xn: torch.Tensor) -> torch.Tensor:
        """xn [P, ..., d] (normalised inputs, one head each) -> [P, ..., dh] with heads' weights (c: q, k, v)."""
        Wt, bias = self.W[l][c]
        if isinstance(heads, torch.Tensor) or len(heads) != self.g.n_heads:
            Wt, bias = Wt[heads], bias[heads]
        P = xn.shape[0]
        return torch.baddbmm(bias, xn.reshape(P, -1, xn.shape[-1]), Wt).view(*xn.shape[:-1], -1)

    def _attend(self, l: int, heads, q, k, v) -> torch.Tensor:
        """Results [P, ..., Tq, d] of heads (one per leading index) from q [P, ..., Tq, dh], k, v [P, ..., T, dh]."""
        Tq, T = q.shape[-2], k.shape[-2]
        s = torch.matmul(q, k.transpose(-1, -2)).mul_(1.0 / math.sqrt(q.shape[-1]))
        if Tq > 1:
            s = s.masked_fill(self._causal(Tq, T), float("-inf"))
        z = weighted_values(s.softmax(-1), v)
        Wo = self.W[l][3]
        if isinstance(heads, torch.Tensor) or len(heads) != self.g.n_heads:
            Wo = Wo[heads]
        P = z.shape[0]
        return torch.bmm(z.reshape(P, -1, z.shape[-1]), Wo).view(*z.shape[:-1], -1)

    def _causal(self, Tq: int, T: int) -> torch.Tensor:
        key = (Tq, T)
        if key not in self._masks:
            self._masks[key] = torch.ones(Tq, T, dtype=torch.bool, device=self.ctx.device).triu(T - Tq + 1)
        return self._masks[key]

    def _gather(self, dests: list[int], dl: dict, K: int, pos: slice) -> torch.Tensor:
        """Inputs [n, K, B, T', d] of later receivers: U_k + sum over live sources M[k, s] (live_s - a_s).

        dl maps a source to live - ablated: one value for every candidate ([1, B, T, d]), one per candidate
        ([K, B, T, d]) or a Changes (one value plus per-candidate changes of a few candidates). The shared
        values are summed once, only the per-candidate parts are summed per candidate."""
        idx = [k - self.k0 for k in dests]
        n = len(idx)
        u = (self.U[idx] if n > 1 else self.U[idx[0]][None])[:, :, pos]  # [n, B, T', d]
        Mw = self.M[dests]
        shared, dense, changes = [], [], []
        for s, v in dl.items():
            if isinstance(v, Changes):
                shared.append((s, v.base))
                changes.append((s, v))
            elif v.shape[0] == 1:
                shared.append((s, v))
            else:
                dense.append((s, v))
        if shared:
            srcs = [s for s, _ in shared]
            live = torch.stack([v[0, :, pos] for _, v in shared]).view(len(srcs), -1)
            u = torch.addmm(u.reshape(n, -1), Mw[:, srcs], live).view_as(u)
        if not dense:
            x = u[:, None].expand(-1, K, -1, -1, -1).contiguous()
        elif len(dense) == 1:
            s, v = dense[0]
            x = torch.addcmul(u[:, None], Mw[:, s].view(n, 1, 1, 1, 1), v[None, :, :, pos])
        else:
            srcs = [s for s, _ in dense]
            key = (tuple(srcs), pos.start, K)
            live = self._live.get(key)
            if live is None:  # the per-candidate sources stacked once per layer and position range
                live = torch.stack([dl[s][:, :, pos] for s in srcs]).view(len(srcs), -1)
                self._live = {key: live}
            x = torch.mm(Mw[:, srcs], live).view(n, K, *u.shape[1:]).add_(u[:, None])
        for s, v in changes:
            w = Mw[:, s]
            if bool((w != 0).any()):
                x.index_add_(1, v.rows, w.view(n, 1, 1, 1, 1) * v.delta[None, :, :, pos])
        return x

    def _layer(self, j: int, dl: dict, K: int):
        """Recompute layer j (after the stage's) for K candidates: dl maps source -> live - ablated [K|1, B, T', d]."""
        g, b = self.g, self.m.blocks[j]
        pos = slice(-1, None) if j == g.n_layers - 1 else slice(None)
        heads = [h for h in range(g.n_heads) if self.alive[g.src_head(j, h)]]
        if heads:
            res = self._attend(j, heads, *self._attn_qkv(j, heads, dl, K, pos))  # [Hc, K, B, Tq, d]
            for i, h in enumerate(heads):
                s = g.src_head(j, h)
                dl[s] = res[i] - self.a[s][:, pos]
        s = g.src_mlp(j)
        if self.alive[s]:
            x = self._gather([g.dest_mlp(j)], dl, K, pos)[0]
            dl[s] = self._mlp(b, x) - self.a[s][:, pos]

    def _attn_qkv(self, j: int, heads: list[int], dl: dict, K: int, pos: slice):
        """q, k, v projections [len(heads), K, B, T', dh] of layer j's heads (queries at positions pos).
        Receivers with the same incoming edges read the same input (every receiver of a layer has the same
        ablated base), so each distinct input is gathered, normalised and projected (one matrix product for
        every head and q/k/v reading it) once: once most edges are kept, one or two distinct inputs serve all
        of a layer's receivers."""
        g, b, nq = self.g, self.m.blocks[j], self.g.nq
        dests = [g.dest_attn(j, h, c) for h in heads for c in range(nq)]
        which, reps, full = [], [], []  # per receiver its distinct input; per distinct input a receiver, all T?
        seen: dict = {}
        for i, row in enumerate(self.M[dests].tolist()):
            u = seen.setdefault(tuple(row), len(reps))
            if u == len(reps):
                reps.append(dests[i])
                full.append(False)
            which.append(u)
            full[u] = full[u] or i % nq != 0 or nq == 1  # keys and values read every position
        if len(reps) == len(dests):  # all distinct: per component, the queries at pos only
            if nq == 3:
                xq, xk, xv = (b.norm1(self._gather([g.dest_attn(j, h, c) for h in heads], dl, K, p))
                              for c, p in ((0, pos), (1, slice(None)), (2, slice(None))))
            else:
                xk = xv = b.norm1(self._gather(dests, dl, K, slice(None)))
                xq = xk[:, :, :, pos]
            return self._project(j, 0, heads, xq), self._project(j, 1, heads, xk), self._project(j, 2, heads, xv)
        Wqkv = (b.W_Q, b.W_K, b.W_V)
        bqkv = (b.b_Q, b.b_K, b.b_V)
        dh = b.d_head
        out: list = [[None] * len(heads) for _ in range(3)]
        for need_all, p in ((True, slice(None)), (False, pos)):
            us = [u for u in range(len(reps)) if full[u] == need_all]
            if not us:
                continue
            xn = b.norm1(self._gather([reps[u] for u in us], dl, K, p))  # [n_u, K, B, T', d]
            for i, u in enumerate(us):
                # every (head, q/k/v) reading input u: c in 0..2 (without split_qkv one receiver feeds all three)
                readers = [(hi, c) for hi in range(len(heads)) for c in range(3) if which[hi * nq + c % nq] == u]
                rows = [slice(heads[hi] * dh, (heads[hi] + 1) * dh) for hi, _ in readers]
                W = torch.cat([Wqkv[c][r] for (_, c), r in zip(readers, rows)])
                bias = torch.cat([bqkv[c][r] for (_, c), r in zip(readers, rows)])
                y = F.linear(xn[i], W, bias)  # [K, B, T', n_readers * dh]
                for r, (hi, c) in enumerate(readers):
                    part = y[..., r * dh:(r + 1) * dh]
                    out[c][hi] = part[:, :, pos] if c == 0 and need_all else part
        return tuple(torch.stack(parts) for parts in out)

    def _tail(self, j: int, dl: dict, K: int) -> torch.Tensor:
        """From layer j on (the sources before it in dl) to the metric [K]."""
        g = self.g
        for jj in range(j, g.n_layers):
            self._layer(jj, dl, K)
        x = self._gather([g.dest_out], dl, K, slice(-1, None))[0]
        return self._metric_out(x)

    # ---- candidate evaluation ----------------------------------------------------------------------
    def _refresh(self):
        """Current projections and results of the stage layer's heads whose inputs changed; in the last layer
        also the current inputs of the MLP and the output and the MLP's current value."""
        g, l = self.g, self.layer
        b = self.m.blocks[l]
        nq, H = g.nq, g.n_heads
        last = l == g.n_layers - 1
        pos = slice(-1, None) if last else slice(None)
        hs = sorted(self.dirty)
        if hs:  # every changed head at once
            x = self.U[[g.dest_attn(l, h, c) - self.k0 for h in hs for c in range(nq)]]
            x = b.norm1(x).view(len(hs), nq, 1, *x.shape[1:])  # [nd, nq, 1, B, T, d]
            xq, xk, xv = (x[:, 0, :, :, pos], x[:, 1], x[:, 2]) if nq == 3 else (x[:, 0, :, :, pos], x[:, 0], x[:, 0])
            q, k, v = self._project(l, 0, hs, xq), self._project(l, 1, hs, xk), self._project(l, 2, hs, xv)
            res = self._attend(l, hs, q, k, v)
            for i, h in enumerate(hs):
                self.cq[h], self.ck[h], self.cv[h] = q[i, 0], k[i, 0], v[i, 0]
                self.cres[h] = res[i, 0]
                self.cdl[h] = self.cres[h][None] - self.a[g.src_head(l, h)][:, pos]
        self.dirty.clear()
        self._live = {}
        self.cur = [torch.stack(t) for t in (self.cq, self.ck, self.cv, self.cres)]
        if last:  # x_mlp, mlp - a and x_out of the current circuit at the last position
            dl = {g.src_head(l, h): self.cdl[h] for h in range(H) if self.alive[g.src_head(l, h)]}
            s = g.src_mlp(l)
            self.cx_mlp = self._gather([g.dest_mlp(l)], dl, 1, pos)[0] if self.alive[s] else None
            if self.alive[s]:
                dl[s] = self._mlp(b, self.cx_mlp) - self.a[s][:, pos]
                self.cdl_mlp = dl[s]
            self.cx_out = self._gather([g.dest_out], dl, 1, pos)[0]
            srcs = torch.tensor([g.src_head(l, h) for h in range(H)], device=self.ctx.device)
            self.w_mlp = self.M[g.dest_mlp(l), srcs]  # [H]: weights of the heads' edges into the MLP and output
            self.w_out = self.M[g.dest_out, srcs]
            self.w_out_mlp = float(self.M[g.dest_out, s])
            self._live = {}
        if not hasattr(self, "_Wall") or self._Wall[0] != l:
            Wt = torch.stack([self.W[l][c][0] for c in range(3)], 1).view(H * 3, *self.W[l][0][0].shape[1:])
            bias = torch.stack([self.W[l][c][1] for c in range(3)], 1).view(H * 3, 1, -1)
            self._Wall = (l, Wt, bias)

    def _attn_eval(self, R: torch.Tensor, K: int) -> torch.Tensor:
        g, l = self.g, self.layer
        b = self.m.blocks[l]
        H, nq = g.n_heads, g.nq
        last = l == g.n_layers - 1
        pos = slice(-1, None) if last else slice(None)
        if self.dirty or self.cur is None:
            self._refresh()
        changed = R.ne(0).any(-1)  # [K, H * nq]
        pairs = changed.view(K, H, nq).any(-1) & self.alive_heads  # [K, H]: candidate changes head
        ip, hp = torch.nonzero(pairs, as_tuple=True)
        P = len(ip)
        inv = None
        if P:
            # candidates that give a head the same inputs (a chain's candidates share most removals) share
            # its evaluation: the distinct (head, removals into it) pairs are evaluated once
            Rh = R.view(K, H, nq, -1)[ip, hp]  # [P, nq, s0]
            uk, inv = torch.unique(torch.cat([hp[:, None].to(R.dtype), Rh.flatten(1)], 1), dim=0,
                                   return_inverse=True)
            if len(uk) < P:
                hp, Rh = uk[:, 0].long(), uk[:, 1:].view(len(uk), nq, -1)
            else:
                inv = None
            qkv = [t[hp] for t in self.cur[:3]]  # [Q, B, T', dh]: the current projections, changed below
            # every (distinct pair, q/k/v input) that changes, all at once
            pe, ce = torch.nonzero(Rh.ne(0).any(-1), as_tuple=True)
            je = hp[pe] * nq + ce
            Rj = Rh[pe, ce]  # [n, s0]
            _, Wt, bias = self._Wall
            if nq == 3:  # per component; the queries only at the positions read (the last one in the last layer)
                for c in range(3):
                    sel = torch.nonzero(ce == c).flatten()
                    if len(sel) == 0:
                        continue
                    Dc, Uc = (self.Ds, self.U) if c or not last else self._last_DU()
                    n, shp = len(sel), Dc.shape[1:]
                    x = torch.addmm(Uc[je[sel]].view(n, -1), Rj[sel], Dc.view(Dc.shape[0], -1), alpha=-1.0)
                    xn = b.norm1(x.view(n, -1, shp[-1]))  # [n, B*T', d]
                    dst = pe[sel]
                    w = hp[dst] * 3 + c
                    qkv[c][dst] = torch.baddbmm(bias[w], xn, Wt[w]).view(n, *shp[:-1], -1)
            else:
                Ds = self.Ds
                x = torch.mm(Rj, Ds.reshape(Ds.shape[0], -1)).view(len(pe), *Ds.shape[1:]).neg_().add_(self.U[je])
                xn = b.norm1(x).view(len(pe), -1, x.shape[-1])  # [n, B*T, d]
                T = x.shape[2]
                for c in range(3):
                    w, xs, dst = hp * 3 + c, xn, pe
                    y = torch.baddbmm(bias[w], xs, Wt[w]).view(len(dst), x.shape[1], T, -1)
                    qkv[c][dst] = y[:, :, pos] if c == 0 else y
            dres = self._attend(l, hp, *(t[:, None] for t in qkv))[:, 0] - self.cur[3][hp]  # [Q, B, Tq, d]
            # what _adopt needs to make a candidate current: per pair its head and distinct pair
            self.chunk = (ip, hp, qkv, dres, torch.arange(P) if inv is None else inv)
            if inv is not None:
                hp, dres = hp[inv], dres[inv]
        if last:
            return self._last_tail(K, ip, hp, dres if P else None)
        dl: dict = {}
        for h in range(H):
            s = g.src_head(l, h)
            if not self.alive[s]:
                continue
            dl[s] = self.cdl[h]
            if P:
                sel = torch.nonzero(hp == h).flatten()
                if len(sel):
                    dl[s] = Changes(self.cdl[h], ip[sel], dres[sel])
        s = g.src_mlp(l)
        if self.alive[s]:
            x = self._gather([g.dest_mlp(l)], dl, K, pos)[0]
            dl[s] = self._mlp(b, x) - self.a[s][:, pos]
        return self._tail(l + 1, dl, K)

    def _last_DU(self):
        """Ds and U at the last position (contiguous), cached until U changes."""
        if self._lastDU is None:
            self._lastDU = (self.Ds[:, :, -1:].contiguous(), self.U[:, :, -1:].contiguous())
        return self._lastDU

    def _last_tail(self, K: int, ip, hp, dres) -> torch.Tensor:
        """Last layer: the candidates' MLP and output inputs are the current ones plus the changed heads'
        result changes along their edges (at the last position)."""
        g, l = self.g, self.layer
        x_out = self.cx_out.expand(K, -1, -1, -1)
        x_mlp = dm = None
        if dres is not None:
            x_out = x_out.index_add(0, ip, dres * self.w_out[hp][:, None, None, None])
            if self.cx_mlp is not None:
                x_mlp = self.cx_mlp.expand(K, -1, -1, -1).index_add(0, ip, dres * self.w_mlp[hp][:, None, None, None])
                s = g.src_mlp(l)
                dm = self._mlp(self.m.blocks[l], x_mlp) - self.a[s][:, -1:] - self.cdl_mlp
                x_out = x_out + self.w_out_mlp * dm
        self.chunk_tail = (x_out, x_mlp, dm)
        return self._metric_out(x_out)

    def _adopt(self, chunk, tail, i: int):
        """Make candidate i of an evaluated chunk the current circuit: its changed heads' projections and
        results (and, in the last layer, its MLP and output inputs) become the current ones, so nothing is
        recomputed (the removals themselves go through _remove(recompute=False))."""
        if chunk is None:
            return
        ip, hp, qkv, dres, inv = chunk
        g, l = self.g, self.layer
        pos = slice(-1, None) if l == g.n_layers - 1 else slice(None)
        for p in inv[ip == i].tolist():
            h = int(hp[p])
            for c in range(3):
                self.cur[c][h] = qkv[c][p]
            self.cur[3][h] += dres[p]
            self.cres[h] = self.cur[3][h]
            self.cdl[h] = self.cres[h][None] - self.a[g.src_head(l, h)][:, pos]
        if tail is not None:
            x_out, x_mlp, dm = tail
            self.cx_out = x_out[i:i + 1]
            if x_mlp is not None:
                self.cx_mlp = x_mlp[i:i + 1]
                self.cdl_mlp = self.cdl_mlp + dm[i:i + 1]

    def _removed(self, R: torch.Tensor, j: int, rows, pos: slice) -> torch.Tensor:
        """Inputs [n, B, T', d] of stage receiver j for candidates `rows`: U_j - sum_s R[row, j, s] (h_s - a_s)."""
        Rj = R[:, j] if rows is None else R[rows, j]
        Ds = self.Ds[:, :, pos]
        return torch.mm(Rj, Ds.reshape(Ds.shape[0], -1)).view(Rj.shape[0], *Ds.shape[1:]).neg_().add_(
            self._u(self.recv[j])[:, pos])

    def evaluate(self, R: torch.Tensor) -> torch.Tensor:
        """Metrics [K] of the candidates current - R (R [K, n_recv, s0], 1 = removed)."""
        g, l = self.g, self.layer
        K = R.shape[0]
        self.passes += 1
        self.candidates += K
        self._live = {}
        self.chunk = self.chunk_tail = None
        if self.kind == "out":
            x = self._removed(R, 0, None, slice(-1, None))
            return self._metric_out(x)
        pos = slice(-1, None) if l == g.n_layers - 1 else slice(None)
        b = self.m.blocks[l]
        dl: dict = {}
        if self.kind == "mlp":
            s = g.src_mlp(l)
            dl[s] = self._mlp(b, self._removed(R, 0, None, pos)) - self.a[s][:, pos]
            return self._tail(l + 1, dl, K)
        return self._attn_eval(R, K)

    # ---- the sequential rule -----------------------------------------------------------------------
    def run(self, order: list[tuple[int, int]]) -> MethodResult:
        stages: list[list[tuple[int, int]]] = []
        for k, s in order:
            if stages and self._rank(stages[-1][-1][0]) == self._rank(k):
                stages[-1].append((k, s))
            else:
                stages.append([(k, s)])
        with torch.no_grad():
            self.m_cur = None
            for edges in stages:
                self._setup(self._rank(edges[0][0]))
                if self.m_cur is None:  # the full circuit's metric
                    self.m_cur = self.evaluate(torch.zeros(1, len(self.recv), self.s0, dtype=self.ctx.dtype,
                                                           device=self.ctx.device)).item()
                self._stage(edges)
        ctx = self.ctx
        return MethodResult(self.scores, self.M.bool().cpu() & ctx.allowed.cpu(), self.passes,
                            {"final_metric": self.m_cur, "candidates": self.candidates})

    def _stage(self, edges):
        thr = self.thr
        pend = []
        for k, s in edges:
            if self.zero[s] or self._dead(k):  # removing it changes nothing: score exactly 0
                self.scores[k, s] = 0.0
                if 0.0 < thr:
                    self._remove(k, s)
            else:
                pend.append((k, s))
        n = len(pend)
        if n == 0:
            return
        E = torch.zeros(n, len(self.recv), self.s0, dtype=self.ctx.dtype, device=self.ctx.device)
        for i, (k, s) in enumerate(pend):
            E[i, k - self.k0, s] = 1.0
        pred = [False] * n  # guessed outcomes (True: removed); first "kept", then each edge's measured effect
        measured = [False] * n  # whether pred is a measurement (those guesses are rarely wrong)
        pos = 0
        while pos < n:
            # a chain from the current state: candidate i removes edge i and every earlier edge of the chain
            # guessed removed
            e = E[pos:]
            guess = pred[pos:]
            gd = e * torch.tensor(guess, dtype=e.dtype, device=e.device)[:, None, None]
            R = torch.cumsum(gd, 0) - gd + e
            # the first chunk covers the measured guesses ahead plus FIRST_CHUNK unmeasured ones
            ahead = next((i for i in range(pos, n) if not measured[i]), n) - pos
            m_chain, used, accepted, i0, size = self.m_cur, None, [], 0, min(ahead + self.first, self.cap)
            chunks, last = [], -1  # per evaluated chunk: (first index, its stored values); the last accepted index
            while i0 < n - pos and used is None:
                mets = self.evaluate(R[i0:i0 + size]).tolist()
                chunks.append((i0, self.chunk, self.chunk_tail))
                for i, mk in enumerate(mets, i0):
                    if used is None:
                        k, s = pend[pos + i]
                        sc = mk - self.m_cur
                        self.scores[k, s] = sc
                        removed = sc < thr
                        if removed:  # the state changes after the pass: the chain is relative to its start
                            self.m_cur = mk
                            accepted.append((k, s))
                            last = i
                        if removed != guess[i]:
                            used = i + 1
                    else:  # beyond the first wrong guess: the effect measured in the chain is the next guess
                        pred[pos + i] = mk - m_chain < thr
                        measured[pos + i] = True
                    if guess[i]:
                        m_chain = mk
                i0 += len(mets)
                size = min(GROWTH * size, self.cap)
            # the new circuit is the chain's candidate `last`: every earlier guess in the chain was right, so
            # it removes exactly the accepted edges (see _adopt)
            adopt = self.kind == "attn" and not self.dirty and last >= 0
            for k, s in accepted:
                self._remove(k, s, recompute=not adopt)
            if adopt:
                c0, chunk, tail = max((c for c in chunks if c[0] <= last), key=lambda c: c[0])
                self._adopt(chunk, tail, last - c0)
            pos += n - pos if used is None else used


def weighted_values(pattern: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """pattern [..., Tq, T] @ v [..., T, dh]. With a few positions, one multiply-add per key beats a batched
    matrix product of tiny matrices several times over (measured 3-7x at T = 3 on CPU)."""
    T = v.shape[-2]
    if T > 4 or (torch.is_grad_enabled() and (pattern.requires_grad or v.requires_grad)):
        return torch.matmul(pattern, v)  # (with gradients the per-key slices cost more in the backward pass)
    z = pattern[..., 0:1] * v[..., None, 0, :]
    for t in range(1, T):
        z = z.addcmul_(pattern[..., t:t + 1], v[..., None, t, :])
    return z


def _ln_jvp(ln, x: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """LayerNorm ln's Jacobian at x [..., d] applied to D [n, ..., d] (D itself without LayerNorm). The
    Jacobian J is symmetric up to the gain, <J^T g, D> = <g, J D>, so an input gradient needs no backward
    pass through LayerNorm of its own: the score <J^T g, D> is <g, J D>."""
    if ln is None:
        return D
    xc = x - x.mean(-1, keepdim=True)
    rs = torch.rsqrt((xc * xc).mean(-1, keepdim=True) + ln.eps)
    xh = xc * rs
    return (ln.weight * rs) * (D - D.mean(-1, keepdim=True) - xh * (D * xh).mean(-1, keepdim=True))


def _fused_pass(m: GeometricTransformer, e: torch.Tensor, nodes: list | None = None, last_only: bool = False):
    """The model on embedding e [B, T, d]: source outputs (a list of [n, B, T, d]), output [B, d_out], and
    each block's input [B, T, d]. With nodes (a list) the pass records the gradient nodes: per block the
    LayerNormed attention input's q, k, v projections [B, T, 3, H, dh] and the MLP's input, then the
    output's input [B, 1, d]. Every head's q, k and v come from one LayerNorm and one matrix product per
    block (a head's destination gradient is recovered from its projection's gradient, see _ln_jvp).
    last_only: the last block's attention (its queries) and MLP only at the last position, the only one
    the output reads (its source outputs and MLP input then have T = 1)."""
    H, dh = m.n_heads, m.d_head
    B, T, d = e.shape
    causal = torch.ones(T, T, dtype=torch.bool, device=e.device).triu(1)
    outs, ins, resid = [e[None]], [], e
    for i, b in enumerate(m.blocks):
        ins.append(resid)
        W = torch.cat([b.W_Q, b.W_K, b.W_V])
        bias = torch.cat([b.b_Q, b.b_K, b.b_V])
        qkv = torch.addmm(bias, b.norm1(resid).reshape(B * T, d), W.T).view(B, T, 3, H, dh)
        if nodes is not None:
            if not qkv.requires_grad:  # the first block's: a leaf of the graph (nothing before needs gradients)
                qkv.requires_grad_(True)
            nodes.append(qkv)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, T, dh]
        if last_only and i == len(m.blocks) - 1:  # the last query sees every position: no mask
            q, resid = q[:, :, -1:], resid[:, -1:]
            scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
        else:
            scores = (q @ k.transpose(-1, -2) / math.sqrt(dh)).masked_fill(causal, float("-inf"))
        z = weighted_values(scores.softmax(-1), v)  # [B, H, Tq, dh]
        Tq = z.shape[2]
        res = torch.bmm(z.permute(1, 0, 2, 3).reshape(H, B * Tq, dh),
                        b.W_O.view(d, H, dh).permute(1, 2, 0)).view(H, B, Tq, d)
        outs.append(res)
        resid = resid + res.sum(0) + b.b_O
        xm = resid.view_as(resid)  # a node of its own: only the MLP reads it
        if nodes is not None:
            nodes.append(xm)
        mo = b.mlp(xm, m.act)
        outs.append(mo[None])
        resid = resid + mo
    xo = resid[:, -1:]  # the output reads the last position only
    if nodes is not None:
        nodes.append(xo)
    return outs, m.unembed(xo)[:, -1], ins


def _full_circuit_eap(ctx: TransformerPatchContext, objective: str) -> torch.Tensor:
    """EAP without interpolation: <g_k, a_s - h_s> [n_dest, n_src] with g_k the objective's gradient at
    destination k's input, every edge live.

    With every edge live each destination reads the clean residual stream at its place (const_k + the sum
    of its sources' clean outputs), so the gradients come from the model's own forward pass on the clean
    inputs (one forward and one backward pass, _fused_pass): the MLPs' and the output's inputs are nodes
    of the pass; a head's q (k, v) input x_k gets the gradient J^T W_Q,h^T dq_h, with dq_h the gradient of
    its query projection and J the Jacobian of the block's LayerNorm at x, so <g_k, D_s> =
    <dq_h, (J D_s) W_Q,h^T>: one LayerNorm Jacobian product per block and source, no LayerNorm per head.
    The last block's queries and MLP run at the last position only (the output reads nothing else).
    Unless the context has its clean and ablated source outputs already (or the objective runs them), the
    differences come from this pass and one run of the corrupted inputs, both with the shortened last
    block; the context computes its own h and a in full when asked for them."""
    g, m = ctx.graph, ctx.model
    H, nq, dh = g.n_heads, g.nq, m.d_head
    nodes: list = []
    with torch.enable_grad():
        e = ctx._emb[0]
        B, T, d = e.shape
        outs, out, ins = _fused_pass(m, e, nodes, last_only=True)
        if ctx._target is None:
            ctx._target = out.detach()
        obj = _objective(ctx, objective)  # (the "recovered" one runs the context: its clean and ablated runs)
        grads = list(torch.autograd.grad(obj(out[None]).sum(), nodes))
    if ctx._h is not None or ctx.ablation != "resample":
        diff = ctx.a[:, 0] - ctx.h[:, 0]  # [n_src, B|1, T, d]
        if diff.shape[1] != B:
            diff = diff.expand(-1, B, -1, -1)
        last = diff[:, :, -1:]
    else:  # the clean source outputs from this pass, the ablated ones from a run of the corrupted inputs;
        # the last block's only at the last position (the context's h and a are computed when asked for)
        with torch.no_grad():
            a_outs = _fused_pass(m, ctx._emb[1], last_only=True)[0]
            diffs = [x.detach() - y for x, y in zip(a_outs, outs)]
            diff = torch.cat(diffs[:-2])  # [n0, B, T, d]
            last = torch.cat([diff[:, :, -1:]] + diffs[-2:])  # [n_src, B, 1, d]
    eff = torch.empty(g.n_dest, g.n_src, dtype=ctx.dtype, device=ctx.device)
    for l, b in enumerate(m.blocks):
        gq, gm = grads[2 * l], grads[2 * l + 1]  # [B, T, 3, H, dh], [B, T', d] (T' = 1 in the last block)
        n = g.n_src_before(l)
        W = torch.stack([b.W_Q, b.W_K, b.W_V]).view(3 * H, dh, d)
        gx = torch.bmm(gq.reshape(B * T, 3 * H, dh).transpose(0, 1), W)  # [3H, BT, d]: gradients after LayerNorm
        JD = _ln_jvp(b.ln1, ins[l], diff[:n])  # [n, B, T, d]
        s = (gx.reshape(3 * H, B * T * d) @ JD.reshape(n, B * T * d).T).view(3, H, n)
        k0 = g.dest_attn(l, 0, 0)
        if nq == 3:
            eff[k0:k0 + 3 * H, :n] = s.permute(1, 0, 2).reshape(3 * H, n)
        else:
            eff[k0:k0 + H, :n] = s.sum(0)
        km = g.dest_mlp(l)
        nm = g.dest_n_src(km)
        Dm = last[:nm] if l == g.n_layers - 1 else diff[:nm]
        eff[km, :nm] = gm.reshape(-1) @ Dm.reshape(nm, -1).T
    eff[g.dest_out] = grads[-1].reshape(-1) @ last.reshape(g.n_src, -1).T
    return eff


def eap_signed(ctx: TransformerPatchContext, steps: int | None = None, objective: str = "recovered") -> torch.Tensor:
    """Estimated objective change when each edge alone is removed: <g_k, a_s - h_s> (g: gradient at
    destination k's input, all edges live; with steps, averaged over embeddings interpolated from the
    ablated to the clean ones)."""
    g = ctx.graph
    if steps is None:
        eff = _full_circuit_eap(ctx, objective)
        return torch.where(ctx.allowed, eff, torch.full_like(eff, float("nan")))
    obj = _objective(ctx, objective)
    M = ctx.full_mask().to(ctx.dtype)
    alphas = [(i + 0.5) / steps for i in range(steps)]
    grads = torch.zeros(g.n_dest, *ctx.h.shape[2:], dtype=ctx.dtype, device=ctx.device)
    for alpha in alphas:
        with torch.enable_grad():
            emb = (alpha * ctx.D[:1]).clone().requires_grad_(True)  # embedding interpolated, minus ablated
            rec: dict = {}
            out = ctx.run(M, prefix=emb, record=rec)
            obj(out).sum().backward()
        for dests, x in rec.items():
            for i, k in enumerate(dests):
                gx = x.grad[..., i, :].sum(0)  # [B, T', d]; T' = 1 where only the last position is computed
                grads[k][:, grads.shape[2] - gx.shape[1]:] += gx / len(alphas)
    diff = (ctx.a[:, 0] - ctx.h[:, 0]).expand(g.n_src, *ctx.h.shape[2:])  # [n_src, B, T, d]
    eff = torch.einsum("kbtd,sbtd->ks", grads, diff)
    return torch.where(ctx.allowed, eff, torch.full_like(eff, float("nan")))


def eap(ctx, threshold: float, objective: str = "recovered") -> MethodResult:
    return MethodResult(eap_signed(ctx, None, objective).abs().cpu(), None, 2,
                        {"objective": objective, "backward_passes": 1})


def eap_ig(ctx, threshold: float, steps: int = 16, objective: str = "recovered") -> MethodResult:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ModcircuitError(f"steps {steps!r} is not allowed; give an integer >= 1")
    return MethodResult(eap_signed(ctx, steps, objective).abs().cpu(), None, 1 + steps,
                        {"objective": objective, "steps": steps, "backward_passes": steps})


def _write_read(m: GeometricTransformer, g: TransformerGraph):
    """Per source the matrix it writes with ([d, n]); per destination the matrix it reads with, LayerNorm
    gain folded in ([n, d])."""
    H, dh = m.n_heads, m.d_head
    write = [torch.cat([m.W_E, m.W_pos], 1)]
    read = []
    for b in m.blocks:
        write += [b.W_O[:, h * dh:(h + 1) * dh] for h in range(H)] + [b.W_out]
    for l, b in enumerate(m.blocks):
        gain1 = b.ln1.weight if b.ln1 is not None else torch.ones_like(b.b_O)
        gain2 = b.ln2.weight if b.ln2 is not None else torch.ones_like(b.b_O)
        for h in range(H):
            qkv = [W[h * dh:(h + 1) * dh] * gain1 for W in (b.W_Q, b.W_K, b.W_V)]
            read += qkv if g.split_qkv else [torch.cat(qkv, 0)]
        read.append(b.W_in * gain2)
    gain = m.ln_f.weight if m.ln_f is not None else torch.ones_like(m.b_U)
    read.append(m.W_U * gain)
    return write, read


@torch.no_grad()
def weight_magnitudes(model: GeometricTransformer, graph: TransformerGraph) -> torch.Tensor:
    """[n_dest, n_src] |read_k @ write_s|_F, the size of the composed weights between a source and a
    destination (LayerNorm gains folded in); NaN where there is no edge."""
    write, read = _write_read(model, graph)
    S = torch.full((graph.n_dest, graph.n_src), float("nan"), dtype=torch.float64)
    for k, s, _, _ in graph.edges():
        S[k, s] = torch.linalg.matrix_norm((read[k] @ write[s]).double()).item()
    return S


def magnitude(ctx, threshold: float) -> MethodResult:
    """|read_k @ write_s|_F: the size of the composed weights between a source and a destination."""
    return MethodResult(weight_magnitudes(ctx.model, ctx.graph), None, 0,
                        {"norm": "frobenius of read @ write, LayerNorm gain folded in"})


def random_scores(ctx, threshold: float, seed: int = 0) -> MethodResult:
    gen = torch.Generator().manual_seed(int(seed))
    S = torch.rand(ctx.allowed.shape, generator=gen, dtype=torch.float64)
    return MethodResult(torch.where(ctx.allowed.cpu(), S, torch.full_like(S, float("nan"))), None, 0, {"seed": seed})


def probing(ctx, threshold: float, steps: int = 200, lr: float = 0.1, sparsity: float = 1e-2) -> MethodResult:
    """Learned sigmoid edge masks: minimise metric(circuit) + sparsity * mean(mask); score = final mask value."""
    logits = torch.full(ctx.allowed.shape, 3.0, dtype=ctx.dtype, device=ctx.device, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=lr)
    allowed = ctx.allowed.to(ctx.dtype)
    for _ in range(int(steps)):
        with torch.enable_grad():
            M = torch.sigmoid(logits) * allowed
            loss = ctx.metric(ctx.forward(M)) + sparsity * M.sum() / allowed.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    S = torch.sigmoid(logits.detach()).cpu().double()
    return MethodResult(torch.where(ctx.allowed.cpu(), S, torch.full_like(S, float("nan"))), None, ctx.forward_passes,
                        {"steps": steps, "sparsity": sparsity})


METHODS = {
    "acdc": acdc_fast, "acdc-plain": acdc_plain, "eap": eap, "eap-ig": eap_ig, "magnitude": magnitude,
    "random": random_scores, "probing": probing,
}


def discover_transformer(model, data, corrupt=None, *, method: str = "acdc", threshold: float = 0.01,
                         metric: str | None = None, ablation: str = "resample", split_qkv: bool = False,
                         top_k: int | None = None, split: str = "test", n: int | None = None,
                         seed: int | None = None, dtype: torch.dtype = torch.float64,
                         **options) -> TransformerCircuit:
    """`discover` for a GeometricTransformer on the head-level graph (same arguments and conventions).
    dtype: the precision of the patched runs (float64 by default; float32 is ~1.6x faster on CPU)."""
    from .discover import resolve_data, task_metric  # (discover imports this module lazily)
    from .patching import check_threshold

    if method not in METHODS:
        raise choice_error("method", method, METHODS)
    dtype = check_dtype(dtype)
    threshold = check_threshold(threshold)
    clean, corrupt, labels, task = resolve_data(model, data, corrupt, split=split, n=n, seed=seed)
    if metric is None:
        metric = task_metric(task) if task is not None else "kl"
    t0 = time.perf_counter()
    ctx = TransformerPatchContext(model, clean, corrupt, metric=metric, ablation=ablation, split_qkv=split_qkv,
                                  labels=labels, dtype=dtype)
    if top_k is not None:
        from .discover import check_top_k

        check_top_k(top_k, ctx.graph.n_edges)
    res = METHODS[method](ctx, float(threshold), **options)
    seconds = time.perf_counter() - t0
    scores = res.scores.detach().cpu().double()
    if top_k is not None:
        from .discover import top_k_mask

        mask = top_k_mask([scores], top_k)[0] & ctx.allowed.cpu()
    elif res.mask is not None:
        mask = res.mask.cpu().bool()
    else:
        mask = (scores >= threshold) & ctx.allowed.cpu()
    extra = dict(res.extra, examples=ctx.batch, dtype=str(dtype).replace("torch.", ""))
    if task is not None:
        extra["task"] = task.name
    return TransformerCircuit([scores], [mask], method, float(threshold), metric, ablation, seconds,
                              int(res.forward_passes), extra, graph=ctx.graph)


@torch.no_grad()
def circuit_outputs(model, circuit: TransformerCircuit, clean, corrupt=None) -> torch.Tensor:
    """The circuit's outputs [B, d_out] on clean inputs (ablated values from corrupt, as discovered)."""
    ctx = TransformerPatchContext(model, clean, corrupt, metric=circuit.metric, ablation=circuit.ablation,
                                  split_qkv=circuit.graph.split_qkv)
    return ctx.forward(circuit.mask[0].to(ctx.device))


@torch.no_grad()
def logit_gap(model, circuit: TransformerCircuit, clean, corrupt=None) -> float:
    """mean |outputs_circuit - outputs_model| at the last position."""
    ctx = TransformerPatchContext(model, clean, corrupt, metric=circuit.metric, ablation=circuit.ablation,
                                  split_qkv=circuit.graph.split_qkv)
    return float((ctx.forward(circuit.mask[0].to(ctx.device)) - ctx.target).abs().mean())
