"""Training: regimes (penalties), BIMT swaps, the loop, checkpoints."""
from .checkpoint import Run, load, save
from .config import TrainConfig
from .regimes import REGIMES, connection_cost, regime_names
from .swap import relocate, swap_neurons
from .trainer import TrainingDiverged, train

__all__ = ["Run", "load", "save", "TrainConfig", "REGIMES", "regime_names", "connection_cost", "relocate", "swap_neurons",
           "train", "TrainingDiverged"]
