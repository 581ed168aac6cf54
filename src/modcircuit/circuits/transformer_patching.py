"""Patching on the head-level circuit graph of a GeometricTransformer: the patch context.

Graph (the residual-stream graph of Conmy et al. / auto-circuit; graph.py's TransformerGraph):
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
dtype, on a view sharing its storage. Outputs and metrics are taken at the last position.

The graph and the circuit type live in graph.py (TransformerGraph) and circuit.py (TransformerCircuit);
the discovery methods in methods/ (transformer_acdc.py, transformer_eap.py, magnitude.py, random.py,
probing.py), the fast ACDC kernel in transformer_acdc_kernel.py.
"""
from __future__ import annotations

import copy
import math
import weakref

import torch
import torch.nn.functional as F

from ..errors import ModcircuitError, choice_error
from ..nn.transformer import GeometricTransformer
from .circuit import TransformerCircuit
from .graph import TransformerGraph
from .inputs import patching_inputs
from .patching import METRICS, label_classes, logit_diff_loss
from .positions import Positions, resolve_positions


ABLATIONS = ("resample", "zero", "mean")
OBJECTIVES = ("recovered", "logit-diff")


def divergence(metric: str, out: torch.Tensor, target: torch.Tensor, positions: Positions | None = None,
               classes: torch.Tensor | None = None) -> torch.Tensor:
    """KL(model || circuit) (batchmean), MSE to the model, or the logit difference the circuit loses toward
    `classes` (patching.divergence; the model's own classes when None); out [..., B, n_out], target [B, n_out]
    (the last position), or with positions other than the last out [..., B, n, n_out], target [B, n, n_out],
    averaged over the chosen (example, position) pairs."""
    if metric not in METRICS:
        raise choice_error("metric", metric, METRICS)
    if metric == "logit-diff":
        gap = logit_diff_loss(out, target, classes)
        return gap.mean(-1) if positions is None or positions.last else positions.average(gap)
    if positions is None or positions.last:
        if metric == "kl":
            logp, logq = F.log_softmax(target, -1), F.log_softmax(out, -1)
            return (logp.exp() * (logp - logq)).sum(-1).mean(-1)
        return ((out - target) ** 2).mean((-1, -2))
    if metric == "kl":
        logp, logq = F.log_softmax(target, -1), F.log_softmax(out, -1)
        return positions.average((logp.exp() * (logp - logq)).sum(-1))
    return positions.average(((out - target) ** 2).mean(-1))


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
                 split_qkv: bool = False, labels=None, means: torch.Tensor | None = None, dtype=torch.float64,
                 positions="last"):
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
        clean, corrupt = patching_inputs(model, clean, corrupt, ablation, self.device)
        self.clean, self.corrupt, self.labels = clean, corrupt, labels
        if clean.dim() < 2:
            raise ModcircuitError(f"inputs of shape {tuple(clean.shape)} do not fit the model: they need [batch, positions"
                                  f"{'' if model.tokens else ', ' + str(model.d_input)}]")
        self.positions = resolve_positions(positions, clean.shape[0], clean.shape[1])
        self.classes = label_classes(labels, metric, model.d_out, self.device)
        if self.classes is not None and not self.positions.last:
            raise ModcircuitError("metric 'logit-diff' with labels reads the last position only (labels are one "
                                  "class per example); use positions \"last\" or give no labels")
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
            if self.ablation == "resample" and not clean_done and self._a is None:  # both inputs in one pass
                h, out = self.source_outputs(None, torch.cat([e, ec]))
                B = len(e)
                self._h, self._target = h[:, :, :B].contiguous(), out[:B]
                self._a, self._corrupt_out = h[:, :, B:].contiguous(), out[B:]
                return
            if not clean_done:
                self._h, self._target = self.source_outputs(None, e)
            if self._a is not None:  # (resample: computed alone by empty_output)
                return
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
        outs, out, _ = fused_pass(self.model, e, read=self.positions.read)
        return torch.cat(outs)[:, None], self.positions.select(out)

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
               new: list[torch.Tensor] = (), read: slice = slice(None)) -> torch.Tensor:
        """Inputs [K, B, T, len(dests), d] of destinations `dests` (all fed by the same sources): base +
        sum_s M[k, s] (live_s - a_s), the differences given as a stacked prefix [n0, K|1, B, T, d] (default:
        the clean ones, whose part is cached per mask row) and a list of later ones. read: the positions (T' of
        them; slice(-1, None): the last one only)."""
        clean = prefix is None
        prefix = self.D if prefix is None else prefix
        n = self.graph.dest_n_src(dests[0])
        n0 = min(len(prefix), n)
        Md = M[dests].to(self.dtype)
        t = read
        key = (tuple(dests), n0, t.start, Md[:, :n0].cpu().numpy().tobytes()) if clean else None
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
        if b.causal:
            scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
        pattern = scores.softmax(-1)
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

        read = self.positions.read  # the positions the output reads (and the last layer computes)

        def get(dests, read=slice(None)):
            x = self.inputs(M, dests, prefix, new, read)
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
            # the last MLP only matters where the output reads (MLPs are position-wise)
            t = read if l == g.n_layers - 1 else slice(None)
            xm = cands[:, :, t] if r == g.dest_mlp(l) else get([g.dest_mlp(l)], t)[..., 0, :]
            new.append(b.mlp(xm, m.act) - self.a[g.src_mlp(l)][:, :, t])
        xo = cands[:, :, read] if r == g.dest_out else get([g.dest_out], read)[..., 0, :]
        return self.positions.select(m.unembed(xo))

    def forward(self, M) -> torch.Tensor:
        """Output [B, d_out] of the circuit M (bool or float [n_dest, n_src], or a one-element list of it as
        the circuit's mask and full_masks give it)."""
        if isinstance(M, (list, tuple)):
            (M,) = M
        if not M.any():
            return self.empty_output()
        return self.run(M.to(self.device))[0]

    def empty_output(self) -> torch.Tensor:
        """The empty circuit's output [B, d_out] without a patched run: with every edge ablated each destination
        reads only constants and ablated values, so the output is unembed(const_out + sum_s a_s), with
        resample ablation the model's output on the corrupted inputs (one plain pass, the ablated source
        outputs kept; EAP's objective needs only this, not the clean ones)."""
        self.forward_passes += 1
        with torch.no_grad():
            if self.ablation == "resample":
                if self._corrupt_out is None:
                    self._a, self._corrupt_out = self.source_outputs(None, self._emb[1])
                return self._corrupt_out
            x = self.const[self.graph.dest_out] + self.a[:, 0, 0].sum(0)  # [T, d]
            x = x[self.positions.read].expand(self.batch, -1, -1)
            return self.positions.select(self.model.unembed(x))

    def metric(self, out: torch.Tensor) -> torch.Tensor:
        return divergence(self.metric_name, out, self.target, self.positions, self.classes)

    def divergence(self, metric: str, out: torch.Tensor) -> torch.Tensor:
        """KL, MSE or logit-diff of outputs `out` to the model's, averaged over the chosen positions."""
        return divergence(metric, out, self.target, self.positions, self.classes)

    def full_mask(self, value: bool = True) -> torch.Tensor:
        return self.allowed.clone() if value else torch.zeros_like(self.allowed)

    def full_masks(self, value: bool = True) -> list[torch.Tensor]:
        """[full_mask(value)]: masks as a list, the convention of the circuit's mask and the MLP context."""
        return [self.full_mask(value)]



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


def fused_pass(m: GeometricTransformer, e: torch.Tensor, nodes: list | None = None, last_only: bool = False,
               read: slice = slice(-1, None)):
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
            scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
            if b.causal:
                scores = scores.masked_fill(causal, float("-inf"))
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
    xo = resid[:, -1:] if last_only else resid[:, read]  # the positions the output reads
    if nodes is not None:
        nodes.append(xo)
    return outs, m.unembed(xo), ins


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
