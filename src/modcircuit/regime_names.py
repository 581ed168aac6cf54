"""The built-in training regimes' names and the default one. Torch-free, so `modcircuit --help` and
`train --help` can list them without loading torch; train/regimes/ implements them (one class each, in
a registry that users extend; tests check this list equals the registry's built-ins).

The default is `bimt` everywhere (`mc.train`, `TrainConfig`, `modcircuit train`, the README): BIMT is
what this tool exists to train and measure; `vanilla`, the baseline, is asked for by name.
"""
REGIMES = ("vanilla", "l1", "l2", "l1-local", "bimt", "weight-sparse", "clusterability", "group-lasso")
DEFAULT_REGIME = "bimt"
