"""Keras 3 on the backend in KERAS_BACKEND: DiagonalwiseDepthwiseConv1D/2D equal DepthwiseConv1D/2D.

Gradients are compared through training, which every backend runs the same way: one SGD step with
learning rate 1 moves each weight by minus its gradient, and a trainable 1x1 convolution placed
before the depthwise layer receives a gradient that depends on the depthwise layer's input
gradient. So equal weights after the step mean equal kernel, bias and input gradients.
"""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="Keras 3 is installed by make test-torch/-jax/-tf")

from diagonalwise.keras import (  # noqa: E402
    DiagonalwiseDepthwiseConv1D,
    DiagonalwiseDepthwiseConv2D,
    block_diagonal_depthwise_kernel,
    convert_model,
)

BACKEND = keras.backend.backend()
if BACKEND == "jax":
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 arrays stay float64
# TensorFlow's float64 CPU depthwise kernel rejects unequal strides, and inside a compiled train
# step with dilation 2 it returned different losses from run to run (TensorFlow 2.21, seen here),
# so on TensorFlow the reference is float32, which runs oneDNN's kernels; elsewhere float64.
DTYPE = "float32" if BACKEND == "tensorflow" else "float64"
# Keras casts float64 NumPy data to floatx when training: without this the "float64" training
# steps below would run on float32 inputs (seen: the losses agreed only to float32 rounding)
keras.config.set_floatx(DTYPE)
to_numpy = keras.ops.convert_to_numpy
TOL = dict(rtol=1e-4, atol=1e-5) if DTYPE == "float32" else dict(rtol=1e-10, atol=1e-10)

# (dims, channels, multiplier, kernel, strides, padding, dilation, block sizes)
CASES = [
    (2, 8, 1, 3, 1, "same", 1, [2, 8, None]),
    (2, 8, 2, 3, 2, "valid", 1, [4, 8]),
    (2, 6, 3, (5, 3), (1, 2), "same", 1, [3, 6]),
    (2, 4, 1, 3, 1, "valid", 2, [2, 4]),
    (1, 8, 1, 4, 1, "same", 1, [4, 8]),
    (1, 6, 2, 3, 2, "valid", 1, [2, 6]),
]


#: the algorithms every case also runs by name
ALGORITHMS = ["native", "shift_add"]


def layer_pair(dims, channels, multiplier, kernel, strides, padding, dilation, choice,
               data_format="channels_last"):
    """(Keras layer, ours) with ``choice`` a block size, or an algorithm name (a str)."""
    native_cls = keras.layers.DepthwiseConv2D if dims == 2 else keras.layers.DepthwiseConv1D
    ours_cls = DiagonalwiseDepthwiseConv2D if dims == 2 else DiagonalwiseDepthwiseConv1D
    kwargs = dict(kernel_size=kernel, strides=strides, padding=padding, depth_multiplier=multiplier,
                  dilation_rate=dilation, data_format=data_format, dtype=DTYPE,
                  bias_initializer="random_normal")
    selected = dict(algorithm=choice) if isinstance(choice, str) else dict(block_size=choice)
    return native_cls(**kwargs), ours_cls(**kwargs, **selected)


# In a compiled train step outside XLA (Keras's default on a CPU), TensorFlow's Grappler
# dependency optimizer lets a layer read a weight after the same step's SGD update has written it
# (TensorFlow 2.21, Keras 3.15, seen here in 4 of 10 steps of a 1x1 conv then a depthwise layer,
# native or ours: the reported loss was exactly the loss with the depthwise kernel or the conv's
# bias already updated; 0 of 45 with that one Grappler pass off). The step's numbers are then
# wrong for every layer, so on TensorFlow the tests run with that pass off, and each step both
# outside and inside XLA.
if BACKEND == "tensorflow":
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options({"dependency_optimization": False})
OUR_JITS = (False, True) if BACKEND == "tensorflow" else ("auto",)


