"""fp32 means fp32 (TF32 off while a torch runner is active, flags restored), and --output mask (argmax computed
where the net ran) equals the argmax of the logits exactly, on CPU for torch and ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers_runners import thin_artifacts
from trt_fakes import make_onnx

from deploy_unet.bench import bench_runner
from deploy_unet.cli import cli
from deploy_unet.errors import ConfigError
from deploy_unet.runtime import open_runner
from deploy_unet.runtime.base import argmax_mask
from deploy_unet.runtime.onnxruntime_runner import OnnxRuntimeRunner
from deploy_unet.runtime.torch_runner import TorchRunner, set_tf32_flags, tf32_flags
from deploy_unet.validate import TF32_FP32_GATES


@pytest.fixture(scope="module")
def paths():
    return thin_artifacts()


@pytest.fixture
def tf32_on():
    saved = tf32_flags()
    set_tf32_flags(True, True)
    yield
    set_tf32_flags(*saved)


@pytest.mark.parametrize("allow", [False, True])
def test_torch_runner_sets_tf32_while_active_and_restores(paths, tf32_on, allow):
    runner = open_runner(paths["pt"], device="cpu", allow_tf32=allow)
    with runner:
        assert tf32_flags() == (allow, allow)
    assert tf32_flags() == (True, True)
    set_tf32_flags(False, True)
    with open_runner(paths["pt"], device="cpu", allow_tf32=allow):
        pass
    assert tf32_flags() == (False, True)  # whatever it was, it comes back


def _image(seed=0):
    return np.random.default_rng(seed).standard_normal((2, 3, 32, 32)).astype(np.float32)


def _conv_runner(backend, tmp_path, **options):
    """A one-conv net with random weights: its argmax varies across pixels, unlike a thin UNet's at init."""
    if backend == "torch":
        torch.manual_seed(0)
        return TorchRunner(torch.nn.Conv2d(3, 5, 3, padding=1), device="cpu", **options)
    return OnnxRuntimeRunner(make_onnx(tmp_path / "conv.onnx", num_classes=5), **options)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_mask_output_is_exactly_the_argmax_of_the_logits(tmp_path, backend):
    x = _image()
    with _conv_runner(backend, tmp_path) as logits_runner:
        (logits,) = logits_runner.infer({"input": x}).values()
    with _conv_runner(backend, tmp_path, output="mask") as mask_runner:
        assert mask_runner.output_names == ["mask"]
        mask = mask_runner.infer({"input": x})["mask"]
    assert mask.dtype == np.uint8 and mask.shape == (2, 32, 32)
    np.testing.assert_array_equal(mask, logits.argmax(1))
    assert len(np.unique(mask)) == 5  # a constant mask could match by luck


def test_mask_dtype_widens_past_256_classes():
    logits = np.zeros((1, 300, 2, 2), np.float32)
    logits[0, 299] = 1.0
    mask = argmax_mask(logits)
    assert mask.dtype == np.int32 and (mask == 299).all()


def test_unknown_output_kind_is_a_config_error(paths):
    with pytest.raises(ConfigError, match="--output 'probs' is not valid; choose one of: logits, mask"):
        open_runner(paths["onnx"], output="probs")


def test_bench_records_the_output_kind(paths):
    with open_runner(paths["onnx"], output="mask", threads=1) as runner:
        result = bench_runner(runner, height=32, width=32, warmup=0, iters=2)
    assert result.output == "mask"


def test_cli_bench_output_mask_and_validate_allow_tf32_plumb_through(paths, tmp_path, tf32_on):
    result = CliRunner().invoke(cli, ["bench", str(paths["pt"]), "--device", "cpu", "--size", "32x32", "--iters", "2",
                                      "--warmup", "0", "--output", "mask", "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b.json").read_text())["results"][0]["output"] == "mask"

    result = CliRunner().invoke(cli, ["validate", str(paths["pt"]), "-r", str(paths["onnx"]), "--device", "cpu",
                                      "--samples", "2", "--allow-tf32", "--json", str(tmp_path / "v.json")])
    assert result.exit_code == 0, result.output
    gates = {g["metric"]: g["threshold"] for g in json.loads((tmp_path / "v.json").read_text())["gates"]}
    assert gates["rel_l2"] == TF32_FP32_GATES["rel_l2"] and gates["cosine"] == TF32_FP32_GATES["cosine"]
    assert tf32_flags() == (True, True)


def test_validate_defaults_to_the_strict_fp32_gate(paths, tmp_path):
    result = CliRunner().invoke(cli, ["validate", str(paths["pt"]), "-r", str(paths["onnx"]), "--device", "cpu",
                                      "--samples", "2", "--json", str(tmp_path / "v.json")])
    assert result.exit_code == 0, result.output
    gates = {g["metric"]: g["threshold"] for g in json.loads((tmp_path / "v.json").read_text())["gates"]}
    assert gates["rel_l2"] == 1e-4


def test_torch_reference_stays_fp32_under_default(paths):
    """Sanity on CPU: with TF32 off the torch runner's logits match ONNX Runtime's at fp32 precision."""
    x = _image(1)
    with open_runner(paths["pt"], device="cpu") as t, open_runner(paths["onnx"]) as o:
        a, b = t.infer({"input": x}), o.infer({"input": x})
    a, b = next(iter(a.values())), next(iter(b.values()))
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-5
    assert torch.get_num_threads() >= 1
