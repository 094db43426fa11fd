import numpy as np
import pytest

from deploy_unet.errors import ShapeContractError
from deploy_unet.shapes import crop_back, nearest_valid, pad_to_multiple, validate_shape


@pytest.mark.parametrize("value, divisor, expected", [
    (250, 16, (240, 256)),
    (256, 16, (240, 256)),  # valid values still get the next smaller one as 'below'
    (7, 16, (None, 16)),  # nothing valid below
    (33, 32, (32, 64)),
    (0, 8, (None, 8)),
])
def test_nearest_valid(value, divisor, expected):
    assert nearest_valid(value, divisor) == expected


def test_error_names_dim_value_rule_nearest_and_pad():
    with pytest.raises(ShapeContractError) as err:
        validate_shape((256, 250), 16, "2**4 for UNet depth 4")
    assert str(err.value) == (
        "width 250 is not divisible by 16 (= 2**4 for UNet depth 4); nearest valid: 256 or 240; or pass --pad"
    )


def test_error_without_smaller_valid_size():
    with pytest.raises(ShapeContractError, match=r"height 20 is not divisible by 32; nearest valid: 32;"):
        validate_shape((20, 64), 32)


def test_valid_shape_passes():
    validate_shape((64, 96), 32)


@pytest.mark.parametrize("mode", ["reflect", "constant", "edge"])
def test_pad_then_crop_is_identity(mode):
    x = np.arange(2 * 3 * 13 * 21, dtype=np.float32).reshape(2, 3, 13, 21)
    padded, padding = pad_to_multiple(x, 8, mode)
    assert padded.shape == (2, 3, 16, 24)
    np.testing.assert_array_equal(crop_back(padded, padding), x)


def test_reflect_padding_mirrors_without_repeating_the_edge():
    x = np.array([[[[1.0, 2.0, 3.0]]]], dtype=np.float32)  # 1x1x1x3
    padded, _ = pad_to_multiple(x, 4, "reflect")
    np.testing.assert_array_equal(padded[0, 0, 0], [1, 2, 3, 2])
    assert padded.shape[-2:] == (4, 4)


def test_divisible_input_is_not_padded():
    x = np.ones((1, 1, 16, 32), np.float32)
    padded, padding = pad_to_multiple(x, 16)
    assert padded is x and padding.is_noop


def test_bad_pad_mode():
    with pytest.raises(ShapeContractError, match="pad mode 'wrap' is not valid"):
        pad_to_multiple(np.ones((1, 1, 3, 3), np.float32), 4, "wrap")
