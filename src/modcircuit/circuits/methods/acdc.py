"""ACDC (Conmy et al. 2023) on MLP edges, exact semantics, two implementations with the same result.

Order and rule: receivers from the last layer back to the first; within a layer by index ascending; each
receiver's incoming edges by source index ascending. An edge is tentatively removed; it is removed for
good when metric(circuit without it) - metric(current circuit) < threshold. Its score is that change.

`acdc-plain` does exactly that with one full masked forward per edge (the reference).

`acdc` (fast) gets the same circuit and scores (up to float64 rounding) without a forward per edge, by one
of two kernels (option `kernel`; "auto" picks the compiled one on the CPU when numba is there):
 * while the receivers of linear l are processed, every linear below l is untouched, so the live input of
   linear l is the full model's clean activation h_l and the receiver's pre-activation is linear in its
   incoming edges: z_j = C_j + sum_i M_ji * W_ji * (h_i - a_i). Removing edge i subtracts one known
   [B]-vector, so a candidate circuit is just a new z_j.
 * only the layers after the receiver are recomputed: the next layer's neurons that the receiver feeds
   (a rank-one update of those alone), then the fixed downstream circuit.
 * "compiled" (mlp_acdc_kernel.py, numba): the rule exactly as stated, one evaluation per edge, in compiled
   loops over the examples, in float64. A float32 context runs it on its float64 twin (the same weights and
   inputs, widened): its circuit is the float64 reference's. Float32 sums in any order (the float32
   reference, the torch kernel) can flip an edge whose score lies within float32 rounding of the threshold,
   and every later decision then starts from another circuit, so on dense circuits the float32 reference
   itself departs from the float64 one (281 of 17,400 decisions on a random [64,100,100,10] net at tau 8.6e-5).
 * "torch" (any device and precision): the sequential rule is kept exactly by speculation: a batch
   evaluates a *chain* of candidates assuming a guessed outcome for each earlier edge of the same receiver.
   Outcomes are checked in order; at the first wrong guess the rest of the batch is discarded and a new
   chain starts from the true state. A guess is the edge's latest measured score (candidates evaluated past
   a wrong guess still measure their edges); receivers of a layer whose edges are mostly kept start with
   one pass of every edge's individual effect. Results never depend on guesses, only the amount of work.
 * an edge whose change is exactly zero (source value equals its ablated value on every example, a zero
   weight, or a receiver whose outgoing edges are all removed) has score exactly 0 without evaluation.
`forward_passes` counts (partial) passes: batched ones for "torch", one per evaluated edge for "compiled";
`extra["candidates"]` the candidate circuits evaluated, `extra["kernel"]` the kernel that ran.
"""
from __future__ import annotations

import numpy as np
import torch

from ...errors import ModcircuitError, choice_error
from ..patching import logit_diff
from . import MethodResult, register_method

DENSE_SWITCH = 0.5  # below this share of removed edges (so far in the layer), receivers start with individual effects
COMPILED_BLOCK = 20_000  # edges per call of the compiled kernel (progress is reported between calls)
FIRST_CHUNK = 8  # a chain is evaluated in chunks of 8, 16, 32, ... candidates (it is often cut short)
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


KERNELS = ("auto", "compiled", "torch")


def compiled_kernel():
    """The numba kernel module, or None when numba is not installed (extra `fast`)."""
    try:
        from . import mlp_acdc_kernel
    except ImportError:
        return None
    return mlp_acdc_kernel


@register_method("acdc", "ACDC, exact semantics, fast: only the receiver's downstream recomputed, batched")
def acdc_fast(ctx, threshold: float, progress=None, kernel: str = "auto") -> MethodResult:
    """kernel: "compiled" (numba, one evaluation per edge; on the CPU, in float64), "torch" (batched speculative
    chains; any device and precision) or "auto" (compiled on the CPU when numba is installed)."""
    if kernel not in KERNELS:
        raise choice_error("kernel", kernel, KERNELS)
    fits = ctx.device.type == "cpu"
    if kernel == "compiled":
        if compiled_kernel() is None:
            raise ModcircuitError("kernel 'compiled' needs numba: pip install -e '.[fast]'")
        if not fits:
            raise ModcircuitError(f"kernel 'compiled' runs on the CPU; this context is on {ctx.device.type}; "
                                  "use kernel 'torch'")
    compiled = kernel == "compiled" or (kernel == "auto" and fits and compiled_kernel() is not None)
    if compiled:  # its arithmetic is float64: a float32 context's twin (the float32 sums were 4-10x slower)
        ctx = ctx.widened()
    res = _FastACDC(ctx, threshold, progress, compiled).run()
    res.extra["dtype"] = str(ctx.dtype).replace("torch.", "")  # the arithmetic its scores came from
    return res


