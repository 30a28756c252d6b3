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

import contextlib
import json
import os
import re
import statistics
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from .algorithms import Algorithm, BlockDiagonal, Native, NativeChannelsLast, get_algorithm
from .blocking import default_block_size, divisors
from .kernels import triton_candidates
from .layers import ConvCall, collect_conv_calls, is_tunable
from .modules import DIAGONALWISE_TYPE, _DiagonalwiseConvNd
from .timing import environment, measure, measure_interleaved

CACHE_FORMAT = 1

#: Largest error allowed by the correctness gate, relative to the largest magnitude of the native
#: result, per dtype. float32 on CUDA allows for TF32, which cuDNN uses for dense convolutions
#: when ``torch.backends.cudnn.allow_tf32`` is set (PyTorch's default).
GATE_TOLERANCE = {"float64": 1e-10, "float32": 1e-4, "float32_tf32": 5e-3, "float16": 1e-2,
                  "bfloat16": 4e-2}

#: Functions ``(call, device) -> [Algorithm]`` that add candidates: our own kernels, where they run.
CANDIDATE_PROVIDERS: list[Callable[[ConvCall, torch.device], list[Algorithm]]] = [
    triton_candidates]

Timer = Callable[[ConvCall, Algorithm, torch.device], float]


def candidate_block_sizes(groups: int, in_channels_per_group: int = 1,
                          max_block_channels: int = 256) -> list[int]:
    """Block sizes worth measuring: divisors of ``groups`` above 1, spaced at least 2x apart, with
    at most ``max_block_channels`` input channels per block, plus the paper's default."""
    sizes: list[int] = []
    for size in divisors(groups)[1:]:
        if size * in_channels_per_group > max_block_channels:
            break
        if not sizes or size >= 2 * sizes[-1]:
            sizes.append(size)
    default = default_block_size(groups, in_channels_per_group)
    return sorted(set(sizes) | ({default} if default > 1 else set()))


def candidate_algorithms(call: ConvCall, device: torch.device | str = "cpu", *,
                         all_block_sizes: bool = False,
                         max_block_channels: int = 256) -> list[Algorithm]:
    """Native first, then native in channels_last (for a 2D/3D batched NCHW input), then the
    refactorization with each of :func:`candidate_block_sizes` (with ``all_block_sizes``: every
    divisor of groups up to ``max_block_channels`` channels per block), then registered
    providers'."""
    device = torch.device(device)
    candidates: list[Algorithm] = [Native()]
    if call.spatial_dims in (2, 3) and call.layout != "channels_last":
        candidates.append(NativeChannelsLast())
    in_per_group = call.weight_shape[1]
    if all_block_sizes:
        sizes = [d for d in divisors(call.groups)[1:] if d * in_per_group <= max_block_channels]
    else:
        sizes = candidate_block_sizes(call.groups, in_per_group, max_block_channels)
    candidates += [BlockDiagonal(size) for size in sizes]
    for provider in CANDIDATE_PROVIDERS:
        candidates += provider(call, device)
    return candidates


def gate_tolerance(call: ConvCall, device: torch.device) -> float:
    if call.dtype == "float32" and device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return GATE_TOLERANCE["float32_tf32"]
    return GATE_TOLERANCE[call.dtype]


def _forward_backward(call: ConvCall, algorithm: Algorithm, operands):
    x, weight, bias, grad_output = operands
    inputs = [t.detach().requires_grad_() for t in (x, weight, bias) if t is not None]
    output = call.run(algorithm, *inputs[:2], inputs[2] if bias is not None else None)
    return (output, *torch.autograd.grad(output, inputs, grad_output))


def check_correctness(call: ConvCall, algorithm: Algorithm, device: torch.device | str,
                      seed: int = 0) -> str | None:
    """None if ``algorithm`` reproduces native on this call (output and every gradient, within
    :data:`GATE_TOLERANCE`), else the reason it failed."""
    if type(algorithm) is Native:
        return None
    device = torch.device(device)
    operands = call.make_operands(device, seed)
    try:
        expected = _forward_backward(call, Native(), operands)
        actual = _forward_backward(call, algorithm, operands)
    except Exception as error:  # an algorithm that cannot run this call fails the gate
        return f"raised {type(error).__name__}: {error}"
    tolerance = gate_tolerance(call, device)
    for name, got, want in zip(("output", "input grad", "weight grad", "bias grad"), actual,
                               expected):
        if got.shape != want.shape:
            return f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}"
        scale = want.double().abs().max().item() or 1.0
        error = (got.double() - want.double()).abs().max().item() / scale
        if not error <= tolerance:
            return f"{name} relative error {error:.2e} exceeds {tolerance:.0e}"
    return None


def measure_step(call: ConvCall, algorithm: Algorithm, device: torch.device, *, warmup: int = 2,
                 repeats: int = 5) -> float:
    """Median seconds of one forward+backward of ``algorithm`` on ``call``."""
    operands = call.make_operands(device)
    return measure(lambda: _forward_backward(call, algorithm, operands), device,
                   warmup=warmup, repeats=repeats).median


