"""EAP and EAP-IG on the head-level transformer graph (the objectives of eap.py, the MLP's EAP).

Scores |<g_k, a_s - h_s>|: g_k the objective's gradient at destination k's input with every edge live
(EAP), or averaged over embeddings interpolated from the ablated to the clean ones (EAP-IG).

With every edge live each destination reads the residual stream at its place (const_k + the sum of its
sources' live outputs), so the gradients come from the model's own forward pass on the (clean or
interpolated) embedding, one forward and one backward pass per step (fused_pass): the MLPs' and the
output's inputs are nodes of the pass; a head's q (k, v) input x gets the gradient J^T W_Q,h^T dq_h, with
dq_h the gradient of its query projection and J the Jacobian of the block's LayerNorm at x (applied to
the 3H projected gradients, not to the sources). Every edge's score is then one matrix product per group
of destinations, [destinations, B*T*d] @ [B*T*d, sources]: no per-edge work and nothing of size
destinations x sources x positions x d_model.
"""
from __future__ import annotations

import torch

from ...errors import ModcircuitError
from ..transformer_patching import TransformerPatchContext, fused_pass
from . import MethodResult, register_method
from .eap import _objective  # the same objectives as the MLP's EAP (needs ctx.full_masks)


def _attention_input_gradients(b, x: torch.Tensor, qkv: torch.Tensor, gq: torch.Tensor) -> torch.Tensor:
    """Gradients [3H, B, T, d] at block b's attention inputs x [B, T, d] (every head's q, k and v input)
    from the gradients gq [B, T, 3H, dh] of its projections qkv [B, T, 3H, dh]: J^T W^T gq per head, J the
    Jacobian of LayerNorm ln1 at x. J^T u = rs (w u - mean(w u) - xh mean(w u xh)) (w the gain, xh the
    normalised x, rs its inverse scale); both means are dot products in head space, mean(w W^T gq) =
    <gq, W w> / d and mean(xh w W^T gq) = <gq, qkv - bias - W b> / d (the projection of the normalised
    input), so only three elementwise passes touch [3H, B, T, d]."""
    B, T, d = x.shape
    nh, dh = gq.shape[2:]
    W = torch.stack([b.W_Q, b.W_K, b.W_V]).view(nh, dh, d)
    gqt = gq.reshape(B * T, nh, dh).transpose(0, 1)  # [3H, BT, dh]
    ln = b.ln1
    if ln is None:
        return torch.bmm(gqt, W).view(nh, B, T, d)
    xc = x - x.mean(-1, keepdim=True)
    rs = torch.rsqrt((xc * xc).mean(-1, keepdim=True) + ln.eps).reshape(B * T, 1)
    xh = xc.reshape(B * T, d) * rs
    bias = torch.stack([b.b_Q, b.b_K, b.b_V]).view(nh, dh)
    m1 = (gqt * (W @ ln.weight)[:, None, :]).sum(-1, keepdim=True) / d  # [3H, BT, 1]
    proj = qkv.reshape(B * T, nh, dh).transpose(0, 1) - (bias + W @ ln.bias)[:, None, :]
    m2 = (gqt * proj).sum(-1, keepdim=True) / d
    G = torch.bmm(gqt, W * ln.weight)  # [3H, BT, d]: w W^T gq
    G.sub_(m1).addcmul_(xh.expand(nh, -1, -1), m2, value=-1.0).mul_(rs)
    return G.view(nh, B, T, d)


def _input_gradients(ctx: TransformerPatchContext, e: torch.Tensor, objective, clean: bool = False):
    """The objective's gradient at every destination's input, all edges live, on embedding e [B, T, d]:
    per block the attention inputs' [3, H, B, T, d] (q, k, v) and the MLP's [B, T', d], then the output's
    [B, T', d] (T' = 1 in the last block when the metric reads the last position only); and the pass's
    source outputs (detached). objective: a name (built after the pass, which gives the target when
    clean) or an objective function."""
    m, P = ctx.model, ctx.positions
    H, dh = m.n_heads, m.d_head
    B, T, d = e.shape
    nodes: list = []
    with torch.enable_grad():
        outs, out, ins = fused_pass(m, e, nodes, last_only=P.last, read=P.read)
        out = P.select(out)
        if clean and ctx._target is None:
            ctx._target = out.detach()
        obj = _objective(ctx, objective) if isinstance(objective, str) else objective
        grads = torch.autograd.grad(obj(out[None]).sum(), nodes)
    attn, mlp = [], []
    for l, b in enumerate(m.blocks):
        qkv, gq = nodes[2 * l].detach().reshape(B, T, 3 * H, dh), grads[2 * l].reshape(B, T, 3 * H, dh)
        attn.append(_attention_input_gradients(b, ins[l].detach(), qkv, gq).view(3, H, B, T, d))
        mlp.append(grads[2 * l + 1])
    return attn, mlp, grads[-1], [o.detach() for o in outs]


