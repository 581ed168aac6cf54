"""Edge probing / subnetwork probing: learn a continuous mask per edge.

The mask is sigmoid(theta) (theta starts at `init`, every edge nearly on). The circuit runs with
z = a @ W.T + b + (h - a) @ (sigmoid(theta) * W).T, live activations flowing through the masked circuit,
and Adam minimises

    metric(circuit) + threshold * sum(sigmoid(theta))

i.e. the same trade-off ACDC makes greedily (an edge is worth keeping when it costs more than `threshold`
of the metric). Score = sigmoid(theta) after training; the circuit is the edges with score > 0.5.

On the head-level transformer graph: minimise metric(circuit) + sparsity * mean(mask) (the threshold then
selects the edges whose final mask value is >= threshold).
"""
from __future__ import annotations

import torch

from ...errors import ModcircuitError
from . import MethodResult, register_method


@register_method("probing", "learned sigmoid edge masks: metric + threshold * (edges kept)")
def probing(ctx, threshold: float, steps: int = 300, lr: float = 0.1, init: float = 3.0, seed: int = 0) -> MethodResult:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ModcircuitError(f"steps {steps!r} is not allowed; give an integer >= 1")
    torch.manual_seed(seed)
    thetas = [torch.full(s, float(init), dtype=ctx.dtype, device=ctx.device, requires_grad=True)
              for s in ctx.graph.shapes]
    opt = torch.optim.Adam(thetas, lr=lr)
    history = []
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            masks = [torch.sigmoid(t) for t in thetas]
            fit = ctx.metric(ctx.forward(masks))
            size = sum(m.sum() for m in masks)
            loss = fit + threshold * size
            loss.backward()
            opt.step()
            history.append(fit.item())
    scores = [torch.sigmoid(t.detach()).cpu() for t in thetas]
    return MethodResult(scores=scores, mask=[s > 0.5 for s in scores], forward_passes=steps,
                        extra={"steps": steps, "lr": lr, "final_fit": history[-1]})


@register_method("probing", kinds=("transformer",))
def transformer_probing(ctx, threshold: float, steps: int = 200, lr: float = 0.1, sparsity: float = 1e-2) -> MethodResult:
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
