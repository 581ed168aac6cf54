"""The study report: comparison tables (mean ± 95% CI over seeds), curves, drawings, tested claims."""
from .build import Report, build_report, load_frames
from .claims import CLAIMS
from .stats import compare, holm, mean_ci

__all__ = ["CLAIMS", "Report", "build_report", "load_frames", "compare", "holm", "mean_ci"]