def train_one_step(depthwise, x, target, jit_compile="auto", initial=False):
    """Weights of a 1x1 conv followed by ``depthwise`` after one SGD step (lr 1), and the loss;
    with ``initial``, also the weights before the step, in float64."""
    dims = x.ndim - 2
    keras.utils.set_random_seed(1)
    pointwise = (keras.layers.Conv2D if dims == 2 else keras.layers.Conv1D)(
        x.shape[-1], 1, kernel_initializer=keras.initializers.RandomNormal(seed=3), dtype=DTYPE)
    model = keras.Sequential([keras.Input(x.shape[1:], dtype=DTYPE), pointwise, depthwise])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0),
                  loss=lambda y, p: keras.ops.sum(y * p), jit_compile=jit_compile)
    before = [to_numpy(w).astype(np.float64) for w in model.get_weights()]
    loss = model.train_on_batch(x, target)
    after = [to_numpy(w) for w in model.get_weights()], float(to_numpy(loss).reshape(-1)[0])
    return (*after, before) if initial else after


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}d-c{c[1]}-m{c[2]}-k{c[3]}")
def test_equal_output_and_gradients(case):
    dims, channels, multiplier, kernel, strides, padding, dilation, block_sizes = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *(11,) * dims, channels)).astype(DTYPE)
    for choice in block_sizes + ALGORITHMS + [f"block_diagonal:{channels}"]:

        def pair(choice=choice):
            keras.utils.set_random_seed(0)
            native, ours = layer_pair(dims, channels, multiplier, kernel, strides, padding,
                                      dilation, choice)
            want = to_numpy(native(x))
            ours.build(x.shape)
            ours.set_weights(native.get_weights())
            return native, ours, want

        native, ours, want = pair()
        np.testing.assert_allclose(to_numpy(ours(x)), want, **TOL)
        target = rng.standard_normal(want.shape).astype(DTYPE)
        weights_native, loss_native = train_one_step(native, x, target)
        for jit in OUR_JITS:
            weights_ours, loss_ours = train_one_step(pair()[1], x, target, jit)
            where = f"{choice}, jit {jit}"
            np.testing.assert_allclose(loss_ours, loss_native, **TOL, err_msg=where)
            for got, expected in zip(weights_ours, weights_native):
                np.testing.assert_allclose(got, expected, **TOL, err_msg=where)


@pytest.mark.skipif(BACKEND == "tensorflow", reason="TensorFlow's CPU kernels take NHWC only")
def test_channels_first():
    x = np.random.default_rng(0).standard_normal((2, 6, 9, 9)).astype(DTYPE)
    for choice in (3, "shift_add"):
        native, ours = layer_pair(2, 6, 2, 3, 2, "same", 1, choice, data_format="channels_first")
        want = to_numpy(native(x))
        ours.build(x.shape)
        ours.set_weights(native.get_weights())
        np.testing.assert_allclose(to_numpy(ours(x)), want, **TOL, err_msg=str(choice))


def test_same_weight_names_shapes_and_files(tmp_path):
    native, ours = layer_pair(2, 8, 2, 3, 1, "same", 1, 4)
    native.build((None, 9, 9, 8))
    ours.build((None, 9, 9, 8))
    assert [(w.name, tuple(w.shape)) for w in ours.weights] == \
        [(w.name, tuple(w.shape)) for w in native.weights] == [("kernel", (3, 3, 8, 2)),
                                                               ("bias", (16,))]
    path = str(tmp_path / "layer.weights.h5")
    model = keras.Sequential([keras.Input((9, 9, 8), dtype=DTYPE), native])
    model.save_weights(path)
    other = keras.Sequential([keras.Input((9, 9, 8), dtype=DTYPE), ours])
    other.load_weights(path)
    for got, want in zip(other.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_config_round_trip_keeps_the_algorithm():
    layer = DiagonalwiseDepthwiseConv2D(3, algorithm="native")
    assert DiagonalwiseDepthwiseConv2D.from_config(layer.get_config()).algorithm == "native"


def test_bad_algorithm_names_the_choices():
    with pytest.raises(ValueError, match="unknown algorithm 'winograd'"):
        DiagonalwiseDepthwiseConv2D(3, algorithm="winograd").build((None, 9, 9, 4))
    with pytest.raises(ValueError, match="not both"):
        DiagonalwiseDepthwiseConv2D(3, algorithm="native", block_size=2).build((None, 9, 9, 4))


def test_config_round_trip_keeps_the_block_size():
    layer = DiagonalwiseDepthwiseConv2D(3, block_size=4)
    clone = DiagonalwiseDepthwiseConv2D.from_config(layer.get_config())
    assert clone.requested_block_size == 4
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer)) \
        .requested_block_size == 4


