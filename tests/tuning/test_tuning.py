"""The autotuner: decisions under an injected timer, the correctness gate, plans and the cache."""

from __future__ import annotations

import copy
import json
import multiprocessing
import warnings

import pytest
import torch
from torch import nn

import diagonalwise as dw
from diagonalwise import tuning
from diagonalwise.algorithms import Algorithm, Native
from diagonalwise.blocking import candidate_block_sizes
from diagonalwise.call import ConvCall, bucket
from diagonalwise.layout import CHANNELS_LAST_FORMAT
from diagonalwise.timing import Timing, environment
from diagonalwise.tuning import collect_conv_calls
from tests.builders import tiny_mobilenet
from tests.equivalence import TOLERANCES

ENV = environment("cpu")


def depthwise_call(channels=64, batch=4, size=8, dtype="float64", layout="contiguous", groups=None):
    return ConvCall(input_shape=(batch, channels, size, size), weight_shape=(channels, 1, 3, 3),
                    bias=False, stride=(1, 1), padding=(1, 1), dilation=(1, 1),
                    groups=groups or channels, dtype=dtype, layout=layout)


class FakeTimer:
    """Seconds per algorithm name from a table (others: 1.0); records what it was asked."""

    def __init__(self, seconds: dict[str, float]):
        self.seconds = seconds
        self.asked: list[str] = []

    def __call__(self, call, algorithm, device):
        self.asked.append(algorithm.name)
        return self.seconds.get(algorithm.name, 1.0)


@pytest.fixture
def bad_candidate():
    """A registered candidate that is fast and wrong: its output is off by 1%."""

    class OffByOnePercent(Algorithm):
        name = "off_by_one_percent"

        def __call__(self, input, weight, bias, stride, padding, dilation, groups):
            return Native()(input, weight, bias, stride, padding, dilation, groups) * 1.01

    dw.register_algorithm("off_by_one_percent", lambda argument: OffByOnePercent())
    yield OffByOnePercent
    dw.unregister_algorithm("off_by_one_percent")


def test_candidate_block_sizes():
    assert candidate_block_sizes(64) == [2, 4, 8, 16, 32, 64]
    assert candidate_block_sizes(144) == [2, 4, 8, 16, 24, 36, 72, 144]
    assert candidate_block_sizes(144, every_divisor=True) == [2, 3, 4, 6, 8, 9, 12, 16, 18, 24, 36,
                                                              48, 72, 144]
    assert candidate_block_sizes(32, in_channels_per_group=4, max_block_channels=64) == \
        [2, 4, 8, 16]
    assert candidate_block_sizes(7) == [7]
    names = [a.name for a in dw.candidate_algorithms(depthwise_call(8))]
    ours = ["cpu_direct"] if dw.kernels.cpu_ops.cpu_kernels_unavailable() is None else []
    assert names == ["native", "native_channels_last", "block_diagonal:2", "block_diagonal:4",
                     "block_diagonal:8", *ours]
    assert "native_channels_last" not in [
        a.name for a in dw.candidate_algorithms(depthwise_call(8, layout="channels_last"))]


def test_the_fastest_candidate_is_chosen():
    timer = FakeTimer({"native": 1.0, "native_channels_last": 0.9, "block_diagonal:8": 0.5})
    choice = tuning.choose(depthwise_call(), "cpu", timer=timer)
    assert choice.algorithm == "block_diagonal:8"
    assert choice.times["block_diagonal:8"] == 0.5 and choice.rejected == {}


def test_native_is_kept_unless_another_is_faster_by_the_margin():
    timer = FakeTimer({"native": 1.0, "block_diagonal:8": 0.97})
    assert tuning.choose(depthwise_call(), "cpu", timer=timer).algorithm == "native"
    assert tuning.choose(depthwise_call(), "cpu", timer=timer, min_gain=0.0).algorithm == \
        "block_diagonal:8"


