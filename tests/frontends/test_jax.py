"""JAX and Flax NNX: equal to lax.conv_general_dilated / nnx.Conv in float64, under jit, grad, vmap."""

from __future__ import annotations

import json

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="JAX has its own environment: make test-jax")
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

from diagonalwise.blocking import valid_block_sizes  # noqa: E402
from diagonalwise.jax import (  # noqa: E402
    available_algorithms,
    block_diagonal_kernel,
    depthwise_conv,
    grouped_conv_general_dilated,
)

TOL = dict(rtol=1e-10, atol=1e-10)

# (layout, groups, in/group, out/group, window, strides, padding, lhs dilation, rhs dilation)
CASES = [
    ("NCHW", 8, 1, 1, (3, 3), (1, 1), "SAME", None, None),
    ("NCHW", 8, 1, 2, (3, 3), (2, 2), ((1, 1), (1, 1)), None, None),
    ("NHWC", 6, 1, 3, (5, 3), (1, 2), "VALID", None, (2, 1)),
    ("NHWC", 4, 2, 2, (3, 3), (1, 1), ((2, 0), (1, 1)), None, (1, 3)),
    ("NCHW", 4, 3, 1, (2, 4), (3, 1), ((1, 1), (2, 1)), (2, 1), None),
    ("NWC", 6, 1, 1, (4,), (1,), ((3, 0),), None, None),
    ("NCDHW", 4, 1, 2, (3, 3, 3), (1, 2, 2), "SAME", None, None),
]

SPECS = {"NCHW": ("NCHW", "OIHW", "NCHW"), "NHWC": ("NHWC", "HWIO", "NHWC"),
         "NWC": ("NWC", "WIO", "NWC"), "NCDHW": ("NCDHW", "OIDHW", "NCDHW")}


def operands(layout, groups, in_pg, out_pg, window, seed=0):
    rng = np.random.default_rng(seed)
    lhs_spec, rhs_spec, _ = SPECS[layout]
    sizes = dict(N=2, C=groups * in_pg, H=9, W=7, D=5)
    lhs = rng.standard_normal([sizes[d] for d in lhs_spec])
    kernel_sizes = dict(O=groups * out_pg, I=in_pg, **dict(zip("DHW"[-len(window):], window)))
    rhs = rng.standard_normal([kernel_sizes[d] for d in rhs_spec])
    return jnp.asarray(lhs), jnp.asarray(rhs)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-g{c[1]}-i{c[2]}-o{c[3]}")
def test_value_and_gradients_equal_lax_for_every_block_size(case):
    layout, groups, in_pg, out_pg, window, strides, padding, lhs_dil, rhs_dil = case
    lhs, rhs = operands(layout, groups, in_pg, out_pg, window)

    def loss(conv, lhs, rhs, **kw):
        out = conv(lhs, rhs, strides, padding, lhs_dil, rhs_dil, SPECS[layout],
                   feature_group_count=groups, **kw)
        return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape))), out

    (want_loss, want), want_grads = jax.value_and_grad(
        lambda l, r: loss(lax.conv_general_dilated, l, r), (0, 1), has_aux=True)(lhs, rhs)
    choices = [{"block_size": b} for b in valid_block_sizes(groups) + [None]]
    choices += [{"algorithm": a} for a in available_algorithms() if a != "block_diagonal"]
    choices += [{"algorithm": f"block_diagonal:{b}"} for b in valid_block_sizes(groups)]
    for choice in choices:
        if choice.get("algorithm") == "shift_add" and lhs_dil is not None:
            with pytest.raises(ValueError, match="lhs_dilation"):
                loss(grouped_conv_general_dilated, lhs, rhs, **choice)
            continue
        fn = jax.jit(jax.value_and_grad(
            lambda l, r, c=choice: loss(grouped_conv_general_dilated, l, r, **c),
            (0, 1), has_aux=True))
        (got_loss, got), got_grads = fn(lhs, rhs)
        np.testing.assert_allclose(got, want, **TOL, err_msg=str(choice))
        for g, w in zip(got_grads, want_grads):
            np.testing.assert_allclose(g, w, **TOL, err_msg=str(choice))