def test_bad_block_size_names_the_valid_values():
    layer = DiagonalwiseDepthwiseConv2D(3, block_size=3)
    with pytest.raises(ValueError, match=r"valid block sizes are \[1, 2, 4, 8\]"):
        layer.build((None, 9, 9, 8))


def test_kernel_layout():
    kernel = np.arange(3 * 3 * 4 * 2, dtype=DTYPE).reshape(3, 3, 4, 2)
    dense = to_numpy(block_diagonal_depthwise_kernel(keras.ops.convert_to_tensor(kernel), 2))
    assert dense.shape == (3, 3, 2, 8)
    for c in range(4):
        for m in range(2):
            column = dense[:, :, :, c * 2 + m]
            np.testing.assert_array_equal(column[:, :, c % 2], kernel[:, :, c, m])
            assert not np.any(np.delete(column, c % 2, axis=2))


def test_convert_a_mobilenet_with_random_weights():
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNet(input_shape=(64, 64, 3), alpha=0.25, weights=None,
                                         classes=10)
    converted = convert_model(model)
    kinds = [type(layer) for layer in converted.layers]
    assert kinds.count(DiagonalwiseDepthwiseConv2D) == 13
    assert keras.layers.DepthwiseConv2D not in kinds
    assert [w.name for w in converted.weights] == [w.name for w in model.weights]
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(to_numpy(converted(x, training=False)),
                               to_numpy(model(x, training=False)), rtol=1e-4, atol=1e-5)


def test_a_few_training_steps_give_the_same_losses():
    def build(depthwise_cls, **extra):
        keras.utils.set_random_seed(0)
        return keras.Sequential([
            keras.Input((12, 12, 3), dtype=DTYPE),
            keras.layers.Conv2D(8, 3, padding="same", dtype=DTYPE),
            depthwise_cls(3, padding="same", dtype=DTYPE, **extra),
            keras.layers.ReLU(dtype=DTYPE),
            keras.layers.GlobalAveragePooling2D(dtype=DTYPE),
            keras.layers.Dense(4, dtype=DTYPE),
        ])

    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 12, 12, 3)).astype(DTYPE)
    y = rng.integers(0, 4, 16)
    histories = []
    for model in (build(keras.layers.DepthwiseConv2D),
                  build(DiagonalwiseDepthwiseConv2D, block_size=8)):
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        histories.append(model.fit(x, y, batch_size=8, epochs=3, shuffle=False,
                                   verbose=0).history["loss"])
    np.testing.assert_allclose(histories[1], histories[0], **TOL)
    assert histories[0][-1] < histories[0][0]


def test_convert_a_sequential_model_keeps_outputs_and_names():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 8), dtype=DTYPE),
                              keras.layers.DepthwiseConv1D(3, padding="same", dtype=DTYPE),
                              keras.layers.Conv1D(4, 1, dtype=DTYPE)])
    converted = convert_model(model, block_size=4)
    assert isinstance(converted.layers[0], DiagonalwiseDepthwiseConv1D)
    assert converted.layers[0].block_size == 4
    x = np.random.default_rng(0).standard_normal((2, 16, 8)).astype(DTYPE)
    np.testing.assert_allclose(to_numpy(converted(x)), to_numpy(model(x)), **TOL)
    for algorithm in ALGORITHMS:
        by_name = convert_model(model, algorithm=algorithm)
        assert by_name.layers[0].algorithm == algorithm and by_name.layers[0].block_size is None
        np.testing.assert_allclose(to_numpy(by_name(x)), to_numpy(model(x)), **TOL)