def test_larger_block_sizes_are_pruned_once_times_rise_past_twice_the_best():
    timer = FakeTimer({"native": 1.0, "native_channels_last": 1.0, "block_diagonal:2": 3.0,
                       "block_diagonal:4": 0.8, "block_diagonal:8": 1.2,
                       "block_diagonal:16": 2.5})
    tuning.choose(depthwise_call(), "cpu", timer=timer)
    asked = [name for name in timer.asked if name != "cpu_direct"]  # ours, measured once too
    # 2 is slow but the first block size; 8 rises but under 2x; 16 rises past 2x: stop there
    assert asked[:6] == ["native", "native_channels_last", "block_diagonal:2",
                         "block_diagonal:4", "block_diagonal:8", "block_diagonal:16"]
    # then the confirmation rounds: the winner and native, taking turns
    assert sorted(asked[6:]) == ["block_diagonal:4"] * 2 + ["native"] * 2


def test_a_lucky_first_measurement_does_not_leave_native():
    class LuckyOnce(FakeTimer):
        def __call__(self, call, algorithm, device):
            seconds = super().__call__(call, algorithm, device)
            if algorithm.name == "block_diagonal:8" and self.asked.count(algorithm.name) > 1:
                return 1.5  # the 0.5 was a fluke: every later look says 1.5
            return seconds

    timer = LuckyOnce({"native": 1.0, "block_diagonal:8": 0.5})
    choice = tuning.choose(depthwise_call(), "cpu", timer=timer)
    assert choice.algorithm == "native"
    assert choice.times["block_diagonal:8"] == 1.5  # the median of 0.5, 1.5, 1.5


def test_correctness_gate(bad_candidate):
    call = depthwise_call(16)
    assert tuning.check_correctness(call, dw.BlockDiagonal(4), "cpu") is None
    assert "output relative error" in tuning.check_correctness(call, bad_candidate(), "cpu")
    timer = FakeTimer({"native": 1.0, "off_by_one_percent": 0.01})
    choice = tuning.choose(call, "cpu", timer=timer)
    assert choice.algorithm != "off_by_one_percent"
    assert "off_by_one_percent" not in timer.asked and "off_by_one_percent" not in choice.times
    assert "exceeds" in choice.rejected["off_by_one_percent"]


def test_a_failing_candidate_is_never_reported_with_a_time(bad_candidate):
    from diagonalwise.bench.per_layer import bench_layer_calls

    rows = bench_layer_calls("toy", {"conv": depthwise_call(8, dtype="float32")}, torch.device("cpu"),
                             copy_gbs=10.0, warmup=1, repeats=1)
    bad = [r for r in rows if r.algorithm == "off_by_one_percent"]
    assert len(bad) == 3 and all(r.status.startswith("failed correctness") for r in bad)
    assert all(r.median_ms is None and r.speedup is None for r in bad)
    good = [r for r in rows if r.algorithm == "block_diagonal:8"]
    assert {r.mode for r in good} == {"forward", "backward", "step"}
    assert all(r.status == "ok" and r.median_ms > 0 for r in good)


def test_keys_bucket_batch_and_spatial_sizes():
    assert [bucket(n) for n in (1, 2, 3, 16, 17)] == [1, 2, 4, 16, 32]
    assert depthwise_call(batch=12).key() == depthwise_call(batch=16).key()
    assert depthwise_call(batch=16).key() != depthwise_call(batch=17).key()
    assert depthwise_call(size=30).key() == depthwise_call(size=32).key()
    assert depthwise_call(dtype="float32").key() != depthwise_call(dtype="bfloat16").key()
    assert depthwise_call(layout="channels_last").key() != depthwise_call().key()


@pytest.mark.parametrize("layout, dims", [("contiguous", 2), ("channels_last", 2),
                                          ("channels_last", 3)])
def test_timing_operands_come_in_the_calls_layout(layout, dims):
    """The output gradient too, as the layers after a channels_last layer hand it back: given
    in NCHW it cost a channels_last layer a reorder (8x576x10x10: 0.82x native instead of 1.0x
    for cpu_direct) that training never pays."""
    call = ConvCall((2, 8) + (9,) * dims, (8, 1) + (3,) * dims, True, (1,) * dims, (1,) * dims,
                    (1,) * dims, 8, "float32", layout)
    x, weight, bias, grad_output = call.make_operands("cpu")
    memory_format = CHANNELS_LAST_FORMAT[dims + 2] if layout == "channels_last" else \
        torch.contiguous_format
    assert x.is_contiguous(memory_format=memory_format)
    assert grad_output.is_contiguous(memory_format=memory_format)
    assert weight.is_contiguous() and grad_output.shape == (2, 8) + (9,) * dims


