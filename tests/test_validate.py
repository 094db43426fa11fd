"""validate: parity metrics and Dice/IoU on constructed outputs, gates, and real runners."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from helpers_runners import ConstantRunner, shape_samples, thin_artifacts

from deploy_unet.errors import ConfigError, GateFailedError
from deploy_unet.metadata import ModelInfo
from deploy_unet.runtime import open_runner
from deploy_unet.validate import (
    DEFAULT_GATES,
    Sample,
    gates_for,
    parse_gates,
    to_mask,
    validate,
    validate_many,
)


def logits_from_mask(mask: np.ndarray, classes: int, scale: float = 4.0) -> np.ndarray:
    """(N, C, H, W) logits whose argmax is ``mask`` (NHW)."""
    return (np.eye(classes, dtype=np.float32)[mask].transpose(0, 3, 1, 2) * scale).astype(np.float32)


def one_sample(h=4, w=4, mask=None):
    return [Sample(np.zeros((1, 3, h, w), np.float32), mask)]


# Reference: class 1 on the 4 pixels of the top-left 2x2 block. Candidate: class 1 on the top row
# (2 of the reference's pixels + 2 others). By hand: class 1 Dice 2*2/(4+4) = 0.5, IoU 2/6;
# class 0 (12 ref px, 12 cand px, 10 shared) Dice 20/24, IoU 10/14; agreement 12/16 = 75%.
REF_MASK = np.zeros((1, 4, 4), np.int64)
REF_MASK[0, :2, :2] = 1
CAND_MASK = np.zeros((1, 4, 4), np.int64)
CAND_MASK[0, 0, :] = 1


def test_dice_iou_and_agreement_of_known_masks():
    report = validate(ConstantRunner([logits_from_mask(CAND_MASK, 2)]),
                      ConstantRunner([logits_from_mask(REF_MASK, 2)]), one_sample(), precision="fp32")
    out = report.outputs[0]
    assert out.mask_agreement == pytest.approx(75.0)
    assert out.vs_reference.dice_per_class == pytest.approx([20 / 24, 0.5])
    assert out.vs_reference.iou_per_class == pytest.approx([10 / 14, 2 / 6])
    assert out.vs_reference.mean_dice == pytest.approx((20 / 24 + 0.5) / 2)
    assert out.candidate_vs_truth is None  # no ground truth in the samples


def test_error_metrics_of_a_scaled_output():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    cand = (ref * 1.01).astype(np.float32)  # rel L2 = 0.01 exactly, cosine = 1, same argmax
    out = validate(ConstantRunner([cand]), ConstantRunner([ref]), one_sample(), precision="fp16").outputs[0]
    assert out.rel_l2 == pytest.approx(0.01, rel=1e-4)
    assert out.cosine == pytest.approx(1.0, abs=1e-9)
    assert out.max_abs == pytest.approx(float(np.abs(ref).max()) * 0.01, rel=1e-3)
    assert out.mean_abs == pytest.approx(float(np.abs(ref).mean()) * 0.01, rel=1e-3)
    assert out.mask_agreement == 100.0


def test_metrics_pool_over_samples():
    a = np.ones((1, 2, 2, 2), np.float32)
    ref = [a, a]
    cand = [a, a + np.array([0, 1], np.float32).reshape(1, 2, 1, 1)]  # second sample differs on channel 1
    samples = one_sample(2, 2) * 2
    out = validate(ConstantRunner(cand), ConstantRunner(ref), samples, precision="int8").outputs[0]
    assert out.max_abs == 1.0
    assert out.mean_abs == pytest.approx(4 / 16)  # 4 of 16 elements off by 1
    assert out.rel_l2 == pytest.approx(math.sqrt(4) / math.sqrt(16))
    assert out.mask_agreement == pytest.approx(50.0)  # argmax flips to class 1 on the second sample


def test_ground_truth_scores_and_miou_drop():
    truth = REF_MASK.copy()
    report = validate(ConstantRunner([logits_from_mask(CAND_MASK, 2)]),
                      ConstantRunner([logits_from_mask(REF_MASK, 2)]), one_sample(mask=truth), precision="int8")
    out = report.outputs[0]
    assert out.reference_vs_truth.mean_iou == pytest.approx(1.0)
    assert out.candidate_vs_truth.mean_iou == pytest.approx((10 / 14 + 2 / 6) / 2)
    assert out.metric("miou_drop") == pytest.approx(1 - (10 / 14 + 2 / 6) / 2)


def test_ignore_label_in_ground_truth_is_skipped():
    truth = REF_MASK.copy()
    truth[0, 0, 2:] = 255  # the two pixels where the candidate is wrong become "ignore"
    out = validate(ConstantRunner([logits_from_mask(CAND_MASK, 2)]),
                   ConstantRunner([logits_from_mask(REF_MASK, 2)]), one_sample(mask=truth)).outputs[0]
    assert out.candidate_vs_truth.iou_per_class[1] == pytest.approx(2 / 4)  # 2 shared of 4 labelled-or-predicted


def test_gates_fail_naming_the_metric_and_can_be_overridden():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    cand = ref * 1.05
    report = validate(ConstantRunner([cand]), ConstantRunner([ref]), one_sample(), precision="fp16")
    assert not report.passed and [g.metric for g in report.failed_gates] == ["rel_l2"]
    with pytest.raises(GateFailedError, match=r"rel_l2 on 'logits' = 0\.05.*<= 0\.01") as err:
        report.raise_for_gates()
    assert err.value.exit_code == 1
    relaxed = validate(ConstantRunner([cand]), ConstantRunner([ref]), one_sample(), {"rel_l2": 0.06}, precision="fp16")
    assert relaxed.passed
    relaxed.raise_for_gates()


def test_nan_output_fails_every_numeric_gate():
    ref = np.ones((1, 2, 4, 4), np.float32)
    cand = ref.copy()
    cand[0, 0, 0, 0] = np.nan
    report = validate(ConstantRunner([cand]), ConstantRunner([ref]), one_sample(), precision="int8")
    assert {"rel_l2", "cosine"} <= {g.metric for g in report.failed_gates}
    json.dumps(report.to_dict(), allow_nan=False)  # NaN becomes null, the report still serializes


def test_truth_gate_is_not_applicable_without_masks():
    ref = np.ones((1, 2, 4, 4), np.float32)
    report = validate(ConstantRunner([ref]), ConstantRunner([ref]), one_sample(), precision="fp32")
    drop = [g for g in report.gates if g.metric == "miou_drop"]
    assert drop and drop[0].passed is None and report.passed


def test_precision_comes_from_candidate_metadata():
    info = ModelInfo(arch="unet", divisor=1, in_channels=3, num_classes=2, precision="int8")
    ref = np.ones((1, 2, 4, 4), np.float32)
    report = validate(ConstantRunner([ref], info=info), ConstantRunner([ref]), one_sample())
    assert report.precision == "int8"
    assert {g.metric: g.threshold for g in report.gates} == DEFAULT_GATES["int8"]


def test_gate_parsing():
    assert parse_gates(["rel_l2=1e-3", "mask_agreement=99.5"]) == {"rel_l2": 1e-3, "mask_agreement": 99.5}
    with pytest.raises(ConfigError, match="known metric.*rel_l2"):
        parse_gates(["psnr=30"])
    with pytest.raises(ConfigError, match="not a number"):
        parse_gates(["rel_l2=small"])
    with pytest.raises(ConfigError, match="choose one of: fp32, fp16, bf16, int8"):
        gates_for("fp8")
    assert DEFAULT_GATES["fp32"]["rel_l2"] < DEFAULT_GATES["fp16"]["rel_l2"] < DEFAULT_GATES["int8"]["rel_l2"]


def test_binary_single_channel_mask():
    logits = np.array([[[[-1.0, 2.0], [0.5, -3.0]]]], np.float32)
    assert to_mask(logits).tolist() == [[[0, 1], [1, 0]]]


def test_no_samples_is_a_config_error():
    ref = np.ones((1, 2, 4, 4), np.float32)
    with pytest.raises(ConfigError, match="no samples"):
        validate(ConstantRunner([ref]), ConstantRunner([ref]), [])


def test_onnxruntime_vs_torch_passes_fp32_gates_on_shape_images():
    paths = thin_artifacts()
    samples = shape_samples(3, height=32, width=32)
    report = validate(open_runner(paths["onnx"]), open_runner(paths["pt"]), samples)
    assert report.precision == "fp32" and report.num_samples == 3
    assert report.passed, [g.describe() for g in report.failed_gates]
    out = report.outputs[0]
    assert out.rel_l2 < 1e-4 and out.mask_agreement > 99.9
    assert out.candidate_vs_truth is not None  # the shape images carry masks


def test_validate_many_runs_the_reference_once_per_sample_and_matches_validate():
    rng = np.random.default_rng(1)
    ref_outs = [rng.standard_normal((1, 3, 4, 4)).astype(np.float32) for _ in range(3)]
    noisy = [(r + 0.01 * rng.standard_normal(r.shape)).astype(np.float32) for r in ref_outs]
    scaled = [(r * 1.02).astype(np.float32) for r in ref_outs]
    samples = [Sample(np.zeros((1, 3, 4, 4), np.float32)) for _ in range(3)]
    reference = ConstantRunner(ref_outs)
    reports = validate_many([ConstantRunner(noisy), ConstantRunner(scaled)], reference, samples,
                            precisions=["fp16", "int8"])
    assert reference.calls == 3  # not 6: both candidates share the reference's outputs
    alone = [validate(ConstantRunner(c), ConstantRunner(ref_outs), samples, precision=p)
             for c, p in ((noisy, "fp16"), (scaled, "int8"))]
    for many, one in zip(reports, alone):
        assert many.precision == one.precision
        assert many.outputs[0].rel_l2 == pytest.approx(one.outputs[0].rel_l2)
        assert [g.passed for g in many.gates] == [g.passed for g in one.gates]
    assert reports[1].outputs[0].rel_l2 == pytest.approx(0.02, rel=1e-4)


def test_checkerboard_score_of_candidate_and_reference_in_json_and_table():
    """A candidate with a period-2 pattern added to smooth logits: its score is the pattern's energy
    share (known by construction), the reference's is 0; JSON and the table carry both."""
    from deploy_unet.report import VALIDATION_COLUMNS, validation_rows

    y, x = np.mgrid[0:16, 0:16]
    smooth = np.stack([np.sin(2 * np.pi * 2 * x / 16), -np.sin(2 * np.pi * 2 * x / 16)])[None].astype(np.float32)
    artifact = 0.5 * (-1.0) ** (x + y)
    cand = (smooth + artifact).astype(np.float32)
    report = validate(ConstantRunner([cand]), ConstantRunner([smooth]), one_sample(16, 16), precision="int8")
    out = report.outputs[0]
    share = 0.25 / (0.25 + 0.5)  # checkerboard energy b^2 vs sinusoid a^2/2, per map
    assert out.candidate_checkerboard == pytest.approx(share, rel=1e-6)
    assert out.reference_checkerboard == pytest.approx(0.0, abs=1e-12)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["outputs"][0]["candidate_checkerboard"] == pytest.approx(share, rel=1e-6)
    row = dict(zip(VALIDATION_COLUMNS, validation_rows([report])[0], strict=True))
    cand_cell, ref_cell = row["checkerboard (cand / ref)"].split(" / ")
    assert cand_cell == f"{share:.4f}" and float(ref_cell) < 1e-12
