"""The training regimes' names and the default one. Torch-free, so the command line can list them
without loading torch; train/regimes.py implements them.

The default is `bimt` everywhere (`mc.train`, `TrainConfig`, `modcircuit train`, the README): BIMT is
what this tool exists to train and measure; `vanilla`, the baseline, is asked for by name.
"""
REGIMES = ("vanilla", "l1", "l2", "l1-local", "bimt")
DEFAULT_REGIME = "bimt"
REGIME_HELP = {
    "vanilla": "task loss only",
    "l1": "lam * sum/mean |W|",
    "l2": "lam * sum/mean W^2",
    "l1-local": "lam * BIMT connection cost, no swaps",
    "bimt": "lam * BIMT connection cost + neuron swaps",
}