def test_collect_conv_calls_sees_what_the_algorithm_sees():
    model = nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=2, groups=4, padding_mode="reflect"),
        nn.BatchNorm2d(4), nn.Conv2d(4, 8, 1), nn.Conv2d(8, 8, 3, stride=2, groups=4))
    stats = model[1].running_mean.clone()
    x = torch.randn(2, 4, 9, 9).contiguous(memory_format=torch.channels_last)
    calls = collect_conv_calls(model, (x,))
    assert list(calls) == ["0", "3"]  # the dense 1x1 conv is not tunable
    assert calls["0"].input_shape == (2, 4, 13, 13) and calls["0"].padding == (0, 0)
    assert calls["0"].layout == "channels_last"
    assert torch.equal(model[1].running_mean, stats)  # batch-norm statistics put back
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert collect_conv_calls(model, (x,))["0"].dtype == "bfloat16"


def test_tune_applies_the_plan_and_keeps_the_numbers(tmp_path):
    torch.manual_seed(0)
    native = tiny_mobilenet().double()
    model = copy.deepcopy(native)
    timer = FakeTimer({"native": 1.0, "block_diagonal:8": 0.5, "block_diagonal:16": 0.4})
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    plan = dw.tune(model, x, cache=tmp_path / "cache.json", timer=timer)
    assert {name: c.algorithm for name, c in plan.layers.items()} == {
        "3": "block_diagonal:8", "9": "block_diagonal:16"}
    assert type(model[3]) is dw.DiagonalwiseConv2d and model[3].block_size == 8
    assert model[9].block_size == 16
    torch.testing.assert_close(model(x), native(x), **TOLERANCES[torch.float64])

    # the plan round-trips through JSON and applies to another instance of the model
    plan.save(tmp_path / "plan.json")
    loaded = dw.Plan.load(tmp_path / "plan.json")
    assert loaded.layers == plan.layers
    other = loaded.apply(tiny_mobilenet())
    assert other[3].algorithm == dw.BlockDiagonal(8)
    with pytest.raises(ValueError, match="names layers this model does not have"):
        loaded.apply(nn.Sequential(nn.Conv2d(8, 8, 3, groups=8)))

    # a second tune of the same configurations is served by the cache: nothing is measured
    again = FakeTimer({})
    dw.tune(copy.deepcopy(native), x, cache=tmp_path / "cache.json", timer=again)
    assert again.asked == []


def test_plan_rejects_files_that_are_not_plans(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"format": 99, "layers": {}}))
    with pytest.raises(ValueError, match="not a diagonalwise plan"):
        dw.Plan.load(path)


def test_corrupt_cache_warns_and_retunes(tmp_path):
    path = tmp_path / "cache.json"
    path.write_text('{"format": 1, "entr')
    timer = FakeTimer({"native": 1.0, "block_diagonal:8": 0.5})
    with pytest.warns(UserWarning, match="unreadable"):
        plan = dw.tune(tiny_mobilenet(), torch.randn(1, 3, 16, 16), cache=path, timer=timer,
                       apply=False)
    assert timer.asked  # it measured
    assert plan.layers["3"].algorithm == "block_diagonal:8"
    data = json.loads(path.read_text())  # and rewrote a valid file
    assert data["format"] == tuning.CACHE_FORMAT
    [section] = data["environments"].values()
    assert len(section["entries"]) == 2


