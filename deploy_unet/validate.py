"""Parity and segmentation metrics of a candidate runner against a reference, with tolerance gates.

Both runners see the same real inputs (``Sample`` images); per output we report numeric parity
(max/mean abs error, relative L2, cosine), argmax-mask agreement and per-class Dice/IoU of the
candidate's masks against the reference's, and against ground-truth masks when the data has them;
and the checkerboard score (``metrics.checkerboard_scores``) of both sides' logits, so a user sees
whether quantization made period-2 artifacts worse.
Gates are per precision (fp32 tight, fp16 looser, int8 loosest) and can be overridden.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploy_unet import metrics
from deploy_unet.errors import ConfigError, GateFailedError, ShapeContractError
from deploy_unet.fileio import json_safe
from deploy_unet.runtime import wait_policy
from deploy_unet.runtime.base import Runner, backend_label, runner_precision


@dataclass
class Sample:
    """One input: ``image`` float32 (N, C, H, W), already normalized; ``mask`` int64 (N, H, W) or None."""

    image: np.ndarray
    mask: np.ndarray | None = None
    name: str = ""
    raw: np.ndarray | None = None  # the same images before normalization, in [0, 1] (for the gallery)


# metric -> "max" (an error: must stay at or below the gate) or "min" (a score: must stay at or above).
GATE_METRICS: dict[str, str] = {
    "max_abs": "max",
    "mean_abs": "max",
    "rel_l2": "max",
    "cosine": "min",
    "mask_agreement": "min",  # percent of pixels whose argmax class matches the reference
    "mean_dice": "min",  # candidate masks vs reference masks
    "mean_iou": "min",
    "miou_drop": "max",  # reference mIoU vs ground truth minus candidate's (needs ground-truth masks)
    "mdice_drop": "max",
}
# Defaults per precision. Errors are relative (logit scale differs per net); masks are what users see.
DEFAULT_GATES: dict[str, dict[str, float]] = {
    "fp32": {"rel_l2": 1e-4, "cosine": 0.99999, "mask_agreement": 99.9, "miou_drop": 0.002},
    "fp16": {"rel_l2": 1e-2, "cosine": 0.9995, "mask_agreement": 99.0, "miou_drop": 0.005},
    # bf16 (OpenVINO's default on CPUs with AVX512-BF16/AMX): 8 mantissa bits, unit roundoff 2**-9 = 8x fp16's.
    # The shipped UNet measured rel L2 ~3e-3, masks 99.97% vs PyTorch (docs/openvino.md): gates ~3x looser than
    # fp16's on the logits, between fp16 and int8 on the masks.
    "bf16": {"rel_l2": 3e-2, "cosine": 0.999, "mask_agreement": 98.5, "miou_drop": 0.01},
    "int8": {"rel_l2": 0.15, "cosine": 0.99, "mask_agreement": 95.0, "miou_drop": 0.02},
}
PRECISIONS = tuple(DEFAULT_GATES)
# fp32 with TF32 allowed (--allow-tf32): convolutions and matmuls round their inputs to a 10-bit mantissa
# (2**-11 ~ 5e-4 relative a product). The shipped UNet measured rel L2 1.88e-4 vs ONNX Runtime on an H100 with
# cuDNN's default TF32, masks 100% equal: the logit gates open 10x (1e-3 keeps ~5x headroom over that), the
# mask gates stay those of fp32.
TF32_FP32_GATES: dict[str, float] = {"rel_l2": 1e-3, "cosine": 0.9999}


def parse_gates(specs: Iterable[str]) -> dict[str, float]:
    """``["rel_l2=1e-3", "mask_agreement=99"]`` -> ``{"rel_l2": 0.001, "mask_agreement": 99.0}``."""
    gates: dict[str, float] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        name = name.strip()
        if not sep or name not in GATE_METRICS:
            raise ConfigError(
                f"gate {spec!r} is not METRIC=VALUE with a known metric; metrics: {', '.join(GATE_METRICS)}"
            )
        try:
            gates[name] = float(value)
        except ValueError:
            raise ConfigError(f"gate {spec!r} has a value that is not a number; e.g. {name}=0.01") from None
    return gates


def gates_for(precision: str, overrides: dict[str, float] | None = None) -> dict[str, float]:
    if precision not in DEFAULT_GATES:
        raise ConfigError(f"precision {precision!r} has no default gates; choose one of: {', '.join(PRECISIONS)}")
    merged = dict(DEFAULT_GATES[precision])
    for name, value in (overrides or {}).items():
        if name not in GATE_METRICS:
            raise ConfigError(f"gate metric {name!r} is not known; metrics: {', '.join(GATE_METRICS)}")
        merged[name] = float(value)
    return merged


@dataclass
class SegmentationScores:
    mean_dice: float
    mean_iou: float
    dice_per_class: list[float | None]
    iou_per_class: list[float | None]

    @classmethod
    def from_confusion(cls, cm: np.ndarray) -> SegmentationScores:
        dice, iou = metrics.dice_from_confusion(cm), metrics.iou_from_confusion(cm)
        return cls(_nanmean(dice), _nanmean(iou), _listing(dice), _listing(iou))


@dataclass
class OutputParity:
    """Parity of one output over all samples (errors pooled over every element of every sample)."""

    name: str
    shape: list[int]
    max_abs: float
    mean_abs: float
    rel_l2: float
    cosine: float
    mask_agreement: float  # percent
    vs_reference: SegmentationScores
    candidate_vs_truth: SegmentationScores | None = None
    reference_vs_truth: SegmentationScores | None = None
    # Mean checkerboard score of every logit map (per image and class); None for non-NCHW outputs.
    candidate_checkerboard: float | None = None
    reference_checkerboard: float | None = None
    # Volumes (NCDHW outputs): mask agreement of each volume (percent), so one bad volume is not hidden by
    # the pooled figure; None for images.
    volume_agreement: list[float] | None = None

    def metric(self, name: str) -> float | None:
        """A gate metric's value, or None when it does not apply (no ground truth)."""
        if name in ("mean_dice", "mean_iou"):
            return getattr(self.vs_reference, name)
        if name in ("miou_drop", "mdice_drop"):
            if self.candidate_vs_truth is None or self.reference_vs_truth is None:
                return None
            key = "mean_iou" if name == "miou_drop" else "mean_dice"
            return getattr(self.reference_vs_truth, key) - getattr(self.candidate_vs_truth, key)
        return getattr(self, name)


