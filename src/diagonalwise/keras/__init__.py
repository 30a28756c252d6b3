"""Depthwise convolutions for Keras 3 (TensorFlow, JAX and PyTorch backends) by the algorithm of
your choice: ``algorithm="native"``, ``"block_diagonal:<b>"`` (the diagonalwise refactorization;
``block_size=b`` is the shorthand, and with neither the paper's 32 channels per block) or
``"shift_add"`` (a sum of shifted products, :mod:`diagonalwise.keras.shift_add`; on the JAX
backend :mod:`diagonalwise.jax.shift_add`, which XLA computes far faster than its own depthwise
convolution on the CPU). :func:`diagonalwise.keras.tuning.tune_model` measures them per layer.

Equivalence contract: ``DiagonalwiseDepthwiseConv2D(..., algorithm=a)`` equals
``keras.layers.DepthwiseConv2D(...)`` with the same arguments in value and in every gradient, to
rounding. It has the same weights, with the same names, shapes and order (``kernel`` of shape
(kh, kw, channels, depth_multiplier), then ``bias``), so saved weights load either way. The same
holds for the 1D layer.
"""

from __future__ import annotations

import keras
from keras import ops

from ..algorithm_choice import Plan
from ..algorithm_names import parse_algorithm
from .shift_add import shift_add_depthwise_conv

_SPECS = {(1, "channels_last"): ("NWC", "WIO", "NWC"), (1, "channels_first"): ("NCW", "WIO", "NCW"),
          (2, "channels_last"): ("NHWC", "HWIO", "NHWC"),
          (2, "channels_first"): ("NCHW", "HWIO", "NCHW")}

_EINSUM = {1: "lgjm,ij->ligjm", 2: "hwgjm,ij->hwigjm"}


def block_diagonal_depthwise_kernel(kernel, block_size: int):
    """(*window, C, M) depthwise kernel -> (*window, block_size, C * M) kernel of a grouped conv
    with C // block_size groups. Output channel c * M + m keeps its Keras order; within its block
    it reads input slot c % block_size only."""
    *window, channels, multiplier = kernel.shape
    compact = ops.reshape(kernel, (*window, channels // block_size, block_size, multiplier))
    eye = ops.eye(block_size, dtype=kernel.dtype)
    dense = ops.einsum(_EINSUM[len(window)], compact, eye)
    return ops.reshape(dense, (*window, block_size, channels * multiplier))


class _DiagonalwiseDepthwise:
    """Shared by the 1D and 2D layers; combined with the Keras layer it replaces."""

    def __init__(self, *args, block_size: int | None = None, algorithm: str | None = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.requested_block_size, self.algorithm = block_size, algorithm
        self.block_size: int | None = None

    def build(self, input_shape) -> None:
        super().build(input_shape)
        axis = -1 if self.data_format == "channels_last" else 1
        self.family, size = parse_algorithm(self.algorithm, self.requested_block_size,
                                            input_shape[axis], 1)
        self.block_size = size if self.family == "block_diagonal" else None

    def _convolve(self, inputs):
        options = dict(strides=self.strides, padding=self.padding, data_format=self.data_format,
                       dilation_rate=self.dilation_rate)
        if self.family == "native":
            return ops.depthwise_conv(inputs, self.kernel, **options)
        if self.family == "block_diagonal":
            kernel = block_diagonal_depthwise_kernel(self.kernel, self.block_size)
            return ops.conv(inputs, kernel, **options)
        if keras.backend.backend() != "jax":
            return shift_add_depthwise_conv(inputs, self.kernel, **options)
        from ..jax import depthwise_conv

        rank = len(self.kernel.shape) - 2
        *window, channels, multiplier = self.kernel.shape
        kernel = ops.reshape(self.kernel, (*window, 1, channels * multiplier))
        return depthwise_conv(inputs, kernel, self.strides, self.padding.upper(),
                              rhs_dilation=self.dilation_rate,
                              dimension_numbers=_SPECS[(rank, self.data_format)],
                              algorithm="shift_add")

    def call(self, inputs):
        outputs = self._convolve(inputs)
        if self.use_bias:
            rank = len(self.kernel.shape) - 2
            shape = ((1,) * (rank + 1) + (-1,) if self.data_format == "channels_last"
                     else (1, -1) + (1,) * rank)
            outputs = ops.add(outputs, ops.reshape(self.bias, shape))
        return self.activation(outputs) if self.activation is not None else outputs

    def get_config(self) -> dict:
        return {**super().get_config(), "block_size": self.requested_block_size,
                "algorithm": self.algorithm}


class DiagonalwiseDepthwiseConv2D(_DiagonalwiseDepthwise, keras.layers.DepthwiseConv2D):
    """``keras.layers.DepthwiseConv2D`` plus ``algorithm`` (see the module) or ``block_size``
    (channels per dense block; None: the paper's 32 rounded down to a divisor of the channel
    count; 1: the depthwise conv itself)."""


class DiagonalwiseDepthwiseConv1D(_DiagonalwiseDepthwise, keras.layers.DepthwiseConv1D):
    """``keras.layers.DepthwiseConv1D`` plus ``algorithm`` or ``block_size``, as the 2D layer."""


_REPLACEMENTS = {keras.layers.DepthwiseConv2D: DiagonalwiseDepthwiseConv2D,
                 keras.layers.DepthwiseConv1D: DiagonalwiseDepthwiseConv1D}

for _native, _layer in _REPLACEMENTS.items():
    # Keras keys weight files by the snake-cased class name of each layer (not by its Python
    # path), so the layers carry the native class name: a .weights.h5 written with either loads
    # into the other. They serialize as "diagonalwise>DepthwiseConv2D".
    _layer.__name__ = _native.__name__
    keras.saving.register_keras_serializable(package="diagonalwise")(_layer)


def convert_model(model: keras.Model, block_size: int | None = None,
                  algorithm: str | None = None, plan: Plan | None = None) -> keras.Model:
    """A copy of a Sequential or functional ``model`` in which every layer whose type is exactly
    ``DepthwiseConv1D/2D`` is its diagonalwise layer, with the same weights (a new model: Keras
    graphs are not edited in place). ``block_size`` or ``algorithm`` as in the layers, for every
    converted layer; or a ``plan`` (from :func:`diagonalwise.keras.tuning.tune_model`, or
    ``Plan.load``) naming each layer's algorithm, for the layers it names only (ours included)."""
    if plan is not None:
        if block_size is not None or algorithm is not None:
            raise ValueError("give a plan, or block_size/algorithm for every layer, not both")
        ours = set(_REPLACEMENTS.values())
        depthwise = {layer.name for layer in model.layers
                     if type(layer) in _REPLACEMENTS or type(layer) in ours}
        missing = sorted(set(plan.layers) - depthwise)
        if missing:
            raise ValueError(f"the plan names layers that are not depthwise layers of this "
                             f"model: {missing[:5]}; its depthwise layers are "
                             f"{sorted(depthwise)[:5]}...")

    def clone(layer):
        config = layer.get_config()
        if plan is not None:
            if layer.name not in plan.layers:
                return layer.__class__.from_config(config)
            replacement = _REPLACEMENTS.get(type(layer), type(layer))
            return replacement.from_config({**config, "block_size": None,
                                            "algorithm": plan.layers[layer.name]})
        replacement = _REPLACEMENTS.get(type(layer))
        if replacement is None:
            return layer.__class__.from_config(config)
        return replacement.from_config({**config, "block_size": block_size,
                                        "algorithm": algorithm})

    converted = keras.models.clone_model(model, clone_function=clone)
    converted.set_weights(model.get_weights())
    return converted
