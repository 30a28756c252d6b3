"""Benchmarks: per-layer algorithm timings and full training steps, with provenance.

Run them with ``diagonalwise bench`` (see ``diagonalwise bench --help``).
"""

from .layers import LayerRow, bench_layer_calls
from .registry import MODELS, ModelSpec, get_model_spec
from .results import BenchResult
from .training import ModelRow, bench_training

__all__ = ["MODELS", "BenchResult", "LayerRow", "ModelRow", "ModelSpec", "bench_layer_calls",
           "bench_training", "get_model_spec"]