@dataclass
class GateResult:
    metric: str
    output: str
    value: float | None
    threshold: float
    direction: str  # "max" or "min"
    passed: bool | None  # None: not applicable (e.g. no ground truth)

    def describe(self) -> str:
        op = "<=" if self.direction == "max" else ">="
        return f"{self.metric} on {self.output!r} = {_fmt(self.value)} (gate: {op} {self.threshold:g})"


@dataclass
class ValidationReport:
    candidate: str
    reference: str
    candidate_backend: str
    reference_backend: str
    precision: str
    num_samples: int
    num_classes: int
    outputs: list[OutputParity]
    gates: list[GateResult] = field(default_factory=list)
    candidate_seconds: float = 0.0  # wall time in the candidate's infer (the reference's is shared)
    reference_seconds: float = 0.0
    # With ``gallery=k``: the k samples of lowest mask agreement (worst first) and the logit map whose
    # checkerboard score exceeds the reference's most (visualize.GallerySample / CheckerboardMap).
    gallery: list = field(default_factory=list, repr=False)
    checkerboard_map: Any = field(default=None, repr=False)
    wait_policy: str = ""  # how idle thread pools waited while the backends alternated (runtime/wait_policy.py)

    @property
    def passed(self) -> bool:
        return all(g.passed is not False for g in self.gates)

    @property
    def failed_gates(self) -> list[GateResult]:
        return [g for g in self.gates if g.passed is False]

    def raise_for_gates(self) -> None:
        """GateFailedError (exit 1) naming every failing metric; nothing when all gates pass."""
        failed = self.failed_gates
        if failed:
            raise GateFailedError(
                f"{self.candidate} failed {len(failed)} {self.precision} gate(s) vs {self.reference}: "
                + "; ".join(g.describe() for g in failed)
                + "; loosen with --gate METRIC=VALUE if this is expected"
            )

    @property
    def checkerboard_worse(self) -> bool:
        """The candidate's checkerboard score exceeds the reference's (the gallery then shows the worst map)."""
        out = next((o for o in self.outputs if o.candidate_checkerboard is not None), None)
        return bool(out and self.checkerboard_map is not None
                    and out.candidate_checkerboard > out.reference_checkerboard)

    def to_dict(self) -> dict[str, Any]:
        gallery, board = self.gallery, self.checkerboard_map
        self.gallery, self.checkerboard_map = [], None  # arrays: summarized below, not dumped
        try:
            data = asdict(self)
        finally:
            self.gallery, self.checkerboard_map = gallery, board
        data.pop("gallery")
        data.pop("checkerboard_map")
        if gallery:
            data["worst_samples"] = [{"sample": g.name, "mask_agreement": g.mask_agreement} for g in gallery]
        if board is not None:
            data["checkerboard_worst_map"] = {"sample": board.name, "class": board.class_id,
                                              "candidate": board.candidate_score, "reference": board.reference_score}
        data["passed"] = self.passed
        return json_safe(data)


