"""MXNet Gluon: DiagonalwiseConv2D equals nn.Conv2D(groups=...) in float64, hybridized or not."""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mxnet", reason="MXNet has its own environment: make test-mxnet")

from mxnet import autograd, gluon  # noqa: E402

from diagonalwise.mxnet import DiagonalwiseConv2D  # noqa: E402

TOL = dict(rtol=1e-10, atol=1e-10)

# (channels in, channels out, groups, kernel, strides, padding, dilation, block sizes)
CASES = [
    (8, 8, 8, 3, 1, 1, 1, [2, 8, None]),
    (8, 16, 8, 3, 2, 1, 1, [4, 8]),
    (6, 18, 6, (5, 3), (1, 2), (2, 1), 1, [3, 6]),
    (4, 4, 4, 3, 1, 2, 2, [2, 4]),
    (8, 8, 4, 3, 1, 1, 1, [2, 4]),  # grouped: 2 channels per group
]


def make_pair(cin, cout, groups, kernel, strides, padding, dilation, block_size, hybridize,
              dtype="float64"):
    kwargs = dict(channels=cout, kernel_size=kernel, strides=strides, padding=padding,
                  dilation=dilation, groups=groups, in_channels=cin)
    native = gluon.nn.Conv2D(**kwargs)
    ours = DiagonalwiseConv2D(**kwargs, block_size=block_size)
    for layer in (native, ours):
        layer.initialize(mx.init.Normal(1.0))
        layer.cast(dtype)
    ours.weight.set_data(native.weight.data())
    ours.bias.set_data(mx.nd.random.normal(shape=(cout,), dtype=dtype))
    native.bias.set_data(ours.bias.data())
    if hybridize:
        native.hybridize()
        ours.hybridize()
    return native, ours


def forward_backward(layer, x, head):
    x = x.copy()
    x.attach_grad()
    with autograd.record():
        out = layer(x)
    out.backward(head)
    return [out.asnumpy(), x.grad.asnumpy(), layer.weight.grad().asnumpy(),
            layer.bias.grad().asnumpy()]


@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"c{c[0]}-o{c[1]}-g{c[2]}-k{c[3]}")
def test_value_and_gradients_equal_conv2d(case, hybridize):
    cin, cout, groups, kernel, strides, padding, dilation, block_sizes = case
    x = mx.nd.random.normal(shape=(2, cin, 11, 9), dtype="float64")
    for block_size in block_sizes:
        native, ours = make_pair(cin, cout, groups, kernel, strides, padding, dilation,
                                 block_size, hybridize)
        head = mx.nd.random.normal(shape=native(x).shape, dtype="float64")
        for got, want in zip(forward_backward(ours, x, head), forward_backward(native, x, head)):
            np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("hybridize", [False, True])
def test_float32_through_mkldnn(hybridize):
    """float32 runs MXNet's MKLDNN kernels, whose arrays take few dimensions (our block-diagonal
    weight was once built in seven and failed there); tolerance: float32 rounding."""
    for cin, cout, groups, kernel, strides, padding, dilation, block_sizes in CASES:
        x = mx.nd.random.normal(shape=(2, cin, 11, 9))
        for block_size in block_sizes:
            native, ours = make_pair(cin, cout, groups, kernel, strides, padding, dilation,
                                     block_size, hybridize, dtype="float32")
            head = mx.nd.random.normal(shape=native(x).shape)
            for got, want in zip(forward_backward(ours, x, head),
                                 forward_backward(native, x, head)):
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_training_step_bench_gates_then_times_each_variant():
    from diagonalwise.mxnet.bench import bench_training

    rows = bench_training(batch=4, size=64, repeats=1, block_sizes=(8,))
    assert [r["variant"] for r in rows] == ["native", "paper", "block_diagonal:8"]
    assert all(r["status"] == "ok" and r["median_ms"] > 0 for r in rows)


def test_layer_bench_checks_then_times_every_block_size():
    from diagonalwise.mxnet.bench import _depthwise_layers, bench_layers

    assert _depthwise_layers(224) == [(32, 112, 1), (64, 112, 2), (128, 56, 1), (128, 56, 2),
                                      (256, 28, 1), (256, 28, 2), (512, 14, 1), (512, 14, 2),
                                      (1024, 7, 1)]
    rows = bench_layers(batch=2, size=32, repeats=1)
    assert [r["layer"] for r in rows][:2] == ["dw 32 16x16 s1", "dw 64 16x16 s2"]
    first = rows[0]
    assert first["status"]["native"] == "ok" and first["median_ms"]["native"] > 0
    # 32 channels: blocks of 2, 4, 8, 16 and 32, each checked (or skipped after a clear loss)
    assert set(first["status"]) == {"native", *(f"block_diagonal:{b}" for b in (2, 4, 8, 16, 32))}
    assert all(status == "ok" or status.startswith("not measured")
               for status in first["status"].values())


def test_parameters_interchange(tmp_path):
    native, ours = make_pair(8, 16, 8, 3, 1, 1, 1, 4, False)
    path = str(tmp_path / "conv.params")
    native.save_parameters(path)
    fresh = DiagonalwiseConv2D(16, 3, padding=1, groups=8, in_channels=8, block_size=4)
    fresh.load_parameters(path, cast_dtype=True, dtype_source="saved")
    np.testing.assert_array_equal(fresh.weight.data().asnumpy(), native.weight.data().asnumpy())
    ours.save_parameters(path)
    back = gluon.nn.Conv2D(16, 3, padding=1, groups=8, in_channels=8)
    back.load_parameters(path, cast_dtype=True, dtype_source="saved")
    np.testing.assert_array_equal(back.weight.data().asnumpy(), ours.weight.data().asnumpy())


def test_a_few_training_steps_give_the_same_losses():
    def net(conv_cls, **extra):
        block = gluon.nn.HybridSequential()
        block.add(gluon.nn.Conv2D(8, 3, padding=1, in_channels=3),
                  conv_cls(8, 3, padding=1, groups=8, in_channels=8, **extra),
                  gluon.nn.Activation("relu"), gluon.nn.GlobalAvgPool2D(),
                  gluon.nn.Dense(4, in_units=8))
        mx.random.seed(0)
        block.initialize(mx.init.Xavier())
        block.cast("float64")
        block.hybridize()
        return block

    rng = np.random.default_rng(0)
    x = mx.nd.array(rng.standard_normal((16, 3, 12, 12)), dtype="float64")
    y = mx.nd.array(rng.integers(0, 4, 16), dtype="float64")
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    curves = []
    for block in (net(gluon.nn.Conv2D), net(DiagonalwiseConv2D, block_size=8)):
        trainer = gluon.Trainer(block.collect_params(), "sgd",
                                {"learning_rate": 0.1, "momentum": 0.9})
        losses = []
        for step in range(5):
            batch = slice(8 * (step % 2), 8 * (step % 2) + 8)
            with autograd.record():
                loss = loss_fn(block(x[batch]), y[batch]).mean()
            loss.backward()
            trainer.step(1)
            losses.append(loss.asscalar())
        curves.append(losses)
    np.testing.assert_allclose(curves[1], curves[0], **TOL)
    assert curves[0][-1] < curves[0][0]


def test_errors():
    with pytest.raises(ValueError, match="needs in_channels"):
        DiagonalwiseConv2D(8, 3, groups=8)
    with pytest.raises(ValueError, match=r"valid block sizes are \[1, 2, 4, 8\]"):
        DiagonalwiseConv2D(8, 3, groups=8, in_channels=8, block_size=3)