def depthwise_nhwc_float64(x, kernel, strides, padding):
    """An independent float64 depthwise convolution (NHWC, TensorFlow's 'same'/'valid')."""
    n, h, w, c = x.shape
    kh, kw, _, m = kernel.shape
    sh, sw = strides
    if padding == "same":
        oh, ow = -(-h // sh), -(-w // sw)
        ph, pw = max((oh - 1) * sh + kh - h, 0), max((ow - 1) * sw + kw - w, 0)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = np.zeros((n, oh, ow, c, m))
    for i in range(kh):
        for j in range(kw):
            out += x[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw, :, None] * kernel[i, j]
    return out.reshape(n, oh, ow, c * m)


@pytest.mark.parametrize("which", ["native", "ours"])
def test_the_training_loss_equals_an_independent_float64_reference(which):
    """The reference path of test_equal_output_and_gradients, and ours in every compile mode,
    give the loss a float64 computation gives (where the Grappler pass made TensorFlow's wrong)."""
    dims, channels, multiplier, kernel, strides, padding, dilation, _ = CASES[2]
    x = np.random.default_rng(0).standard_normal((2, 11, 11, channels)).astype(DTYPE)
    for jit in ("auto",) if which == "native" else OUR_JITS:
        keras.utils.set_random_seed(0)
        native, ours = layer_pair(dims, channels, multiplier, kernel, strides, padding, dilation, 3)
        want = to_numpy(native(x))
        if which == "ours":
            ours.build(x.shape)
            ours.set_weights(native.get_weights())
        layer = native if which == "native" else ours
        target = np.random.default_rng(1).standard_normal(want.shape).astype(DTYPE)
        _, loss, (pointwise_kernel, pointwise_bias, depthwise_kernel, depthwise_bias) = \
            train_one_step(layer, x, target, jit, initial=True)
        hidden = x.astype(np.float64) @ pointwise_kernel[0, 0] + pointwise_bias
        output = depthwise_nhwc_float64(hidden, depthwise_kernel, strides, padding)
        expected = (target.astype(np.float64) * (output + depthwise_bias)).sum()
        # train_on_batch reports the loss through Keras's float32 loss tracker
        np.testing.assert_allclose(loss, expected, rtol=max(TOL["rtol"], 1e-5), err_msg=f"jit {jit}")


def test_training_step_bench_gates_then_times_each_variant():
    from diagonalwise.keras.bench import bench_training

    rows, plan = bench_training(batch=2, size=32, repeats=1, cache=False)
    assert [r["variant"] for r in rows] == ["native", "paper", "shift_add", "tuned"]
    assert all(r["status"] == "ok" and r["median_ms"] > 0 for r in rows)
    assert len(plan.layers) == 13 and rows[-1]["depthwise"] == plan.summary()


def small_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10, 10, 4), dtype=DTYPE)
    hidden = keras.layers.DepthwiseConv2D(3, padding="same", dtype=DTYPE, name="dw_a")(inputs)
    hidden = keras.layers.Conv2D(8, 1, dtype=DTYPE)(keras.layers.ReLU(dtype=DTYPE)(hidden))
    hidden = keras.layers.DepthwiseConv2D(3, strides=2, depth_multiplier=2, dtype=DTYPE,
                                          name="dw_b")(hidden)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D(dtype=DTYPE)(hidden))


def test_tuned_model_equals_native_and_a_second_tuning_reads_the_cache(tmp_path, monkeypatch):
    from diagonalwise.keras import tuning

    model = small_model()
    x = np.random.default_rng(0).standard_normal((3, 10, 10, 4)).astype(DTYPE)
    cache = tuning.TuningCache(tmp_path / "cache.json")
    tuned, plan = tuning.tune_model(model, x, cache=cache, repeats=1, min_gain=-1.0,
                                    log=lambda m: None)
    assert set(plan.layers) == {"dw_a", "dw_b"} and plan.whole_model["tuned_seconds"] > 0
    assert [type(tuned.get_layer(name)) for name in plan.layers] == \
        [DiagonalwiseDepthwiseConv2D] * 2
    assert {name: tuned.get_layer(name).algorithm for name in plan.layers} == plan.layers
    cotangent = np.random.default_rng(1).standard_normal((3, 16)).astype(DTYPE)
    inputs = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(cotangent)
    got = tuning.forward_backward(tuned, *inputs)()
    want = tuning.forward_backward(model, *inputs)()
    assert len(got) == len(want) == 2 + len(model.trainable_weights)
    for a, b in zip(got, want):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), **TOL)
    # per layer: the measured choice (min_gain -1: the fastest, whatever it is), unless the
    # whole-model timing found it slower and kept native everywhere
    per_layer = {key: entry["algorithm"] for key, entry in
                 cache.data["environments"][tuning.environment()].items()}
    assert len(per_layer) == 2
    assert set(plan.layers.values()) <= set(per_layer.values()) | {"native"}
    rows = plan.layer_rows()
    assert [r["layer"] for r in rows] == ["dw_a (3, 10, 10, 4)", "dw_b (3, 10, 10, 8)"]
    assert all(r["status"]["native"] == "ok" and r["median_ms"]["native"] > 0 for r in rows)
    monkeypatch.setattr(tuning, "measure_layer", lambda *a, **k: pytest.fail("measured again"))
    _, again = tuning.tune_model(model, x, cache=tuning.TuningCache(tmp_path / "cache.json"),
                                 repeats=1, log=lambda m: None)
    assert set(again.layers) == {"dw_a", "dw_b"} and again.measured == plan.measured