class _OutputAccumulator:
    """Running sums so samples need not be kept in memory (pooled, not per-sample-averaged, metrics)."""

    def __init__(self, name: str, num_classes: int):
        self.name = name
        self.num_classes = num_classes
        self.shape: list[int] = []
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.count = 0
        self.sum_sq_diff = 0.0
        self.sum_sq_ref = 0.0
        self.sum_sq_cand = 0.0
        self.dot = 0.0
        self.agree = 0
        self.pixels = 0
        self.cm_vs_ref = np.zeros((num_classes, num_classes), np.int64)
        self.cm_cand_truth: np.ndarray | None = None
        self.cm_ref_truth: np.ndarray | None = None
        self.checkerboard_sums = [0.0, 0.0]  # candidate, reference: sums over maps
        self.checkerboard_maps = 0
        self.volume_agreement: list[float] = []  # per volume, for NCDHW outputs

    def add(self, cand: np.ndarray, ref: np.ndarray, truth: np.ndarray | None) -> None:
        if cand.shape != ref.shape:
            raise ShapeContractError(
                f"output {self.name!r} has shape {cand.shape} on the candidate but {ref.shape} on the reference; "
                "compare artifacts of the same net"
            )
        self.shape = list(cand.shape)
        c = cand.astype(np.float64, copy=False).ravel()
        r = ref.astype(np.float64, copy=False).ravel()
        diff = np.abs(c - r)
        # NaN in the candidate must poison the metrics (and fail gates), not vanish in max().
        self.max_abs = max(self.max_abs, float(diff.max())) if not np.isnan(diff).any() else math.nan
        self.sum_abs += float(diff.sum())
        self.count += diff.size
        self.sum_sq_diff += float(np.dot(c - r, c - r))
        self.sum_sq_ref += float(np.dot(r, r))
        self.sum_sq_cand += float(np.dot(c, c))
        self.dot += float(np.dot(c, r))
        self.last_scores = None
        if cand.ndim == 4:
            scores = [metrics.checkerboard_scores(a) for a in (cand, ref)]
            if not np.isnan(scores[1]).any():  # maps smaller than 2x2 have no score
                self.checkerboard_sums = [s + float(v.sum()) for s, v in zip(self.checkerboard_sums, scores)]
                self.checkerboard_maps += scores[1].size
                self.last_scores = scores
        if truth is not None and cand.ndim == 4:  # logits at 1/k (SegFormer): scored at the truth's size
            from deploy_unet.processing import upsample_to

            cand, ref = (upsample_to(a, *np.shape(truth)[-2:]) for a in (cand, ref))
        cand_mask, ref_mask = to_mask(cand), to_mask(ref)
        if cand.ndim == 5:
            same = (cand_mask == ref_mask).reshape(len(cand_mask), -1)
            self.volume_agreement += [100.0 * float(v) for v in same.mean(axis=1)]
        self.last_masks = (cand_mask, ref_mask)  # read by _GalleryKeeper right after, then replaced
        self.agree += int(np.count_nonzero(cand_mask == ref_mask))
        self.pixels += cand_mask.size
        self.cm_vs_ref += metrics.confusion_matrix(cand_mask, ref_mask, self.num_classes)
        if truth is not None:
            truth = np.asarray(truth).astype(np.int64, copy=False).reshape(cand_mask.shape)
            # Labels outside [0, classes) (e.g. 255 borders in VOC) are "ignore", as in training.
            labelled = (truth >= 0) & (truth < self.num_classes)
            if self.cm_cand_truth is None:
                self.cm_cand_truth = np.zeros_like(self.cm_vs_ref)
                self.cm_ref_truth = np.zeros_like(self.cm_vs_ref)
            truth = truth[labelled]
            self.cm_cand_truth += metrics.confusion_matrix(cand_mask[labelled], truth, self.num_classes)
            self.cm_ref_truth += metrics.confusion_matrix(ref_mask[labelled], truth, self.num_classes)

    def result(self) -> OutputParity:
        denom = math.sqrt(self.sum_sq_ref)
        rel_l2 = math.sqrt(self.sum_sq_diff) / denom if denom > 0 else (0.0 if self.sum_sq_diff == 0 else math.inf)
        norms = math.sqrt(self.sum_sq_ref * self.sum_sq_cand)
        cosine = self.dot / norms if norms > 0 else (1.0 if self.sum_sq_diff == 0 else 0.0)
        return OutputParity(
            name=self.name,
            shape=self.shape,
            max_abs=self.max_abs,
            mean_abs=self.sum_abs / max(self.count, 1),
            rel_l2=rel_l2,
            cosine=cosine,
            mask_agreement=100.0 * self.agree / max(self.pixels, 1),
            vs_reference=SegmentationScores.from_confusion(self.cm_vs_ref),
            candidate_vs_truth=(
                SegmentationScores.from_confusion(self.cm_cand_truth) if self.cm_cand_truth is not None else None
            ),
            reference_vs_truth=(
                SegmentationScores.from_confusion(self.cm_ref_truth) if self.cm_ref_truth is not None else None
            ),
            candidate_checkerboard=(
                self.checkerboard_sums[0] / self.checkerboard_maps if self.checkerboard_maps else None
            ),
            reference_checkerboard=(
                self.checkerboard_sums[1] / self.checkerboard_maps if self.checkerboard_maps else None
            ),
            volume_agreement=list(self.volume_agreement) or None,
        )


