"""Pictures: BIMT-style network drawings with circuits overlaid, interactive views, training
animations, and the report's curves. Everything renders off-screen (matplotlib's Agg backend)."""
from .animate import Recorder, record_training
from .interactive import interactive
from .network import draw
from .plots import compute_bars, faithfulness_curves, roc_curves, training_curves
from .save import FORMATS, save_figure

__all__ = ["draw", "interactive", "Recorder", "record_training", "faithfulness_curves", "roc_curves",
           "compute_bars", "training_curves", "save_figure", "FORMATS"]
