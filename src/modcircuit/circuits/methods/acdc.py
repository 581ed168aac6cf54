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

SWITCH = 2  # wrong "removed" guesses in one receiver before its edges' individual effects are measured
FIRST_CHUNK = 8  # after a wrong guess, the next chain is evaluated in chunks of 8, 16, 32, ...
MAX_ELEMENTS = 1 << 17  # per evaluation chunk (candidates x examples x widest layer): small enough to stay in cache


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
        logp = torch.log_softmax(ctx.target, -1)
        self.p, self.neg_entropy = logp.exp(), (logp.exp() * logp).sum(-1)
        self.shift = ctx.target.amax(-1, keepdim=True)  # logsumexp shift (checked for overflow)
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
    def _prepare_downstream(self, l: int):
        """While linear l is processed, linears l+1.. are fixed: keep only the neurons that still reach the
        output (a neuron with no kept outgoing edge adds exactly nothing downstream) and fold constants."""
        L = self.L
        alive = {L: torch.ones(self.W[L - 1].shape[0], dtype=torch.bool, device=self.ctx.device)}
        for k in range(L - 1, l + 1, -1):
            alive[k] = (self.weff[k][alive[k + 1]] != 0).any(0)
        self.alive = alive
        # tail layers k >= l+2: z_{k+1} = h_k @ Wk.T + Ck, restricted to alive neurons
        self.tail = {}
        for k in range(l + 2, L):
            w = self.weff[k][alive[k + 1]][:, alive[k]]
            c = (self.C[k] - self.a[k] @ self.weff[k].T)[:, alive[k + 1]]
            self.tail[k] = (w.T.contiguous(), c)

    def _tail(self, k: int, z: torch.Tensor) -> torch.Tensor:
        """From (alive) pre-activations of neuron layer k through the fixed circuit to the output positions."""
        while k < self.L:
            wt, c = self.tail[k]
            z = torch.matmul(self.ctx.model.act(k, z), wt).add_(c)
            k += 1
        return z

    def _evaluator(self, l: int, j: int, z: torch.Tensor):
        """metric(candidates) for candidate pre-activations of receiver j (neuron layer l+1), [K, B] -> [K];
        returns None when the receiver cannot influence the output (all its outgoing edges removed)."""
        ctx, L = self.ctx, self.L
        if l == L - 1:
            if self.ctx.metric_name == "kl":
                # only output j changes: KL = -H(p) + logsumexp(z with z_j=c) - p.z + p_j (z_j - c), with the
                # other outputs' exp-sum taken once (summed without column j: no cancellation)
                shift = self.shift[:, 0]
                e = (z - self.shift).exp_()
                e[:, j] = 0
                rest, base = e.sum(-1), self.neg_entropy - (z * self.p).sum(-1) + self.p[:, j] * z[:, j]
                pj = self.p[:, j]
                if bool(torch.isfinite(rest).all()) and bool((rest > 0).all()):
                    def ev(c):
                        lse = (c - shift).exp_().add_(rest).log_().add_(shift)
                        kl = (base + lse - pj * c).mean(-1)
                        if not bool(torch.isfinite(kl).all()):
                            return self.metric(self._with_output(z, j, c))
                        return kl
                    return ev, 1

            def ev(c):
                return self.metric(self._with_output(z, j, c))
            return ev, z.shape[1]
        rows = self.alive[l + 2]
        col = self.weff[l + 1][rows, j]
        if not bool((col != 0).any()):
            return None, 0
        hn = ctx.model.act(l + 1, z)
        zb = (self.C[l + 1] + (hn - self.a[l + 1]) @ self.weff[l + 1].T)[:, rows]
        hj = hn[:, j]
        if l + 2 == L and self.ctx.metric_name == "mse":
            # out = zb + dh * col: mean((r + dh col)^2) = mean_b(|r_b|^2 + 2 dh_b r_b.col + dh_b^2 |col|^2) / n_out
            r = zb - self.ctx.target
            rr, rc, cc = (r * r).sum(-1), r @ col, col @ col
            n_out = zb.shape[1]

            def ev(c):
                dh = ctx.model.act(l + 1, c) - hj
                return (rr + dh * (2 * rc + dh * cc)).mean(-1) / n_out
            return ev, 1

        if l + 2 == L and self.ctx.metric_name == "kl":
            # out = zb + dh col, so p.out = p.zb + dh (p.col): only the logsumexp needs the full outputs
            base, pc, shift = self.neg_entropy - (zb * self.p).sum(-1), self.p @ col, self.shift

            def ev(c):
                dh = ctx.model.act(l + 1, c) - hj
                out = torch.addcmul(zb, dh[..., None], col)
                kl = (base + (out - shift).exp_().sum(-1).log_().add_(shift[..., 0]) - dh * pc).mean(-1)
                return kl if bool(torch.isfinite(kl).all()) else self.metric(out)
            return ev, max(int(rows.sum()), 1)

        def ev(c):
            dh = ctx.model.act(l + 1, c) - hj
            return self.metric(self._tail(l + 2, torch.addcmul(zb, dh[..., None], col)))
        return ev, max(int(rows.sum()), 1)

    @staticmethod
    def _with_output(z: torch.Tensor, j: int, c: torch.Tensor) -> torch.Tensor:
        out = z.expand(c.shape[0], *z.shape).clone()
        out[:, :, j] = c
        return out

    def metric(self, out: torch.Tensor) -> torch.Tensor:
        """The context's metric for candidate outputs [K, B, n_out] (KL in a cheaper, equal form)."""
        if self.ctx.metric_name != "kl":
            return self.ctx.metric(out)
        # KL(p || softmax(out)) = sum p log p + logsumexp(out) - p . out
        lse = (out - self.shift).exp_().sum(-1).log_().add_(self.shift[..., 0])
        kl = (self.neg_entropy + lse - (out * self.p).sum(-1)).mean(-1)
        if not bool(torch.isfinite(kl).all()):  # exp over/underflowed: the stable (slower) form
            kl = (self.neg_entropy + torch.logsumexp(out, -1) - (out * self.p).sum(-1)).mean(-1)
        return kl

    def _chunks(self, ev, width, cands, first=None):
        """Evaluate candidates lazily in chunks small enough to stay in cache; chunk sizes start at `first`
        and double (a speculative chain is often cut short by a wrong guess)."""
        step = max(1, MAX_ELEMENTS // (cands.shape[1] * width))
        size = step if first is None else min(first, step)
        self.passes += 1
        s = 0
        while s < cands.shape[0]:
            k = min(size, cands.shape[0] - s)
            self.candidates += k
            yield s, ev(cands[s:s + k]).tolist()
            s += k
            size = min(2 * size, step)

    # ---- one layer of receivers --------------------------------------------------------------------
    def _layer(self, l: int):
        D = self.h[l] - self.a[l]  # [B, n_in]; removing edge (j, i) subtracts W_ji * D[:, i] from z_j
        z = self.C[l] + D @ self.weff[l].T  # current pre-activations (linear l is still complete)
        n_out, n_in = self.W[l].shape
        self._prepare_downstream(l)
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
        """Decide the receiver's incoming edges in order. Each pass evaluates a chain of candidates built
        on guessed outcomes of the earlier edges (first: every edge removed; after SWITCH wrong guesses:
        each edge's individual effect from a full pass) and stops at the first wrong guess."""
        thr = self.thr
        self.keep[l][j][zero] = not (0.0 < thr)  # exactly no effect: score 0
        pend_t = torch.nonzero(~zero).flatten()
        n = len(pend_t)
        if n == 0:
            return zj
        dk_all = d[:, pend_t].T.contiguous()  # [n, B]
        scores, keep = [0.0] * n, [True] * n
        guess = [True] * n
        pos, wrong, predicted = 0, 0, False
        while pos < n:
            individual = wrong >= SWITCH and not predicted
            dk = dk_all[pos:]
            if individual:  # every candidate from the current state: a chain that guesses "kept"
                g = [False] * (n - pos)
                cands = zj - dk
            else:
                g = guess[pos:]
                gd = dk * torch.tensor(g, dtype=dk.dtype, device=dk.device)[:, None]
                cands = zj - (torch.cumsum(gd, 0) - gd) - dk
            m0, used, all_mets = self.m, None, []
            first = None if (individual or wrong == 0) else FIRST_CHUNK
            for s, mets in self._chunks(ev, width, cands, first):
                if individual:
                    all_mets += mets
                if used is not None:
                    continue  # (individual pass: finish it for the predictions)
                for k, mk in enumerate(mets, s):
                    sc = mk - self.m
                    scores[pos + k] = sc
                    removed = sc < thr
                    keep[pos + k] = not removed
                    if removed:
                        self.m = mk
                        zj = cands[k]
                    if removed != g[k]:
                        used = k + 1
                        break
                if used is not None and not individual:
                    break
            if individual:
                guess[pos:] = [mk - m0 < thr for mk in all_mets]
                predicted = True
            if used is None:
                used = n - pos
            else:
                wrong += 1
            pos += used
        dev = self.scores[l].device
        self.scores[l][j][pend_t] = torch.tensor(scores, dtype=torch.float64, device=dev)
        self.keep[l][j][pend_t] = torch.tensor(keep, dtype=torch.bool, device=dev)
        return zj