class _GalleryKeeper:
    """While streaming: the ``k`` images of lowest mask agreement (their picture and both masks) and the one
    logit map whose checkerboard score exceeds the reference's most. Memory: k images and two maps."""

    def __init__(self, k: int):
        self.k = k
        self.worst: list[tuple[float, int, Any]] = []  # (agreement, arrival, GallerySample), sorted
        self.arrivals = 0
        self.board = None
        self.board_excess = 0.0

    def add(self, sample: Any, cand: np.ndarray, ref: np.ndarray, acc: _OutputAccumulator) -> None:
        from deploy_unet.visualize import CheckerboardMap, GallerySample

        cand_mask, ref_mask = acc.last_masks
        shown = _display_images(sample)
        n = cand_mask.shape[0]
        for j in range(n):
            agreement = 100.0 * float(np.mean(cand_mask[j] == ref_mask[j]))
            self.arrivals += 1
            if len(self.worst) == self.k and agreement >= self.worst[-1][0]:
                continue
            name = sample.name + (f"#{j}" if n > 1 else "") if sample.name else f"sample {self.arrivals - 1}"
            entry = GallerySample(name, agreement, np.array(shown[j], np.float32),
                                  ref_mask[j].astype(np.int32), cand_mask[j].astype(np.int32))
            self.worst = sorted([*self.worst, (agreement, self.arrivals, entry)], key=lambda t: t[:2])[: self.k]
        if acc.last_scores is not None:
            cand_scores, ref_scores = acc.last_scores
            excess = cand_scores - ref_scores
            i, c = np.unravel_index(int(np.argmax(excess)), excess.shape)
            if excess[i, c] > self.board_excess:
                self.board_excess = float(excess[i, c])
                name = sample.name + (f"#{i}" if n > 1 else "") if sample.name else f"sample {self.arrivals - n + i}"
                self.board = CheckerboardMap(name, int(c), float(cand_scores[i, c]), float(ref_scores[i, c]),
                                             np.array(cand[i, c], np.float32), np.array(ref[i, c], np.float32))

    @property
    def samples(self) -> list:
        return [entry for _, _, entry in self.worst]


