import math

import numpy as np
import pytest

from deploy_unet import metrics

# target row: 0 0 1 1 ; pred row: 0 1 1 2  (3 classes, class 2 only in pred)
TARGET = np.array([[0, 0, 1, 1]])
PRED = np.array([[0, 1, 1, 2]])


def test_confusion_matrix_counts_target_rows_pred_columns():
    cm = metrics.confusion_matrix(PRED, TARGET, 3)
    expected = np.array([[1, 1, 0], [0, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(cm, expected)
    assert cm.sum() == TARGET.size


def test_dice_and_iou_per_class_hand_computed():
    # class 0: tp=1 fp=0 fn=1 -> dice 2/3, iou 1/2
    # class 1: tp=1 fp=1 fn=1 -> dice 2/4, iou 1/3
    # class 2: tp=0 fp=1 fn=0 -> dice 0,   iou 0  (present in pred only)
    np.testing.assert_allclose(metrics.dice_per_class(PRED, TARGET, 3), [2 / 3, 0.5, 0.0])
    np.testing.assert_allclose(metrics.iou_per_class(PRED, TARGET, 3), [0.5, 1 / 3, 0.0])
    assert metrics.mean_dice(PRED, TARGET, 3) == pytest.approx((2 / 3 + 0.5 + 0.0) / 3)
    assert metrics.mean_iou(PRED, TARGET, 3) == pytest.approx((0.5 + 1 / 3) / 3)


def test_class_absent_in_both_is_nan_and_left_out_of_the_mean():
    target = np.array([0, 0, 1, 1])
    pred = np.array([0, 0, 1, 1])
    dice = metrics.dice_per_class(pred, target, 4)
    assert dice[:2].tolist() == [1.0, 1.0]
    assert math.isnan(dice[2]) and math.isnan(dice[3])
    assert metrics.mean_dice(pred, target, 4) == 1.0
    assert metrics.mean_iou(pred, target, 4) == 1.0


def test_perfect_and_disjoint_predictions():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 3, size=(2, 8, 8))
    assert metrics.mean_dice(target, target, 3) == 1.0
    swapped = (target + 1) % 3  # every pixel wrong
    assert metrics.mean_dice(swapped, target, 3) == 0.0
    assert metrics.mean_iou(swapped, target, 3) == 0.0


def test_mask_agreement():
    assert metrics.mask_agreement(PRED, TARGET) == pytest.approx(2 / 4)
    assert metrics.mask_agreement(TARGET, TARGET) == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.mask_agreement(PRED, TARGET[:, :3])


def test_labels_out_of_range_are_rejected():
    with pytest.raises(ValueError, match="outside"):
        metrics.dice_per_class(np.array([0, 3]), np.array([0, 1]), 3)


def test_summarize_is_json_friendly():
    s = metrics.summarize(np.array([0, 0]), np.array([0, 0]), 2)
    assert s["dice_per_class"] == [1.0, None]
    assert s["mean_dice"] == 1.0


# -- checkerboard score: constructed maps whose answer is known without the code ----------------------

def _grid(h, w):
    return np.mgrid[0:h, 0:w]


def test_checkerboard_constant_map_scores_zero():
    assert metrics.checkerboard_scores(np.full((2, 3, 16, 20), 7.25, np.float32)).tolist() == [[0.0] * 3] * 2


def test_checkerboard_smooth_sinusoid_scores_zero():
    y, x = _grid(32, 48)
    smooth = np.sin(2 * np.pi * 2 * y / 32) + 0.5 * np.cos(2 * np.pi * 3 * x / 48)
    assert metrics.checkerboard_score(smooth) < 1e-20
    period3 = np.sin(2 * np.pi * x / 3)  # high frequency, but not period 2: not counted
    assert metrics.checkerboard_score(period3) < 1e-20


def test_checkerboard_pure_patterns_score_one():
    y, x = _grid(16, 24)
    assert metrics.checkerboard_score((-1.0) ** (x + y)) == pytest.approx(1.0)
    assert metrics.checkerboard_score(3 + (-1.0) ** x) == pytest.approx(1.0)  # period-2 stripes count too
    assert metrics.checkerboard_score((-1.0) ** y) == pytest.approx(1.0)


def test_checkerboard_mix_scores_its_energy_share():
    # a*sin (integer cycles) has energy a^2/2 per pixel, b*checkerboard b^2; they are orthogonal.
    y, x = _grid(32, 32)
    for a, b in ((1.0, 0.1), (2.0, 1.0), (0.3, 0.3)):
        mix = a * np.sin(2 * np.pi * 4 * x / 32) + b * (-1.0) ** (x + y)
        assert metrics.checkerboard_score(mix) == pytest.approx(b**2 / (b**2 + a**2 / 2), rel=1e-9)


def test_checkerboard_nearest_upsampling_has_no_period_2_energy():
    # 2x2 blocks of equal values: the sum over y of x[y] * (-1)^y cancels pairwise at the Nyquist row.
    coarse = np.random.default_rng(0).standard_normal((3, 8, 10))
    up = coarse.repeat(2, axis=-2).repeat(2, axis=-1)
    assert np.all(metrics.checkerboard_scores(up) < 1e-20)


def test_checkerboard_odd_sizes_crop_and_tiny_maps_are_nan():
    y, x = _grid(17, 9)
    assert metrics.checkerboard_score((-1.0) ** (x + y)) == pytest.approx(1.0)  # last row/col dropped
    assert np.isnan(metrics.checkerboard_scores(np.ones((2, 1, 5)))).all()
