"""The ``diagonalwise`` command: bench, tune, env, report, train. Argument parsing and dispatch
only; the work is in :mod:`diagonalwise.bench` and :mod:`diagonalwise.tuning`."""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import tempfile
from pathlib import Path

import torch

from .call import DTYPES
from .errors import UsageError
from .framework_cli import FRAMEWORKS
from .layout import LAYOUTS

#: Modules the commands use beyond the core dependencies (the 'bench' extra), by import name.
BENCH_EXTRAS = {"matplotlib": "matplotlib", "sklearn": "scikit-learn",
                "torchvision": "torchvision"}


class _Parser(argparse.ArgumentParser):
    """Bad arguments get one line naming the problem, not the whole usage text."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _finite_float(text: str, *, zero_allowed: bool) -> float:
    kind = "non-negative" if zero_allowed else "positive"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a {kind} number, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_allowed):
        bound = "0 or above" if zero_allowed else "above 0"
        raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text}")
    return value


def positive_float(text: str) -> float:
    return _finite_float(text, zero_allowed=False)


def non_negative_float(text: str) -> float:
    return _finite_float(text, zero_allowed=True)


def check_writable(path: Path, directory: bool) -> None:
    """Fail now, before minutes of measuring, if ``path`` (a directory to create files in, or a
    file to replace) cannot be written."""
    folder = path if directory else path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".diagonalwise-probe-"):
            pass
        if not directory and path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(13, "Permission denied", str(path))
    except OSError as error:
        raise UsageError(f"cannot write to {path}: {error.strerror or error}") from None


def resolve_device(name: str) -> torch.device:
    """'auto' is the first GPU if there is one, else the CPU; a GPU that is not there is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {name!r} is not available: no CUDA GPU on this machine "
                             "(use --device cpu)")
        if (device.index or 0) >= torch.cuda.device_count():
            raise UsageError(f"device {name!r} is not available: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise UsageError(f"device type {device.type!r} is not supported; use cpu or cuda")
    return device


def check_dtype(dtype: str, device: torch.device) -> None:
    if dtype == "float64":
        raise UsageError("benchmarks run in float32, float16 or bfloat16 (float64 is for tests)")
    if device.type == "cpu" and dtype == "float16":
        raise UsageError("float16 autocast is not a CPU training setting; use float32 or "
                         "bfloat16 on the CPU")


def _common(parser: argparse.ArgumentParser, models: list[str], multi: bool = True) -> None:
    from .bench.registry import MODELS

    action = "append" if multi else "store"
    parser.add_argument("--model", action=action, choices=list(MODELS) + (["all"] if multi else []),
                        default=None if multi else models[0],
                        help=f"model(s) to run (default {' '.join(models)})")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--dtype", action=action, choices=[d for d in DTYPES if d != "float64"],
                        default=None if multi else "float32",
                        help="float32 (default), or float16/bfloat16 autocast")
    parser.add_argument("--layout", action=action, choices=LAYOUTS,
                        default=None if multi else "contiguous",
                        help="input/activation memory layout (default contiguous = NCHW)")
    parser.add_argument("--batch-size", type=positive_int, help="default: per model and device")
    parser.add_argument("--size", type=positive_int,
                        help="image side, or sequence length for causal_conv1d (default per model)")
    parser.add_argument("--cache", type=Path, help="tuning cache file (default: bench: a new one "
                        "in the output directory; tune: per device in the user cache directory)")
    parser.add_argument("--no-cache", action="store_true", help="tune without a cache")


def _model_files(parser: argparse.ArgumentParser, multi: bool) -> None:
    action = "append" if multi else "store"
    group = parser.add_mutually_exclusive_group() if not multi else parser
    group.add_argument("--darknet-cfg", action=action, type=Path, metavar="CFG",
                       help="a Darknet network (.cfg) instead of --model")
    group.add_argument("--caffe-prototxt", action=action, type=Path, metavar="PROTOTXT",
                       help="a Caffe deploy network (.prototxt) instead of --model")


