"""Exact ACDC over one MLP linear, compiled with numba: one evaluation per edge, at its exact state.

The torch kernel (acdc.py) batches speculative chains of candidates because a Python loop over edges
costs more than the arithmetic of one candidate. Compiled, the plain sequential rule is cheaper than any
speculation: every edge is evaluated once, through only the part of the network it can change, and no
guess is ever wasted. Used for float64 contexts on the CPU when numba is installed (extra `fast`).

Arrays are unit-major: [units, examples], so the inner loops run over examples, contiguous (they
vectorize). While linear l is processed the linears after it are fixed, so the state is small:
  receivers_output (l is the last linear): the outputs; receiver j is output j.
  receivers_hidden: receiver j is neuron j of layer l+1; `zn` are the pre-activations of the next
  layer's live rows. When l+1 is the last hidden layer those rows are the outputs; otherwise `base` is
  the layer after them (from the current state), a candidate changes it only through the rows the
  receiver feeds (Wn[:, j] != 0), and the dense tail (`tail_*`, layer 0 = those rows) runs to the outputs.
Arithmetic is float64 in another summation order than torch's: scores agree to ~1e-15.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

ACTIVATIONS = {"relu": 0, "silu": 1, "gelu": 2, "tanh": 3, "sigmoid": 4, "identity": 5}
METRICS = {"kl": 0, "mse": 1, "logit-diff": 2}


@njit(cache=True, inline="always")
def _act(kind, x):
    if kind == 0:
        return x if x > 0.0 else 0.0
    if kind == 1:
        return x / (1.0 + math.exp(-x))
    if kind == 2:
        return 0.5 * x * (1.0 + math.erf(x * 0.7071067811865476))
    if kind == 3:
        return math.tanh(x)
    if kind == 4:
        return 1.0 / (1.0 + math.exp(-x))
    return x


@njit(cache=True)
def activate(kind, z):
    """The activation of a [units, examples] array, computed as the kernels compute it."""
    out = np.empty_like(z)
    for r in range(z.shape[0]):
        for b in range(z.shape[1]):
            out[r, b] = _act(kind, z[r, b])
    return out


@njit(cache=True)
def _metric(kind, o, n, B, p, neg_entropy, target, classes, ld_target, t1, t2, t3):
    """The metric of outputs o[:n, :B] (mean over examples); t1-t3 are scratch [B]."""
    if kind == 0:  # KL(p || softmax(o)) = sum p log p + logsumexp(o) - p . o
        for b in range(B):
            t1[b] = o[0, b]
            t2[b] = 0.0
            t3[b] = 0.0
        for k in range(1, n):
            for b in range(B):
                if o[k, b] > t1[b]:
                    t1[b] = o[k, b]
        for k in range(n):
            for b in range(B):
                t2[b] += math.exp(o[k, b] - t1[b])
                t3[b] += p[k, b] * o[k, b]
        acc = 0.0
        for b in range(B):
            acc += neg_entropy[b] + t1[b] + math.log(t2[b]) - t3[b]
        return acc / B
    for b in range(B):
        t2[b] = 0.0
    if kind == 1:  # squared error to the model, averaged over outputs and examples
        for k in range(n):
            for b in range(B):
                d = o[k, b] - target[k, b]
                t2[b] += d * d
        acc = 0.0
        for b in range(B):
            acc += t2[b] / n
        return acc / B
    for k in range(n):  # logit difference toward `classes`: the model's minus the circuit's
        for b in range(B):
            t2[b] += o[k, b]
    acc = 0.0
    for b in range(B):
        acc += ld_target[b] - (o[classes[b], b] - t2[b] / n)
    return acc / B


@njit(cache=True)
def _candidate(D, i, w, zj, c):
    """c = zj - w * D[i] (the receiver without edge i); False when that changes nothing (score exactly 0)."""
    changed = False
    for b in range(zj.shape[0]):
        d = D[i, b] * w
        c[b] = zj[b] - d
        if d != 0.0:
            changed = True
    return changed


@njit(cache=True, inline="always")
def _decide(m_new, m_cur, thr, scores, keep, j, i, zj, c):
    """ACDC's rule for edge (j, i): its score is m_new - m_cur; removed (zj becomes c) when below thr.
    Returns the metric of the circuit after the decision."""
    s = m_new - m_cur
    scores[j, i] = s
    keep[j, i] = not (s < thr)
    if s < thr:
        zj[:] = c
        return m_new
    return m_cur


@njit(cache=True)
def receivers_output(D, W, z, keep, scores, thr, m_cur, j0, j1,
                     mkind, p, neg_entropy, target, classes, ld_target):
    """Receivers j0..j1-1 of the last linear. D [n_in, B]: live minus ablated inputs; z [n_out, B]: the
    outputs, updated in place. Returns the metric and the number of edges evaluated."""
    n_in, B = D.shape
    n_out = z.shape[0]
    out = z.copy()
    c = np.empty(B)
    t1, t2, t3 = np.empty(B), np.empty(B), np.empty(B)
    zero_keep = not (0.0 < thr)
    evaluated = 0
    for j in range(j0, j1):
        zj = z[j].copy()
        for i in range(n_in):
            if not _candidate(D, i, W[j, i], zj, c):
                scores[j, i] = 0.0
                keep[j, i] = zero_keep
                continue
            evaluated += 1
            out[j] = c
            m_new = _metric(mkind, out, n_out, B, p, neg_entropy, target, classes, ld_target, t1, t2, t3)
            m_cur = _decide(m_new, m_cur, thr, scores, keep, j, i, zj, c)
        out[j] = zj
        z[j] = zj
    return m_cur, evaluated


@njit(cache=True)
def _tail(row, out, h, tail_w, tail_c, tail_dims, tail_cb, tail_act, B):
    """Run row[:tail_dims[1]] (pre-activations after tail layer 0) through tail layers 1.. into out."""
    off_w = tail_dims[0] * tail_dims[1]
    off_c = tail_dims[1] * tail_cb[0]
    for q in range(tail_dims[1]):
        for b in range(B):
            out[q, b] = row[q, b]
    for t in range(1, tail_act.shape[0]):
        n_in, n_out, cb = tail_dims[t], tail_dims[t + 1], tail_cb[t]
        for r in range(n_in):
            for b in range(B):
                h[r, b] = _act(tail_act[t], out[r, b])
        for q in range(n_out):
            for b in range(B):
                out[q, b] = tail_c[off_c + q * cb + (b if cb > 1 else 0)]
        for r in range(n_in):
            for q in range(n_out):
                wq = tail_w[off_w + r * n_out + q]
                if wq != 0.0:
                    for b in range(B):
                        out[q, b] += h[r, b] * wq
        off_w += n_in * n_out
        off_c += n_out * cb


@njit(cache=True)
def receivers_hidden(D, W, z, hcur, act1, Wn, zn, act2, hzn, base, deep,
                     tail_w, tail_c, tail_dims, tail_cb, tail_act,
                     keep, scores, thr, m_cur, j0, j1, mkind, p, neg_entropy, target, classes, ld_target):
    """Receivers j0..j1-1 of hidden layer l+1. D [n_in, B]; z, hcur [n_out, B]: the layer's pre-activations
    and activations; Wn [nR, n_out]: the next linear's live rows; zn [nR, B]: their pre-activations; when
    `deep`, hzn = act2(zn) and base [n3, B] is the layer after them. State arrays are updated in place.
    Returns the metric and the number of edges evaluated."""
    n_in, B = D.shape
    nR = Wn.shape[0]
    n3 = tail_dims[1] if deep else nR
    widest = max(tail_dims.max(), nR, 1)
    row, out, h = np.empty((widest, B)), np.empty((widest, B)), np.empty((widest, B))
    changed = np.empty(nR, dtype=np.int64)
    c, dh, delta = np.empty(B), np.empty(B), np.empty(B)
    t1, t2, t3 = np.empty(B), np.empty(B), np.empty(B)
    n_final = tail_dims[tail_dims.shape[0] - 1]
    zero_keep = not (0.0 < thr)
    evaluated = 0
    for j in range(j0, j1):
        nch = 0
        for r in range(nR):
            if Wn[r, j] != 0.0:
                changed[nch] = r
                nch += 1
        zj = z[j].copy()
        for i in range(n_in):
            if nch == 0 or not _candidate(D, i, W[j, i], zj, c):  # (a receiver reaching no output: no effect)
                scores[j, i] = 0.0
                keep[j, i] = zero_keep
                continue
            evaluated += 1
            for b in range(B):
                dh[b] = _act(act1, c[b]) - hcur[j, b]
            if not deep:  # the next layer is the output
                for r in range(nR):
                    for b in range(B):
                        row[r, b] = zn[r, b]
                for t in range(nch):
                    r = changed[t]
                    wr = Wn[r, j]
                    for b in range(B):
                        row[r, b] += dh[b] * wr
                m_new = _metric(mkind, row, nR, B, p, neg_entropy, target, classes, ld_target, t1, t2, t3)
            else:
                for q in range(n3):
                    for b in range(B):
                        row[q, b] = base[q, b]
                for t in range(nch):
                    r = changed[t]
                    wr = Wn[r, j]
                    for b in range(B):
                        delta[b] = _act(act2, zn[r, b] + dh[b] * wr) - hzn[r, b]
                    for q in range(n3):
                        wq = tail_w[r * n3 + q]
                        if wq != 0.0:
                            for b in range(B):
                                row[q, b] += delta[b] * wq
                if tail_act.shape[0] == 1:  # the layer after the changed rows is the output
                    m_new = _metric(mkind, row, n3, B, p, neg_entropy, target, classes, ld_target, t1, t2, t3)
                else:
                    _tail(row, out, h, tail_w, tail_c, tail_dims, tail_cb, tail_act, B)
                    m_new = _metric(mkind, out, n_final, B, p, neg_entropy, target, classes, ld_target, t1, t2, t3)
            m_cur = _decide(m_new, m_cur, thr, scores, keep, j, i, zj, c)
        # the receiver's final value is the state of the receivers after it
        for b in range(B):
            hv = _act(act1, zj[b])
            dh[b] = hv - hcur[j, b]
            hcur[j, b] = hv
            z[j, b] = zj[b]
        for t in range(nch):
            r = changed[t]
            wr = Wn[r, j]
            for b in range(B):
                zn[r, b] += dh[b] * wr
            if deep:
                for b in range(B):
                    hv = _act(act2, zn[r, b])
                    delta[b] = hv - hzn[r, b]
                    hzn[r, b] = hv
                for q in range(n3):
                    wq = tail_w[r * n3 + q]
                    if wq != 0.0:
                        for b in range(B):
                            base[q, b] += delta[b] * wq
    return m_cur, evaluated