def test_each_environment_keeps_its_own_entries(tmp_path):
    path = tmp_path / "cache.json"
    call = depthwise_call()
    one_thread, two_threads = dict(ENV, threads=1), dict(ENV, threads=2)
    tuning.TuningCache(path, one_thread).store(tuning.LayerChoice("block_diagonal:2", call.key()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # another environment is a miss, not a problem
        assert tuning.TuningCache(path, two_threads).lookup(call.key()) is None
    tuning.TuningCache(path, two_threads).store(tuning.LayerChoice("native", call.key()))
    # 1, 2, 1 threads: neither run wiped the other's decisions
    assert tuning.TuningCache(path, one_thread).lookup(call.key()).algorithm == "block_diagonal:2"
    assert tuning.TuningCache(path, two_threads).lookup(call.key()).algorithm == "native"


def test_choices_measured_with_other_kernels_are_measured_again(tmp_path):
    """A choice timed with an older version of our kernels (another source fingerprint) is a
    miss: seen when cpu_direct's NCHW path changed and a results folder's old cache kept the
    choices made against the old one."""
    from diagonalwise.kernels import source_fingerprint

    path = tmp_path / "cache.json"
    call = depthwise_call()
    tuning.TuningCache(path, dict(ENV, kernels="older")).store(
        tuning.LayerChoice("block_diagonal:2", call.key()))
    current = tuning.TuningCache(path, ENV)
    assert current.env["kernels"] == source_fingerprint() != "older"
    assert current.lookup(call.key()) is None


@pytest.mark.parametrize("entry, problem", [
    ({"algorithm": "warp_drive", "key": "K"}, "unknown algorithm"),
    ({"algorithm": "block_diagonal:3", "key": "K"}, "cannot run a layer with groups=8"),
    ({"algorithm": 7, "key": "K"}, "not a layer choice"),
    ({"algorithm": "native", "key": "K", "times": {"native": "fast"}}, "'times' must map"),
    ({"algorithm": "native", "key": "other"}, "stored under"),
    ("native", "not a layer choice"),
])
def test_an_invalid_cache_entry_is_a_miss_and_is_overwritten(tmp_path, entry, problem):
    path = tmp_path / "cache.json"
    call = depthwise_call(8)
    cache = tuning.TuningCache(path, ENV)
    if isinstance(entry, dict) and entry["key"] == "K":  # K: the key it is stored under
        entry = dict(entry, key=call.key())
    path.write_text(json.dumps({"format": tuning.CACHE_FORMAT, "environments": {
        cache.fingerprint: {"environment": cache.env, "entries": {call.key(): entry}}}}))
    with pytest.warns(UserWarning, match=problem):
        assert cache.lookup(call.key(), call.groups) is None
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        stored = cache.store(tuning.LayerChoice("block_diagonal:4", call.key()), call.groups)
    assert not again  # warned once already
    assert stored.algorithm == "block_diagonal:4"
    assert tuning.TuningCache(path, ENV).lookup(call.key(), call.groups).algorithm == \
        "block_diagonal:4"


def test_an_unwritable_cache_warns_once_and_tunes_uncached():
    timer = FakeTimer({"native": 1.0, "block_diagonal:8": 0.5})
    cache = tuning.TuningCache("/proc/diagonalwise/cache.json", ENV)  # nobody can write there
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = dw.tune(tiny_mobilenet(), torch.randn(1, 3, 16, 16), cache=cache, timer=timer,
                       apply=False)
    messages = [str(w.message) for w in caught if "cannot write the tuning cache" in str(w.message)]
    assert len(messages) == 1  # two layer configurations, one warning
    assert plan.layers["3"].algorithm == "block_diagonal:8"


def _store_concurrently(path, key, algorithm, results):
    cache = tuning.TuningCache(path, ENV)
    stored = [cache.store(tuning.LayerChoice(algorithm, key))]
    stored.append(cache.store(tuning.LayerChoice("native", f"{key}-own-{algorithm}")))
    results.put((algorithm, stored[0].algorithm))


def test_concurrent_writers_neither_corrupt_nor_disagree(tmp_path):
    path = tmp_path / "cache.json"
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_store_concurrently,
                               args=(path, "shared", f"block_diagonal:{2 ** i}", results))
               for i in range(1, 7)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    outcomes = [results.get(timeout=5) for _ in workers]
    adopted = {stored for _, stored in outcomes}
    assert len(adopted) == 1  # every process applies the same decision for the shared key
    [section] = json.loads(path.read_text())["environments"].values()
    entries = section["entries"]
    assert entries["shared"]["algorithm"] == adopted.pop()
    assert len(entries) == 1 + len(workers)  # nobody's own key was lost


def test_tune_converts_a_plain_model_with_the_per_device_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIAGONALWISE_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    native = tiny_mobilenet().double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    model = copy.deepcopy(native)
    dw.tune(model, (x,), filter_fn=lambda module, name: name != "9")
    assert type(model[3]) is dw.DiagonalwiseConv2d and type(model[9]) is nn.Conv2d
    assert list(tmp_path.glob("tuning-*.json"))
    torch.testing.assert_close(model(x), native(x), **TOLERANCES[torch.float64])
    with pytest.raises(ValueError, match=r"call diagonalwise.tune\(model, \(x,\)\)"):
        dw.convert(tiny_mobilenet(), block_size="auto")


@pytest.mark.parametrize("tuned_seconds, kept", [(0.5, True), (2.0, False)])
def test_whole_model_check_keeps_a_faster_plan_and_drops_a_slower_one(tmp_path, tuned_seconds,
                                                                        kept):
    torch.manual_seed(0)
    native = tiny_mobilenet().double()
    model = copy.deepcopy(native)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    plan = dw.tune(model, x, cache=False, timer=FakeTimer({"native": 1.0,
                                                           "block_diagonal:8": 0.5}))
    assert model[3].algorithm == dw.BlockDiagonal(8)
    stats = model[1].running_mean.clone()
    ran = []

    def measure(functions):
        for variant, function in functions.items():
            function()  # each variant really runs: the check must undo its side effects
            ran.append(variant)
        return {"native": 1.0, "tuned": tuned_seconds}

    assert tuning.check_whole_model(model, (x,), plan, measure=measure) is kept
    assert sorted(ran) == ["native", "tuned"]
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model[1].running_mean, stats)
    assert plan.whole_model == {"tuned_seconds": tuned_seconds, "native_seconds": 1.0,
                                "kept": kept}
    expected = dw.BlockDiagonal(8) if kept else dw.Native()
    assert model[3].algorithm == expected
    assert plan.layers["3"].algorithm == ("block_diagonal:8" if kept else "native")
    assert dw.Plan.from_dict(plan.to_dict()).whole_model == plan.whole_model
    torch.testing.assert_close(model(x), native(x), **TOLERANCES[torch.float64])


