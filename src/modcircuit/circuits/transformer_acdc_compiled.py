"""Fast transformer ACDC's input gathering compiled with numba (extra `fast`): a later receiver's input summed from
its sources and layer-normalised in one pass (gather_norm), for the tail in transformer_acdc_tail.py.

With torch the same work is a matrix product (or a sum per row) that writes the inputs [n, K, B, T', d], then a
layer norm that reads them and writes them again, each into fresh memory. Here every (candidate, example,
position) row of every receiver is summed and normalised in a small buffer and written once; the receivers are
the innermost loop, so the source rows they share are read from memory once. Sums run in the data's dtype, in
the order U, shared sources, per-candidate sources (results differ from torch's in round-off only).
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, fastmath=True)
def gather_norm(U, urows, S, s_ptr, s_idx, s_w, P, p_ptr, p_idx, p_w, t0, gamma, beta, eps, normalise, out):
    """out[r, k, b, t] = LN(U[urows[r], b, t0 + t] + sum_j s_w[j] S[s_idx[j], 0, b, t0 + t]
    + sum_j p_w[j] P[p_idx[j], k, b, t0 + t]) with row r's terms j in [s_ptr[r], s_ptr[r + 1]) and
    [p_ptr[r], p_ptr[r + 1]); LN with gain gamma and bias beta, or none when normalise is False.
    U [n_u, B, T, d]; S [n_s, 1, B, T, d]; P [n_p, K, B, T, d]; out [n, K, B, T', d]."""
    n, K, B, Tp, d = out.shape
    x = np.empty(d, dtype=out.dtype)
    inv_d = 1.0 / d
    for k in range(K):
        for b in range(B):
            for t in range(Tp):
                tt = t0 + t
                for r in range(n):
                    ur = urows[r]
                    for c in range(d):
                        x[c] = U[ur, b, tt, c]
                    for j in range(s_ptr[r], s_ptr[r + 1]):
                        s = s_idx[j]
                        w = s_w[j]
                        for c in range(d):
                            x[c] += w * S[s, 0, b, tt, c]
                    for j in range(p_ptr[r], p_ptr[r + 1]):
                        s = p_idx[j]
                        w = p_w[j]
                        for c in range(d):
                            x[c] += w * P[s, k, b, tt, c]
                    if normalise:
                        m = 0.0
                        for c in range(d):
                            m += x[c]
                        m *= inv_d
                        v = 0.0
                        for c in range(d):
                            x[c] -= m
                            v += x[c] * x[c]
                        rs = 1.0 / np.sqrt(v * inv_d + eps)
                        for c in range(d):
                            out[r, k, b, t, c] = x[c] * rs * gamma[c] + beta[c]
                    else:
                        for c in range(d):
                            out[r, k, b, t, c] = x[c]