def _display_images(sample: Any) -> np.ndarray:
    """(N, C, H, W) in [0, 1] for pictures: the raw images when known, else each normalized image min-max scaled."""
    raw = getattr(sample, "raw", None)
    if raw is not None:
        return np.asarray(raw, np.float32)
    image = np.asarray(sample.image, np.float32)
    axes = tuple(range(1, image.ndim))  # (C, H, W), or (C, D, H, W) for volumes
    low = image.min(axis=axes, keepdims=True)
    span = image.max(axis=axes, keepdims=True) - low
    return (image - low) / np.where(span > 0, span, 1.0)


def to_mask(logits: np.ndarray) -> np.ndarray:
    """Class map from NCHW (or NCDHW) logits: argmax over channels; one channel means binary (logit > 0)."""
    if logits.ndim not in (4, 5):
        raise ShapeContractError(f"output of shape {logits.shape} is not NCHW logits; cannot derive a mask")
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).astype(np.int64)
    return np.argmax(logits, axis=1)


def validate(
    candidate: Runner,
    reference: Runner,
    samples: Iterable[Any],
    gates: dict[str, float] | None = None,
    *,
    precision: str | None = None,
    num_classes: int | None = None,
    candidate_name: str | None = None,
    reference_name: str | None = None,
    on_sample: Callable[[int], None] | None = None,
    gallery: int = 0,
) -> ValidationReport:
    """Run both runners on the same samples and compare; gates override the precision's defaults.

    Runners are activated here if they are not already. ``precision`` defaults to the candidate's
    metadata (``runner.info.precision``), else fp32. ``on_sample(i)`` reports progress. ``gallery=k`` keeps
    the k samples of lowest mask agreement for pictures (``report.gallery``).
    """
    return validate_many(
        [candidate], reference, samples, gates, precisions=[precision], num_classes=num_classes,
        candidate_names=[candidate_name], reference_name=reference_name, on_sample=on_sample, gallery=gallery,
    )[0]


