"""Training regimes behind one interface, and the registry users extend (see base.py).

  vanilla         nothing
  l1, l2          lam * agg |W|, lam * agg W^2
  l1-local        lam * connection_cost     (BIMT's locality penalty, no swaps)
  bimt            lam * connection_cost     plus neuron swaps every swap_every steps (see swap.py)
  weight-sparse   top-k |W| per matrix after every step, k annealed to `density` (Gao et al. 2025)
  clusterability  - lam * C, C = share of W^2 inside spectral co-clusters (Golechha et al. 2024)
  group-lasso     lam * sum over neurons of the L2 norm (or RMS) of their incoming (or outgoing) weights
"""
from __future__ import annotations

from ...regime_names import DEFAULT_REGIME
from .base import Regime, describe_regimes, get_regime, regime_names, regime_options, register_regime
from .costs import connection_cost, lam_at
from . import norms, local, weight_sparse, clusterability, group_lasso  # noqa: E402,F401  (registration)

# the built-in regimes, in order (regime_names() also lists regimes registered later)
REGIMES = tuple(regime_names())

__all__ = ["DEFAULT_REGIME", "Regime", "register_regime", "regime_names", "get_regime", "describe_regimes", "regime_options",
           "connection_cost", "lam_at", "REGIMES"]