def test_depthwise_conv_and_vmap():
    lhs, rhs = operands("NHWC", 8, 1, 2, (3, 3))
    spec = SPECS["NHWC"]
    want = lax.conv_general_dilated(lhs, rhs, (1, 1), "SAME", dimension_numbers=spec,
                                    feature_group_count=8)
    got = depthwise_conv(lhs, rhs, (1, 1), "SAME", dimension_numbers=spec, block_size=4)
    np.testing.assert_allclose(got, want, **TOL)
    # vmap over a batch of kernels
    kernels = jnp.stack([rhs, 2 * rhs, -rhs])
    mapped = jax.vmap(lambda k: depthwise_conv(lhs, k, (1, 1), "SAME", dimension_numbers=spec,
                                               block_size=8))(kernels)
    for index, scale in enumerate((1, 2, -1)):
        np.testing.assert_allclose(mapped[index], scale * want, **TOL)


def test_shift_add_under_vmap_and_with_other_paddings():
    lhs, rhs = operands("NHWC", 8, 1, 2, (3, 3))
    spec = SPECS["NHWC"]
    for padding in ("SAME", "VALID", "SAME_LOWER", ((2, 0), (-1, 3))):
        want = lax.conv_general_dilated(lhs, rhs, (2, 1), padding, dimension_numbers=spec,
                                        feature_group_count=8)
        got = depthwise_conv(lhs, rhs, (2, 1), padding, dimension_numbers=spec,
                             algorithm="shift_add")
        np.testing.assert_allclose(got, want, **TOL, err_msg=str(padding))
    kernels = jnp.stack([rhs, 2 * rhs])
    mapped = jax.vmap(lambda k: depthwise_conv(lhs, k, (1, 1), "SAME", dimension_numbers=spec,
                                               algorithm="shift_add"))(kernels)
    want = lax.conv_general_dilated(lhs, rhs, (1, 1), "SAME", dimension_numbers=spec,
                                    feature_group_count=8)
    np.testing.assert_allclose(mapped[1], 2 * want, **TOL)


@pytest.mark.parametrize("kwargs,message", [
    (dict(algorithm="winograd"), "unknown algorithm 'winograd'"),
    (dict(algorithm="block_diagonal"), "unknown algorithm"),
    (dict(algorithm="shift_add:2"), "unknown algorithm"),
    (dict(algorithm="block_diagonal:x"), "whole number"),
    (dict(algorithm="block_diagonal:3"), r"valid block sizes are \[1, 2, 4, 8\]"),
    (dict(algorithm="native", block_size=2), "not both"),
])
def test_bad_algorithm_names_say_what_is_valid(kwargs, message):
    lhs, rhs = operands("NCHW", 8, 1, 1, (3, 3))
    with pytest.raises(ValueError, match=message):
        grouped_conv_general_dilated(lhs, rhs, (1, 1), "SAME", feature_group_count=8, **kwargs)


def test_block_diagonal_kernel_matches_the_torch_layout():
    kernel = jnp.arange(2 * 6 * 1 * 3 * 3, dtype=jnp.float64).reshape(12, 1, 3, 3)
    dense = np.asarray(block_diagonal_kernel(kernel, 6, 3))
    assert dense.shape == (12, 3, 3, 3)
    for o in range(12):
        slot = (o // 2) % 3
        assert np.array_equal(dense[o, slot], np.asarray(kernel[o, 0]))
        assert not np.any(np.delete(dense[o], slot, axis=0))


def test_bad_block_size_names_the_valid_values():
    lhs, rhs = operands("NCHW", 8, 1, 1, (3, 3))
    with pytest.raises(ValueError, match=r"valid block sizes are \[1, 2, 4, 8\]"):
        grouped_conv_general_dilated(lhs, rhs, (1, 1), "SAME", feature_group_count=8,
                                     block_size=3)


def test_flax_nnx_module_equals_nnx_conv_and_trains_alike():
    from flax import nnx

    from diagonalwise.flax import DiagonalwiseConv

    kwargs = dict(kernel_size=(3, 3), strides=(2, 2), padding="SAME", feature_group_count=8,
                  param_dtype=jnp.float64, dtype=jnp.float64)
    native = nnx.Conv(8, 16, rngs=nnx.Rngs(0), **kwargs)
    ours = DiagonalwiseConv(8, 16, rngs=nnx.Rngs(0), block_size=4, **kwargs)
    assert ours.block_size == 4
    assert ours.kernel[...].shape == native.kernel[...].shape == (3, 3, 1, 16)
    np.testing.assert_array_equal(ours.kernel[...], native.kernel[...])
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 9, 9, 8)))
    target = jnp.asarray(np.random.default_rng(2).standard_normal((2, 5, 5, 16)))

    def train(model):
        optimizer = nnx.Optimizer(model, __import__("optax").sgd(0.05, momentum=0.9),
                                  wrt=nnx.Param)
        losses = []
        for _ in range(4):
            def loss_fn(m):
                return jnp.mean((m(x) - target) ** 2)
            loss, grads = nnx.value_and_grad(loss_fn)(model)
            optimizer.update(model, grads)
            losses.append(float(loss))
        return losses

    np.testing.assert_allclose(ours(x), native(x), **TOL)
    np.testing.assert_allclose(train(ours), train(native), **TOL)
    np.testing.assert_allclose(ours.kernel[...], native.kernel[...], **TOL)
    shifted = DiagonalwiseConv(8, 16, rngs=nnx.Rngs(0), algorithm="shift_add", **kwargs)
    fresh = nnx.Conv(8, 16, rngs=nnx.Rngs(0), **kwargs)
    assert (shifted.algorithm, shifted.block_size) == ("shift_add", None)
    np.testing.assert_allclose(train(shifted), train(fresh), **TOL)


