"""Compute profile: training time (total, per step, swap share), peak memory, inference latency/throughput, sizes."""
from .core import count_params, inference_stats, peak_rss_mb_self, profile_run, rss_mb_now, spread, train_fresh

__all__ = ["count_params", "inference_stats", "peak_rss_mb_self", "profile_run", "rss_mb_now", "spread", "train_fresh"]