@dataclass
class LayerChoice:
    """The decision for one layer key: the algorithm, the median seconds of every candidate
    measured, and the candidates the gate rejected (with the reason)."""

    algorithm: str
    key: str
    times: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)


def choose(call: ConvCall, device: torch.device | str, *, timer: Timer | None = None,
           min_gain: float = 0.05, prune_factor: float = 2.0,
           confirm_rounds: int = 2) -> LayerChoice:
    """Measure the candidates for ``call`` and return the choice.

    Block sizes are measured in increasing order. Their times fall and then rise (a wider block
    feeds the dense kernels better but does more multiply-adds); once a block size is slower than
    the previous one and takes ``prune_factor`` times the best time so far, the larger ones are not
    measured. A candidate must pass :func:`check_correctness` to be measured at all. When the
    fastest is not native, it and native are measured ``confirm_rounds`` more times, taking turns,
    and the decision is made on the medians.
    """
    device = torch.device(device)
    timer = timer or measure_step
    choice = LayerChoice(algorithm="native", key=call.key())
    best = float("inf")
    larger_blocks_pruned = False
    previous_block_seconds = float("inf")
    for algorithm in candidate_algorithms(call, device):
        is_block = isinstance(algorithm, BlockDiagonal)
        if is_block and larger_blocks_pruned:
            continue
        reason = check_correctness(call, algorithm, device)
        if reason is not None:
            choice.rejected[algorithm.name] = reason
            continue
        seconds = timer(call, algorithm, device)
        choice.times[algorithm.name] = seconds
        if is_block:
            larger_blocks_pruned = seconds > previous_block_seconds and seconds > prune_factor * best
            previous_block_seconds = seconds
        best = min(best, seconds)
    fastest = min(choice.times, key=choice.times.get)
    if fastest != "native" and confirm_rounds:
        # a second look at the two that matter, taking turns, before leaving native
        contenders = {"native": Native(), fastest: get_algorithm(fastest)}
        samples = {name: [choice.times[name]] for name in contenders}
        for round_index in range(confirm_rounds):
            order = list(contenders)[:: 1 if round_index % 2 else -1]
            for name in order:
                samples[name].append(timer(call, contenders[name], device))
        choice.times.update({name: statistics.median(s) for name, s in samples.items()})
    if choice.times[fastest] < choice.times["native"] * (1 - min_gain):
        choice.algorithm = fastest
    return choice


class TuningCache:
    """Decisions per layer key for one device and software stack, in one JSON file.

    A corrupt file, or one written by another format or environment, gives a warning and is
    treated as empty (its entries are re-tuned and the file rewritten), never an error. Writes hold
    an exclusive lock on ``<path>.lock``, merge with what is on disk, and replace the file
    atomically.
    """

    def __init__(self, path: str | os.PathLike, env: dict) -> None:
        self.path = Path(path)
        self.env = {k: env.get(k) for k in ("device", "torch", "cuda", "cudnn", "threads")}

    @staticmethod
    def default_path(env: dict) -> Path:
        """``$DIAGONALWISE_CACHE_DIR`` or ``$XDG_CACHE_HOME/diagonalwise`` (``~/.cache/...``),
        one file per device."""
        root = os.environ.get("DIAGONALWISE_CACHE_DIR") or Path(
            os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diagonalwise"
        slug = re.sub(r"[^A-Za-z0-9]+", "-", str(env["device"])).strip("-").lower() or "device"
        return Path(root) / f"tuning-{slug}.json"

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            warnings.warn(f"diagonalwise: tuning cache {self.path} is unreadable ({error}); "
                          "re-tuning and rewriting it", stacklevel=3)
            return {}
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or \
                not isinstance(data.get("entries"), dict):
            warnings.warn(f"diagonalwise: tuning cache {self.path} has an unknown format; "
                          "re-tuning and rewriting it", stacklevel=3)
            return {}
        if data.get("environment") != self.env:
            warnings.warn(f"diagonalwise: tuning cache {self.path} was written for "
                          f"{data.get('environment')}, not {self.env}; re-tuning", stacklevel=3)
            return {}
        return data["entries"]

    def lookup(self, key: str) -> LayerChoice | None:
        entry = self._read().get(key)
        try:
            return LayerChoice(**entry) if entry else None
        except TypeError:
            return None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{self.path}.lock", "a") as lock:
            try:
                import fcntl
            except ImportError:  # no advisory locks here (Windows): atomic replace still holds
                yield
                return
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def store(self, choice: LayerChoice) -> LayerChoice:
        """Store ``choice`` unless another process stored one for its key first; return the one
        that is in the cache now (so every process applies the same decision)."""
        with self._locked():
            entries = self._read()
            if choice.key in entries:
                with contextlib.suppress(TypeError):
                    return LayerChoice(**entries[choice.key])
            entries[choice.key] = asdict(choice)
            write_json_atomic(self.path, {"format": CACHE_FORMAT, "environment": self.env,
                                          "entries": entries})
        return choice


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, flush it to disk, then rename it over
    ``path``: a crash leaves either the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_json_atomic(path: str | os.PathLike, data: object) -> None:
    """:func:`write_text_atomic` of ``data`` as indented JSON."""
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


@dataclass
class Plan:
    """Per qualified layer name, the chosen algorithm with its measurements; JSON round-trips and
    applies to any instance of the same model."""

    layers: dict[str, LayerChoice] = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    #: The whole-model check (:func:`check_whole_model`): seconds tuned and native, and whether
    #: the per-layer choices were kept.
    whole_model: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"format": CACHE_FORMAT, "environment": self.environment,
                "layers": {name: asdict(choice) for name, choice in self.layers.items()},
                "whole_model": self.whole_model}

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        if data.get("format") != CACHE_FORMAT or not isinstance(data.get("layers"), dict):
            raise ValueError(f"not a diagonalwise plan (format {data.get('format')!r}, "
                             f"expected {CACHE_FORMAT})")
        return cls({name: LayerChoice(**choice) for name, choice in data["layers"].items()},
                   data.get("environment", {}), data.get("whole_model", {}))

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def summary(self) -> dict[str, int]:
        """How many layers chose each algorithm."""
        counts: dict[str, int] = {}
        for choice in self.layers.values():
            counts[choice.algorithm] = counts.get(choice.algorithm, 0) + 1
        return dict(sorted(counts.items()))

    def apply(self, model: nn.Module) -> nn.Module:
        """Set every layer the plan names to its algorithm, converting plain convolutions; returns
        the root. A layer name the model lacks is an error."""
        from .conversion import _walk_and_replace

        modules = dict(model.named_modules())
        missing = [name for name in self.layers if name not in modules]
        if missing:
            raise ValueError(f"the plan names layers this model does not have: {missing[:5]}; "
                             "was it tuned on another model?")

        def replace(module: nn.Module, name: str) -> nn.Module:
            if name not in self.layers:
                return module
            if not is_tunable(module):
                raise ValueError(f"layer {name!r} is a {type(module).__name__}, which the plan "
                                 "cannot set: only grouped nn.Conv1d/2d/3d are tunable")
            algorithm = get_algorithm(self.layers[name].algorithm)
            if isinstance(module, _DiagonalwiseConvNd):
                module.set_algorithm(algorithm=algorithm)
                return module
            return DIAGONALWISE_TYPE[type(module)].from_conv(module, algorithm=algorithm)

        return _walk_and_replace(model, replace)