def test_the_keras_gate_rejects_a_wrong_algorithm(monkeypatch):
    from diagonalwise.keras import tuning

    right = DiagonalwiseDepthwiseConv2D._convolve

    def convolve(self, inputs):
        out = right(self, inputs)
        return out * 1.001 if self.algorithm == "shift_add" else out

    monkeypatch.setattr(DiagonalwiseDepthwiseConv2D, "_convolve", convolve)
    layer = small_model().get_layer("dw_a")
    measured = tuning.measure_layer(layer, (2, 10, 10, 4), tuning._layer_config(layer, 2)[1],
                                    repeats=1)
    assert measured["shift_add"].startswith("failed correctness: relative error 1.0e-03")
    assert set(measured) == {"native", "shift_add", "block_diagonal:2", "block_diagonal:4"}
    assert isinstance(measured["native"], float) and isinstance(measured["block_diagonal:4"], float)


def test_convert_model_by_plan_and_its_errors(tmp_path):
    from diagonalwise.algorithm_choice import Plan

    model = small_model()
    Plan({"dw_b": "block_diagonal:2"}).save(tmp_path / "plan.json")
    converted = convert_model(model, plan=Plan.load(tmp_path / "plan.json"))
    assert type(converted.get_layer("dw_a")) is keras.layers.DepthwiseConv2D
    assert converted.get_layer("dw_b").block_size == 2
    again = convert_model(converted, plan=Plan({"dw_b": "shift_add"}))
    assert again.get_layer("dw_b").algorithm == "shift_add"
    x = np.random.default_rng(0).standard_normal((2, 10, 10, 4)).astype(DTYPE)
    np.testing.assert_allclose(to_numpy(again(x)), to_numpy(model(x)), **TOL)
    with pytest.raises(ValueError, match=r"not depthwise layers of this model: \['conv'\]"):
        convert_model(model, plan=Plan({"conv": "native"}))
    with pytest.raises(ValueError, match="not both"):
        convert_model(model, algorithm="native", plan=Plan({"dw_a": "native"}))


def test_tuning_a_model_with_two_outputs_says_what_to_tune():
    from diagonalwise.keras.tuning import tune_model

    inputs = keras.Input((10, 10, 4), dtype=DTYPE)
    hidden = keras.layers.DepthwiseConv2D(3, dtype=DTYPE)(inputs)
    model = keras.Model(inputs, [hidden, keras.layers.ReLU(dtype=DTYPE)(hidden)])
    with pytest.raises(ValueError, match="one output; this one has 2"):
        tune_model(model, np.zeros((1, 10, 10, 4), DTYPE), cache=False)


def test_choices_cached_by_other_code_are_measured_again(tmp_path, monkeypatch):
    from diagonalwise.keras import tuning

    tuning.TuningCache(tmp_path / "cache.json").put("layer", "shift_add", {})
    assert tuning.TuningCache(tmp_path / "cache.json").get("layer", ["shift_add"]) == "shift_add"
    monkeypatch.setattr(tuning, "code_fingerprint", lambda *files: "changed")
    assert tuning.TuningCache(tmp_path / "cache.json").get("layer", ["shift_add"]) is None
