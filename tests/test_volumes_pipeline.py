"""`deploy-unet pipeline --arch unet3d` (issue 24): the main job on volumes from the shipped 3D checkpoint."""

import json

from click.testing import CliRunner

from deploy_unet.cli import cli


def test_pipeline_unet3d_runs_the_main_job_on_volumes(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [
        "pipeline", "--arch", "unet3d", "-o", str(out), "--size", "16x32x32", "--precisions", "fp32,fp16,int8",
        "--calib-samples", "8", "--eval-samples", "2", "--iters", "2", "--rounds", "1", "--threads", "1",
    ])
    assert result.exit_code == 0, result.output
    for name in ("unet3d.onnx", "unet3d.fp16.onnx", "unet3d.int8.onnx", "unet3d.int8.ort.onnx", "report.md"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["pipeline"]["size"] == [16, 32, 32]
    assert {(r["depth"], r["height"], r["width"]) for r in report["bench"]["results"]} == {(16, 32, 32)}
    for validation in report["validation"]:
        assert validation["passed"], validation["candidate"]
        assert len(validation["outputs"][0]["volume_agreement"]) == 2  # one figure per volume
    text = (out / "report.md").read_text()
    assert "inputs volumes 16x32x32 (DxHxW)" in text and "lowest volume" in text


def test_pipeline_refuses_a_depth_for_a_2d_net(tmp_path):
    result = CliRunner().invoke(cli, ["pipeline", "--arch", "unet", "-o", str(tmp_path / "o"), "--size", "8x64x64"])
    assert result.exit_code == 2 and "takes 2D images" in result.output and "Traceback" not in result.output
