"""ACDC (Conmy et al. 2023) on MLP edges, exact semantics, two implementations with the same result.

Order and rule: receivers from the last layer back to the first; within a layer by index ascending; each
receiver's incoming edges by source index ascending. An edge is tentatively removed; it is removed for
good when metric(circuit without it) - metric(current circuit) < threshold. Its score is that change.

`acdc-plain` does exactly that with one full masked forward per edge (the reference).

`acdc` (fast) gets the same circuit and scores (up to float64 rounding) without a forward per edge:
 * while the receivers of linear l are processed, every linear below l is untouched, so the live input of
   linear l is the full model's clean activation h_l and the receiver's pre-activation is linear in its
   incoming edges: z_j = C_j + sum_i M_ji * W_ji * (h_i - a_i). Removing edge i subtracts one known
   [B]-vector, so a candidate circuit is just a new z_j.
 * only the layers after the receiver are recomputed, batched over many candidate z_j at once (a rank-one
   update of the next layer, then the fixed downstream circuit).
 * the sequential rule is kept exactly by speculation: a batch evaluates a *chain* of candidates assuming
   a guessed outcome for each earlier edge of the same receiver (guesses: the edges' individual effects,
   measured in one batched pass). Outcomes are then checked in order; at the first wrong guess the rest of
   the batch is discarded and a new chain starts from the true state. Results never depend on guesses,
   only the amount of work does.
 * an edge whose change is exactly zero (source value equals its ablated value on every example, a zero
   weight, or a receiver whose outgoing edges are all removed) has score exactly 0 without evaluation.
`forward_passes` counts batched (partial) passes; `extra["candidates"]` the candidate circuits evaluated.
"""
from __future__ import annotations

import torch

from . import MethodResult, register_method

MAX_ELEMENTS = 1 << 22  # per batched evaluation: candidates x examples x widest downstream layer


@register_method("acdc-plain", "ACDC reference: one full masked forward per edge (slow, for checks)")
def acdc_plain(ctx, threshold: float, max_edges: int | None = None, progress=None) -> MethodResult:
    masks = ctx.full_masks()
    scores = [torch.full(s, float("nan"), dtype=torch.float64) for s in ctx.graph.shapes]
    total = ctx.graph.n_edges if max_edges is None else min(max_edges, ctx.graph.n_edges)
    tested = 0
    with torch.no_grad():
        m_cur = ctx.metric(ctx.forward(masks)).item()
        for l, j, i in ctx.graph.acdc_order():
            if tested >= total:
                break
            masks[l][j, i] = False
            m_new = ctx.metric(ctx.forward(masks)).item()
            s = m_new - m_cur
            scores[l][j, i] = s
            if s < threshold:
                m_cur = m_new
            else:
                masks[l][j, i] = True
            tested += 1
            if progress is not None and tested % 1000 == 0:
                progress(tested, total)
    return MethodResult(scores=scores, mask=[m.cpu() for m in masks], forward_passes=ctx.forward_passes,
                        extra={"edges_tested": tested, "final_metric": m_cur})


@register_method("acdc", "ACDC, exact semantics, fast: only the receiver's downstream recomputed, batched")
def acdc_fast(ctx, threshold: float, progress=None) -> MethodResult:
    return _FastACDC(ctx, threshold, progress).run()


