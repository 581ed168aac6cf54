"""The fast ACDC kernel of the head-level transformer graph (`_StageACDC`, run by methods/transformer_acdc.py).

While a receiver is processed, every receiver read before it in the forward pass is still complete, so all
its sources have their clean values and removing edge (s -> r) just subtracts (h_s - a_s) from r's input;
candidates are evaluated from the receiver's layer onward only, per stage (the output, one layer's MLP, one
layer's attention inputs) in batches of speculative chains that keep ACDC's sequential rule exactly. The
result equals the per-edge reference (acdc-plain) exactly; only the amount of work differs.
"""
from __future__ import annotations

import torch

from .methods import MethodResult
from .transformer_acdc_tail import _TailForward
from .transformer_patching import TransformerPatchContext


# a speculative chain is evaluated lazily in chunks whose size maximises the expected number of useful
# candidates (those up to and including the first wrong guess) per unit of work, a pass costing PASS_COST
# candidates besides its candidates (in the last layer, where a candidate is computed at the read positions only,
# PASS_COST times T / positions read); the chance of a wrong guess is estimated per stage, apart for measured
# guesses and unmeasured ones (from the prior counts below until the stage has its own)
PASS_COST = 2.0
PRIOR = {True: (1.0, 16.0), False: (1.0, 4.0)}  # (wrong, checked) for measured / unmeasured guesses


