"""Segmentation metrics on label masks (pure NumPy), shared by quantize, validate and bench.

Masks are integer class maps of equal shape (any rank, e.g. (N, H, W)). Per-class Dice/IoU follow one
convention: a class absent from both masks has no defined score and is reported as NaN; the means
(``mean_dice``/``mean_iou``) average over the classes that are present in either mask (``nanmean``), so
an absent class neither rewards nor punishes. A class present in only one mask scores 0.
"""

from __future__ import annotations

import numpy as np


def _check(pred: np.ndarray, target: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {target.shape}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    for name, mask in (("pred", pred), ("target", target)):
        if mask.size and (mask.min() < 0 or mask.max() >= num_classes):
            raise ValueError(
                f"{name} holds labels outside [0, {num_classes - 1}] (min {mask.min()}, max {mask.max()})"
            )
    return pred.astype(np.int64, copy=False).ravel(), target.astype(np.int64, copy=False).ravel()


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[t, p]`` = number of pixels with target class ``t`` predicted as ``p`` (int64)."""
    p, t = _check(pred, target, num_classes)
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def _scores_from_cm(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp  # predicted as c, target other
    fn = cm.sum(axis=1) - tp  # target c, predicted other
    return tp, fp, fn


def dice_from_confusion(cm: np.ndarray) -> np.ndarray:
    tp, fp, fn = _scores_from_cm(cm)
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)


def iou_from_confusion(cm: np.ndarray) -> np.ndarray:
    tp, fp, fn = _scores_from_cm(cm)
    denom = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / np.where(denom > 0, denom, 1), np.nan)


def dice_per_class(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice per class, shape ``(num_classes,)``; NaN where the class is in neither mask."""
    return dice_from_confusion(confusion_matrix(pred, target, num_classes))


def iou_per_class(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """IoU (Jaccard) per class, shape ``(num_classes,)``; NaN where the class is in neither mask."""
    return iou_from_confusion(confusion_matrix(pred, target, num_classes))


def _nanmean(values: np.ndarray) -> float:
    present = values[~np.isnan(values)]
    return float(present.mean()) if present.size else float("nan")


def mean_dice(pred: np.ndarray, target: np.ndarray, num_classes: int) -> float:
    """Mean of per-class Dice over classes present in either mask (NaN only if there are no pixels)."""
    return _nanmean(dice_per_class(pred, target, num_classes))


def mean_iou(pred: np.ndarray, target: np.ndarray, num_classes: int) -> float:
    """Mean of per-class IoU over classes present in either mask (NaN only if there are no pixels)."""
    return _nanmean(iou_per_class(pred, target, num_classes))


def mask_agreement(pred_a: np.ndarray, pred_b: np.ndarray) -> float:
    """Fraction of pixels where two label masks agree, in [0, 1] (1.0 for two empty masks)."""
    a, b = np.asarray(pred_a), np.asarray(pred_b)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        return 1.0
    return float(np.count_nonzero(a == b) / a.size)


def summarize(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict:
    """Dice/IoU mean and per class (NaN -> None, JSON friendly) from one confusion matrix."""
    cm = confusion_matrix(pred, target, num_classes)
    dice, iou = dice_from_confusion(cm), iou_from_confusion(cm)
    return {
        "mean_dice": _nanmean(dice),
        "mean_iou": _nanmean(iou),
        "dice_per_class": [None if np.isnan(v) else float(v) for v in dice],
        "iou_per_class": [None if np.isnan(v) else float(v) for v in iou],
    }


# -- checkerboard artifacts of logit maps ----------------------------------------------------------


def checkerboard_scores(maps: np.ndarray) -> np.ndarray:
    """Per-map share of spectral energy at the period-2 (Nyquist) frequencies, in [0, 1].

    For each map over the last two axes (e.g. logits (N, C, H, W) -> scores (N, C)): crop to even
    H and W (drop the last row/column when odd, so the Nyquist bins exist), subtract the mean, take the
    2D FFT power ``P = |fft2(x)|**2``, and return

        (energy in row fy = H/2 + energy in column fx = W/2, the shared bin counted once) / total energy

    The total is all non-DC energy (the DC bin is zero after removing the mean). Why whole Nyquist row
    and column rather than just the three bins (H/2, 0), (0, W/2), (H/2, W/2): a stride-2 transposed
    conv multiplies the map by a pattern of period 2 in y and/or x, which moves image content to the
    Nyquist lines, along all of them; stripes of period 2 in one direction count as much as a
    checkerboard. A smooth map scores ~0, a pure ``(-1)**(x+y)`` checkerboard 1, a constant map (no
    non-DC energy at all) 0, a map smaller than 2x2 NaN. Natural class boundaries have some energy
    there too, so compare scores of the same net (reference vs quantized), not against zero.
    """
    x = np.asarray(maps, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"checkerboard_scores needs maps of at least 2 dims (..., H, W), got shape {x.shape}")
    h, w = x.shape[-2] - x.shape[-2] % 2, x.shape[-1] - x.shape[-1] % 2
    if h < 2 or w < 2:
        return np.full(x.shape[:-2], np.nan)
    x = x[..., :h, :w]
    mean = x.mean(axis=(-2, -1), keepdims=True)
    x = x - mean
    power = np.abs(np.fft.fft2(x)) ** 2
    total = power.sum(axis=(-2, -1))
    nyquist = power[..., h // 2, :].sum(axis=-1) + power[..., :, w // 2].sum(axis=-1) - power[..., h // 2, w // 2]
    # A constant map: what is left after removing the mean is rounding noise, not a pattern.
    variance = (x**2).mean(axis=(-2, -1))
    flat = variance <= (1e-12 * np.maximum(1.0, np.abs(mean[..., 0, 0]))) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(flat, 0.0, nyquist / np.where(flat, 1.0, total))


def checkerboard_score(maps: np.ndarray) -> float:
    """Mean of ``checkerboard_scores`` over all maps (e.g. every image and class of NCHW logits)."""
    return _nanmean(np.ravel(checkerboard_scores(maps)))
