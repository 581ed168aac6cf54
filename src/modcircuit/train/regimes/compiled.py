"""The regimes' per-step work compiled with numba (extra `fast`): weight-sparse training's projection of a matrix
and clusterability's gradient. Each regime keeps a numpy path that gives the same result when numba is missing.

Weight-sparse projection. The numpy path (weight_sparse.top_k_keep) makes ~10 library calls and as many passes
over the matrix per step; at the sizes these models have, the calls' fixed cost is most of the projection's
time. Compiled, one call per matrix finds the k-th largest |W| with the same band search (around last step's
threshold) and zeroes the rest of W and of its optimizer moments in place. The chosen entries are the same:
when the k-th value ties (count > k) nothing is written and the caller picks exactly k as the numpy path does.
Every pass over the whole matrix is branch-free (counts add comparisons, writes multiply by them), so the
compiler vectorizes it: about a quarter of the entries are kept in a pattern that changes every step, and
branching on it mispredicts so often that the branchy loops took 5x as long in training as on a repeated
matrix.
"""
from __future__ import annotations

import numpy as np
from numba import njit, objmode

# above this many band entries numpy's selection (introselect) runs: numba's np.partition took 1.05 ms on 78,400
# entries against numpy's 0.12 ms (30 against 16 us on 5,000)
NUMPY_SELECT = 4096
BLOCK = 64  # entries per block of the band search: a block is scanned entry by entry only if it holds band entries


@njit(cache=True)
def _count_band(w, lo, hi, hits):
    """How many |w| are > hi and how many lie in [lo, hi]; hits[b] = how many of block b's lie in [lo, hi]. The
    counts are branch-free sums over fixed-size blocks, which the compiler vectorizes (a bound computed per
    block, such as the last block's, keeps it from doing so: that block is counted apart)."""
    n = w.size
    full = n // BLOCK
    above = 0
    at_least = 0
    for b in range(hits.size):
        up = 0
        low = 0
        if b < full:
            base = b * BLOCK
            for i in range(BLOCK):
                a = abs(w[base + i])
                up += a > hi
                low += a >= lo
        else:
            for i in range(b * BLOCK, n):
                a = abs(w[i])
                up += a > hi
                low += a >= lo
        above += up
        at_least += low
        hits[b] = low - up
    return above, at_least - above


@njit(cache=True)
def _collect_band(w, lo, hi, hits, nb):
    """The nb entries |w| in [lo, hi]. A sparse band is collected from the blocks whose count shows some; a dense
    one (the pruned weights regrow with nearly one magnitude, so a threshold among them puts tens of thousands in
    the band) branch-free, each entry stored and the end advanced only past those in the band."""
    n = w.size
    band = np.empty(nb + 1, dtype=w.dtype)
    j = 0
    if nb * 16 > n:
        for i in range(n):
            a = abs(w[i])
            band[j] = a
            j += (a >= lo) & (a <= hi)
        return band[:nb]
    for b in range(hits.size):
        if hits[b]:
            for i in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
                a = abs(w[i])
                if (a >= lo) & (a <= hi):
                    band[j] = a
                    j += 1
    return band[:nb]


@njit(cache=True)
def _kth_largest_abs(w, k, guess, width, has_hint):
    """The k-th largest |w| (exact) and how many entries are >= it: the band search of kth_largest, then the
    whole array partitioned when four widenings miss (or without a hint)."""
    n = w.size
    if has_hint:
        hits = np.empty((n + BLOCK - 1) // BLOCK, dtype=np.int64)
        for _ in range(4):
            lo, hi = w.dtype.type(guess - width), w.dtype.type(guess + width)
            above, nb = _count_band(w, lo, hi, hits)
            if above < k and above + nb >= k:
                band = _collect_band(w, lo, hi, hits, nb)
                first = nb - (k - above)
                if nb > NUMPY_SELECT:
                    thr = _numpy_select(band, first)
                else:
                    thr = np.partition(band, first)[first]
                ties = 0  # band entries >= thr: those above the k-th place plus its ties
                for i in range(nb):
                    ties += band[i] >= thr
                return thr, above + ties
            width = 4.0 * width + 1e-12
    a = np.abs(w)
    thr = _numpy_select(a, n - k) if n > NUMPY_SELECT else np.partition(a, n - k)[n - k]
    count = 0
    for i in range(n):
        count += a[i] >= thr
    return thr, count


@njit(cache=True)
def _numpy_select(a, i):
    """The i-th smallest entry of a, by numpy (in object mode)."""
    with objmode(v="float64"):
        v = float(np.partition(a, i)[i])
    return a.dtype.type(v)


@njit(cache=True)
def project(w, m1, m2, m3, k, guess, width, has_hint):
    """Keep the k largest |w| (flat views; m1-m3 the moments to zero alike, empty when absent). Returns the
    k-th value and how many entries are >= it; when that count is not k (ties), nothing has been written."""
    thr, count = _kth_largest_abs(w, k, guess, width, has_hint)
    if count != k:
        return thr, count
    one, zero = w.dtype.type(1), w.dtype.type(0)
    if m1.size and m2.size and not m3.size:  # Adam's two moments: one pass
        for i in range(w.size):
            keep = one if abs(w[i]) >= thr else zero
            w[i] *= keep
            m1[i] *= keep
            m2[i] *= keep
        return thr, count
    for m in (m1, m2, m3):  # (empty when absent) before w, whose kept entries they follow
        for i in range(m.size):
            m[i] *= one if abs(w[i]) >= thr else zero
    for i in range(w.size):
        w[i] *= one if abs(w[i]) >= thr else zero
    return thr, count


@njit(cache=True, fastmath=True)
def clusterability_grad(w, grad, mask, scale):
    """grad += scale * dC/dW for C = sum(W^2 M) / sum(W^2) (mask M 0/1; flat views): dC/dW = 2 W (M - C) / sum W^2,
    the 2 in scale. Two passes (the sums in float64, then the update), no temporaries. fastmath lets the
    compiler vectorize the sums by reordering them."""
    total = 0.0
    inside = 0.0
    for i in range(w.size):
        x = np.float64(w[i]) * w[i]
        total += x
        inside += x * mask[i]
    if total == 0:
        return
    c = inside / total
    a = scale / total
    for i in range(w.size):
        grad[i] += w[i] * ((mask[i] - c) * a)
