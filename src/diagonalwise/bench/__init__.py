"""Benchmarks: per-layer algorithm timings and full training steps, with provenance.

Run them with ``diagonalwise bench`` (see ``diagonalwise bench --help``); ``diagonalwise report``
turns committed results into tables.
"""

from .per_layer import LayerRow, bench_layer_calls
from .registry import MODELS, ModelSpec, get_model_spec
from .results import BenchResult
from .suite import BenchConfig, run_bench
from .training_step import ModelRow, bench_training

__all__ = ["MODELS", "BenchConfig", "BenchResult", "LayerRow", "ModelRow", "ModelSpec",
           "bench_layer_calls", "bench_training", "get_model_spec", "run_bench"]