class _FastACDC:
    def __init__(self, ctx, threshold, progress, compiled: bool = False):
        self.ctx, self.thr, self.progress, self.compiled = ctx, float(threshold), progress, compiled
        self.L = ctx.L
        self.W, self.a, self.h = ctx.W, ctx.a, ctx.h
        self.C = [ctx.a[l] @ ctx.W[l].T + ctx.b[l] for l in range(self.L)]  # pre-activation with all edges ablated
        self.weff = [w.clone() for w in ctx.W]
        self.keep = [torch.ones(s, dtype=torch.bool, device=ctx.device) for s in ctx.graph.shapes]
        self.scores = [torch.zeros(s, dtype=torch.float64, device=ctx.device) for s in ctx.graph.shapes]
        self.passes = 0
        self.candidates = 0
        # per linear: non-zero edges decided so far and how many of them were removed (the guess for the next)
        self.decided, self.removed = [0] * self.L, [0] * self.L
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
                if self.compiled:
                    self._layer_compiled(l)
                else:
                    self._layer(l)
        return MethodResult(
            scores=[s.cpu() for s in self.scores], mask=[k.cpu() for k in self.keep], forward_passes=self.passes,
            extra={"candidates": self.candidates, "final_metric": self.m,
                   "kernel": "compiled" if self.compiled else "torch"},
        )

    # ---- one layer of receivers, compiled (mlp_acdc_kernel.py) ---------------------------------------
    def _layer_compiled(self, l: int):
        """Linear l's receivers in the compiled kernel; its arrays are [units, examples] (float64, CPU)."""
        K, ctx, L = compiled_kernel(), self.ctx, self.L
        unit_major = lambda t: np.ascontiguousarray(t.detach().cpu().numpy().T)  # noqa: E731
        flat = lambda t: np.ascontiguousarray(t.detach().cpu().numpy()).ravel()  # noqa: E731
        act = lambda k: K.ACTIVATIONS[ctx.model.activation_names[k - 1]]  # noqa: E731
        D = self.h[l] - self.a[l]
        z = unit_major(self.C[l] + D @ self.weff[l].T)
        D, W = unit_major(D), np.ascontiguousarray(self.W[l].cpu().numpy())
        n_out, n_in = W.shape
        keep, scores = np.ones((n_out, n_in), dtype=bool), np.zeros((n_out, n_in))
        self._prepare_downstream(l)
        classes = ctx.classes if ctx.classes is not None else ctx.target.argmax(-1)
        metric = (K.METRICS[ctx.metric_name], unit_major(self.p), flat(self.neg_entropy), unit_major(ctx.target),
                  flat(classes.long()), flat(logit_diff(ctx.target, classes)))
        if l == L - 1:
            def block(j0, j1):
                return K.receivers_output(D, W, z, keep, scores, self.thr, self.m, j0, j1, *metric)
        else:
            rows = self.alive[l + 2]
            hcur = K.activate(act(l + 1), z)
            h_t = torch.from_numpy(hcur.T)
            zn = unit_major((self.C[l + 1] + (h_t - self.a[l + 1]) @ self.weff[l + 1].T)[:, rows])
            deep = l + 2 < L
            if deep:  # the layer after the changed rows, and the fixed circuit from there to the outputs
                hzn = K.activate(act(l + 2), zn)
                tails = [self.tail[k] for k in range(l + 2, L)]
                base = unit_major(torch.from_numpy(hzn.T) @ tails[0][0] + tails[0][1])
                tail_w = np.concatenate([flat(wt) for wt, _ in tails])
                tail_c = np.concatenate([unit_major(c).ravel() for _, c in tails])
                tail_dims = np.array([tails[0][0].shape[0]] + [wt.shape[1] for wt, _ in tails], dtype=np.int64)
                tail_cb = np.array([c.shape[0] for _, c in tails], dtype=np.int64)
                tail_act = np.array([act(k) for k in range(l + 2, L)], dtype=np.int64)
            else:
                hzn, base = np.zeros((1, 1)), np.zeros((1, 1))
                tail_w, tail_c = np.zeros(1), np.zeros(1)
                tail_dims, tail_cb = np.array([int(rows.sum())], dtype=np.int64), np.ones(1, dtype=np.int64)
                tail_act = np.zeros(1, dtype=np.int64)
            state = (hcur, act(l + 1), np.ascontiguousarray(self.weff[l + 1][rows].cpu().numpy()), zn,
                     act(l + 2) if deep else 0, hzn, base, deep, tail_w, tail_c, tail_dims, tail_cb, tail_act)

            def block(j0, j1):
                return K.receivers_hidden(D, W, z, *state, keep, scores, self.thr, self.m, j0, j1, *metric)
        # receivers in blocks of about COMPILED_BLOCK edges, for the progress bar
        step = max(1, COMPILED_BLOCK // max(n_in, 1))
        for j0 in range(0, n_out, step):
            j1 = min(n_out, j0 + step)
            self.m, evaluated = block(j0, j1)
            self.candidates += evaluated
            self.passes += evaluated
            self.done += (j1 - j0) * n_in
            if self.progress is not None:
                self.progress(self.done, ctx.graph.n_edges)
        dev = self.scores[l].device
        self.keep[l] = torch.from_numpy(keep).to(dev)
        self.scores[l] = torch.from_numpy(scores).to(dev)
        self.weff[l] = self.W[l] * self.keep[l]

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

        if l + 2 == L:  # the next layer is the output (a metric without a closed form above)
            def ev(c):
                dh = ctx.model.act(l + 1, c) - hj
                return self.metric(torch.addcmul(zb, dh[..., None], col))
            return ev, max(int(rows.sum()), 1)

        # deeper receivers: only the next layer's neurons that the receiver feeds (col != 0) change, so the
        # layer after them is updated by those columns alone and the rest of the fixed circuit runs as usual
        k = l + 2
        changed = torch.nonzero(col).flatten()
        wt, c_k = self.tail[k]
        hb = ctx.model.act(k, zb)
        base = hb @ wt + c_k
        zc, colc, hbc, wtc = zb[:, changed], col[changed], hb[:, changed], wt[changed]

        def ev(c):
            dh = ctx.model.act(l + 1, c) - hj
            delta = ctx.model.act(k, torch.addcmul(zc, dh[..., None], colc)).sub_(hbc)
            return self.metric(self._tail(k + 1, torch.matmul(delta, wtc).add_(base)))
        return ev, max(len(changed), wt.shape[1], 1)

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
            yield s, ev(cands[s:s + k]).to(torch.float64).cpu().numpy()
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
        """Decide the receiver's incoming edges in order. Each pass evaluates a chain of candidates built on
        guessed outcomes of the earlier edges and stops at the first wrong guess. A guess is the edge's latest
        measured score (every candidate evaluated past a wrong guess still measures its edge, on a state one
        edge off the true one); unmeasured edges are guessed removed where this layer's edges mostly are, and
        otherwise the receiver starts with one pass of every edge's individual effect."""
        thr = self.thr
        self.keep[l][j][zero] = not (0.0 < thr)  # exactly no effect: score 0
        pend_t = torch.nonzero(~zero).flatten()
        n = len(pend_t)
        if n == 0:
            return zj
        dk_all = d[:, pend_t].T.contiguous()  # [n, B]
        scores, keep, est = np.zeros(n), np.ones(n, dtype=bool), np.full(n, np.nan)
        sparse = self.removed[l] >= DENSE_SWITCH * self.decided[l]
        pos, individual = 0, not sparse
        while pos < n:
            dk = dk_all[pos:]
            if individual:  # every candidate from the current state: a chain that guesses "kept"
                g = np.zeros(n - pos, dtype=bool)
                cands = zj - dk
            else:
                e = est[pos:]
                g = np.where(np.isnan(e), sparse, e < thr)
                gd = dk * torch.from_numpy(g).to(dk.dtype).to(dk.device)[:, None]
                cands = zj - (torch.cumsum(gd, 0) - gd) - dk
            m_path, wrong = self.m, None  # the metric of the chain's (guessed) state before the chunk
            for s, mets in self._chunks(ev, width, cands, None if individual else FIRST_CHUNK):
                k = len(mets)
                gs = g[s:s + k]
                # each candidate's score against the chain state before it: the last guessed-removed candidate
                last = np.maximum.accumulate(np.where(gs, np.arange(k), -1))
                before = np.concatenate(([-1], last[:-1]))
                sc = mets - np.where(before >= 0, mets[np.maximum(before, 0)], m_path)
                if last[-1] >= 0:
                    m_path = mets[last[-1]]
                if wrong is None:
                    removed = sc < thr
                    bad = np.flatnonzero(removed != gs)
                    upto = k if len(bad) == 0 else int(bad[0]) + 1
                    scores[pos + s:pos + s + upto] = sc[:upto]
                    keep[pos + s:pos + s + upto] = ~removed[:upto]
                    gone = np.flatnonzero(removed[:upto])
                    if len(gone):  # guesses before a wrong one were right: the last removal is the state
                        self.m = float(mets[gone[-1]])
                        zj = cands[s + int(gone[-1])]
                    if len(bad):
                        wrong = s + upto - 1
                        est[pos + wrong + 1:pos + s + k] = sc[upto:]
                else:
                    est[pos + s:pos + s + k] = sc
                if wrong is not None and not individual:
                    break
            individual = False
            used = n - pos if wrong is None else wrong + 1
            pos += used
        self.decided[l] += n
        self.removed[l] += n - int(keep.sum())
        dev = self.scores[l].device
        self.scores[l][j][pend_t] = torch.from_numpy(scores).to(dev)
        self.keep[l][j][pend_t] = torch.from_numpy(keep).to(dev)
        return zj
