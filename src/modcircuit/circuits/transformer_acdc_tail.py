"""The forward pass of fast transformer ACDC from a stage's layer to the metric, for K candidate circuits at once
(`_TailForward`, the pieces `_StageACDC` in transformer_acdc_kernel.py evaluates candidates with).

Layout: receiver-major, [n_receivers or heads, K, B, T, d]. The pieces read the stage's state that the kernel
keeps: U / Ucur (the later receivers' inputs from the sources before the stage, and the stage heads' current
values), M (the current circuit), alive (sources with an outgoing edge), k0 and the positions read (lp).
Sources recomputed per candidate live side by side in `pc`; sources no candidate of a pass changes (none of
their inputs reads a per-candidate source) are computed once and live in `sc` (CandidateSources with K = 1): a
later input that reads only those is the same for every candidate and is computed once too.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..nn.transformer import activation
from .transformer_patching import weighted_values

try:
    from .transformer_acdc_compiled import gather_norm as _compiled_gather_norm
except ImportError:  # pragma: no cover - numba missing: the torch path
    _compiled_gather_norm = None


class CandidateSources:
    """The live - ablated values [K, B, T, d] of the sources recomputed per candidate in one evaluation, side by
    side in one buffer, slot by slot in the order they are computed: a later receiver's input is then one matrix
    product over the slots written so far, and nothing is stacked. The buffer is kept between evaluations (fresh
    memory every pass costs page faults) and grows when a pass needs more."""

    def __init__(self):
        self.mem = torch.empty(0)
        self.srcs: list[int] = []
        self.buf = None

    def reset(self, n_max: int, K: int, shape: tuple, like: torch.Tensor):
        """Room for n_max sources of K candidates, values of shape [B, T, d]."""
        need = n_max * K * math.prod(shape)
        if self.mem.numel() < need or self.mem.dtype != like.dtype or self.mem.device != like.device:
            self.mem = like.new_empty(need)
        self.buf = self.mem[:need].view(n_max, K, *shape)
        self.srcs = []

    def clear(self):
        self.srcs = []

    def new(self, s: int, pos: slice = slice(None)) -> torch.Tensor:
        """The slot [K, B, T', d] to write source s's values into (at positions pos: the last layer's)."""
        self.srcs.append(s)
        return self.buf[len(self.srcs) - 1][:, :, pos]

    def slot(self, i: int, pos: slice) -> torch.Tensor:
        """The values of the i-th source written, at positions pos [K, B, T', d]."""
        v = self.buf[i]
        return v if pos == slice(None) else v[:, :, pos]

    def matrix(self, pos: slice) -> torch.Tensor:
        """The values written so far at positions pos, one row per source [n, K * B * T' * d]."""
        n = len(self.srcs)
        v = self.buf[:n]
        return v.view(n, -1) if pos == slice(None) else v[:, :, :, pos].reshape(n, -1)


class _TailForward:
    """The forward pieces of _StageACDC (see the module docstring for the state they read)."""

    def _prepare_forward(self):
        """The model's weights in the layouts the pieces below use, and their caches."""
        self.W = []  # per layer: (W^T [H, d, dh], b [H, 1, dh]) for q, k, v, then W_O per head [H, dh, d]
        for b in self.m.blocks:
            H, dh = self.g.n_heads, b.d_head
            proj = [(W.view(H, dh, -1).transpose(1, 2).contiguous(), bias.view(H, 1, dh))
                    for W, bias in ((b.W_Q, b.b_Q), (b.W_K, b.b_K), (b.W_V, b.b_V))]
            self.W.append(proj + [b.W_O.view(-1, H, dh).permute(1, 2, 0).contiguous()])
        # per layer, every head's q, k and v weights stacked [H * 3, d, dh] (row h * 3 + c) and biases [H * 3, 1, dh]:
        # any set of (head, q/k/v) projections is then one batched product
        self.Wall = [(torch.stack([W[c][0] for c in range(3)], 1).flatten(0, 1),
                      torch.stack([W[c][1] for c in range(3)], 1).flatten(0, 1)) for W in self.W]
        self._masks: dict = {}
        self.pc = CandidateSources()  # sources recomputed per candidate in one evaluation
        self.sc = CandidateSources()  # sources computed once in one evaluation (K = 1)
        self._logp = self._p = None
        # inputs summed and layer-normalised in one compiled pass (CPU, numba); else torch's ops
        self.compiled = (_compiled_gather_norm is not None and self.D.device.type == "cpu"
                         and self.D.dtype in (torch.float32, torch.float64))

    def _mlp(self, b, x: torch.Tensor) -> torch.Tensor:
        """b.mlp(x) with the biases added in the matrix products."""
        return self._mlp_normed(b, b.norm2(x))

    def _mlp_normed(self, b, xn: torch.Tensor) -> torch.Tensor:
        """b.mlp from its normalised input xn."""
        h = F.linear(xn, b.W_in, b.b_in)
        h = h.relu_() if self.m.act == "relu" else activation(self.m.act, h)  # (in place: h is ours)
        return F.linear(h, b.W_out, b.b_out)

    def _metric_out(self, x: torch.Tensor) -> torch.Tensor:
        """The metric [K] of the output read from residual x [K, B, T', d] at the positions read (the last
        only: KL from the model's log-probabilities computed once)."""
        m = self.m
        if m.ln_f is not None:
            x = m.ln_f(x)
        out = self.ctx.positions.select(F.linear(x, m.W_U, m.b_U))
        if self.ctx.metric_name != "kl" or not self.ctx.positions.last:
            return self.ctx.metric(out)
        if self._logp is None:
            self._logp = F.log_softmax(self.ctx.target, -1)
            self._p = self._logp.exp()
        return (self._p * (self._logp - F.log_softmax(out, -1))).sum(-1).mean(-1)

    # ---- pieces of the forward pass (receiver-major layout: [n_receivers or heads, K, B, T, d]) -------
    def _project(self, l: int, c: int, heads, xn: torch.Tensor) -> torch.Tensor:
        """xn [P, ..., d] (normalised inputs, one head each) -> [P, ..., dh] with heads' weights (c: q, k, v)."""
        Wt, bias = self.W[l][c]
        if isinstance(heads, torch.Tensor) or len(heads) != self.g.n_heads:
            Wt, bias = Wt[heads], bias[heads]
        P = xn.shape[0]
        return torch.baddbmm(bias, xn.reshape(P, -1, xn.shape[-1]), Wt).view(*xn.shape[:-1], -1)

    def _attend(self, l: int, heads, q, k, v) -> torch.Tensor:
        """Results [P, ..., Tq, d] of heads (one per leading index) from q [P, ..., Tq, dh], k, v [P, ..., T, dh]."""
        Tq, T, dh = q.shape[-2], k.shape[-2], q.shape[-1]
        lead = q.shape[:-2] if q.shape[:-2] == k.shape[:-2] else torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
        qf, kf = q.expand(*lead, Tq, dh).reshape(-1, Tq, dh), k.expand(*lead, T, dh).reshape(-1, T, dh)
        # scores, scaled and causally masked in one product (the mask as an added -inf bias)
        if Tq > 1 and self.m.blocks[l].causal:
            s = torch.baddbmm(self._causal(Tq, T), qf, kf.transpose(1, 2), alpha=1.0 / math.sqrt(dh))
        else:
            s = torch.bmm(qf, kf.transpose(1, 2)).mul_(1.0 / math.sqrt(dh))
        z = weighted_values(s.softmax(-1).view(*lead, Tq, T), v)
        Wo = self.W[l][3]
        if isinstance(heads, torch.Tensor) or len(heads) != self.g.n_heads:
            Wo = Wo[heads]
        P = z.shape[0]
        return torch.bmm(z.reshape(P, -1, z.shape[-1]), Wo).view(*z.shape[:-1], -1)

    def _causal(self, Tq: int, T: int) -> torch.Tensor:
        key = (Tq, T)
        if key not in self._masks:
            mask = torch.ones(Tq, T, dtype=torch.bool, device=self.ctx.device).triu(T - Tq + 1)
            self._masks[key] = torch.zeros(Tq, T, dtype=self.D.dtype, device=self.ctx.device).masked_fill(
                mask, float("-inf"))
        return self._masks[key]

    def _gather(self, dests: list[int], pos: slice, K: int | None = None) -> torch.Tensor:
        """Inputs of later receivers: U_k + sum over live sources M[k, s] (live_s - a_s), [n, K, B, T', d] when
        K is given (the sources recomputed per candidate in self.pc summed per candidate), else [n, 1, B, T', d]
        for receivers that read none of them. The sources computed once (self.sc) are summed once."""
        idx = [k - self.k0 for k in dests]
        n = len(idx)
        U = self.Ucur if self.use_cur else self.U
        u = (U[idx] if n > 1 else U[idx[0]][None])[:, :, pos]  # [n, B, T', d]
        Mw = self.M[dests]
        if self.sc.srcs:
            u = torch.addmm(u.reshape(n, -1), Mw[:, self.sc.srcs], self.sc.matrix(pos)).view_as(u)
        if K is None:
            return u[:, None]
        if not self.pc.srcs:
            return u[:, None].expand(-1, K, -1, -1, -1).contiguous()
        W = Mw[:, self.pc.srcs]
        nnz = W.ne(0)
        # one matrix product reads every slot once; summing per row reads only the slots the row uses, but reads
        # and writes the row again for each: per row when the rows use few slots (rule measured on the receivers
        # of random models, dense and sparse circuits)
        if 2 * int(nnz.sum()) >= W.shape[1] + 2 * n:
            return torch.mm(W, self.pc.matrix(pos)).view(n, K, *u.shape[1:]).add_(u[:, None])
        # sparse (most receivers read few of the recomputed sources): each row sums only the slots it reads
        out = u.new_empty(n, K, *u.shape[1:])
        for r, (cols, ws) in enumerate(zip(nnz.tolist(), W.tolist())):
            terms = [(self.pc.slot(i, pos), w) for i, (c, w) in enumerate(zip(cols, ws)) if c]
            if not terms:
                out[r].copy_(u[r].expand_as(out[r]))
                continue
            torch.add(u[r], terms[0][0], alpha=terms[0][1], out=out[r])
            for v, w in terms[1:]:
                out[r].add_(v, alpha=w)
        return out

    def _gather_norm(self, dests: list[int], pos: slice, K: int | None, ln) -> torch.Tensor:
        """ln(_gather(dests, pos, K)) (ln a LayerNorm or None), in one compiled pass where it can run."""
        U = self.Ucur if self.use_cur else self.U
        t = range(U.shape[2])[pos]
        if not self.compiled or t.step != 1 or not U.is_contiguous():
            x = self._gather(dests, pos, K)
            return ln(x) if ln is not None else x
        per = K is not None and bool(self.pc.srcs)
        # the later receivers' edges are fixed in a stage: their sources' rows per set of sources written
        key = (tuple(dests), tuple(self.sc.srcs), tuple(self.pc.srcs) if per else None)
        rows = self._csr.get(key)
        if rows is None:
            Mw = self.M[dests].numpy()
            rows = self._csr[key] = (np.asarray([k - self.k0 for k in dests], dtype=np.int64), *_rows(Mw, self.sc.srcs),
                                     *_rows(Mw, self.pc.srcs if per else []))
        urows, s_ptr, s_idx, s_w, p_ptr, p_idx, p_w = rows
        none = self.D.new_empty(0, 1, 1, 1, 1).numpy()
        P = self.pc.buf.numpy() if per else none
        S = self.sc.buf.numpy() if self.sc.srcs else none
        B, d = U.shape[1], U.shape[3]
        out = U.new_empty(len(dests), 1 if K is None else K, B, len(t), d)
        if ln is not None:
            gamma, beta, eps = ln.weight.detach().numpy(), ln.bias.detach().numpy(), float(ln.eps)
        else:
            gamma = beta = none[:, 0, 0, 0, 0]
            eps = 0.0
        _compiled_gather_norm(U.numpy(), urows, S, s_ptr, s_idx, s_w, P, p_ptr, p_idx, p_w, t.start, gamma, beta,
                              eps, ln is not None, out.numpy())
        return out

    def _varies(self, dests: list[int]) -> list[bool]:
        """Per receiver whether its input differs between candidates (it reads a source recomputed per candidate)."""
        if not self.pc.srcs:
            return [False] * len(dests)
        key = (tuple(dests), tuple(self.pc.srcs))  # (the later receivers' edges are fixed in a stage)
        if key not in self._csr:
            self._csr[key] = self.M[dests][:, self.pc.srcs].ne(0).any(1).tolist()
        return self._csr[key]

    def _write_mlp(self, j: int, K: int, pos: slice):
        """Layer j's MLP value (live - ablated): per candidate into self.pc, or once into self.sc when its input
        is the same for every candidate."""
        g, s = self.g, self.g.src_mlp(j)
        if not self.alive[s]:
            return
        dest = [g.dest_mlp(j)]
        per = K == 1 or self._varies(dest)[0]
        b = self.m.blocks[j]
        xn = self._gather_norm(dest, pos, K if per else None, b.ln2)[0]
        torch.sub(self._mlp_normed(b, xn), self.a[s][:, pos], out=(self.pc if per else self.sc).new(s, pos))

    def _layer(self, j: int, K: int):
        """Recompute layer j (after the stage's) for K candidates (its sources' values go to self.pc, or once
        to self.sc where no candidate changes them)."""
        g = self.g
        pos = self.lp if j == g.n_layers - 1 else slice(None)
        heads = [h for h in range(g.n_heads) if self.alive[g.src_head(j, h)]]
        if heads:
            for hs, qkv, out in self._attn_qkv(j, heads, K, pos):  # the per-candidate heads, then the others
                if hs:
                    res = self._attend(j, hs, *qkv)  # [len(hs), K or 1, B, Tq, d]
                    for i, h in enumerate(hs):
                        s = g.src_head(j, h)
                        torch.sub(res[i], self.a[s][:, pos], out=out.new(s, pos))
        self._write_mlp(j, K, pos)

    def _attn_qkv(self, j: int, heads: list[int], K: int, pos: slice):
        """q, k, v projections of layer j's heads (queries at positions pos), as two groups (heads, (q, k, v),
        where their values go): the heads some candidate changes [n, K, B, T', dh] (to self.pc), then the heads
        no candidate changes, computed once [n, 1, B, T', dh] (to self.sc).
        Receivers with the same incoming edges read the same input (every receiver of a layer has the same
        ablated base), so each distinct input is gathered, normalised and projected (one matrix product for
        every head and q/k/v reading it) once, and only once in all when it reads no per-candidate source: once
        most edges are kept, one or two distinct inputs serve all of a layer's receivers."""
        g, b, nq = self.g, self.m.blocks[j], self.g.nq
        dests = [g.dest_attn(j, h, c) for h in heads for c in range(nq)]
        key = (j, tuple(heads))
        if key not in self._readers:
            self._readers[key] = self._shared_inputs(j, heads, dests)
        which, reps, full, proj = self._readers[key]
        if len(reps) == len(dests) and pos != slice(None):  # all distinct: per component, the queries at pos only
            if nq == 3:
                xq, xk, xv = (self._gather_norm([g.dest_attn(j, h, c) for h in heads], p, K, b.ln1)
                              for c, p in ((0, pos), (1, slice(None)), (2, slice(None))))
            else:
                xk = xv = self._gather_norm(dests, slice(None), K, b.ln1)
                xq = xk[:, :, :, pos]
            qkv = self._project(j, 0, heads, xq), self._project(j, 1, heads, xk), self._project(j, 2, heads, xv)
            return [(heads, qkv, self.pc)]
        per = [True] * len(reps) if K == 1 else self._varies(reps)  # per distinct input
        head_per = [any(per[which[hi * nq + c]] for c in range(nq)) for hi in range(len(heads))]
        B, T, d = self.D.shape[1:]
        Tq = len(range(T)[pos])
        dh = self.W[j][0][0].shape[-1]
        # per head: its group (0: per candidate, 1: once) and its index there
        slot = [(0 if head_per[hi] else 1, sum(head_per[:hi]) if head_per[hi] else hi - sum(head_per[:hi]))
                for hi in range(len(heads))]
        outs = []
        for grp, Kg in ((0, K), (1, 1)):
            n = sum(1 for hi in range(len(heads)) if slot[hi][0] == grp)
            outs.append((self.D.new_empty(n, Kg, B, Tq, dh), self.D.new_empty(n, Kg, B, T, dh),
                         self.D.new_empty(n, Kg, B, T, dh)))
        # inputs read at every position (keys, values), then those read at pos only (queries); before the last
        # layer pos is every position too, so all inputs go in one group
        groups = [(None, slice(None))] if pos == slice(None) else [(True, slice(None)), (False, pos)]
        for need_all, p in groups:
            for varies in (True, False):
                us = [u for u in range(len(reps)) if per[u] == varies and (need_all is None or full[u] == need_all)]
                if not us:
                    continue
                xn = self._gather_norm([reps[u] for u in us], p, K if varies else None, b.ln1)  # [n_u, K|1, B, T', d]
                for i, u in enumerate(us):
                    # every (head, q/k/v) reading input u in one product with their weights side by side
                    rd, Wc, bc = proj[u]
                    y = torch.addmm(bc, xn[i].view(-1, d), Wc).view(*xn.shape[1:-1], len(rd), dh)
                    for r, (hi, c) in enumerate(rd):
                        yr = y[..., r, :]
                        grp, at = slot[hi]
                        outs[grp][c][at].copy_(yr[:, :, pos] if c == 0 and need_all else yr)
        return [([h for hi, h in enumerate(heads) if slot[hi][0] == grp], outs[grp], (self.pc, self.sc)[grp])
                for grp in (0, 1)]

    def _shared_inputs(self, j: int, heads: list[int], dests: list[int]):
        """Per receiver the index of its distinct input (receivers with the same incoming edges share one), per
        distinct input one receiver reading it, whether it is needed at every position (keys and values), and
        its readers (head index, q/k/v) with their weights side by side [d, r * dh] and biases [r * dh]."""
        nq = self.g.nq
        which, reps, full = [], [], []
        seen: dict = {}
        for i, row in enumerate(self.M[dests].tolist()):
            u = seen.setdefault(tuple(row), len(reps))
            if u == len(reps):
                reps.append(dests[i])
                full.append(False)
            which.append(u)
            full[u] = full[u] or i % nq != 0 or nq == 1  # keys and values read every position
        Wt, bias = self.Wall[j]
        proj = []
        for u in range(len(reps)):
            rd = [(hi, c) for hi in range(len(heads)) for c in range(3) if which[hi * nq + c % nq] == u]
            w = [heads[hi] * 3 + c for hi, c in rd]
            proj.append((rd, Wt[w].permute(1, 0, 2).reshape(Wt.shape[1], -1), bias[w].reshape(-1)))
        return which, reps, full, proj

    def _tail(self, j: int, K: int) -> torch.Tensor:
        """From layer j on (the sources before it recomputed per candidate in self.pc) to the metric [K]."""
        g = self.g
        for jj in range(j, g.n_layers):
            self._layer(jj, K)
        per = K == 1 or self._varies([g.dest_out])[0]
        x = self._gather([g.dest_out], self.lp, K if per else None)[0]
        return self._metric_out(x).expand(K)


def _rows(W, srcs: list[int]):
    """Row pointers, slot indices and weights (CSR) of the nonzero entries of W[:, srcs] (numpy), slot i being
    srcs[i]'s."""
    Ws = W[:, srcs] if srcs else W[:, :0]
    r, c = np.nonzero(Ws)
    ptr = np.zeros(len(W) + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=len(W)), out=ptr[1:])
    return ptr, c.astype(np.int64), np.ascontiguousarray(Ws[r, c])