def _model_file_names(args) -> list[str]:
    """``darknet:PATH`` and ``caffe:PATH`` for the model files given on the command line."""
    from .bench.model_files import CAFFE, DARKNET

    def listed(value):
        return [] if value is None else value if isinstance(value, list) else [value]

    return [f"{DARKNET}{path}" for path in listed(args.darknet_cfg)] + \
        [f"{CAFFE}{path}" for path in listed(args.caffe_prototxt)]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="diagonalwise", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    bench = commands.add_parser("bench", help="time every algorithm per layer and per training "
                                "step; write JSON, CSV and plots")
    _common(bench, ["mobilenet_v1"])
    bench.add_argument("--level", choices=("layers", "models", "both"), default="both")
    bench.add_argument("--warmup", type=positive_int, default=2)
    bench.add_argument("--repeats", type=positive_int, default=5,
                       help="rounds per layer measurement; training steps take 2 * repeats + 1")
    bench.add_argument("--min-seconds", type=non_negative_float, default=0.5,
                       help="add rounds to a layer measurement until its timed runs add up to "
                       "this (at most 8 x repeats rounds; default 0.5)")
    bench.add_argument("--all-block-sizes", dest="every_divisor", action="store_true",
                       help="every divisor of groups, not only 2x-spaced ones")
    bench.add_argument("--max-block-channels", type=positive_int, default=256,
                       help="largest dense block, in input channels (default 256)")
    bench.add_argument("--output", type=Path, help="output directory (default out/bench-DATE)")
    _model_files(bench, multi=True)
    bench.add_argument("--framework", choices=FRAMEWORKS, default="torch",
                       help="the paper's MobileNet V1 experiment in another framework, run in "
                       "its environment (see diagonalwise.framework_cli); default torch")

    tune = commands.add_parser("tune", help="autotune a model and write its plan")
    _common(tune, ["mobilenet_v1"], multi=False)
    tune.add_argument("--output", type=Path, default=Path("plan.json"))

    env = commands.add_parser("env", help="versions, device, cuDNN, measured copy bandwidth")
    env.add_argument("--device", default="auto")

    report = commands.add_parser("report", help="write the tables of committed results to "
                                 "RESULTS/README.md and their summary into the README")
    report.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    report.add_argument("--readme", type=Path, default=Path("README.md"))

    train = commands.add_parser("train", help="train a model natively and converted on real "
                                "data; compare time per epoch and loss curves")
    train.add_argument("--model", choices=("mobilenet_v1", "mobilenet_v2", "efficientnet_b0",
                                           "convnext_tiny"), default="mobilenet_v1")
    train.add_argument("--data", default="digits",
                       help="'digits' (scikit-learn's handwritten digits, upsampled) or an "
                       "ImageFolder directory")
    train.add_argument("--epochs", type=positive_int, default=3)
    train.add_argument("--batch-size", type=positive_int, default=64)
    train.add_argument("--size", type=positive_int,
                       help="image side (default 32; a model file's own size)")
    train.add_argument("--width", type=positive_float, default=0.5,
                       help="MobileNet V1 width (default 0.5)")
    train.add_argument("--lr", type=positive_float, default=0.05)
    train.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    train.add_argument("--block-size", default=None,
                       help="an int, or 'auto' to autotune (default: the paper's 32 channels)")
    train.add_argument("--limit", type=positive_int, help="use only this many training images")
    train.add_argument("--device", default="auto")
    train.add_argument("--output", type=Path, help="output directory (default out/train-DATE)")
    _model_files(train, multi=False)
    train.add_argument("--weights", type=Path, help="with --darknet-cfg or --caffe-prototxt: the "
                       ".weights or .caffemodel to start from (the trained weights are written "
                       "beside the results in the same format)")
    return parser


