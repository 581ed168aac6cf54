"""Weight-sparse training's projection of one matrix, compiled with numba (extra `fast`).

The numpy path (weight_sparse.top_k_keep) makes ~10 library calls and as many passes over the matrix per
step; at the sizes these models have, the calls' fixed cost is most of the projection's time. Compiled, one
call per matrix finds the k-th largest |W| with the same band search (around last step's threshold; the
band's entries are collected while they are counted) and zeroes the rest of W and of its optimizer moments
in place, in one pass. The chosen entries are the same: when the k-th value ties (count > k) nothing is
written and the caller picks exactly k as the numpy path does.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _kth_largest_abs(w, k, guess, width, has_hint):
    """The k-th largest |w| (exact) and how many entries are >= it: the band search of kth_largest, then the
    whole array partitioned when four widenings miss (or without a hint)."""
    n = w.size
    if has_hint:
        band = np.empty(n, dtype=w.dtype)
        for _ in range(4):
            lo, hi = w.dtype.type(guess - width), w.dtype.type(guess + width)
            above = 0
            nb = 0
            for i in range(n):
                a = abs(w[i])
                if a > hi:
                    above += 1
                elif a >= lo:
                    band[nb] = a
                    nb += 1
            if above < k and above + nb >= k:
                b = np.sort(band[:nb])
                first = nb - (k - above)
                thr = b[first]
                while first > 0 and b[first - 1] >= thr:
                    first -= 1
                return thr, above + nb - first
            width = 4.0 * width + 1e-12
    a = np.partition(np.abs(w), n - k)
    thr = a[n - k]
    count = 0
    for i in range(n):
        if a[i] >= thr:
            count += 1
    return thr, count


@njit(cache=True)
def project(w, m1, m2, m3, k, guess, width, has_hint):
    """Keep the k largest |w| (flat views; m1-m3 the moments to zero alike, empty when absent). Returns the
    k-th value and how many entries are >= it; when that count is not k (ties), nothing has been written."""
    thr, count = _kth_largest_abs(w, k, guess, width, has_hint)
    if count != k:
        return thr, count
    zero = w.dtype.type(0)
    if m1.size and m2.size and not m3.size:  # Adam's two moments: one pass, selects (no branches)
        for i in range(w.size):
            keep = abs(w[i]) >= thr
            w[i] = w[i] if keep else zero
            m1[i] = m1[i] if keep else zero
            m2[i] = m2[i] if keep else zero
        return thr, count
    for i in range(w.size):
        w[i] = w[i] if abs(w[i]) >= thr else zero
    for m in (m1, m2, m3):  # (empty when absent)
        for i in range(m.size):
            m[i] = m[i] if w[i] != 0.0 else zero
    return thr, count
