"""The correctness gate: an algorithm is measured or chosen only if it reproduces native on the
call, output and every gradient, within a per-dtype tolerance."""

from __future__ import annotations

import torch

from ..algorithms import Algorithm, Native
from ..call import ConvCall

#: Largest error allowed by the correctness gate, relative to the largest magnitude of the native
#: result, per dtype. float32 on CUDA allows for TF32, which cuDNN uses for dense convolutions
#: when ``torch.backends.cudnn.allow_tf32`` is set (PyTorch's default).
GATE_TOLERANCE = {"float64": 1e-10, "float32": 1e-4, "float32_tf32": 5e-3, "float16": 1e-2,
                  "bfloat16": 4e-2}


def gate_tolerance(call: ConvCall, device: torch.device) -> float:
    if call.dtype == "float32" and device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return GATE_TOLERANCE["float32_tf32"]
    return GATE_TOLERANCE[call.dtype]


def forward_backward(call: ConvCall, algorithm: Algorithm, operands):
    """Output and the gradients of input, weight (and bias) for ``grad_output``."""
    x, weight, bias, grad_output = operands
    inputs = [t.detach().requires_grad_() for t in (x, weight, bias) if t is not None]
    output = call.run(algorithm, *inputs[:2], inputs[2] if bias is not None else None)
    return (output, *torch.autograd.grad(output, inputs, grad_output))


def with_nonfinite_values(operands):
    """The operands with a NaN in the input's first channel and an Inf in the output gradient's
    last channel (of the first sample), where native keeps each in its own channel."""
    x, weight, bias, grad_output = (t.clone() if t is not None else None for t in operands)
    x[(0, 0)] = float("nan")
    grad_output[(0, -1)] = float("inf")
    return x, weight, bias, grad_output


def _compare(call: ConvCall, device: torch.device, actual, expected) -> str | None:
    tolerance = gate_tolerance(call, device)
    for name, got, want in zip(("output", "input grad", "weight grad", "bias grad"), actual,
                               expected):
        if got.shape != want.shape:
            return f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}"
        got, want = got.double(), want.double()
        if not torch.equal(got.isnan(), want.isnan()) or not torch.equal(got.isinf(), want.isinf()):
            return f"{name} has NaN or Inf where native has finite values, or the reverse"
        finite = want.isfinite()
        if finite.any():
            scale = want[finite].abs().max().item() or 1.0
            error = (got[finite] - want[finite]).abs().max().item() / scale
            if not error <= tolerance:
                return f"{name} relative error {error:.2e} exceeds {tolerance:.0e}"
    return None


def check_correctness(call: ConvCall, algorithm: Algorithm, device: torch.device | str,
                      seed: int = 0, *, isolate_nonfinite: bool = False) -> str | None:
    """None if ``algorithm`` reproduces native on this call (output and every gradient within
    :data:`GATE_TOLERANCE`, NaN and Inf exactly where native has them), else the reason.

    With ``isolate_nonfinite`` it also runs with a NaN in one input channel and an Inf in one
    output-gradient channel, which must stay where native keeps them: the refactorization, whose
    dense blocks multiply them by exact zeros, spreads them over their block and fails."""
    if type(algorithm) is Native:
        return None
    device = torch.device(device)
    operands = call.make_operands(device, seed)
    cases = {"": operands}
    if isolate_nonfinite:
        cases[" (with a NaN input and an Inf gradient)"] = with_nonfinite_values(operands)
    for label, case in cases.items():
        try:
            expected = forward_backward(call, Native(), case)
            actual = forward_backward(call, algorithm, case)
        except Exception as error:  # an algorithm that cannot run this call fails the gate
            return f"raised {type(error).__name__}: {error}"
        reason = _compare(call, device, actual, expected)
        if reason is not None:
            return reason + label
    return None