ModelMeasure = Callable[[dict[str, Callable[[], object]]], dict[str, float]]


def _model_step(model: nn.Module, example_inputs: tuple) -> Callable[[], None]:
    """A forward and a backward of the sum of the model's floating-point outputs."""

    def step() -> None:
        output = model(*example_inputs)
        outputs = output if isinstance(output, (tuple, list)) else [output]
        tensors = [t for t in outputs if isinstance(t, torch.Tensor) and t.is_floating_point()]
        sum(t.float().sum() for t in tensors).backward()

    return step


def check_whole_model(model: nn.Module, example_inputs: tuple, plan: Plan, *,
                      measure: ModelMeasure | None = None, repeats: int = 5) -> bool:
    """Time forward+backward of the whole model with the plan's algorithms and with native ones,
    taking turns; if the plan is slower, set every planned layer to native (in the model and the
    plan). The tuner times each layer alone, which misses costs that appear only between layers
    (a layout change meeting its neighbours); this keeps a tuned model from being slower than
    native. Gradients and batch-norm statistics are put back afterwards. Returns whether the
    plan was kept; ``plan.whole_model`` records the times."""
    modules = dict(model.named_modules())
    tuned = {name: modules[name].algorithm for name in plan.layers}

    def configure(variant: str) -> None:
        for name, algorithm in tuned.items():
            modules[name].algorithm = algorithm if variant == "tuned" else Native()

    step = _model_step(model, example_inputs)
    functions = {variant: (lambda variant=variant: (configure(variant), step()))
                 for variant in ("native", "tuned")}
    saved_grads = [(p, None if p.grad is None else p.grad.clone()) for p in model.parameters()]
    saved_buffers = [buffer.clone() for buffer in model.buffers()]
    try:
        if measure is None:
            device = next(t.device for t in example_inputs if isinstance(t, torch.Tensor))
            timings = measure_interleaved(functions, device, warmup=1, repeats=repeats)
            seconds = {variant: timing.median for variant, timing in timings.items()}
        else:
            seconds = measure(functions)
    finally:
        with torch.no_grad():
            for parameter, grad in saved_grads:
                parameter.grad = grad
            for buffer, saved in zip(model.buffers(), saved_buffers):
                buffer.copy_(saved)
    kept = seconds["tuned"] <= seconds["native"]
    configure("tuned" if kept else "native")
    if not kept:
        plan.layers = {name: replace(choice, algorithm="native")
                       for name, choice in plan.layers.items()}
    plan.whole_model = {"tuned_seconds": seconds["tuned"], "native_seconds": seconds["native"],
                        "kept": kept}
    return kept


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