@pytest.mark.parametrize("first_rounds, more_rounds, rounds_run, kept", [
    # medians 2% apart with spreads of 10%: undecided, 10 more rounds decide on all 15
    ({"native": [1.0, 0.9, 1.1, 1.0, 0.95], "tuned": [1.02, 0.92, 1.12, 1.02, 0.97]},
     {"native": [1.0] * 10, "tuned": [0.9] * 10}, [5, 10], True),
    ({"native": [1.0, 0.9, 1.1, 1.0, 0.95], "tuned": [0.98, 0.88, 1.08, 0.98, 0.93]},
     {"native": [1.0] * 10, "tuned": [1.1] * 10}, [5, 10], False),
    # medians farther apart than the spreads: decided by the first 5
    ({"native": [1.0, 1.01, 0.99, 1.0, 1.0], "tuned": [1.2, 1.21, 1.19, 1.2, 1.2]},
     None, [5], False),
], ids=["undecided-then-faster", "undecided-then-slower", "decided"])
def test_whole_model_check_measures_more_rounds_when_the_first_are_undecided(
        monkeypatch, first_rounds, more_rounds, rounds_run, kept):
    torch.manual_seed(0)
    model = tiny_mobilenet().double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    plan = dw.tune(model, x, cache=False, timer=FakeTimer({"native": 1.0,
                                                           "block_diagonal:8": 0.5}))
    answers = [first_rounds, more_rounds]
    calls = []

    def fake_measure_interleaved(functions, device, *, warmup, repeats):
        calls.append(repeats)
        return {variant: Timing(list(answers[len(calls) - 1][variant])) for variant in functions}

    monkeypatch.setattr(tuning.whole_model, "measure_interleaved", fake_measure_interleaved)
    verdict = tuning.measure_whole_model(model, (x,), plan)
    assert calls == rounds_run
    assert verdict["kept"] is kept
    samples = {variant: first_rounds[variant] + (more_rounds or {}).get(variant, [])
               for variant in first_rounds}
    assert verdict["native_seconds"] == pytest.approx(sorted(samples["native"])[
        len(samples["native"]) // 2])
