"""The accuracy gate: fp32 vs a lower-precision file on held-out data, with ONNX Runtime on CPU.

Both models see the same preprocessed samples; predictions are the argmax over classes. With ground
truth masks the gate compares Dice against the truth (drop = fp32 Dice - new Dice); without masks the
fp32 prediction is the reference (drop = 1 - Dice(new, fp32)). ORT's ``WeightBiasQuantization``
optimizer is disabled for the quantized file: it rewrites fp16-remainder Q/DQ graphs (ModelOpt style)
into something that computes wrong results on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from deploy_unet import metrics

DISABLED_OPTIMIZERS = ["WeightBiasQuantization"]


@dataclass
class GateReport:
    source: str
    samples: int
    reference: str  # "ground truth" or "fp32 predictions"
    fp32: dict
    candidate: dict
    mask_agreement: float
    dice_drop: float
    max_dice_drop: float
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.dice_drop <= self.max_dice_drop

    def to_dict(self) -> dict:
        return {
            "source": self.source, "samples": self.samples, "reference": self.reference,
            "fp32": self.fp32, "candidate": self.candidate, "mask_agreement": self.mask_agreement,
            "dice_drop": self.dice_drop, "max_dice_drop": self.max_dice_drop, "passed": self.passed,
        }


def predict(path: str | os.PathLike, images: np.ndarray, batch: int = 4, threads: int | None = None) -> np.ndarray:
    """Argmax masks (N, H, W) from an ONNX file on ORT CPU (overlap tiles when the net's output is smaller)."""
    from deploy_unet.runtime.onnxruntime_runner import OnnxRuntimeRunner

    preds = []
    runner = OnnxRuntimeRunner(path, threads=threads, disabled_optimizers=DISABLED_OPTIMIZERS)
    if runner.info is not None and runner.info.border:
        runner.enable_tiling()  # a valid-convolution net: full-size masks, comparable with the ground truth
    with runner:
        name = next(iter(runner.input_spec))
        out = runner.output_names[0]
        for start in range(0, len(images), batch):
            logits = runner.infer({name: images[start : start + batch]})[out]
            preds.append(np.asarray(logits).argmax(axis=1))
    return np.concatenate(preds)


def evaluate(
    fp32_path: str | os.PathLike,
    candidate_path: str | os.PathLike,
    samples,
    num_classes: int,
    max_dice_drop: float = 0.01,
    threads: int | None = None,
) -> GateReport:
    """Compare two ONNX files on ``samples`` (a ``deploy_unet.data.Samples``)."""
    ref = predict(fp32_path, samples.images, threads=threads)
    new = predict(candidate_path, samples.images, threads=threads)
    if samples.masks is not None:
        fp32_scores = metrics.summarize(ref, samples.masks, num_classes)
        new_scores = metrics.summarize(new, samples.masks, num_classes)
        reference = "ground truth"
        drop = fp32_scores["mean_dice"] - new_scores["mean_dice"]
    else:
        fp32_scores = metrics.summarize(ref, ref, num_classes)
        new_scores = metrics.summarize(new, ref, num_classes)
        reference = "fp32 predictions"
        drop = 1.0 - new_scores["mean_dice"]
    return GateReport(
        source=samples.source, samples=len(samples), reference=reference, fp32=fp32_scores,
        candidate=new_scores, mask_agreement=metrics.mask_agreement(ref, new), dice_drop=float(drop),
        max_dice_drop=max_dice_drop,
    )
