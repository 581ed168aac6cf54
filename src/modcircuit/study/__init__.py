"""Studies: a TOML spec of tasks x regimes x seeds x methods, a results store, local and Ray executors."""
from .runner import StudyResult, run_study
from .spec import StudySpec, load_spec, parse_spec, plan
from .store import Store

__all__ = ["StudyResult", "run_study", "StudySpec", "load_spec", "parse_spec", "plan", "Store"]
