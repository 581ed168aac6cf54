"""Edge attribution patching (Syed et al. 2023) and EAP with integrated gradients (Hanna et al. 2024).

EAP needs a metric with a useful gradient at the full model (KL or MSE to the model are flat there), so it
differentiates a task objective that is *linear in the outputs*:

  objective="recovered" (default, any task): the share of the clean-minus-ablated output difference the
      circuit keeps, R = mean_b <y_b - e_b, u_b> / mean_b |u_b|^2 with u = y_model - e, where e is the
      output of the empty circuit (all edges ablated). R = 1 for the model, 0 for the empty circuit.
  objective="logit-diff" (classification): mean_b (y_b[c_b] - mean_k y_b[k]), c_b the model's class, or the
      example's label when the context's metric is "logit-diff" and labels are given (ctx.classes).

The estimated change of the objective when edge (j, i) of linear l is removed is
    dR ~= sum_b g[b, j] * W[j, i] * (a[b, i] - h[b, i]),   g = dR/dz_{l+1} at the full model,
and the score is |dR| (higher = more important). Because the objective is linear in the outputs, for a
network without nonlinearities this equals the exact effect of removing the edge.

EAP-IG averages g over `steps` points on the straight path from the ablated to the clean *inputs*
(neuron layer 0; midpoint rule), all edges live; the activation differences stay those of the endpoints.
"""
from __future__ import annotations

import torch

from ...errors import ModcircuitError, choice_error
from . import MethodResult, register_method

OBJECTIVES = ("recovered", "logit-diff")


def _objective(ctx, name: str):
    if name not in OBJECTIVES:
        raise choice_error("EAP objective", name, OBJECTIVES)
    y = ctx.target
    # the mean over examples (a transformer's context with positions other than the last: over the chosen
    # (example, position) pairs, its outputs being [..., B, n, d_out])
    positions = getattr(ctx, "positions", None)
    average = (lambda v: v.mean(-1)) if positions is None else positions.average
    if name == "logit-diff":
        classes = getattr(ctx, "classes", None)
        c = y.argmax(-1) if classes is None else classes

        def obj(out):
            return average(out.gather(-1, c.expand(*out.shape[:-1])[..., None])[..., 0] - out.mean(-1))
        return obj
    with torch.no_grad():
        e = ctx.forward(ctx.full_masks(False))
    u = y - e
    denom = average((u ** 2).sum(-1)).clamp_min(torch.finfo(u.dtype).tiny)

    def obj(out):
        return average(((out - e) * u).sum(-1)) / denom
    return obj


def _gradients(ctx, h0: torch.Tensor, obj) -> list[torch.Tensor]:
    """dObj/dz for every linear's output, all edges live, from neuron-layer-0 values h0 [..., B, n0]."""
    with torch.enable_grad():
        zs, h = [], h0.detach().requires_grad_(True)
        for l in range(ctx.L):
            z = h @ ctx.W[l].T + ctx.b[l]
            z.retain_grad()
            zs.append(z)
            h = ctx.model.act(l + 1, z) if l + 1 < ctx.L else z
        obj(h).sum().backward()
    return [z.grad.detach() for z in zs]


def signed_effects(ctx, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """Estimated objective change when each edge alone is removed: W * (g^T (a - h))."""
    out = []
    for l in range(ctx.L):
        diff = (ctx.a[l] - ctx.h[l]).expand_as(ctx.h[l])
        out.append(ctx.W[l] * (grads[l].T @ diff))
    return out


def eap_signed(ctx, steps: int | None = None, objective: str = "recovered") -> list[torch.Tensor]:
    obj = _objective(ctx, objective)
    h0 = ctx.h[0]
    if steps is None:
        grads = _gradients(ctx, h0, obj)
    else:
        a0 = ctx.a[0].expand_as(h0)
        alphas = (torch.arange(steps, dtype=h0.dtype, device=h0.device) + 0.5) / steps
        path = a0 + alphas[:, None, None] * (h0 - a0)  # [steps, B, n0]
        grads = [g.mean(0) for g in _gradients(ctx, path, obj)]
    return signed_effects(ctx, grads)


@register_method("eap", "edge attribution patching: |first-order change of a linear task objective|")
def eap(ctx, threshold: float, objective: str = "recovered") -> MethodResult:
    scores = [s.abs().cpu() for s in eap_signed(ctx, None, objective)]
    return MethodResult(scores=scores, forward_passes=2, extra={"objective": objective, "backward_passes": 1})


@register_method("eap-ig", "EAP with gradients averaged along the ablated-to-clean input path (k steps)")
def eap_ig(ctx, threshold: float, steps: int = 16, objective: str = "recovered") -> MethodResult:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ModcircuitError(f"steps {steps!r} is not allowed; give an integer >= 1")
    scores = [s.abs().cpu() for s in eap_signed(ctx, steps, objective)]
    return MethodResult(scores=scores, forward_passes=1 + steps,
                        extra={"objective": objective, "steps": steps, "backward_passes": steps})
