"""``diagonalwise bench``: for each model, dtype and layout, every algorithm per layer and the
training step of each variant, saved after every finished piece so a crash loses nothing."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import UsageError
from ..layout import to_layout
from ..timing import copy_bandwidth, environment, usual_copy_bandwidth
from ..tuning import TuningCache, collect_conv_calls
from .per_layer import bench_layer_calls
from .registry import get_model_spec
from .results import BenchResult, assess_quality, provenance
from .training_step import autocast_context, bench_training


@dataclass(frozen=True)
class BenchConfig:
    """What one ``diagonalwise bench`` run measures. ``repeats``: rounds per layer measurement;
    the training steps take ``2 * repeats + 1`` (with 5 their spread on a 2-core VM was 5-7% of
    the median, wider than the 5-10% that the layers' gains add up to); a layer measurement adds
    rounds until its timed runs add up to ``min_seconds``. ``cache``: a tuning
    cache file, or None for a fresh one in ``output``; ``use_cache=False`` tunes without one."""

    models: tuple[str, ...] = ("mobilenet_v1",)
    dtypes: tuple[str, ...] = ("float32",)
    layouts: tuple[str, ...] = ("contiguous",)
    level: str = "both"
    batch_size: int | None = None
    size: int | None = None
    warmup: int = 2
    repeats: int = 5
    min_seconds: float = 0.5
    every_divisor: bool = False
    max_block_channels: int = 256
    cache: Path | None = None
    use_cache: bool = True


def run_bench(config: BenchConfig, device: torch.device, output: Path,
              command: list[str]) -> BenchResult:
    """Measure, print the tables, write results.json, the CSVs and the plots into ``output``."""
    from tqdm.auto import tqdm

    env = environment(device)
    env["copy_bandwidth_gbs"] = copy_bandwidth(device)
    arguments = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}
    result = BenchResult(provenance(env, command, arguments))
    print(result.machine(), flush=True)
    # a fresh cache beside the results unless one is named: the tuned variant is measured now
    cache = TuningCache(config.cache or output / "tuning-cache.json", env) \
        if config.use_cache else False
    for name in config.models:
        spec = get_model_spec(name)
        default_batch, default_size = spec.defaults(device)
        batch, size = config.batch_size or default_batch, config.size or default_size
        for dtype in config.dtypes:
            for layout in config.layouts:
                print(f"{name}: batch {batch}, size {size}, {dtype}, {layout}", flush=True)
                if config.level in ("layers", "both"):
                    torch.manual_seed(0)
                    model = to_layout(spec.build().to(device), layout)
                    x = to_layout(spec.make_batch(batch, size, device)[0], layout)
                    try:
                        with autocast_context(device, dtype):
                            calls = collect_conv_calls(model, (x,))
                    except RuntimeError as error:
                        raise UsageError(f"{name} does not run at batch {batch}, size {size}: "
                                         f"{str(error).splitlines()[0]}") from None
                    distinct = len({call.key() for call in calls.values()})
                    with tqdm(total=distinct, desc=f"{name} layers", unit="config") as bar:
                        result.layers += bench_layer_calls(
                            name, calls, device, copy_gbs=env["copy_bandwidth_gbs"],
                            warmup=config.warmup, repeats=config.repeats,
                            min_seconds=config.min_seconds, every_divisor=config.every_divisor,
                            max_block_channels=config.max_block_channels, progress=bar)
                    del model, x
                    result.save(output)
                if config.level in ("models", "both"):
                    result.models += bench_training(
                        spec, device, dtype=dtype, layout=layout, batch=batch, size=size,
                        warmup=config.warmup, repeats=2 * config.repeats + 1, cache=cache)
                    result.save(output)
    copy_start, copy_end = env["copy_bandwidth_gbs"], copy_bandwidth(device)
    copy_higher = max(copy_start, copy_end)
    result.provenance["quality"] = assess_quality(
        result.layers + result.models, copy_start, copy_end,
        usual_copy_bandwidth(device, copy_higher))
    result.set_copy_bandwidth(copy_higher)
    print("\n" + result.text_tables())
    paths = result.save(output) + result.plot(output)
    print("\nresults written to:\n" + "\n".join(f"  {p}" for p in paths))
    return result
