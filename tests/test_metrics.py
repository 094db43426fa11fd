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