def _default_output(kind: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("out") / f"{kind}-{stamp}"


def _cache(args, env):
    """--no-cache: none; --cache PATH: that file; else the per-device cache."""
    from .tuning import TuningCache

    if args.no_cache:
        return False
    return TuningCache(args.cache, env) if args.cache else True


def run_bench(args, command: list[str]) -> int:
    if args.framework != "torch":
        from .framework_cli import main as framework_main

        return framework_main(command)
    from .bench.model_files import check_size, load_model_file
    from .bench.registry import MODELS
    from .bench.suite import BenchConfig, run_bench

    device = resolve_device(args.device)
    dtypes = args.dtype or ["float32"]
    for dtype in dtypes:
        check_dtype(dtype, device)
    files = _model_file_names(args)
    names = list(MODELS) if args.model and "all" in args.model else \
        (args.model or ([] if files else ["mobilenet_v1"]))
    names += files
    for name in files:
        check_size(name, load_model_file(name), args.size)
    config = BenchConfig(
        models=tuple(names), dtypes=tuple(dtypes), layouts=tuple(args.layout or ["contiguous"]),
        level=args.level, batch_size=args.batch_size, size=args.size, warmup=args.warmup,
        repeats=args.repeats, min_seconds=args.min_seconds, every_divisor=args.every_divisor,
        max_block_channels=args.max_block_channels, cache=args.cache, use_cache=not args.no_cache)
    check_writable(args.output, directory=True)
    if args.cache and not args.no_cache:
        check_writable(args.cache, directory=False)
    run_bench(config, device, args.output, command)
    return 0


def run_tune(args, command: list[str]) -> int:
    from .bench.registry import MODELS
    from .bench.training_step import autocast_context
    from .conversion import convert
    from .layout import to_layout
    from .timing import environment
    from .tuning import tune

    device = resolve_device(args.device)
    check_dtype(args.dtype, device)
    check_writable(args.output, directory=False)
    if args.cache and not args.no_cache:
        check_writable(args.cache, directory=False)
    spec = MODELS[args.model]
    default_batch, default_size = spec.defaults(device)
    model = to_layout(convert(spec.build().to(device), algorithm="native"), args.layout)
    x = to_layout(spec.make_batch(args.batch_size or default_batch, args.size or default_size,
                                  device)[0], args.layout)
    with autocast_context(device, args.dtype):
        plan = tune(model, (x,), cache=_cache(args, environment(device)), progress=True)
    plan.save(args.output)
    print(f"{len(plan.layers)} layers: " + ", ".join(f"{n} x {a}" for a, n in plan.summary().items()))
    if plan.whole_model:
        check = plan.whole_model
        print(f"whole model forward+backward: tuned {1e3 * check['tuned_seconds']:.1f} ms, native "
              f"{1e3 * check['native_seconds']:.1f} ms: "
              + ("choices kept" if check["kept"] else "slower, so native everywhere"))
    print(f"plan written to {args.output}")
    return 0


def run_env(args, command: list[str]) -> int:
    from .timing import copy_bandwidth, environment, machine_line

    device = resolve_device(args.device)
    env = environment(device)
    env["copy_bandwidth_gbs"] = copy_bandwidth(device)
    for key, value in env.items():
        print(f"{key:<20} {value}")
    print(machine_line(env))
    return 0


def run_report(args, command: list[str]) -> int:
    from .bench.report import write_report

    for path in write_report(args.results, args.readme):
        print(f"{path} written from {args.results}")
    return 0


def run_train(args, command: list[str]) -> int:
    from .bench.train_compare import TrainConfig, train_both

    device = resolve_device(args.device)
    block_size = args.block_size
    if block_size not in (None, "auto"):
        try:
            block_size = positive_int(block_size)
        except argparse.ArgumentTypeError as error:
            raise UsageError(f"--block-size: {error} (or 'auto')") from None
    files = _model_file_names(args)
    if args.weights and not files:
        raise UsageError("--weights goes with --darknet-cfg or --caffe-prototxt")
    config = TrainConfig(model=files[0] if files else args.model, data=args.data, epochs=args.epochs,
                         batch_size=args.batch_size, size=args.size, width=args.width, lr=args.lr,
                         dtype=args.dtype, block_size=block_size, limit=args.limit,
                         weights=str(args.weights) if args.weights else None)
    check_writable(args.output, directory=True)
    return train_both(config, device, args.output, command)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. A user's mistake (:class:`UsageError`) or a file-system error is one
    line on stderr and exit status 2; Ctrl-C is one line and 130, with what was finished saved
    (bench and train save after every piece); anything else is a bug and keeps its traceback."""
    from .timing import keep_freed_memory_in_process

    command = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(command)
    if getattr(args, "output", False) is None:
        args.output = _default_output(args.command)
    keep_freed_memory_in_process()  # steady CPU timings; recorded in each result's provenance
    runners = {"bench": run_bench, "tune": run_tune, "env": run_env, "report": run_report,
               "train": run_train}
    try:
        return runners[args.command](args, command)
    except ModuleNotFoundError as error:
        if error.name not in BENCH_EXTRAS:
            raise
        print(f"diagonalwise {args.command}: error: it needs {BENCH_EXTRAS[error.name]}, which is "
              "not installed: pip install 'diagonalwise[bench]'", file=sys.stderr)
        return 2
    except (UsageError, OSError) as error:
        print(f"diagonalwise {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        saved = f"; what was finished is in {args.output}" if args.command in ("bench", "train") \
            else ""
        print(f"diagonalwise {args.command}: interrupted{saved}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