def _scores(ctx: TransformerPatchContext, attn, mlp, gout, early: torch.Tensor, late: torch.Tensor) -> torch.Tensor:
    """<g_k, a_s - h_s> [n_dest, n_src] from the input gradients (_input_gradients' layout) and the
    differences a - h: early [n, B, T, d] of the sources before the last block at every position, late
    [n_src, B, T', d] of every source at the positions the last block's MLP and the output read."""
    g, m = ctx.graph, ctx.model
    H, nq = g.n_heads, g.nq
    eff = torch.empty(g.n_dest, g.n_src, dtype=ctx.dtype, device=ctx.device)
    for l in range(g.n_layers):
        n = g.n_src_before(l)
        G = attn[l]  # [3, H, B, T, d]
        G = G.transpose(0, 1) if nq == 3 else G.sum(0, keepdim=True).transpose(0, 1)  # [H, nq, B, T, d]
        k0 = g.dest_attn(l, 0, 0)
        eff[k0:k0 + nq * H, :n] = G.reshape(nq * H, -1) @ early[:n].reshape(n, -1).T
        km = g.dest_mlp(l)
        nm = g.dest_n_src(km)
        Dm = late[:nm] if l == g.n_layers - 1 else early[:nm]
        eff[km, :nm] = mlp[l].reshape(-1) @ Dm.reshape(nm, -1).T
    eff[g.dest_out] = gout.reshape(-1) @ late.reshape(g.n_src, -1).T
    return eff


def _full_circuit_eap(ctx: TransformerPatchContext, objective: str) -> torch.Tensor:
    """EAP without interpolation: one forward and one backward pass on the clean inputs. Unless the context
    has its clean and ablated source outputs already, the clean ones come from this pass (the last block's
    at the read positions only) and the ablated ones from one plain run of the corrupted inputs (or the
    one the "recovered" objective made for the empty circuit's output)."""
    g, P = ctx.graph, ctx.positions
    e = ctx._emb[0]
    B = e.shape[0]
    attn, mlp, gout, outs = _input_gradients(ctx, e, objective, clean=True)
    if ctx._h is not None or ctx.ablation != "resample":
        diff = (ctx.a[:, 0] - ctx.h[:, 0]).expand(-1, B, -1, -1)  # [n_src, B, T, d]
        early, late = diff[:g.n_src_before(g.n_layers - 1)], diff[:, :, P.read]
    else:
        with torch.no_grad():
            early_h = torch.cat(outs[:-2])  # [n0, B, T, d]
            late_h = torch.cat([early_h[:, :, P.read]] + outs[-2:])  # [n_src, B, T', d]
            if ctx._a is not None:  # the corrupted run the objective made (every position)
                a = ctx._a[:, 0]
                early_a, late_a = a[:len(early_h)], a[:, :, P.read]
            else:
                a_outs = fused_pass(ctx.model, ctx._emb[1], last_only=P.last, read=P.read)[0]
                early_a = torch.cat(a_outs[:-2])
                late_a = torch.cat([early_a[:, :, P.read]] + a_outs[-2:])
            early, late = early_a - early_h, late_a - late_h
    return _scores(ctx, attn, mlp, gout, early, late)


def _integrated_eap(ctx: TransformerPatchContext, steps: int, objective: str) -> torch.Tensor:
    """EAP-IG: the input gradients averaged over `steps` embeddings a + alpha (h - a) (alpha at the midpoints
    of [0, 1]'s steps), each one forward and one backward pass, times a - h."""
    g, P = ctx.graph, ctx.positions
    obj = _objective(ctx, objective)
    h, a = ctx.h[:, 0], ctx.a[:, 0]  # [n_src, B|1, T, d]
    B = h.shape[1]
    a0, d0 = a[0].expand_as(h[0]), h[0] - a[0]
    acc = None
    for i in range(steps):
        alpha = (i + 0.5) / steps
        grads = _input_gradients(ctx, a0 + alpha * d0, obj)[:3]
        if acc is None:
            acc = grads
        else:
            for x, y in zip(acc[0] + acc[1] + [acc[2]], grads[0] + grads[1] + [grads[2]]):
                x.add_(y)
    attn, mlp, gout = ([x / steps for x in acc[0]], [x / steps for x in acc[1]], acc[2] / steps)
    diff = (a - h).expand(-1, B, -1, -1)
    return _scores(ctx, attn, mlp, gout, diff[:g.n_src_before(g.n_layers - 1)], diff[:, :, P.read])


def eap_signed(ctx: TransformerPatchContext, steps: int | None = None, objective: str = "recovered") -> torch.Tensor:
    """Estimated objective change when each edge alone is removed: <g_k, a_s - h_s> (g: gradient at
    destination k's input, all edges live; with steps, averaged over embeddings interpolated from the
    ablated to the clean ones). NaN where there is no edge."""
    eff = _full_circuit_eap(ctx, objective) if steps is None else _integrated_eap(ctx, steps, objective)
    return torch.where(ctx.allowed, eff, torch.full_like(eff, float("nan")))


@register_method("eap", "edge attribution patching (Syed et al. 2023)", kinds=("transformer",))
def eap(ctx, threshold: float, objective: str = "recovered") -> MethodResult:
    return MethodResult(eap_signed(ctx, None, objective).abs().cpu(), None, 2,
                        {"objective": objective, "backward_passes": 1})


@register_method("eap-ig", "EAP with integrated gradients (Hanna et al. 2024)", kinds=("transformer",))
def eap_ig(ctx, threshold: float, steps: int = 16, objective: str = "recovered") -> MethodResult:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ModcircuitError(f"steps {steps!r} is not allowed; give an integer >= 1")
    return MethodResult(eap_signed(ctx, steps, objective).abs().cpu(), None, 1 + steps,
                        {"objective": objective, "steps": steps, "backward_passes": steps})