def validate_many(
    candidates: Sequence[Runner],
    reference: Runner,
    samples: Iterable[Any],
    gates: dict[str, float] | Sequence[dict[str, float] | None] | None = None,
    *,
    precisions: Sequence[str | None] | None = None,
    num_classes: int | None = None,
    candidate_names: Sequence[str | None] | None = None,
    reference_name: str | None = None,
    on_sample: Callable[[int], None] | None = None,
    gallery: int = 0,
) -> list[ValidationReport]:
    """``validate`` for several candidates against one reference, which runs once per sample.

    The reference (usually PyTorch eager, the slowest backend on a CPU) is the dominant cost when each
    candidate is validated on its own; here its outputs are shared. Each report also records the
    seconds its candidate spent in ``infer``.
    """
    n = len(candidates)
    precisions = list(precisions or [None] * n)
    names = list(candidate_names or [None] * n)
    precisions = [p or _precision_of(c) for p, c in zip(precisions, candidates)]
    per_candidate = list(gates) if isinstance(gates, (list, tuple)) else [gates] * n  # one override dict, or one each
    active_gates = [gates_for(p, g) for p, g in zip(precisions, per_candidate)]
    ref_input = _single_input(reference)
    cand_inputs = [_single_input(c) for c in candidates]
    pairs = [_pair_outputs(c, reference) for c in candidates]
    accumulators: list[dict[str, _OutputAccumulator]] = [{} for _ in candidates]
    keepers = [_GalleryKeeper(gallery) if gallery > 0 else None for _ in candidates]
    seconds = [0.0] * n
    ref_seconds = 0.0
    count = 0
    with contextlib.ExitStack() as stack:
        for runner in (*candidates, reference):
            stack.enter_context(_active(runner))
        for i, sample in enumerate(samples):
            image = np.asarray(sample.image, dtype=np.float32)
            start = time.perf_counter()
            ref_out = reference.infer({ref_input: image})
            ref_seconds += time.perf_counter() - start
            mask = getattr(sample, "mask", None)
            for k, candidate in enumerate(candidates):
                start = time.perf_counter()
                cand_out = candidate.infer({cand_inputs[k]: image})
                seconds[k] += time.perf_counter() - start
                for cand_name, ref_name in pairs[k]:
                    c, r = cand_out[cand_name], ref_out[ref_name]
                    if cand_name not in accumulators[k]:
                        # Classes come from the logits themselves (1 channel = binary), so masks always fit.
                        classes = num_classes or max(int(c.shape[1]) if c.ndim in (4, 5) else 2, 2)
                        accumulators[k][cand_name] = _OutputAccumulator(cand_name, classes)
                    fits = (mask is not None and c.ndim in (4, 5)
                            and c.shape[2:] == np.shape(mask)[len(np.shape(mask)) - (c.ndim - 2):])
                    accumulators[k][cand_name].add(c, r, mask if fits else None)
                    if keepers[k] is not None and c.ndim in (4, 5) and cand_name == pairs[k][0][0]:  # 5: volumes (slices)
                        keepers[k].add(sample, c, r, accumulators[k][cand_name])
            count += 1
            if on_sample:
                on_sample(i)
    if count == 0:
        raise ConfigError("no samples to validate on; pass --data with at least one image, or --samples >= 1")
    policy = wait_policy.current().describe()
    reports = []
    for k, candidate in enumerate(candidates):
        outputs = [acc.result() for acc in accumulators[k].values()]
        reports.append(ValidationReport(
            candidate=names[k] or _describe(candidate),
            reference=reference_name or _describe(reference),
            candidate_backend=backend_label(candidate),
            reference_backend=backend_label(reference),
            precision=precisions[k],
            num_samples=count,
            num_classes=next(iter(accumulators[k].values())).num_classes,
            outputs=outputs,
            gates=_apply_gates(active_gates[k], outputs),
            candidate_seconds=seconds[k],
            reference_seconds=ref_seconds,
            gallery=keepers[k].samples if keepers[k] else [],
            checkerboard_map=keepers[k].board if keepers[k] else None,
            wait_policy=policy,
        ))
    return reports


def _apply_gates(gates: dict[str, float], outputs: list[OutputParity]) -> list[GateResult]:
    results = []
    for name, threshold in gates.items():
        direction = GATE_METRICS[name]
        for out in outputs:
            value = out.metric(name)
            if value is None:
                passed = None
            elif direction == "max":
                passed = bool(value <= threshold)  # NaN compares False: a NaN output fails
            else:
                passed = bool(value >= threshold)
            results.append(GateResult(name, out.name, value, threshold, direction, passed))
    return results


class _active:
    """Activate a runner for the block unless the caller already did (then leave it active)."""

    def __init__(self, runner: Runner):
        self.runner = runner
        self.owned = not runner.is_active

    def __enter__(self) -> Runner:
        return self.runner.activate()

    def __exit__(self, *exc) -> None:
        if self.owned:
            self.runner.deactivate()


def _single_input(runner: Runner) -> str:
    with _active(runner):
        names = list(runner.input_spec)
    if len(names) != 1:
        raise ConfigError(f"{_describe(runner)} has inputs {names}; validate drives single-input segmentation nets")
    return names[0]