class _StageACDC(_TailForward):
    """Fast transformer ACDC.

    A *stage* is a maximal run of the order's edges whose receivers share a rank (the output; one layer's
    MLP; one layer's attention inputs, in any interleaving). While a stage is processed every receiver
    read earlier in the forward pass is complete, so every source feeding the stage's receivers has its
    clean value and a candidate circuit differs from the current one only by removed edges R [n_recv,
    n_src]: receiver j reads U_j - sum_s R[j, s] (h_s - a_s). The receivers read later (already decided)
    are fixed, so a candidate is evaluated from the stage on only:
      * U_k = base_k + sum_{s upstream} M[k, s] (h_s - a_s) once per stage for every later receiver, the
        live values of the sources written from the stage on recomputed per candidate;
      * attention stages recompute only the q/k/v inputs a candidate changes (the other heads' current
        projections and results are cached; candidates giving a head the same inputs share its
        evaluation), and the last layer works at the last position only (the output reads only there;
        keys and values still see every position);
      * later receivers sum the values shared by all candidates once and only the per-candidate changes
        per candidate (see CandidateSources); receivers with the same incoming edges share one normalised input;
      * a later input that reads no source a pass's candidates change is computed once for all of them, and
        so is a later head or MLP all of whose inputs are such (their values are then shared, not per
        candidate); inputs are summed and layer-normalised in one compiled pass (transformer_acdc_compiled.py);
      * sources whose outgoing edges are all removed are skipped (they add exactly nothing), and an edge
        into such a dead receiver, or from a source equal to its ablated value, scores exactly 0;
      * ACDC's sequential rule is kept exactly by speculation: a batch evaluates a chain of candidates, each
        built on guessed outcomes (removed / kept) of the stage's earlier edges; the outcomes are checked in
        order and at the first wrong guess the rest of the chain is discarded. An unmeasured edge is guessed
        to go the way most of the stage's edges went so far ("kept" at first); the effects measured in a
        chain beyond its first wrong guess become the guesses of the next chain. Chains are evaluated lazily
        in chunks sized by the estimated chance of a wrong guess (_chunk_size; state changes are applied
        after a chain, every chunk is relative to the chain's start). Results never depend on the guesses,
        only the amount of work does. The circuit after a chain is one of its evaluated candidates, whose
        values become the current ones (_adopt) without recomputation.
    """

    def __init__(self, ctx: TransformerPatchContext, thr: float, max_candidates: int):
        self.ctx, self.thr, self.cap = ctx, thr, max(1, max_candidates)
        self.g, self.m = ctx.graph, ctx.model
        # the positions the last layer computes and the output reads: the last one, or all of them when the
        # metric reads other positions (see positions.py)
        self.lp = ctx.positions.read
        self.M = ctx.full_mask().to(ctx.dtype)
        self.D = ctx.D[:, 0].expand(-1, *ctx.h.shape[2:])  # [n_src, B, T, d]
        self.a = ctx.a[:, 0]  # [n_src, B|1, T, d]
        self.base = ctx.base[:, 0]  # [n_dest, B|1, T, d]
        self.zero = (self.D == 0).flatten(1).all(1).tolist()  # removing an edge from s changes nothing
        self.scores = torch.full(self.M.shape, float("nan"), dtype=torch.float64)
        self.passes, self.candidates = 0, 0
        self._prepare_forward()

    # ---- the stage's fixed quantities --------------------------------------------------------------
    def _rank(self, k: int) -> int:
        l = self.g.dest_layer(k)
        return 2 * l + (1 if k == self.g.dest_out or k == self.g.dest_mlp(l) else 0)

    def _setup(self, rank: int):
        g = self.g
        L, H, nq = g.n_layers, g.n_heads, g.nq
        self.layer = l = rank // 2
        self.kind = "out" if l == L else ("mlp" if rank % 2 else "attn")
        if self.kind == "out":
            self.recv, self.s0 = [g.dest_out], g.n_src
        elif self.kind == "mlp":
            self.recv, self.s0 = [g.dest_mlp(l)], g.src_mlp(l)
        else:
            self.recv = [g.dest_attn(l, h, c) for h in range(H) for c in range(nq)]
            self.s0 = g.n_src_before(l)
        self.k0 = self.recv[0]  # receivers from k0 on are the stage's and the later (fixed) ones
        T = self.D.shape[2]
        self.pass_cost = PASS_COST * (T / len(range(T)[self.lp]) if l == L - 1 else 1.0)
        self._readers: dict = {}  # per tail layer: which receivers share an input (their edges are fixed in a stage)
        self._csr: dict = {}  # the later receivers' rows of M per set of sources (_gather_norm, _varies)
        s0 = self.s0
        self.U = self.base[self.k0:] + torch.einsum("ks,sbtd->kbtd", self.M[self.k0:, :s0], self.D[:s0])
        self.alive = (self.M != 0).any(0).tolist()  # a source with an outgoing edge (only later ones decided)
        self.Ds = self.D[:s0].contiguous()
        self._lastDU = None
        # in an attention stage before the last layer, the later receivers read their inputs from Ucur: U plus
        # the stage heads' current values, kept up to date as heads change (_refresh, _adopt), so candidates
        # add only their changes
        self.Ucur = None
        self.use_cur = self.kind == "attn" and l < L - 1
        if self.kind == "attn":
            self.dirty, self.cur = set(range(H)), None
            self.cq, self.ck, self.cv, self.cres, self.cdl = [None] * H, [None] * H, [None] * H, [None] * H, [None] * H
            self.alive_heads = torch.tensor([self.alive[g.src_head(l, h)] for h in range(H)], device=self.ctx.device)

    def _u(self, k: int) -> torch.Tensor:
        return self.U[k - self.k0]

    def _dead(self, k: int) -> bool:
        g = self.g
        if self.kind == "out":
            return False
        if self.kind == "mlp":
            return not self.alive[g.src_mlp(self.layer)]
        h, c = divmod(k - self.k0, g.nq)
        if g.nq == 3 and c < 2 and self.D.shape[2] == 1:  # one position: the pattern is 1 whatever q and k are
            return True
        return not self.alive[g.src_head(self.layer, h)]

    def _remove(self, k: int, s: int, recompute: bool = True):
        """Remove edge s -> k; recompute=False: the caller sets the heads' current values itself (_adopt)."""
        self.M[k, s] = 0.0
        j = k - self.k0
        self.U[j] = self.U[j] - self.D[s]
        self._lastDU = None
        if self.kind == "attn" and recompute:
            self.dirty.add(j // self.g.nq)

    # ---- candidate evaluation ----------------------------------------------------------------------
    def _refresh(self):
        """Current projections and results of the stage layer's heads whose inputs changed; in the last layer
        also the current inputs of the MLP and the output and the MLP's current value."""
        g, l = self.g, self.layer
        b = self.m.blocks[l]
        nq, H = g.nq, g.n_heads
        last = l == g.n_layers - 1
        pos = self.lp if last else slice(None)
        hs = sorted(self.dirty)
        if hs:  # every changed head at once
            x = self.U[[g.dest_attn(l, h, c) - self.k0 for h in hs for c in range(nq)]]
            x = b.norm1(x).view(len(hs), nq, 1, *x.shape[1:])  # [nd, nq, 1, B, T, d]
            xq, xk, xv = (x[:, 0, :, :, pos], x[:, 1], x[:, 2]) if nq == 3 else (x[:, 0, :, :, pos], x[:, 0], x[:, 0])
            q, k, v = self._project(l, 0, hs, xq), self._project(l, 1, hs, xk), self._project(l, 2, hs, xv)
            res = self._attend(l, hs, q, k, v)
            for i, h in enumerate(hs):
                self.cq[h], self.ck[h], self.cv[h] = q[i, 0], k[i, 0], v[i, 0]
                self.cres[h] = res[i, 0]
                self.cdl[h] = self.cres[h][None] - self.a[g.src_head(l, h)][:, pos]
        if self.use_cur and (hs or self.Ucur is None):
            heads = [h for h in range(H) if self.alive[g.src_head(l, h)]]
            self.Ucur = self.U.clone()
            if heads:
                cdl = torch.cat([self.cdl[h] for h in heads]).view(len(heads), -1)
                srcs = [g.src_head(l, h) for h in heads]
                self.Ucur.view(len(self.Ucur), -1).addmm_(self.M[self.k0:, srcs], cdl)
        self.dirty.clear()
        self.cur = [torch.stack(t) for t in (self.cq, self.ck, self.cv, self.cres)]
        if last:  # x_mlp, mlp - a and x_out of the current circuit at the last position
            self.sc.reset(H + 1, 1, tuple(self.D.shape[1:]), self.D)  # the current values, summed once
            for h in range(H):
                if self.alive[g.src_head(l, h)]:
                    self.sc.new(g.src_head(l, h), pos).copy_(self.cdl[h])
            s = g.src_mlp(l)
            self.cx_mlp = self._gather([g.dest_mlp(l)], pos)[0] if self.alive[s] else None
            if self.alive[s]:
                self.cdl_mlp = self._mlp(b, self.cx_mlp) - self.a[s][:, pos]
                self.sc.new(s, pos).copy_(self.cdl_mlp)
            self.cx_out = self._gather([g.dest_out], pos)[0]
            self.sc.clear()
            srcs = torch.tensor([g.src_head(l, h) for h in range(H)], device=self.ctx.device)
            self.w_mlp = self.M[g.dest_mlp(l), srcs]  # [H]: weights of the heads' edges into the MLP and output
            self.w_out = self.M[g.dest_out, srcs]
            self.w_out_mlp = float(self.M[g.dest_out, s])

    def _attn_eval(self, R: torch.Tensor, K: int) -> torch.Tensor:
        g, l = self.g, self.layer
        b = self.m.blocks[l]
        H, nq = g.n_heads, g.nq
        last = l == g.n_layers - 1
        pos = self.lp if last else slice(None)
        if self.dirty or self.cur is None:
            self._refresh()
        changed = R.ne(0).any(-1)  # [K, H * nq]
        pairs = changed.view(K, H, nq).any(-1) & self.alive_heads  # [K, H]: candidate changes head
        ip, hp = torch.nonzero(pairs, as_tuple=True)  # per (candidate, head) pair
        P = len(ip)
        if P:
            # candidates that give a head the same inputs (a chain's candidates share most removals) share
            # its evaluation: the distinct (head, removals into it) pairs are evaluated once
            Rh = R.view(K, H, nq, -1)[ip, hp]  # [P, nq, s0]
            uk, inv = torch.unique(torch.cat([hp[:, None].to(R.dtype), Rh.flatten(1)], 1), dim=0,
                                   return_inverse=True)
            if len(uk) < P:
                hu, Rh = uk[:, 0].long(), uk[:, 1:].view(len(uk), nq, -1)
            else:
                hu, inv = hp, torch.arange(P, device=hp.device)
            qkv = [t[hu] for t in self.cur[:3]]  # [Q, B, T', dh]: the current projections, changed below
            # every (distinct pair, q/k/v input) that changes, all at once
            pe, ce = torch.nonzero(Rh.ne(0).any(-1), as_tuple=True)
            je = hu[pe] * nq + ce
            Rj = Rh[pe, ce]  # [n, s0]
            Wt, bias = self.Wall[l]
            if nq == 3:  # per component; the queries only at the positions read (the last one in the last layer)
                for c in range(3):
                    sel = torch.nonzero(ce == c).flatten()
                    if len(sel) == 0:
                        continue
                    Dc, Uc = (self.Ds, self.U) if c or not last else self._last_DU()
                    n, shp = len(sel), Dc.shape[1:]
                    x = torch.addmm(Uc[je[sel]].view(n, -1), Rj[sel], Dc.view(Dc.shape[0], -1), alpha=-1.0)
                    xn = b.norm1(x.view(n, -1, shp[-1]))  # [n, B*T', d]
                    dst = pe[sel]
                    w = hu[dst] * 3 + c
                    qkv[c][dst] = torch.baddbmm(bias[w], xn, Wt[w]).view(n, *shp[:-1], -1)
            else:
                Ds = self.Ds
                x = torch.mm(Rj, Ds.reshape(Ds.shape[0], -1)).view(len(pe), *Ds.shape[1:]).neg_().add_(self.U[je])
                xn = b.norm1(x).view(len(pe), -1, x.shape[-1])  # [n, B*T, d]
                T = x.shape[2]
                for c in range(3):
                    w, xs, dst = hu * 3 + c, xn, pe
                    y = torch.baddbmm(bias[w], xs, Wt[w]).view(len(dst), x.shape[1], T, -1)
                    qkv[c][dst] = y[:, :, pos] if c == 0 else y
            dres = self._attend(l, hu, *(t[:, None] for t in qkv))[:, 0] - self.cur[3][hu]  # [Q, B, Tq, d]
            # what _adopt needs to make a candidate current: per pair its head and distinct pair
            self.chunk = (ip, hu, qkv, dres, inv)
        if last:
            return self._last_tail(K, ip, hp, dres[inv] if P else None)
        # the heads' current values are in Ucur: only their changes are added, as per-candidate sources (zero
        # for the candidates that do not change the head): each head's slot picks its candidates' rows of
        # [0; dres]
        if P:
            table = torch.cat([dres.new_zeros(1, *dres.shape[1:]), dres])
            row = torch.zeros(K, dtype=torch.long, device=R.device)
            for h in range(H):
                sel = torch.nonzero(hp == h).flatten()
                if len(sel):  # only alive heads are in pairs
                    row.zero_()[ip[sel]] = inv[sel] + 1
                    torch.index_select(table, 0, row, out=self.pc.new(g.src_head(l, h)))
        self._write_mlp(l, K, pos)
        return self._tail(l + 1, K)

    def _last_DU(self):
        """Ds and U at the last position (contiguous), cached until U changes."""
        if self._lastDU is None:
            self._lastDU = (self.Ds[:, :, self.lp].contiguous(), self.U[:, :, self.lp].contiguous())
        return self._lastDU

    def _last_tail(self, K: int, ip, hp, dres) -> torch.Tensor:
        """Last layer: the candidates' MLP and output inputs are the current ones plus the changed heads'
        result changes along their edges (at the last position)."""
        g, l = self.g, self.layer
        x_out = self.cx_out.expand(K, -1, -1, -1)
        x_mlp = dm = None
        if dres is not None:
            x_out = x_out.index_add(0, ip, dres * self.w_out[hp][:, None, None, None])
            if self.cx_mlp is not None:
                x_mlp = self.cx_mlp.expand(K, -1, -1, -1).index_add(0, ip, dres * self.w_mlp[hp][:, None, None, None])
                s = g.src_mlp(l)
                dm = self._mlp(self.m.blocks[l], x_mlp) - self.a[s][:, self.lp] - self.cdl_mlp
                x_out = x_out + self.w_out_mlp * dm
        self.chunk_tail = (x_out, x_mlp, dm)
        return self._metric_out(x_out)

    def _adopt(self, chunk, tail, i: int):
        """Make candidate i of an evaluated chunk the current circuit: its changed heads' projections and
        results (and, in the last layer, its MLP and output inputs) become the current ones, so nothing is
        recomputed (the removals themselves go through _remove(recompute=False))."""
        if chunk is None:
            return
        ip, hp, qkv, dres, inv = chunk
        g, l = self.g, self.layer
        pos = self.lp if l == g.n_layers - 1 else slice(None)
        for p in inv[ip == i].tolist():
            h = int(hp[p])
            for c in range(3):
                self.cur[c][h] = qkv[c][p]
            self.cur[3][h] += dres[p]
            self.cres[h] = self.cur[3][h]
            self.cdl[h] = self.cres[h][None] - self.a[g.src_head(l, h)][:, pos]
            if self.use_cur:  # the head's value changed by dres along its edges into later receivers
                w = self.M[self.k0:, g.src_head(l, h)]
                nz = torch.nonzero(w).flatten()
                if len(nz):
                    self.Ucur.index_add_(0, nz, dres[p][None] * w[nz].view(-1, 1, 1, 1))
        if tail is not None:
            x_out, x_mlp, dm = tail
            self.cx_out = x_out[i:i + 1]
            if x_mlp is not None:
                self.cx_mlp = x_mlp[i:i + 1]
                self.cdl_mlp = self.cdl_mlp + dm[i:i + 1]

    def _removed(self, R: torch.Tensor, j: int, rows, pos: slice) -> torch.Tensor:
        """Inputs [n, B, T', d] of stage receiver j for candidates `rows`: U_j - sum_s R[row, j, s] (h_s - a_s)."""
        Rj = R[:, j] if rows is None else R[rows, j]
        Ds = self.Ds[:, :, pos]
        return torch.mm(Rj, Ds.reshape(Ds.shape[0], -1)).view(Rj.shape[0], *Ds.shape[1:]).neg_().add_(
            self._u(self.recv[j])[:, pos])

    def evaluate(self, R: torch.Tensor) -> torch.Tensor:
        """Metrics [K] of the candidates current - R (R [K, n_recv, s0], 1 = removed)."""
        g, l = self.g, self.layer
        K = R.shape[0]
        self.passes += 1
        self.candidates += K
        self.chunk = self.chunk_tail = None
        if self.kind == "out":
            x = self._removed(R, 0, None, self.lp)
            return self._metric_out(x)
        # room for every source from the stage's layer on (the most a pass can recompute per candidate)
        self.pc.reset(g.n_src - g.n_src_before(l), K, tuple(self.D.shape[1:]), self.D)
        self.sc.reset(g.n_src - g.n_src_before(l), 1, tuple(self.D.shape[1:]), self.D)
        pos = self.lp if l == g.n_layers - 1 else slice(None)
        b = self.m.blocks[l]
        if self.kind == "mlp":
            s = g.src_mlp(l)
            torch.sub(self._mlp(b, self._removed(R, 0, None, pos)), self.a[s][:, pos], out=self.pc.new(s, pos))
            return self._tail(l + 1, K)
        return self._attn_eval(R, K)

    # ---- the sequential rule -----------------------------------------------------------------------
    def run(self, order: list[tuple[int, int]]) -> MethodResult:
        stages: list[list[tuple[int, int]]] = []
        for k, s in order:
            if stages and self._rank(stages[-1][-1][0]) == self._rank(k):
                stages[-1].append((k, s))
            else:
                stages.append([(k, s)])
        with torch.no_grad():
            self.m_cur = None
            for edges in stages:
                self._setup(self._rank(edges[0][0]))
                if self.m_cur is None:  # the full circuit's metric
                    self.m_cur = self.evaluate(torch.zeros(1, len(self.recv), self.s0, dtype=self.ctx.dtype,
                                                           device=self.ctx.device)).item()
                self._stage(edges)
        ctx = self.ctx
        return MethodResult(self.scores, self.M.bool().cpu() & ctx.allowed.cpu(), self.passes,
                            {"final_metric": self.m_cur, "candidates": self.candidates})

    def _stage(self, edges):
        thr = self.thr
        pend = []
        for k, s in edges:
            if self.zero[s] or self._dead(k):  # removing it changes nothing: score exactly 0
                self.scores[k, s] = 0.0
                if 0.0 < thr:
                    self._remove(k, s)
            else:
                pend.append((k, s))
        n = len(pend)
        if n == 0:
            return
        E = torch.zeros(n, len(self.recv), self.s0, dtype=self.ctx.dtype, device=self.ctx.device)
        for i, (k, s) in enumerate(pend):
            E[i, k - self.k0, s] = 1.0
        pred = [False] * n  # guessed outcomes (True: removed); unmeasured: the stage's majority so far
        measured = [False] * n  # whether pred is a measurement (those guesses are rarely wrong)
        stats = {True: list(PRIOR[True]), False: list(PRIOR[False])}  # [wrong, checked] per kind of guess
        n_removed = n_kept = 0
        pos = 0
        while pos < n:
            if n_removed > n_kept:  # unmeasured guesses follow the stage's majority outcome
                pred[pos:] = [p if measured[pos + i] else True for i, p in enumerate(pred[pos:])]
            else:
                pred[pos:] = [p if measured[pos + i] else False for i, p in enumerate(pred[pos:])]
            # a chain from the current state: candidate i removes edge i and every earlier edge of the chain
            # guessed removed
            e = E[pos:]
            guess = pred[pos:]
            known = measured[pos:]
            gd = e * torch.tensor(guess, dtype=e.dtype, device=e.device)[:, None, None]
            R = torch.cumsum(gd, 0) - gd + e
            q = {kind: w / c for kind, (w, c) in stats.items()}
            m_chain, used, accepted, i0 = self.m_cur, None, [], 0
            chunks, last = [], -1  # per evaluated chunk: (first index, its stored values); the last accepted index
            while i0 < n - pos and used is None:
                size = self._chunk_size(known[i0:], q)
                mets = self.evaluate(R[i0:i0 + size]).tolist()
                chunks.append((i0, self.chunk, self.chunk_tail))
                for i, mk in enumerate(mets, i0):
                    if used is None:
                        k, s = pend[pos + i]
                        sc = mk - self.m_cur
                        self.scores[k, s] = sc
                        removed = sc < thr
                        n_removed, n_kept = n_removed + removed, n_kept + (not removed)
                        if removed:  # the state changes after the pass: the chain is relative to its start
                            self.m_cur = mk
                            accepted.append((k, s))
                            last = i
                        st = stats[known[i]]
                        st[1] += 1
                        if removed != guess[i]:
                            st[0] += 1
                            used = i + 1
                    else:  # beyond the first wrong guess: the effect measured in the chain is the next guess
                        pred[pos + i] = mk - m_chain < thr
                        measured[pos + i] = True
                    if guess[i]:
                        m_chain = mk
                i0 += len(mets)
            # the new circuit is the chain's candidate `last`: every earlier guess in the chain was right, so
            # it removes exactly the accepted edges (see _adopt)
            adopt = self.kind == "attn" and not self.dirty and last >= 0
            for k, s in accepted:
                self._remove(k, s, recompute=not adopt)
            if adopt:
                c0, chunk, tail = max((c for c in chunks if c[0] <= last), key=lambda c: c[0])
                self._adopt(chunk, tail, last - c0)
            pos += n - pos if used is None else used

    def _chunk_size(self, known: list[bool], q: dict) -> int:
        """How many candidates of a chain to evaluate next (known: whether each next guess is measured; q:
        the chance of a wrong guess per kind): the k maximising E[useful of k] / (PASS_COST + k), useful
        being the candidates up to and including the first wrong guess."""
        best, best_k, useful, alive = -1.0, 1, 0.0, 1.0
        for k in range(1, min(self.cap, len(known)) + 1):
            useful += alive
            alive *= 1.0 - q[known[k - 1]]
            v = useful / (self.pass_cost + k)
            if v > best:
                best, best_k = v, k
            if alive < 1e-3:
                break
        return best_k
