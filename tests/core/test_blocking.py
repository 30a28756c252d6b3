import pytest

from diagonalwise.blocking import (
    block_diagonal_position,
    check_block_size,
    default_block_size,
    divisors,
    resolve_block_size,
)


def test_divisors():
    assert divisors(1) == [1]
    assert divisors(12) == [1, 2, 3, 4, 6, 12]
    assert divisors(49) == [1, 7, 49]
    with pytest.raises(ValueError):
        divisors(0)


@pytest.mark.parametrize(
    "groups, in_per_group, expected",
    [
        (32, 1, 32),     # MobileNet V1 first depthwise layer: one dense block
        (64, 1, 32),     # the paper's 32 channels per block
        (144, 1, 24),    # MobileNet V2: 32 does not divide 144, 24 is the largest divisor below
        (960, 1, 32),
        (7, 1, 7),       # fewer groups than 32: one dense conv
        (97, 1, 1),      # prime above 32: only the native conv fits
        (32, 4, 8),      # ResNeXt 32x4d: 4 channels per group, 8 groups make 32 channels
        (64, 64, 1),     # a group already wider than 32 channels: native
    ],
)
def test_default_block_size(groups, in_per_group, expected):
    assert default_block_size(groups, in_per_group) == expected
    assert groups % expected == 0


def test_check_block_size_names_the_valid_values():
    assert check_block_size(4, 12) == 4
    with pytest.raises(ValueError, match=r"block_size=5 does not divide groups=12.*\[1, 2, 3, 4, 6, 12\]"):
        check_block_size(5, 12)
    with pytest.raises(ValueError, match="does not divide"):
        check_block_size(0, 12)
    with pytest.raises(TypeError, match="must be an int"):
        check_block_size(2.0, 12)
    with pytest.raises(TypeError, match="must be an int"):
        check_block_size(True, 12)


def test_resolve_block_size():
    assert resolve_block_size(None, 144) == 24
    assert resolve_block_size(6, 144) == 6


def test_block_diagonal_position_matches_the_paper_for_depthwise():
    # depthwise with multiplier M: W[o, (o // M) % b] = w[o, 0]
    multiplier, block = 3, 4
    for o in range(48):
        assert block_diagonal_position(o, multiplier, block) == (o // multiplier) % block