def _pair_outputs(candidate: Runner, reference: Runner) -> list[tuple[str, str]]:
    """Outputs matched by name; two single-output runners pair whatever their names are."""
    with _active(candidate), _active(reference):
        cand, ref = candidate.output_names, reference.output_names
    if len(cand) == 1 and len(ref) == 1:
        return [(cand[0], ref[0])]
    common = [n for n in cand if n in ref]
    if not common:
        raise ConfigError(f"candidate outputs {cand} share no name with reference outputs {ref}")
    return [(n, n) for n in common]


def _precision_of(runner: Runner) -> str:
    precision = runner_precision(runner)
    return precision if precision in DEFAULT_GATES else "fp32"


def _describe(runner: Runner) -> str:
    for attr in ("path", "source"):
        value = getattr(runner, attr, None)
        if value:
            return str(value)
    return type(runner).__name__


def _nanmean(values: np.ndarray) -> float:
    present = values[~np.isnan(values)]
    return float(present.mean()) if present.size else math.nan


def _listing(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"



# -- artifacts in, report out (what the CLI and the pipeline call) -----------------------------------
def validate_artifacts(
    candidate: str | os.PathLike,
    reference: str | os.PathLike,
    *,
    data: str | None = None,
    samples: int = 8,
    batch: int = 1,
    backend: str | None = None,
    ref_backend: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    pad: bool = False,
    gates: dict[str, float] | None = None,
    precision: str | None = None,
    device: str = "auto",
    progress: bool = True,
    threads: int | None = None,
    allow_tf32: bool = False,
    tile: bool = False,
    tile_size: int | tuple[int, int] | None = None,
    candidate_options: dict[str, Any] | None = None,
    gallery: int = 0,
) -> ValidationReport:
    """Open both artifacts (``open_runner``), load ``samples`` inputs from ``data`` (default: the
    synthetic scenes) prepared for the candidate's metadata, and ``validate``. Does not raise on a
    failed gate: call ``report.raise_for_gates()``. With ``tile`` both runners run overlap tiles
    (``runtime/tiling.py``) on the images at their own size and give full-size outputs.

    Torch runners run true fp32 (TF32 off) unless ``allow_tf32``, which also loosens the fp32 logit gates
    to :data:`TF32_FP32_GATES` (explicit ``gates`` still win). ``gallery=k`` keeps the k samples of lowest mask
    agreement for pictures (``report.gallery``; ``report.write_galleries`` draws them)."""
    return validate_artifacts_many(
        [(candidate, backend)], reference, data=data, samples=samples, batch=batch, ref_backend=ref_backend,
        checkpoint=checkpoint, pad=pad, gates=gates, precisions=[precision], device=device, progress=progress,
        threads=threads, allow_tf32=allow_tf32, tile=tile, tile_size=tile_size, candidate_options=candidate_options,
        gallery=gallery,
    )[0]


def validate_artifacts_many(
    candidates: Sequence[tuple[str | os.PathLike, str | None]],
    reference: str | os.PathLike,
    *,
    data: str | None = None,
    samples: int = 8,
    batch: int = 1,
    ref_backend: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    pad: bool = False,
    gates: dict[str, float] | None = None,
    precisions: Sequence[str | None] | None = None,
    device: str = "auto",
    progress: bool = True,
    threads: int | None = None,
    allow_tf32: bool = False,
    tile: bool = False,
    tile_size: int | tuple[int, int] | None = None,
    candidate_options: dict[str, Any] | None = None,
    gallery: int = 0,
) -> list[ValidationReport]:
    """Validate several ``(artifact, backend)`` candidates of one net against one reference on the same
    inputs; the reference runs once per sample (``validate_many``). ``candidate_options`` (the runner speed
    options: ``torch_precision``, ``channels_last``, ``cuda_graph``, ``compile``) apply to the candidates only:
    the reference stays plain fp32."""
    from deploy_unet.runtime import open_runner

    options = {"checkpoint": checkpoint, "device": device, "threads": threads, "allow_tf32": allow_tf32}
    tiling = {"tile": True, "tile_size": tile_size} if tile else {}
    with contextlib.ExitStack() as stack:
        runners = []
        for path, backend in candidates:
            runners.append(stack.enter_context(
                open_runner(path, backend, pad=pad, **tiling, **options, **(candidate_options or {}))))
            if tile:  # the same tiles everywhere (the first candidate's export size unless --tile-size)
                tiling["tile_size"] = runners[0].tile_size
        ref_runner = stack.enter_context(
            _reference_runner(reference, ref_backend, candidates, runners, pad=pad, **tiling, **options))
        info = next((r.info for r in runners if getattr(r, "info", None)), None) or getattr(ref_runner, "info", None)
        batches = list(load_validation_samples(data or "synthetic", info, samples, batch=batch, pad=pad or tile))
        resolved = [p or _precision_of(r) for p, r in zip(precisions or [None] * len(runners), runners)]
        per_candidate = [{**TF32_FP32_GATES, **(gates or {})} if allow_tf32 and p == "fp32" else gates
                         for p in resolved]
        label = ", ".join(os.path.basename(os.fspath(path)) for path, _ in candidates)
        with _progress(progress, f"validate {label}", len(batches)) as tick:
            return validate_many(
                runners, ref_runner, batches, per_candidate, precisions=resolved,
                candidate_names=[os.fspath(path) for path, _ in candidates], reference_name=os.fspath(reference),
                on_sample=tick, gallery=gallery,
            )


def _reference_runner(reference, ref_backend, candidates, runners, **options) -> Runner:
    """The reference, run as the candidates were exported.

    A checkpoint is built with its own config; but an ONNX exported from it with another output choice
    (UNet++ ``--prune L`` / ``--heads last``, ``--pad-in-graph``) records that choice in its metadata. When
    every candidate is an ONNX exported from this very checkpoint (sha256 in the metadata) with one such
    config, the reference is the torch net rebuilt from that metadata with the checkpoint's weights, so the
    comparison is like with like instead of failing every gate.
    """
    from deploy_unet.runtime import open_runner

    backend = (ref_backend or "torch").lower()
    path = Path(reference)
    infos = [getattr(r, "info", None) for r in runners]
    if (backend == "torch" and path.suffix.lower() in (".pt", ".pth") and path.is_file() and infos
            and all(Path(c).suffix.lower() == ".onnx" for c, _ in candidates) and None not in infos):
        from deploy_unet.checkpoint import load_checkpoint

        first = infos[0]
        same = all((i.arch, i.net_config, i.pad_in_graph) == (first.arch, first.net_config, first.pad_in_graph)
                   for i in infos)
        ckpt = load_checkpoint(path)
        exported_from = {i.extra.get("checkpoint_sha256") for i in infos}
        if (same and exported_from == {ckpt.sha256} and ckpt.arch == first.arch
                and ((ckpt.net_config or {}) != first.net_config or first.pad_in_graph)):
            return open_runner(candidates[0][0], "torch", **{**options, "checkpoint": ckpt})
    return open_runner(reference, ref_backend, **options)


def load_validation_samples(source: str, info, n: int, *, batch: int = 1, pad: bool = False) -> list[Sample]:
    """``n`` images from ``source`` via ``deploy_unet.data.load_samples``, as Samples of ``batch`` images.

    With ``pad`` (or tiling) the images keep their size and the runners pad/crop; otherwise the loader resizes
    them to a size the net accepts.
    """
    if n < 1 or batch < 1:
        raise ConfigError(f"--samples {n} and batch {batch} must be >= 1")
    from deploy_unet.data import load_samples

    kwargs = {"fit": "pad", "divisor": 1} if pad else {}
    loaded = load_samples(source, info, n, **kwargs)
    images, masks = loaded.images, loaded.masks
    return [
        Sample(images[i:i + batch], None if masks is None else masks[i:i + batch], name=f"{source}[{i}]",
               raw=loaded.raw[i:i + batch])
        for i in range(0, len(images), batch)
    ]


@contextlib.contextmanager
def _progress(enabled: bool, description: str, total: int):
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda _i: bar.advance(task)


# ``deploy_unet.validate(candidate, reference, ...)`` is this stage's artifact-level entry point.
from deploy_unet import _make_callable  # noqa: E402

_make_callable(__name__, validate_artifacts)
