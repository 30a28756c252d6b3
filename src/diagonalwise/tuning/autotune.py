"""``tune``: per layer, measure every candidate algorithm on the actual device, set the fastest."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

from ..call import ConvCall
from ..timing import environment
from .cache import TuningCache
from .capture import collect_conv_calls
from .choice import LayerChoice, Timer, choose
from .plan import Plan
from .whole_model import check_whole_model


def tune(
    model: nn.Module,
    example_inputs: tuple | torch.Tensor,
    *,
    cache: TuningCache | str | os.PathLike | bool = True,
    timer: Timer | None = None,
    min_gain: float = 0.05,
    progress: bool = False,
    apply: bool = True,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    verify: bool | None = None,
) -> Plan:
    """Measure every candidate algorithm for each grouped convolution of ``model`` on the device
    of ``example_inputs`` and set each layer to the fastest (converting it if needed).

    Equivalence contract: only algorithms that pass the correctness gate are chosen, so the tuned
    model computes what ``model`` computed, to rounding.

    Args:
        example_inputs: a tensor or a tuple of positional inputs of a representative batch. Call
            ``tune`` under ``torch.autocast`` to tune for the autocast dtype.
        cache: True: the per-device cache in the user's cache directory
            (:meth:`TuningCache.default_path`); a path or a :class:`TuningCache`; False: none.
        timer: ``timer(call, algorithm, device) -> seconds``, replacing the measurement (tests).
        min_gain: the fraction by which an algorithm must beat native to be chosen over it.
        progress: show a progress bar (tqdm) over the distinct layer configurations.
        apply: set the layers of ``model``; with False only the plan is returned.
        filter_fn: ``filter_fn(module, qualified_name) -> bool``; only layers it accepts are tuned.
        verify: run :func:`check_whole_model` after applying the plan (falls back to native if
            the tuned model is slower). Default: when measuring for real (no ``timer``).
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    tensors = [t for t in example_inputs if isinstance(t, torch.Tensor)]
    if not tensors:
        raise ValueError("tune needs example_inputs with at least one tensor, e.g. (images,)")
    device = tensors[0].device
    env = environment(device)
    if cache is True:
        cache = TuningCache(TuningCache.default_path(env), env)
    elif cache is not False and not isinstance(cache, TuningCache):
        cache = TuningCache(cache, env)

    calls = collect_conv_calls(model, example_inputs, filter_fn)
    by_key: dict[str, ConvCall] = {}
    for call in calls.values():
        by_key.setdefault(call.key(), call)
    decisions: dict[str, LayerChoice] = {}
    keys = list(by_key)
    if progress:
        from tqdm.auto import tqdm
        keys = tqdm(keys, desc="tuning layer configurations", unit="config")
    for key in keys:
        decision = cache.lookup(key) if cache else None
        if decision is None:
            decision = choose(by_key[key], device, timer=timer, min_gain=min_gain)
            if cache:
                decision = cache.store(decision)
        decisions[key] = decision
    plan = Plan({name: decisions[call.key()] for name, call in calls.items()}, env)
    if apply:
        plan.apply(model)
        if (timer is None if verify is None else verify) and any(
                choice.algorithm != "native" for choice in plan.layers.values()):
            check_whole_model(model, example_inputs, plan)
    return plan
