"""EAP and EAP-IG on the head-level transformer graph (the objectives of eap.py, the MLP's EAP).

Scores |<g_k, a_s - h_s>|: g_k the objective's gradient at destination k's input with every edge live
(EAP), or averaged over embeddings interpolated from the ablated to the clean ones (EAP-IG).
"""
from __future__ import annotations

import torch

from ...errors import ModcircuitError
from ..transformer_patching import TransformerPatchContext, fused_pass
from . import MethodResult, register_method
from .eap import _objective  # the same objectives as the MLP's EAP (needs ctx.full_masks)


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


def _full_circuit_eap(ctx: TransformerPatchContext, objective: str) -> torch.Tensor:
    """EAP without interpolation: <g_k, a_s - h_s> [n_dest, n_src] with g_k the objective's gradient at
    destination k's input, every edge live.

    With every edge live each destination reads the clean residual stream at its place (const_k + the sum
    of its sources' clean outputs), so the gradients come from the model's own forward pass on the clean
    inputs (one forward and one backward pass, fused_pass): the MLPs' and the output's inputs are nodes
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
        P = ctx.positions
        outs, out, ins = fused_pass(m, e, nodes, last_only=P.last, read=P.read)
        out = P.select(out)
        if ctx._target is None:
            ctx._target = out.detach()
        obj = _objective(ctx, objective)  # (the "recovered" one runs the context: its clean and ablated runs)
        grads = list(torch.autograd.grad(obj(out[None]).sum(), nodes))
    if ctx._h is not None or ctx.ablation != "resample":
        diff = ctx.a[:, 0] - ctx.h[:, 0]  # [n_src, B|1, T, d]
        if diff.shape[1] != B:
            diff = diff.expand(-1, B, -1, -1)
        last = diff[:, :, P.read]
    else:  # the clean source outputs from this pass, the ablated ones from a run of the corrupted inputs;
        # the last block's only at the last position (the context's h and a are computed when asked for)
        with torch.no_grad():
            a_outs = fused_pass(m, ctx._emb[1], last_only=P.last, read=P.read)[0]
            diffs = [x.detach() - y for x, y in zip(a_outs, outs)]
            diff = torch.cat(diffs[:-2])  # [n0, B, T, d]
            last = torch.cat([diff[:, :, P.read]] + diffs[-2:])  # [n_src, B, T', d]
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
