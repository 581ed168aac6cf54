"""A small pre-LayerNorm transformer whose neurons have coordinates (BIMT for transformers).

Architecture (the same as TransformerLens' `HookedTransformer` with normalization "LN" or none, learned
positional embeddings, causal or bidirectional attention, so `export.to_transformer_lens` and
`export.from_transformer_lens` are exact):

    resid   = embed(x) + W_pos.T[:T]                      tokens: W_E.T[x]; vectors: x @ W_E.T + b_E
    resid  += attn_l(ln1_l(resid))       for each block l  (heads H, head size dh)
    resid  += mlp_l(ln2_l(resid))                          (d_mlp neurons, relu, gelu or gelu_new;
                                                            attn_only: no MLP, d_mlp 0, adds zero)
    logits  = ln_f(resid) @ W_U.T + b_U                    forward() returns the last position

Weights are stored as [out, in] matrices (like nn.Linear), heads stacked head-major:
W_Q/W_K/W_V [H*dh, d_model], W_O [d_model, H*dh]; the embeddings too, as maps from a one-hot token
(or input feature) or position: W_E [d_model, n_in], W_pos [d_model, n_ctx]; the unembedding
W_U [d_out, d_model]. So every entry of `cost_terms` is a parameter (the trainer adds the penalty's
gradient to `.grad` directly).

Geometry. Every neuron layer lies on a line on [0, 1] (position p of n at (p+0.5)/n):
  tokens (or input features), positions, residual dimensions (one layout shared by every block:
  residual dimension i is the same stream everywhere), per block the H*dh attention neurons
  (head h occupies the segment [h/H, (h+1)/H]; neuron k of q, k and v of one head share one
  coordinate) and the d_mlp MLP neurons, and the outputs. The BIMT cost runs over every linear
  map (`cost_terms`): embedding, positional embedding, W_Q, W_K, W_V, W_O, W_in, W_out, W_U.
  LayerNorm gains are per-dimension (diagonal), not connections, and carry no cost.

Swaps (`relocate`), each an exact symmetry of the function:
  residual   two residual dimensions, tied across the whole model: columns of every reader
             (W_Q, W_K, W_V, W_in, W_U), rows of every writer (W_E, W_pos, W_O, W_out) and their
             biases, and every LayerNorm's weight and bias (LayerNorm is permutation-equivariant);
  head       two whole heads of a block: their q, k, v rows and biases and their W_O columns;
  head-dim   two neurons inside one head: the same rows of q, k and v (q.k and the value->output
             path are unchanged when q, k, v and W_O's columns are permuted together);
  mlp        two MLP neurons: rows of W_in and b_in, columns of W_out.
The search is closed form, as for the MLP: A[u, s] = the distance cost of unit u's weights if
unit u sat in slot s (one einsum per weight matrix), so the cost change of every exchange is
A[u,s] + A[s,u] - A[u,u] - A[s,s]. This is exact because no weight matrix has the same neuron
layer on both sides. Every permutation goes through `train.swap.permute_`, which moves the Adam
state with the weights.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModcircuitError, choice_error
from . import geometry

TRANSFORMER_ACTIVATIONS = ("relu", "gelu", "gelu_new")
ATTENTION_DIRS = ("causal", "bidirectional")
SWAP_KINDS = ("residual", "head", "head-dim", "mlp")


def activation(name: str, x: torch.Tensor) -> torch.Tensor:
    """relu, gelu (exact, erf) or gelu_new (GPT-2's tanh approximation)."""
    if name == "relu":
        return F.relu(x)
    return F.gelu(x, approximate="tanh" if name == "gelu_new" else "none")


def _line(n: int) -> torch.Tensor:
    return geometry.coordinates({"kind": "line", "folds": 1}, n).float()


class Block(nn.Module):
    """One pre-LN block: attention (H heads of size dh, causal or bidirectional) then an MLP of d_mlp
    neurons (d_mlp = 0: an attention-only block, whose MLP adds exactly zero)."""

    def __init__(self, d_model: int, n_heads: int, d_head: int, d_mlp: int, layernorm: bool, causal: bool = True,
                 eps: float = 1e-5):
        super().__init__()
        hd = n_heads * d_head
        self.n_heads, self.d_head, self.d_mlp, self.causal = n_heads, d_head, d_mlp, causal
        self.ln1 = nn.LayerNorm(d_model, eps=eps) if layernorm else None
        self.ln2 = nn.LayerNorm(d_model, eps=eps) if layernorm and d_mlp else None
        init = 1.0 / math.sqrt(d_model)
        self.W_Q = nn.Parameter(torch.randn(hd, d_model) * init)
        self.W_K = nn.Parameter(torch.randn(hd, d_model) * init)
        self.W_V = nn.Parameter(torch.randn(hd, d_model) * init)
        self.b_Q = nn.Parameter(torch.zeros(hd))
        self.b_K = nn.Parameter(torch.zeros(hd))
        self.b_V = nn.Parameter(torch.zeros(hd))
        self.W_O = nn.Parameter(torch.randn(d_model, hd) / math.sqrt(hd))
        self.b_O = nn.Parameter(torch.zeros(d_model))
        self.W_in = nn.Parameter(torch.randn(d_mlp, d_model) * init)
        self.b_in = nn.Parameter(torch.zeros(d_mlp))
        self.W_out = nn.Parameter(torch.randn(d_model, d_mlp) / math.sqrt(max(d_mlp, 1)))
        if d_mlp:
            self.b_out = nn.Parameter(torch.zeros(d_model))
        else:  # attention-only: no MLP, its output stays exactly zero (not trained)
            self.register_buffer("b_out", torch.zeros(d_model))

    def norm1(self, x):
        return self.ln1(x) if self.ln1 is not None else x

    def norm2(self, x):
        return self.ln2(x) if self.ln2 is not None else x

    # ---- attention, per head ----------------------------------------------------------------
    def head_z(self, q_in, k_in=None, v_in=None) -> torch.Tensor:
        """z[b, t, h, k]: each head's attention-weighted values. Inputs are residual streams, either
        [B, T, d] (every head reads the same stream) or [B, T, H, d] (one stream per head: the
        circuit graph's per-head inputs); LayerNorm ln1 is applied here."""
        k_in = q_in if k_in is None else k_in
        v_in = q_in if v_in is None else v_in
        H, dh = self.n_heads, self.d_head

        def project(x, W, b):
            x = self.norm1(x)
            Wh = W.view(H, dh, -1)
            if x.dim() == 3:
                return torch.einsum("btd,hkd->bthk", x, Wh) + b.view(H, dh)
            return torch.einsum("bthd,hkd->bthk", x, Wh) + b.view(H, dh)

        q, k, v = project(q_in, self.W_Q, self.b_Q), project(k_in, self.W_K, self.b_K), project(v_in, self.W_V, self.b_V)
        return torch.einsum("bhqs,bshk->bqhk", self._pattern(q, k), v)

    def _pattern(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Attention probabilities [b, h, query, key] from q, k [b, t, h, dh]."""
        T = q.shape[1]
        scores = torch.einsum("bqhk,bshk->bhqs", q, k) / math.sqrt(self.d_head)
        if self.causal:
            scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        return scores.softmax(-1)

    def attention_pattern(self, x: torch.Tensor) -> torch.Tensor:
        """Each head's attention probabilities [B, H, query, key] on residual stream x [B, T, d]."""
        H, dh = self.n_heads, self.d_head
        x = self.norm1(x)
        q = (x @ self.W_Q.T + self.b_Q).view(*x.shape[:2], H, dh)
        k = (x @ self.W_K.T + self.b_K).view(*x.shape[:2], H, dh)
        return self._pattern(q, k)

    def head_results(self, z: torch.Tensor) -> torch.Tensor:
        """result[b, t, h, d]: what head h writes into the residual stream (without b_O)."""
        return torch.einsum("bthk,dhk->bthd", z, self.W_O.view(-1, self.n_heads, self.d_head))

    def attn(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head_z(x)
        return z.reshape(*z.shape[:2], -1) @ self.W_O.T + self.b_O

    def mlp(self, x: torch.Tensor, act: str) -> torch.Tensor:
        return activation(act, self.norm2(x) @ self.W_in.T + self.b_in) @ self.W_out.T + self.b_out


class GeometricTransformer(nn.Module):
    """A small transformer for token inputs (d_vocab) or vector inputs (d_input), d_out outputs read
    at the last position. See the module docstring for the geometry and the swaps."""

    def __init__(
        self,
        n_layers: int = 1,
        d_model: int = 32,
        n_heads: int = 4,
        d_head: int = 8,
        d_mlp: int = 128,
        n_ctx: int = 3,
        d_out: int = 1,
        d_vocab: int | None = None,
        d_input: int | None = None,
        act: str = "relu",
        layernorm: bool = True,
        attention_dir: str = "causal",
        attn_only: bool = False,
        ln_eps: float = 1e-5,
    ):
        super().__init__()
        for name, v in (("n_layers", n_layers), ("d_model", d_model), ("n_heads", n_heads), ("d_head", d_head),
                        ("d_mlp", 1 if attn_only else d_mlp), ("n_ctx", n_ctx), ("d_out", d_out)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ModcircuitError(f"{name} {v!r} must be a positive integer")
        if (d_vocab is None) == (d_input is None):
            raise ModcircuitError("give exactly one of d_vocab (token inputs) and d_input (vector inputs)")
        if act not in TRANSFORMER_ACTIVATIONS:
            raise choice_error("activation", act, TRANSFORMER_ACTIVATIONS)
        if attention_dir not in ATTENTION_DIRS:
            raise choice_error("attention_dir", attention_dir, ATTENTION_DIRS)
        if not isinstance(ln_eps, (int, float)) or isinstance(ln_eps, bool) or not ln_eps > 0:
            raise ModcircuitError(f"ln_eps {ln_eps!r} must be a positive number")
        d_mlp = 0 if attn_only else d_mlp
        self.n_layers, self.d_model, self.n_heads, self.d_head = n_layers, d_model, n_heads, d_head
        self.d_mlp, self.n_ctx, self.d_out, self.act = d_mlp, n_ctx, d_out, act
        self.d_vocab, self.d_input, self.layernorm = d_vocab, d_input, bool(layernorm)
        self.attention_dir, self.attn_only, self.ln_eps = attention_dir, bool(attn_only), float(ln_eps)
        n_in = d_vocab if d_vocab is not None else d_input
        self.W_E = nn.Parameter(torch.randn(d_model, n_in) * (1.0 if d_vocab is not None else 1.0 / math.sqrt(n_in)))
        self.b_E = nn.Parameter(torch.zeros(d_model)) if d_input is not None else None
        self.W_pos = nn.Parameter(torch.randn(d_model, n_ctx) * 0.1)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_head, d_mlp, self.layernorm, attention_dir == "causal",
                                          self.ln_eps) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model, eps=self.ln_eps) if self.layernorm else None
        self.W_U = nn.Parameter(torch.randn(d_out, d_model) / math.sqrt(d_model))
        self.b_U = nn.Parameter(torch.zeros(d_out))
        # coordinates of every neuron layer, and the distance matrices D[out, in] of the cost
        res, inp, pos = _line(d_model), _line(n_in), _line(n_ctx)
        heads, mlp, out = _line(n_heads * d_head), _line(d_mlp), _line(d_out)
        for name, c in (("res", res), ("in", inp), ("pos", pos), ("head", heads), ("mlp", mlp), ("out", out)):
            self.register_buffer(f"coords_{name}", c, persistent=False)
        d = geometry.distances
        self.register_buffer("dist_res_in", d(res, inp).float(), persistent=False)
        self.register_buffer("dist_res_pos", d(res, pos).float(), persistent=False)
        self.register_buffer("dist_head_res", d(heads, res).float(), persistent=False)
        self.register_buffer("dist_res_head", d(res, heads).float(), persistent=False)
        self.register_buffer("dist_mlp_res", d(mlp, res).float(), persistent=False)
        self.register_buffer("dist_res_mlp", d(res, mlp).float(), persistent=False)
        self.register_buffer("dist_out_res", d(out, res).float(), persistent=False)

    # ---- structure -------------------------------------------------------------------------
    @property
    def tokens(self) -> bool:
        return self.d_vocab is not None

    def config(self) -> dict:
        return {
            "kind": "transformer", "n_layers": self.n_layers, "d_model": self.d_model, "n_heads": self.n_heads,
            "d_head": self.d_head, "d_mlp": self.d_mlp, "n_ctx": self.n_ctx, "d_out": self.d_out,
            "d_vocab": self.d_vocab, "d_input": self.d_input, "act": self.act, "layernorm": self.layernorm,
            "attention_dir": self.attention_dir, "attn_only": self.attn_only, "ln_eps": self.ln_eps,
        }

    @classmethod
    def from_config(cls, cfg: dict) -> "GeometricTransformer":
        keys = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "d_out", "d_vocab", "d_input", "act",
                "layernorm", "attention_dir", "attn_only", "ln_eps")
        return cls(**{k: cfg[k] for k in keys if k in cfg})

    def clone(self) -> "GeometricTransformer":
        return copy.deepcopy(self)

    def cost_terms(self):
        """(weight [out, in], bias or None, D [out, in]) for every linear map of the model."""
        terms = [(self.W_E, self.b_E, self.dist_res_in), (self.W_pos, None, self.dist_res_pos)]
        for b in self.blocks:
            terms += [
                (b.W_Q, b.b_Q, self.dist_head_res), (b.W_K, b.b_K, self.dist_head_res),
                (b.W_V, b.b_V, self.dist_head_res), (b.W_O, b.b_O, self.dist_res_head),
            ]
            if not self.attn_only:
                terms += [(b.W_in, b.b_in, self.dist_mlp_res), (b.W_out, b.b_out, self.dist_res_mlp)]
        terms.append((self.W_U, self.b_U, self.dist_out_res))
        return terms

    def connections(self):
        """(source layer, target layer, weight [out, in]) per linear map: the graph of neurons, with the
        residual stream one layer shared by every block (q, k and v all run residual -> heads)."""
        edges = [("in", "res", self.W_E), ("pos", "res", self.W_pos)]
        for l, b in enumerate(self.blocks):
            edges += [("res", f"head{l}", b.W_Q), ("res", f"head{l}", b.W_K), ("res", f"head{l}", b.W_V),
                      (f"head{l}", "res", b.W_O), ("res", f"mlp{l}", b.W_in), (f"mlp{l}", "res", b.W_out)]
        edges.append(("res", "out", self.W_U))
        return edges

    # ---- forward ---------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens:
            if x.dim() != 2:
                raise ModcircuitError(f"token inputs must be [batch, seq] integers, got shape {list(x.shape)}")
            x = x.long()
            if x.numel() and (x.min() < 0 or x.max() >= self.d_vocab):
                raise ModcircuitError(f"token ids must lie in 0..{self.d_vocab - 1}, got {int(x.min())}..{int(x.max())}")
        else:
            if x.dim() != 3 or x.shape[-1] != self.d_input:
                raise ModcircuitError(f"vector inputs must be [batch, seq, {self.d_input}], got shape {list(x.shape)}")
            x = x.to(self.W_E.dtype)
        if x.shape[1] > self.n_ctx:
            raise ModcircuitError(f"sequence length {x.shape[1]} exceeds n_ctx={self.n_ctx}")
        return x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding's contribution to the residual stream: token (or input) embedding + position."""
        x = self.check_input(x)
        e = self.W_E.T[x] if self.tokens else x @ self.W_E.T + self.b_E
        return e + self.W_pos.T[: x.shape[1]]

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        if self.ln_f is not None:
            resid = self.ln_f(resid)
        return resid @ self.W_U.T + self.b_U

    def logits_all(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs at every position: [B, T, d_out]."""
        resid = self.embed(x)
        for b in self.blocks:
            resid = resid + b.attn(resid)
            resid = resid + b.mlp(resid, self.act)
        return self.unembed(resid)

    def attention_patterns(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every block's attention probabilities [B, H, query, key] on inputs x (one forward pass)."""
        resid, out = self.embed(x), []
        for b in self.blocks:
            out.append(b.attention_pattern(resid))
            resid = resid + b.attn(resid)
            resid = resid + b.mlp(resid, self.act)
        return out

    def readout(self, z: torch.Tensor) -> torch.Tensor:
        """Outputs in the task's order (the unembedding's columns are never permuted; cf. MLP.readout)."""
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs at the last position: [B, d_out]."""
        return self.logits_all(x)[:, -1]

    # ---- BIMT swaps ------------------------------------------------------------------------
    def _sites(self, kind: str, layer: int | None = None, head: int | None = None):
        """How a swap kind moves weights: (slots, cost, params).

        slots [m, b]: index (along the permuted dimension) of the b entries of each of the m units;
        cost: list of (weight [out, in], D [out, in], side) whose rows ('row') or columns ('col') move;
        params: list of (tensor, dim) that are permuted (weights, biases, LayerNorm parameters)."""
        if kind == "residual":
            d = self.d_model
            slots = torch.arange(d).view(d, 1)
            cost = [(self.W_E, self.dist_res_in, "row"), (self.W_pos, self.dist_res_pos, "row"),
                    (self.W_U, self.dist_out_res, "col")]
            params = [(self.W_E, 0), (self.W_pos, 0), (self.W_U, 1)]
            if self.b_E is not None:
                params.append((self.b_E, 0))
            lns = [self.ln_f]
            for b in self.blocks:
                cost += [(b.W_Q, self.dist_head_res, "col"), (b.W_K, self.dist_head_res, "col"),
                         (b.W_V, self.dist_head_res, "col"), (b.W_O, self.dist_res_head, "row"),
                         (b.W_in, self.dist_mlp_res, "col"), (b.W_out, self.dist_res_mlp, "row")]
                params += [(b.W_Q, 1), (b.W_K, 1), (b.W_V, 1), (b.W_in, 1), (b.W_O, 0), (b.b_O, 0), (b.W_out, 0),
                           (b.b_out, 0)]
                lns += [b.ln1, b.ln2]
            for ln in lns:
                if ln is not None:
                    params += [(ln.weight, 0), (ln.bias, 0)]
            return slots, cost, params
        if layer is None or not 0 <= layer < self.n_layers:
            raise ModcircuitError(f"layer {layer!r} must be in 0..{self.n_layers - 1}")
        b = self.blocks[layer]
        if kind in ("head", "head-dim"):
            H, dh = self.n_heads, self.d_head
            if kind == "head":
                slots = torch.arange(H * dh).view(H, dh)
            else:
                if head is None or not 0 <= head < H:
                    raise ModcircuitError(f"head {head!r} must be in 0..{H - 1}")
                slots = (head * dh + torch.arange(dh)).view(dh, 1)
            cost = [(b.W_Q, self.dist_head_res, "row"), (b.W_K, self.dist_head_res, "row"),
                    (b.W_V, self.dist_head_res, "row"), (b.W_O, self.dist_res_head, "col")]
            params = [(b.W_Q, 0), (b.W_K, 0), (b.W_V, 0), (b.b_Q, 0), (b.b_K, 0), (b.b_V, 0), (b.W_O, 1)]
            return slots, cost, params
        if kind == "mlp":
            slots = torch.arange(self.d_mlp).view(self.d_mlp, 1)
            cost = [(b.W_in, self.dist_mlp_res, "row"), (b.W_out, self.dist_res_mlp, "col")]
            params = [(b.W_in, 0), (b.b_in, 0), (b.W_out, 1)]
            return slots, cost, params
        raise choice_error("swap kind", kind, SWAP_KINDS)

    @torch.no_grad()
    def placement_cost(self, kind: str, layer: int | None = None, head: int | None = None,
                       weight_factor: float = 1.0, agg: str = "sum") -> torch.Tensor:
        """A[u, s]: distance cost of unit u's weights if unit u sat in slot s (float64)."""
        slots, cost, _ = self._sites(kind, layer, head)
        slots = slots.to(self.W_E.device)
        m = slots.shape[0]
        A = torch.zeros(m, m, dtype=torch.float64, device=self.W_E.device)
        for w, D, side in cost:
            if not w.numel():  # an attention-only block's empty MLP weights cost nothing
                continue
            scale = 1.0 / w.numel() if agg == "mean" else 1.0
            w, D = w.detach().abs().double(), D.double()
            if side == "row":
                A += scale * torch.einsum("ukn,skn->us", w[slots], D[slots])
            else:
                A += scale * torch.einsum("nuk,nsk->us", w[:, slots], D[:, slots])
        return weight_factor * A

    @torch.no_grad()
    def unit_importance(self, kind: str, layer: int | None = None, head: int | None = None) -> torch.Tensor:
        """sum of |weights| that move with each unit (incoming and outgoing): BIMT swaps the top_k."""
        slots, cost, _ = self._sites(kind, layer, head)
        slots = slots.to(self.W_E.device)
        score = torch.zeros(slots.shape[0], dtype=torch.float64, device=self.W_E.device)
        for w, _, side in cost:
            w = w.detach().abs().double()
            score += w[slots].sum((1, 2)) if side == "row" else w[:, slots].sum((0, 2))
        return score

    @torch.no_grad()
    def swap(self, kind: str, u: int, s: int, layer: int | None = None, head: int | None = None,
             optimizer=None) -> None:
        """Exchange units u and s of a swap kind (weights, biases, LayerNorm parameters, Adam state)."""
        from ..train.swap import permute_

        slots, _, params = self._sites(kind, layer, head)
        m = slots.shape[0]
        for v in (u, s):
            if not 0 <= v < m:
                raise ModcircuitError(f"unit {v} out of range 0..{m - 1} for swap kind {kind!r}")
        n = {"residual": self.d_model, "mlp": self.d_mlp}.get(kind, self.n_heads * self.d_head)
        perm = torch.arange(n)
        perm[slots[u]], perm[slots[s]] = slots[s].clone(), slots[u].clone()
        seen = set()
        for t, dim in params:
            if id(t) in seen:
                continue
            seen.add(id(t))
            permute_(t, dim, perm, optimizer)

    def swap_sites(self):
        """Every (kind, layer, head) the relocation pass visits, residual dimensions first."""
        sites = [("residual", None, None)]
        for l in range(self.n_layers):
            if self.n_heads > 1:
                sites.append(("head", l, None))
            if self.d_head > 1:
                sites += [("head-dim", l, h) for h in range(self.n_heads)]
            if not self.attn_only:
                sites.append(("mlp", l, None))
        return sites

    @torch.no_grad()
    def relocate(self, top_k: int, weight_factor: float = 1.0, agg: str = "sum", optimizer=None) -> int:
        """One BIMT relocation pass over every swap site (closed-form search); returns the number of swaps."""
        n_swaps = 0
        for kind, layer, head in self.swap_sites():
            A = self.placement_cost(kind, layer, head, weight_factor, agg)
            m = A.shape[0]
            order = torch.argsort(self.unit_importance(kind, layer, head), descending=True)[: min(top_k, m)]
            for u in order.tolist():
                diag = A.diagonal()
                delta = A[u] + A[:, u] - diag[u] - diag
                best = int(torch.argmin(delta))
                if delta[best] < -1e-12:
                    self.swap(kind, u, best, layer, head, optimizer)
                    A[[u, best]] = A[[best, u]]
                    n_swaps += 1
        return n_swaps


def _register() -> None:
    """Checkpoints name their model kind; make "transformer" loadable (nn/__init__ imports this module)."""
    from . import MODEL_KINDS

    MODEL_KINDS.setdefault("transformer", GeometricTransformer)


_register()