class _FastACDC:
    def __init__(self, ctx, threshold, progress):
        self.ctx, self.thr, self.progress = ctx, float(threshold), progress
        self.L = ctx.L
        self.W, self.a, self.h = ctx.W, ctx.a, ctx.h
        self.C = [ctx.a[l] @ ctx.W[l].T + ctx.b[l] for l in range(self.L)]  # pre-activation with all edges ablated
        self.weff = [w.clone() for w in ctx.W]
        self.keep = [torch.ones(s, dtype=torch.bool, device=ctx.device) for s in ctx.graph.shapes]
        self.scores = [torch.zeros(s, dtype=torch.float64, device=ctx.device) for s in ctx.graph.shapes]
        self.passes = 0
        self.candidates = 0
        self.done = 0

    def run(self) -> MethodResult:
        ctx = self.ctx
        with torch.no_grad():
            self.m = ctx.metric(ctx.forward(ctx.full_masks())).item()
            self.passes += 1
            for l in reversed(range(self.L)):
                self._layer(l)
        return MethodResult(
            scores=[s.cpu() for s in self.scores], mask=[k.cpu() for k in self.keep], forward_passes=self.passes,
            extra={"candidates": self.candidates, "final_metric": self.m},
        )

    # ---- downstream of a receiver ------------------------------------------------------------------
    def _tail(self, k: int, z: torch.Tensor) -> torch.Tensor:
        """From pre-activations z of neuron layer k through the (fixed) circuit to the output positions."""
        while k < self.L:
            h = self.ctx.model.act(k, z)
            z = self.C[k] + (h - self.a[k]) @ self.weff[k].T
            k += 1
        return z

    def _evaluator(self, l: int, j: int, z: torch.Tensor):
        """metric(candidates) for candidate pre-activations of receiver j (neuron layer l+1), [K, B] -> [K];
        returns None when the receiver cannot influence the output (all its outgoing edges removed)."""
        ctx, L = self.ctx, self.L
        if l == L - 1:
            def ev(c):
                out = z.expand(c.shape[0], *z.shape).clone()
                out[:, :, j] = c
                return ctx.metric(out)
            width = z.shape[1]
        else:
            col = self.weff[l + 1][:, j]
            if not bool((col != 0).any()):
                return None, 0
            hn = ctx.model.act(l + 1, z)
            zb = self.C[l + 1] + (hn - self.a[l + 1]) @ self.weff[l + 1].T
            hj = hn[:, j]

            def ev(c):
                dh = ctx.model.act(l + 1, c) - hj
                return ctx.metric(self._tail(l + 2, zb + dh[..., None] * col))
            width = max(self.ctx.model.widths[l + 2:])
        return ev, width

    def _evaluate(self, ev, width, cands):
        B = cands.shape[1]
        step = max(1, MAX_ELEMENTS // (B * width))
        self.passes += 1
        self.candidates += cands.shape[0]
        return torch.cat([ev(cands[s:s + step]) for s in range(0, cands.shape[0], step)]).tolist()

    # ---- one layer of receivers --------------------------------------------------------------------
    def _layer(self, l: int):
        D = self.h[l] - self.a[l]  # [B, n_in]; removing edge (j, i) subtracts W_ji * D[:, i] from z_j
        z = self.C[l] + D @ self.weff[l].T  # current pre-activations (linear l is still complete)
        n_out, n_in = self.W[l].shape
        for j in range(n_out):
            ev, width = self._evaluator(l, j, z)
            d = D * self.W[l][j]
            zero = (d == 0).all(0)
            if ev is None:
                zero[:] = True
            z[:, j] = self._receiver(l, j, d, zero, z[:, j].clone(), ev, width)
            self.weff[l][j] = self.W[l][j] * self.keep[l][j]
            self.done += n_in
            if self.progress is not None:
                self.progress(self.done, self.ctx.graph.n_edges)

    def _receiver(self, l, j, d, zero, zj, ev, width):
        thr = self.thr
        keep, scores = self.keep[l][j], self.scores[l][j]
        keep[zero] = not (0.0 < thr)  # exactly no effect: score 0
        pend = torch.nonzero(~zero).flatten()
        n = len(pend)
        if n == 0:
            return zj
        dk_all = d[:, pend].T.contiguous()  # [n, B]
        pend = pend.tolist()
        guess = None
        pos, window = 0, n
        while pos < n:
            K = n if guess is None else min(window, n - pos)
            dk = dk_all[pos:pos + K]
            if guess is None:
                cands = zj - dk  # individual effects from the current state
                g = [False] * K
            else:
                g = guess[pos:pos + K]
                gd = dk * torch.tensor(g, dtype=dk.dtype, device=dk.device)[:, None]
                cands = zj - (torch.cumsum(gd, 0) - gd) - dk
            mets = self._evaluate(ev, width, cands)
            m0 = self.m
            used = K
            for k in range(K):
                i = pend[pos + k]
                s = mets[k] - self.m
                scores[i] = s
                removed = s < thr
                keep[i] = not removed
                if removed:
                    self.m = mets[k]
                    zj = cands[k]
                if removed != g[k]:
                    used = k + 1
                    break
            if guess is None:
                guess = [False] * pos + [mk - m0 < thr for mk in mets]
                window = 32
            else:
                window = 2 * window if used == K else max(8, 2 * used)
            pos += used
        return zj
