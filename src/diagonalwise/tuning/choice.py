"""The per-layer choice: measure every candidate algorithm that passes the gate, keep native
unless another beats it by a margin confirmed in a second look."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..algorithms import Algorithm, BlockDiagonal, Native, candidate_algorithms, get_algorithm
from ..call import ConvCall
from ..timing import measure
from .gate import check_correctness, forward_backward

Timer = Callable[[ConvCall, Algorithm, torch.device], float]


def measure_step(call: ConvCall, algorithm: Algorithm, device: torch.device, *, warmup: int = 2,
                 repeats: int = 5) -> float:
    """Median seconds of one forward+backward of ``algorithm`` on ``call``."""
    operands = call.make_operands(device)
    return measure(lambda: forward_backward(call, algorithm, operands), device,
                   warmup=warmup, repeats=repeats).median


@dataclass
class LayerChoice:
    """The decision for one layer key: the algorithm, the median seconds of every candidate
    measured, and the candidates the gate rejected (with the reason)."""

    algorithm: str
    key: str
    times: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    #: The measured algorithm object (not saved): it runs even if its family's registry name
    #: does not rebuild it.
    instance: Algorithm | None = field(default=None, compare=False, repr=False)

    def resolve(self) -> Algorithm:
        """The algorithm to run: the measured object, or the one its name rebuilds."""
        return self.instance if self.instance is not None else get_algorithm(self.algorithm)

    def to_dict(self) -> dict:
        return {"algorithm": self.algorithm, "key": self.key, "times": dict(self.times),
                "rejected": dict(self.rejected)}

    @classmethod
    def from_dict(cls, data: object) -> LayerChoice:
        """A choice read from a file; a ValueError naming what is wrong if it is not one (wrong
        types, an algorithm name no registered family rebuilds)."""
        if not isinstance(data, dict) or not isinstance(data.get("algorithm"), str) or \
                not isinstance(data.get("key"), str):
            raise ValueError(f"not a layer choice (needs 'algorithm' and 'key' strings): {data!r}")
        times, rejected = data.get("times", {}), data.get("rejected", {})
        if not isinstance(times, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                for k, v in times.items()):
            raise ValueError(f"'times' must map algorithm names to seconds, got {times!r}")
        if not isinstance(rejected, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in rejected.items()):
            raise ValueError(f"'rejected' must map algorithm names to reasons, got {rejected!r}")
        choice = cls(data["algorithm"], data["key"], dict(times), dict(rejected))
        choice.resolve()  # an unknown family or a malformed argument raises here
        return choice


def choice_key(call: ConvCall, isolate_nonfinite: bool = False) -> str:
    """The key a decision is stored under: the call's, marked when NaN isolation was asked for
    (the same call can have another answer then)."""
    return call.key() + ("|isolate-nonfinite" if isolate_nonfinite else "")


def choose(call: ConvCall, device: torch.device | str, *, timer: Timer | None = None,
           min_gain: float = 0.05, prune_factor: float = 2.0, confirm_rounds: int = 2,
           isolate_nonfinite: bool = False) -> LayerChoice:
    """Measure the candidates for ``call`` and return the choice.

    Block sizes are measured in increasing order. Their times fall and then rise (a wider block
    feeds the dense kernels better but does more multiply-adds); once a block size is slower than
    the previous one and takes ``prune_factor`` times the best time so far, the larger ones are not
    measured. A candidate must pass :func:`check_correctness` to be measured at all. When the
    fastest is not native, it and native are measured ``confirm_rounds`` more times, taking turns,
    and the decision is made on the medians. ``isolate_nonfinite`` is passed to the gate.
    """
    device = torch.device(device)
    timer = timer or measure_step
    choice = LayerChoice(algorithm="native", key=choice_key(call, isolate_nonfinite),
                         instance=Native())
    best = float("inf")
    larger_blocks_pruned = False
    measured: dict[str, Algorithm] = {}
    previous_block_seconds = float("inf")
    for algorithm in candidate_algorithms(call, device):
        is_block = isinstance(algorithm, BlockDiagonal)
        if is_block and larger_blocks_pruned:
            continue
        reason = check_correctness(call, algorithm, device, isolate_nonfinite=isolate_nonfinite)
        if reason is not None:
            choice.rejected[algorithm.name] = reason
            continue
        seconds = timer(call, algorithm, device)
        choice.times[algorithm.name] = seconds
        measured[algorithm.name] = algorithm
        if is_block:
            larger_blocks_pruned = seconds > previous_block_seconds and seconds > prune_factor * best
            previous_block_seconds = seconds
        best = min(best, seconds)
    fastest = min(choice.times, key=choice.times.get)
    if fastest != "native" and confirm_rounds:
        # a second look at the two that matter, taking turns, before leaving native
        contenders = {"native": Native(), fastest: measured[fastest]}
        samples = {name: [choice.times[name]] for name in contenders}
        for round_index in range(confirm_rounds):
            order = list(contenders)[:: 1 if round_index % 2 else -1]
            for name in order:
                samples[name].append(timer(call, contenders[name], device))
        choice.times.update({name: statistics.median(s) for name, s in samples.items()})
    if choice.times[fastest] < choice.times["native"] * (1 - min_gain):
        choice.algorithm, choice.instance = fastest, measured[fastest]
    return choice
