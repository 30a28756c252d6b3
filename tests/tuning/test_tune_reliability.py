"""What the tuner does at the edges: non-finite values, bad calls, shared verdicts, ranks that
measured differently, plans that do not fit, and algorithms known only as objects."""

from __future__ import annotations

import copy
import multiprocessing
import os

import pytest
import torch
from torch import nn

import diagonalwise as dw
from diagonalwise import tuning
from diagonalwise.bench.registry import MODELS
from diagonalwise.call import ConvCall
from diagonalwise.tuning.cache import model_key
from tests.builders import tiny_mobilenet


class PreferBlocks:
    """A timer under which every block size beats native by half."""

    def __call__(self, call, algorithm, device):
        return 0.5 if algorithm.name.startswith("block_diagonal") else 1.0


def test_refactorization_spreads_a_nan_over_its_block_and_native_does_not():
    x = torch.randn(1, 8, 5, 5, dtype=torch.float64)
    x[0, 0, 2, 2] = float("nan")
    weight = torch.randn(8, 1, 3, 3, dtype=torch.float64)
    native = dw.conv2d(x, weight, None, 1, 1, 1, 8, algorithm="native")
    blocked = dw.conv2d(x, weight, None, 1, 1, 1, 8, block_size=4)
    nan_channels = lambda y: y.isnan().flatten(2).any(-1)[0].tolist()  # noqa: E731
    assert nan_channels(native) == [True] + [False] * 7
    assert nan_channels(blocked) == [True] * 4 + [False] * 4  # the contract: finite inputs
    finite = ~blocked.isnan()
    torch.testing.assert_close(blocked[finite], native[finite])


def test_the_gate_rejects_nan_spreading_only_when_asked():
    call = ConvCall((2, 8, 6, 6), (8, 1, 3, 3), True, (1, 1), (1, 1), (1, 1), 8, "float64",
                    "contiguous")
    assert tuning.check_correctness(call, dw.BlockDiagonal(4), "cpu") is None
    reason = tuning.check_correctness(call, dw.BlockDiagonal(4), "cpu", isolate_nonfinite=True)
    assert "NaN or Inf where native has finite values" in reason
    assert tuning.check_correctness(call, dw.NativeChannelsLast(), "cpu",
                                    isolate_nonfinite=True) is None


def test_tune_with_nan_isolation_keeps_nan_where_native_puts_it():
    torch.manual_seed(0)
    native = tiny_mobilenet(batch_norm=False).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    plan = dw.tune(copy.deepcopy(native), x, cache=False, timer=PreferBlocks(), apply=False)
    assert any(name.startswith("block_diagonal") for name in plan.summary())
    model = copy.deepcopy(native)
    plan = dw.tune(model, x, cache=False, timer=PreferBlocks(), isolate_nonfinite=True)
    assert not any(name.startswith("block_diagonal") for name in plan.summary())
    poisoned = x.clone()
    poisoned[0, 1, 3, 3] = float("inf")
    torch.testing.assert_close(model(poisoned), native(poisoned), equal_nan=True)


@pytest.mark.parametrize("context, message", [
    (torch.no_grad, r"outside torch.no_grad\(\) and torch.inference_mode\(\)"),
    (torch.inference_mode, r"outside torch.no_grad\(\) and torch.inference_mode\(\)"),
])
def test_tune_without_autograd_is_a_clear_error(context, message):
    with context(), pytest.raises(RuntimeError, match=message):
        dw.tune(tiny_mobilenet(), torch.randn(1, 3, 16, 16), cache=False, timer=PreferBlocks())


def test_tune_on_an_empty_batch_or_a_bare_conv_is_a_clear_error():
    with pytest.raises(ValueError, match="empty batch"):
        dw.tune(tiny_mobilenet(), torch.randn(0, 3, 16, 16), cache=False, timer=PreferBlocks())
    with pytest.raises(ValueError, match=r"tune dw.DiagonalwiseConv2d.from_conv\(conv\) instead"):
        dw.tune(nn.Conv2d(8, 8, 3, groups=8), torch.randn(1, 8, 5, 5), cache=False,
                timer=PreferBlocks())
    layer = dw.DiagonalwiseConv2d.from_conv(nn.Conv2d(8, 8, 3, groups=8))
    dw.tune(layer, torch.randn(1, 8, 5, 5), cache=False, timer=PreferBlocks())
    assert layer.algorithm.name.startswith("block_diagonal")


def test_tune_leaves_the_random_state_as_it_found_it():
    model, x = tiny_mobilenet(), torch.randn(2, 3, 16, 16)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    dw.tune(model, x, cache=False, timer=PreferBlocks())
    torch.testing.assert_close(torch.rand(3), expected)


def test_plan_apply_is_all_or_nothing():
    model = tiny_mobilenet()
    plan = dw.Plan({"3": tuning.LayerChoice("block_diagonal:8", "k3"),
                    "9": tuning.LayerChoice("block_diagonal:32", "k9")})  # 9 has 16 groups
    with pytest.raises(ValueError, match=r"layer '9': block_diagonal:32 cannot run groups=16"):
        plan.apply(model)
    assert not any(dw.is_converted(m) for m in model.modules())


@pytest.mark.parametrize("text, message", [
    ('{"format": 1, "lay', "invalid JSON"),
    ('[1, 2]', "not a diagonalwise plan"),
    ('{"format": 1, "layers": {"3": {"algorithm": "warp_drive", "key": "k"}}}',
     "plan layer '3': unknown algorithm 'warp_drive'"),
])
def test_loading_a_malformed_plan_names_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "plan.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        dw.Plan.load(path)
    assert str(path) in str(error.value)