def test_layer_bench_checks_then_times_every_algorithm(tmp_path):
    from diagonalwise.jax.bench import bench_layer, main

    row = bench_layer(16, 8, 2, batch=1, repeats=2)
    assert row["status"] == {"native": "ok", "block_diagonal:16": "ok", "shift_add": "ok"}
    assert set(row["median_ms"]) == set(row["status"]) and min(row["median_ms"].values()) > 0
    assert main(["--batch", "1", "--size", "16", "--repeats", "1", "--output",
                 str(tmp_path / "jax.json")]) == 0
    layers = json.loads((tmp_path / "jax.json").read_text())["layers"]
    assert len(layers) == 9 and all(set(r["status"].values()) == {"ok"} for r in layers)


def test_flax_training_step_bench_gates_then_times_each_variant():
    from diagonalwise.flax.bench import bench_training

    rows, plan = bench_training(batch=2, size=32, width=0.25, repeats=1, cache=False)
    assert [r["variant"] for r in rows] == ["native", "paper", "shift_add", "tuned"]
    assert all(r["status"] == "ok" and r["median_ms"] > 0 for r in rows)
    assert rows[0]["speedup"] == 1.0
    assert len(plan.layers) == 13 and rows[-1]["depthwise"] == plan.summary()


class _Net:
    """Two depthwise layers (one strided, one with a channel multiplier) in float64."""

    def __new__(cls, algorithm):
        from flax import nnx

        from diagonalwise.flax import DiagonalwiseConv

        class Net(nnx.Module):
            def __init__(self, rngs):
                common = dict(param_dtype=jnp.float64, dtype=jnp.float64, rngs=rngs,
                              algorithm=algorithm)
                self.a = DiagonalwiseConv(8, 8, (3, 3), strides=2, feature_group_count=8, **common)
                self.b = DiagonalwiseConv(8, 16, (5, 5), feature_group_count=8, **common)

            def __call__(self, x):
                return self.b(jnp.tanh(self.a(x)))

        return Net(nnx.Rngs(0))


def test_tuned_flax_model_equals_native_in_float64(tmp_path, monkeypatch):
    from flax import nnx

    from diagonalwise.flax.tuning import capture_configs, tune_model
    from diagonalwise.jax.tuning import TuningCache

    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 12, 12, 8)))
    tuned, native = _Net("native"), _Net("native")
    configs = capture_configs(tuned, x)
    assert sorted(configs) == ["a", "b"] and configs["a"].window_strides == (2, 2)
    cache = TuningCache(tmp_path / "cache.json")
    plan = tune_model(tuned, x, cache=cache, repeats=1, min_gain=-1.0, log=lambda m: None)
    chosen = plan.layers
    assert set(chosen) == {"a", "b"}
    assert all(tuned_module.algorithm == chosen[path] for path, tuned_module in
               (("a", tuned.a), ("b", tuned.b)))

    def loss(model):
        return jnp.sum(jnp.sin(model(x)))

    want, want_grads = nnx.value_and_grad(loss)(native)
    got, got_grads = nnx.value_and_grad(loss)(tuned)
    np.testing.assert_allclose(got, want, **TOL)
    for name in ("a", "b"):
        np.testing.assert_allclose(getattr(got_grads, name).kernel[...],
                                   getattr(want_grads, name).kernel[...], **TOL)
    # a second tuning reads the cache and measures nothing
    import diagonalwise.jax.tuning as tuning

    monkeypatch.setattr(tuning, "measure", lambda *a, **k: pytest.fail("measured again"))
    again = _Net("native")
    cached = tune_model(again, x, cache=TuningCache(tmp_path / "cache.json"), repeats=1,
                        min_gain=-1.0, log=lambda m: None).layers
    # per layer as cached; the whole-model check (a timing) may still keep native everywhere
    per_layer = {path: cache.get(config) for path, config in configs.items()}
    assert cached in (per_layer, {path: "native" for path in per_layer})
    assert set(plan.whole_model) == {"native_seconds", "tuned_seconds", "kept"}
    assert chosen == (per_layer if plan.whole_model["kept"] else dict.fromkeys(per_layer, "native"))


