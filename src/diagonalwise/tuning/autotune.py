"""``tune``: per layer, measure every candidate algorithm on the actual device, set the fastest."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from ..call import ConvCall
from ..modules import DIAGONALWISE_TYPE
from ..timing import environment
from .cache import TuningCache, model_key
from .capture import collect_conv_calls
from .choice import LayerChoice, Timer, choice_key, choose
from .plan import Plan
from .whole_model import adopt_verdict, measure_whole_model


def _check_inputs(model: nn.Module, example_inputs: tuple, apply: bool) -> torch.device:
    tensors = [t for t in example_inputs if isinstance(t, torch.Tensor)]
    if not tensors:
        raise ValueError("tune needs example_inputs with at least one tensor, e.g. (images,)")
    if any(t.dim() == 0 or t.shape[0] == 0 for t in tensors):
        raise ValueError("tune measures on a representative batch: example_inputs has an empty "
                         f"batch (shapes {[tuple(t.shape) for t in tensors]}); pass real samples")
    if torch.is_inference_mode_enabled() or not torch.is_grad_enabled():
        raise RuntimeError("tune measures forward+backward, which needs autograd: call it "
                           "outside torch.no_grad() and torch.inference_mode()")
    if apply and type(model) in DIAGONALWISE_TYPE:
        raise ValueError(f"tune sets the layers inside a model, and this root is a plain "
                         f"{type(model).__name__}, which it cannot replace for you: tune "
                         f"dw.{DIAGONALWISE_TYPE[type(model)].__name__}.from_conv(conv) instead")
    return tensors[0].device


def _agree_across_ranks(plan: Plan) -> Plan:
    """Under torch.distributed, every rank takes rank 0's decisions (each rank measured on its
    own noisy timings); elsewhere the plan as it is."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return plan
    shared = [plan.to_dict() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(shared, src=0)
    return plan if dist.get_rank() == 0 else Plan.from_dict(shared[0])


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
    isolate_nonfinite: bool = False,
) -> Plan:
    """Measure every candidate algorithm for each grouped convolution of ``model`` on the device
    of ``example_inputs`` and set each layer to the fastest (converting it if needed).

    Equivalence contract: only algorithms that pass the correctness gate are chosen, so the tuned
    model computes what ``model`` computed, to rounding, for finite inputs. With
    ``isolate_nonfinite`` the gate also requires a NaN or Inf to stay in its channel, as native
    keeps it (the refactorization spreads it over its block), so NaN and Inf come out where
    native puts them too. The global random state is left as it was found.

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
        verify: time the whole model with the plan and natively after applying it, and fall
            back to native if the plan is slower. Default: when measuring for real (no
            ``timer``). The verdict is stored in the cache, so processes sharing it (DDP ranks)
            agree; under ``torch.distributed`` every rank also takes rank 0's plan.
        isolate_nonfinite: see the equivalence contract.
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    device = _check_inputs(model, example_inputs, apply)
    env = environment(device)
    if cache is True:
        cache = TuningCache(TuningCache.default_path(env), env)
    elif cache is not False and not isinstance(cache, TuningCache):
        cache = TuningCache(cache, env)

    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        calls = collect_conv_calls(model, example_inputs, filter_fn)
        by_key: dict[str, ConvCall] = {}
        for call in calls.values():
            by_key.setdefault(choice_key(call, isolate_nonfinite), call)
        decisions: dict[str, LayerChoice] = {}
        keys = list(by_key)
        if progress:
            from tqdm.auto import tqdm
            keys = tqdm(keys, desc="tuning layer configurations", unit="config")
        for key in keys:
            call = by_key[key]
            decision = cache.lookup(key, call.groups) if cache else None
            if decision is None:
                decision = choose(call, device, timer=timer, min_gain=min_gain,
                                  isolate_nonfinite=isolate_nonfinite)
                if cache:
                    decision = cache.store(decision, call.groups)
            decisions[key] = decision
        plan = Plan({name: decisions[choice_key(call, isolate_nonfinite)]
                     for name, call in calls.items()}, env)
        if not apply:
            return _agree_across_ranks(plan)
        plan.apply(model)
        if (timer is None if verify is None else verify) and any(
                choice.algorithm != "native" for choice in plan.layers.values()):
            key = model_key(list(decisions))
            verdict = cache.lookup_verdict(key) if cache else None
            if verdict is None:
                verdict = measure_whole_model(model, example_inputs, plan)
                if cache:
                    verdict = cache.store_verdict(key, verdict)
            adopt_verdict(model, plan, verdict)
    agreed = _agree_across_ranks(plan)
    if agreed is not plan:
        agreed.apply(model)
    return agreed
