"""CLI: validate and bench end to end, and bad inputs as one-line errors (exit 2, no traceback)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers_runners import shape_samples, thin_artifacts

from deploy_unet.cli import cli


@pytest.fixture(scope="module")
def paths():
    return thin_artifacts()


@pytest.fixture(scope="module")
def data(paths):
    """Shape images in [0, 1] with their masks, as an .npz a user would pass to --data."""
    samples = shape_samples(3, height=32, width=32)
    path = paths["root"] / "data.npz"
    np.savez(path, images=np.concatenate([s.image for s in samples]) * 0.25 + 0.5,
             masks=np.concatenate([s.mask for s in samples]))
    return path


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_user_error(result, pattern: str, code: int = 2):
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and pattern in lines[0], result.output
    assert "Traceback" not in result.output


def test_validate_passes_and_writes_json(paths, data, tmp_path):
    result = invoke("validate", paths["onnx"], "--reference", paths["pt"], "--data", data, "--samples", 3,
                    "--json", tmp_path / "v.json")
    assert result.exit_code == 0, result.output
    assert "passed all fp32 gates" in result.output
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["passed"] and report["num_samples"] == 3
    assert report["outputs"][0]["candidate_vs_truth"] is not None


def test_validate_failing_gate_exits_1_naming_the_metric(paths, data, tmp_path):
    result = invoke("validate", paths["onnx"], "-r", paths["pt"], "--data", data, "--gate", "max_abs=0",
                    "--json", tmp_path / "v.json")
    assert_user_error(result, "max_abs on 'logits'", code=1)
    assert json.loads((tmp_path / "v.json").read_text())["passed"] is False  # the report is still written


def test_validate_torch_backend_from_onnx_metadata(paths, data):
    result = invoke("validate", paths["onnx"], "-r", paths["onnx"], "--backend", "torch", "--checkpoint", paths["pt"],
                    "--data", data)
    assert result.exit_code == 0, result.output


def test_validate_bad_inputs(paths, data, tmp_path):
    assert_user_error(invoke("validate", tmp_path / "nope.onnx", "-r", paths["pt"], "--data", data), "does not exist")
    assert_user_error(invoke("validate", paths["onnx"], "-r", paths["pt"], "--data", data, "--gate", "psnr=3"),
                      "known metric")
    two_channel = tmp_path / "two.npz"
    np.savez(two_channel, images=np.zeros((1, 2, 32, 32), np.float32))
    assert_user_error(invoke("validate", paths["onnx"], "-r", paths["pt"], "--data", two_channel), "channels")
    nan = tmp_path / "nan.npz"
    images = np.full((1, 3, 32, 32), 0.5, np.float32)
    images[0, 0, 3, 3] = np.nan
    np.savez(nan, images=images)
    assert_user_error(invoke("validate", paths["onnx"], "-r", paths["pt"], "--data", nan), "NaN")
    assert_user_error(invoke("validate", paths["onnx"], "-r", paths["pt"], "--data", tmp_path / "none.npz"),
                      "does not exist")


def test_bench_writes_json_markdown_plot(paths, tmp_path):
    result = invoke("bench", paths["onnx"], paths["pt"], "--size", "32x32", "--batch", "1,2", "--warmup", 1,
                    "--iters", 3, "--json", tmp_path / "b.json", "--markdown", tmp_path / "b.md",
                    "--plot", tmp_path / "b.png")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "b.json").read_text())
    assert len(data["results"]) == 4
    assert "| thin.pt [torch] | fp32 | 2 | 32x32 |" in (tmp_path / "b.md").read_text()
    assert all(r["rounds"] == 3 for r in data["results"])  # --iters 3: three rounds of one, interleaved
    assert "vs first" in result.output and "range" in result.output
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_bad_inputs(paths, tmp_path):
    assert_user_error(invoke("bench", paths["onnx"], "--size", "30x32", "--iters", 1), "height 30 is not divisible by 4")
    assert invoke("bench", paths["onnx"], "--size", "30x30", "--iters", 1, "--warmup", 0, "--pad").exit_code == 0
    assert_user_error(invoke("bench", paths["onnx"], "--iters", 2, "--duration", 1), "--iters and --duration")
    assert_user_error(invoke("bench", paths["onnx"], "--iters", 3, "--rounds", 5), "--rounds 5 needs at least 5")
    assert_user_error(invoke("bench", paths["onnx"], "--backend", "coreml"), "choose one of")
    assert_user_error(invoke("bench", tmp_path / "model.bin"), "unknown extension")
    assert_user_error(invoke("bench", tmp_path / "missing.pt"), "does not exist")
    assert not list(tmp_path.iterdir())  # nothing half-written