def test_a_saved_plan_applies_to_a_fresh_model_all_or_nothing(tmp_path):
    from diagonalwise.algorithm_choice import Plan
    from diagonalwise.flax.tuning import apply_plan

    plan = Plan({"a": "shift_add", "b": "block_diagonal:4"})
    plan.save(tmp_path / "plan.json")
    model = apply_plan(_Net("native"), Plan.load(tmp_path / "plan.json"))
    assert (model.a.algorithm, model.b.algorithm, model.b.block_size) == \
        ("shift_add", "block_diagonal:4", 4)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 12, 12, 8)))
    np.testing.assert_allclose(model(x), _Net("native")(x), **TOL)
    with pytest.raises(ValueError, match=r"no DiagonalwiseConv at: \['c'\]"):
        apply_plan(model, Plan({"a": "native", "c": "native"}))
    with pytest.raises(ValueError, match="does not fit this model: block_size=3 does not divide"):
        apply_plan(model, Plan({"a": "native", "b": "block_diagonal:3"}))
    assert (model.a.algorithm, model.b.algorithm) == ("shift_add", "block_diagonal:4")
    (tmp_path / "bad.json").write_text('{"format": 1, "layers": {"a": 3}}')
    with pytest.raises(ValueError, match="bad.json: not a diagonalwise plan"):
        Plan.load(tmp_path / "bad.json")


def test_the_gate_rejects_a_wrong_algorithm_and_the_margin_keeps_native(monkeypatch):
    import diagonalwise.jax.tuning as tuning

    lhs, rhs = operands("NHWC", 8, 1, 1, (3, 3))
    config = tuning.ConvConfig.of_call(lhs, rhs, (1, 1), "SAME",
                                       dimension_numbers=SPECS["NHWC"], feature_group_count=8)
    assert config.candidates() == ["native", "shift_add", "block_diagonal:2", "block_diagonal:4",
                                   "block_diagonal:8"]
    right = tuning.ConvConfig.conv

    def conv(self, algorithm):
        run = right(self, algorithm)
        return (lambda l, r: 1.001 * run(l, r)) if algorithm == "shift_add" else run

    monkeypatch.setattr(tuning.ConvConfig, "conv", conv)
    measured = tuning.measure(config, repeats=1)
    assert measured["shift_add"].startswith("failed correctness: relative error 1.0e-03")
    assert isinstance(measured["native"], float) and isinstance(measured["block_diagonal:8"], float)
    assert all(isinstance(measured[name], float) or measured[name].startswith("not measured")
               for name in ("block_diagonal:2", "block_diagonal:4"))
    assert tuning.choose({"native": 1.0, "shift_add": 0.97}) == "native"
    assert tuning.choose({"native": 1.0, "shift_add": 0.5, "block_diagonal:2": "failed"}) \
        == "shift_add"


def test_the_command_runs_the_jax_benches_without_pytorch(tmp_path):
    import importlib.util

    from diagonalwise.entry import main

    assert main(["bench", "--framework", "jax", "--batch-size", "1", "--size", "16",
                 "--repeats", "1", "--output", str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.iterdir()} >= {"layers.json", "training_step.json",
                                                    "training_step.csv", "training_step-plan.json"}
    rows = json.loads((tmp_path / "training_step.json").read_text())["training_step"]
    assert [r["variant"] for r in rows] == ["native", "paper", "shift_add", "tuned"]
    if importlib.util.find_spec("torch") is None:  # as in make test-jax's environment
        import sys

        assert "torch" not in sys.modules


def test_choices_cached_by_other_code_are_measured_again(tmp_path, monkeypatch):
    import diagonalwise.jax.tuning as tuning

    lhs, rhs = operands("NHWC", 8, 1, 1, (3, 3))
    config = tuning.ConvConfig.of_call(lhs, rhs, (1, 1), "SAME",
                                       dimension_numbers=SPECS["NHWC"], feature_group_count=8)
    tuning.TuningCache(tmp_path / "cache.json").put(config, "shift_add", {})
    assert tuning.TuningCache(tmp_path / "cache.json").get(config) == "shift_add"
    monkeypatch.setattr(tuning, "code_fingerprint", lambda *files: "changed")
    assert tuning.environment().endswith("code changed")
    assert tuning.TuningCache(tmp_path / "cache.json").get(config) is None
