"""validate --gallery: the worst samples by mask agreement, kept while streaming, and the worst checkerboard map."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner
from helpers_runners import ConstantRunner, thin_artifacts
from PIL import Image

from deploy_unet.cli import cli
from deploy_unet.report import write_galleries, write_report
from deploy_unet.validate import Sample, validate


def _logits(mask: np.ndarray, classes: int = 3) -> np.ndarray:
    return (np.eye(classes, dtype=np.float32)[mask].transpose(0, 3, 1, 2) * 4.0).astype(np.float32)


def _case(flips: list[int], h: int = 8, w: int = 8):
    """Reference masks all class 0 plus a block of class 1; candidate i flips ``flips[i]`` pixels to class 2."""
    ref, cand, samples = [], [], []
    for i, n in enumerate(flips):
        mask = np.zeros((1, h, w), np.int64)
        mask[0, 2:5, 2:5] = 1
        ref.append(_logits(mask))
        other = mask.copy()
        other.reshape(-1)[:n] = 2
        cand.append(_logits(other))
        raw = np.full((1, 3, h, w), i / len(flips), np.float32)
        samples.append(Sample(np.zeros((1, 3, h, w), np.float32), name=f"s{i}", raw=raw))
    return ConstantRunner(cand), ConstantRunner(ref), samples


def test_gallery_keeps_the_k_worst_worst_first():
    flips = [3, 0, 9, 1, 6, 0]
    cand, ref, samples = _case(flips)
    report = validate(cand, ref, samples, gallery=3)
    names = [g.name for g in report.gallery]
    assert names == ["s2", "s4", "s0"]  # 9, 6, 3 pixels of 64 differ
    assert [g.mask_agreement for g in report.gallery] == [100 * (64 - n) / 64 for n in (9, 6, 3)]
    worst = report.gallery[0]
    assert int(np.count_nonzero(worst.candidate_mask != worst.reference_mask)) == 9
    assert np.allclose(worst.image, 2 / 6)  # the raw image, not the normalized one
    data = report.to_dict()
    assert [w["sample"] for w in data["worst_samples"]] == names
    json.dumps(data)  # the pictures' arrays never reach the JSON


def test_no_gallery_unless_asked_and_no_checkerboard_map_when_equal():
    cand, ref, samples = _case([2, 1])
    report = validate(cand, ref, samples)
    assert report.gallery == [] and "worst_samples" not in report.to_dict()
    same = validate(ConstantRunner(ref.outputs), ConstantRunner(ref.outputs), samples, gallery=2)
    assert same.checkerboard_map is None and not same.checkerboard_worse


def test_worst_checkerboard_map_is_the_one_with_the_period_2_pattern(tmp_path):
    rng = np.random.default_rng(0)
    h = w = 16
    smooth = [np.cumsum(rng.standard_normal((1, 3, h, w)), axis=3).astype(np.float32) for _ in range(4)]
    yy, xx = np.mgrid[0:h, 0:w]
    cand = [s.copy() for s in smooth]
    cand[2][0, 1] += 3.0 * (-1.0) ** (yy + xx)  # sample 2, class 1: a checkerboard the reference lacks
    samples = [Sample(np.zeros((1, 3, h, w), np.float32), name=f"s{i}") for i in range(4)]
    report = validate(ConstantRunner(cand), ConstantRunner(smooth), samples, gallery=2)
    board = report.checkerboard_map
    assert (board.name, board.class_id) == ("s2", 1) and board.candidate_score > board.reference_score
    assert report.checkerboard_worse
    written = write_galleries(tmp_path, [report])
    files = sorted(p.name for _, p in written)
    assert files == ["fake.checkerboard.png", "fake.gallery.png"]
    assert Image.open(tmp_path / "fake.gallery.png").width > 4 * w


def test_report_md_embeds_the_gallery(tmp_path):
    cand, ref, samples = _case([5, 0])
    report = validate(cand, ref, samples, gallery=2, candidate_name="cand.onnx", reference_name="ref.pt")
    written = write_report(tmp_path, validations=[report])
    text = (tmp_path / "report.md").read_text()
    assert "## What the masks look like" in text
    assert "](gallery/cand.onnx.gallery.png)" in text and (tmp_path / "gallery" / "cand.onnx.gallery.png").is_file()
    assert written["gallery"] == tmp_path / "gallery"
    assert json.loads((tmp_path / "report.json").read_text())["gallery"][0] == "gallery/cand.onnx.gallery.png"


def test_validate_cli_gallery_writes_the_pictures(tmp_path):
    artifacts = thin_artifacts()
    folder = tmp_path / "gallery"
    result = CliRunner().invoke(cli, ["validate", str(artifacts["onnx"]), "-r", str(artifacts["pt"]),
                                      "--samples", "3", "--data", "synthetic:size=32x32", "--gallery", str(folder)])
    assert result.exit_code in (0, 1), result.output  # a random-init thin net may fail a gate; never crash
    picture = folder / "thin.onnx.gallery.png"
    assert picture.is_file() and f"wrote {picture}" in result.output.replace("\n", "")