def test_the_measured_object_runs_even_when_its_name_rebuilds_nothing():
    class Doubled(dw.Native):
        """Native under a name that no registered family rebuilds."""

        name = "not_a_family:at_all"

    dw.register_algorithm("doubled", lambda argument: Doubled(),
                          candidates=lambda call, options: [Doubled()])
    try:
        timer = lambda call, algorithm, device: 0.1 if algorithm.name.startswith("not_a") else 1.0  # noqa: E731
        model = tiny_mobilenet()
        plan = dw.tune(model, torch.randn(1, 3, 16, 16), cache=False, timer=timer)
        assert plan.summary() == {"not_a_family:at_all": 2}
        assert isinstance(model[3].algorithm, Doubled)
    finally:
        dw.unregister_algorithm("doubled")


def test_a_stored_whole_model_verdict_is_adopted(tmp_path, monkeypatch):
    """The first process to check the whole model decides for every process sharing the cache."""
    model, x = tiny_mobilenet(), torch.randn(2, 3, 16, 16)
    cache = tuning.TuningCache(tmp_path / "cache.json", tuning.autotune.environment(x.device))
    first = dw.tune(copy.deepcopy(model), x, cache=cache, timer=PreferBlocks(), apply=False)
    stored = {"tuned_seconds": 2.0, "native_seconds": 1.0, "kept": False}
    cache.store_verdict(model_key([choice.key for choice in first.layers.values()]), stored)

    def must_not_measure(*args, **kwargs):
        raise AssertionError("the verdict was in the cache; nothing should be timed")

    monkeypatch.setattr(tuning.autotune, "measure_whole_model", must_not_measure)
    plan = dw.tune(model, x, cache=cache, timer=PreferBlocks(), verify=True)
    assert plan.whole_model == stored
    assert plan.summary() == {"native": 2}
    assert all(m.algorithm.name == "native" for m in model.modules() if dw.is_converted(m))


def _tune_on_rank(rank, world, init_file, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        # each rank "measures" differently: rank 0 prefers blocks of 2, rank 1 blocks of 8
        favourite = "block_diagonal:2" if rank == 0 else "block_diagonal:8"
        timer = lambda call, algorithm, device: 0.1 if algorithm.name == favourite else 1.0  # noqa: E731
        model = tiny_mobilenet()
        plan = dw.tune(model, torch.randn(2, 3, 16, 16), cache=False, timer=timer)
        results.put((rank, plan.summary(), model[3].algorithm.name))
    finally:
        dist.destroy_process_group()


def test_ranks_that_measured_differently_take_rank_zeros_plan(tmp_path):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_tune_on_rank,
                               args=(rank, 2, str(tmp_path / "init"), results))
               for rank in range(2)]
    for worker in workers:
        worker.start()
    outcomes = dict((rank, rest) for rank, *rest in (results.get(timeout=120) for _ in workers))
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert outcomes[0] == outcomes[1] == [{"block_diagonal:2": 2}, "block_diagonal:2"]


def test_capture_of_same_padding_with_a_padding_mode():
    conv = nn.Conv2d(8, 8, (3, 5), padding="same", padding_mode="reflect", groups=8)
    calls = tuning.collect_conv_calls(nn.Sequential(conv), (torch.randn(2, 8, 9, 11),))
    assert calls["0"].input_shape == (2, 8, 11, 15) and calls["0"].padding == (0, 0)
    plan = dw.tune(nn.Sequential(conv), torch.randn(2, 8, 9, 11), cache=False,
                   timer=PreferBlocks())
    assert plan.layers["0"].algorithm.startswith("block_diagonal")


def test_bench_tunes_in_the_layout_it_measures(monkeypatch):
    from diagonalwise.bench import training_step
    from diagonalwise.bench.registry import get_model_spec
    from diagonalwise.layout import suggests_channels_last

    seen = []

    def recording_tune(model, example_inputs, **kwargs):
        stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))  # dense, 3 -> 32
        seen.append(suggests_channels_last(stem.weight))
        return dw.tune(model, example_inputs, **kwargs)

    monkeypatch.setattr(training_step, "tune", recording_tune)
    training_step.bench_training(get_model_spec("mobilenet_v1"), torch.device("cpu"),
                                 layout="channels_last", batch=2, size=32, warmup=0, repeats=1,
                                 cache=False, variants=("tuned",))
    assert seen == [True]


def test_no_test_touches_the_users_cache():
    assert "tuning-cache" in os.environ["DIAGONALWISE_CACHE_DIR"]


def test_operands_are_drawn_on_the_cpu_whatever_the_default_device():
    """A user who set another default device (torch.set_default_device('cuda')) gets the same
    timing operands: they are drawn on the CPU, then moved."""
    call = ConvCall((2, 8, 9, 9), (8, 1, 3, 3), True, (1, 1), (1, 1), (1, 1), 8, "float32",
                    "channels_last")
    expected = call.make_operands("cpu", seed=3)
    with torch.device("meta"):
        got = call.make_operands("cpu", seed=3)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert got[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bench_models_run_at_their_gpu_input_size(name):
    """Shapes only (meta tensors): CPU CI never runs the GPU defaults, so a model that breaks at
    them would show only on a GPU (x3d_style once did at 112x112, where a side of 7 is odd)."""
    spec = MODELS[name]
    model = spec.build().to("meta")
    logits = model(torch.empty(spec.input_shape(2, spec.gpu_size), device="meta"))
    assert tuple(logits.shape)[:1] == (2,)
