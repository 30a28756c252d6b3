"""Every bad input gets an error that names the problem and the fix."""

import pytest
import torch

import diagonalwise as dw

X = torch.randn(2, 8, 7, 7)
W = torch.randn(8, 1, 3, 3)


@pytest.mark.parametrize(
    "call, error, pattern",
    [
        (lambda: dw.conv2d(X, W, groups=8, block_size=3), ValueError,
         r"block_size=3 does not divide groups=8; valid block sizes are \[1, 2, 4, 8\]"),
        (lambda: dw.conv2d(X, W, groups=8, block_size=0), ValueError, "does not divide"),
        (lambda: dw.conv2d(X, W, groups=8, block_size=2.5), TypeError,
         "block_size must be an int or None"),
        (lambda: dw.conv2d(X, W[:, :, 0], groups=8), ValueError,
         r"conv2d expects a 4-D weight of shape \(out_channels, in_channels // groups, kH, kW\), "
         r"got shape \(8, 1, 3\)"),
        (lambda: dw.conv2d(X[:, :6], W, groups=8), ValueError,
         r"input has 6 channels but weight of shape \(8, 1, 3, 3\) with groups=8 expects 8"),
        (lambda: dw.conv2d(X, torch.randn(9, 1, 3, 3), groups=8), ValueError,
         "weight has 9 output channels, which groups=8 does not divide"),
        (lambda: dw.conv2d(X, W, torch.randn(4), groups=8), ValueError,
         r"bias must have shape \(8,\)"),
        (lambda: dw.conv2d(X[0, 0], W, groups=8), ValueError,
         r"conv2d expects a 4-D input \(batch, channels, \*spatial\) or a 3-D unbatched one"),
        (lambda: dw.conv1d(X[..., 0], W, groups=8), ValueError, "conv1d expects a 3-D weight"),
        (lambda: dw.conv2d(X, W, groups=0), ValueError, "groups must be a positive int"),
        (lambda: dw.conv2d(X, W, stride=(1, 2, 3), groups=8), ValueError,
         r"stride must be an int or a tuple of 2 ints"),
        (lambda: dw.conv2d(X, W, groups=8, algorithm="block_diagonal:3"), ValueError,
         "cannot run a convolution with groups=8"),
        (lambda: dw.conv2d(X, W, groups=8, algorithm="block_diagonal"), ValueError,
         "block_diagonal needs a positive block size"),
        (lambda: dw.conv2d(X, W, groups=8, algorithm="native:3"), ValueError,
         "takes no ':' argument"),
        (lambda: dw.conv2d(X.numpy(), W, groups=8), TypeError, "takes tensors"),
        (lambda: dw.conv2d(X, W, groups=8, algorithm="triton"), RuntimeError,
         "needs an NVIDIA GPU with Triton"),
        (lambda: dw.convert(object()), TypeError, "convert takes an nn.Module"),
        (lambda: dw.convert(torch.nn.Conv2d(4, 4, 3, groups=4), block_size=0), ValueError,
         "block_size must be a positive int or None"),
    ],
)
def test_bad_input_error_messages(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_register_algorithm_rejects_bad_family_names():
    with pytest.raises(ValueError, match="without ':'"):
        dw.register_algorithm("a:b", lambda arg: dw.Native())


def test_a_dense_block_past_the_limit_is_refused_with_the_fix():
    x, weight = torch.randn(1, 2048, 4, 4), torch.randn(2048, 1, 3, 3)
    for choice in (dict(block_size=1024), dict(algorithm="block_diagonal:2048")):
        with pytest.raises(ValueError, match=r"packs \d+ input channels into one dense block, "
                           r"more than the 512 allowed.*Use a smaller block_size"):
            dw.conv2d(x, weight, groups=2048, **choice)
    with pytest.raises(ValueError, match="more than the 512 allowed"):
        dw.DiagonalwiseConv2d(2048, 2048, 3, groups=2048, block_size=2048)
    dw.conv2d(x, weight, groups=2048, block_size=512)  # at the limit: fine
    # convert's bound never goes past the limit either
    converted = dw.convert(torch.nn.Conv2d(2048, 2048, 3, groups=2048), block_size=4096)
    assert converted.block_size == 512


@pytest.mark.parametrize("call, error, pattern", [
    (lambda: dw.conv2d(X, W, stride=1.5, groups=8), ValueError,
     r"stride must be an int or a tuple of 2 ints, got 1.5"),
    (lambda: dw.conv2d(X, W, dilation=(1, "2"), groups=8), ValueError,
     r"dilation must be an int or a tuple of 2 ints"),
    (lambda: dw.conv2d(X, W, groups=8.0), ValueError, "groups must be a positive int, got 8.0"),
    (lambda: dw.conv2d(X, W, groups=8, algorithm=123), TypeError,
     "algorithm must be a name such as 'native'.*got int 123"),
])
def test_wrong_types_get_clear_errors(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_numpy_integers_are_accepted_where_native_accepts_them():
    import numpy as np

    args = dict(stride=np.int64(2), padding=(np.int32(1), 1), dilation=np.int64(1),
                groups=np.int64(8))
    expected = torch.nn.functional.conv2d(X, W, **args)
    torch.testing.assert_close(dw.conv2d(X, W, block_size=4, **args), expected)
    torch.testing.assert_close(dw.conv2d(X, W, algorithm="native", **args), expected)
