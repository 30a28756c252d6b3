"""The autotuner: per layer, measure every candidate algorithm on the actual device, pick the fastest.

``tune(model, example_inputs)`` captures each grouped convolution's call from one forward, groups
the calls by :meth:`ConvCall.key` (conv options, dtype, layout exactly; batch and spatial sizes by
power-of-two bucket), and for each key measures forward+backward of every candidate that passes the
correctness gate. Native is always a candidate, and another algorithm is chosen only when it beats
native by ``min_gain`` (default 5%); then the whole model is timed with the choices and with
native everywhere, and if the choices are slower, native it is. So on the device it was tuned on a
tuned model is not slower than native beyond noise. Decisions persist in a per-device JSON cache,
written atomically under a file lock, so concurrent processes (DDP ranks) neither corrupt it nor
disagree: the first decision stored for a key wins and every later process adopts it.
"""

from __future__ import annotations

from .autotune import tune
from .cache import CACHE_FORMAT, TuningCache
from .capture import collect_conv_calls, is_tunable
from .choice import LayerChoice, Timer, choose, measure_step
from .gate import GATE_TOLERANCE, check_correctness
from .plan import Plan
from .whole_model import adopt_verdict, check_whole_model, measure_whole_model

__all__ = ["CACHE_FORMAT", "GATE_TOLERANCE", "LayerChoice", "Plan", "Timer", "TuningCache",
           "adopt_verdict", "check_correctness", "check_whole_model", "choose", "collect_conv_calls",
           "is_tunable", "measure_whole_model",
           "measure_step", "tune"]
