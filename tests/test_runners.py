"""Each runner against the others on the same inputs, and open_runner's choices and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_runners import shape_samples, thin_artifacts, thin_unet

from deploy_unet.checkpoint import save_checkpoint
from deploy_unet.errors import (
    ArtifactError,
    ConfigError,
    DeployUnetError,
    MissingDependencyError,
    ShapeContractError,
)
from deploy_unet.nets import create_net
from deploy_unet.runtime import BACKENDS, open_runner
from deploy_unet.runtime.onnxruntime_runner import OnnxRuntimeRunner
from deploy_unet.runtime.torch_runner import TorchRunner


@pytest.fixture(scope="module")
def artifacts():
    return thin_artifacts()


@pytest.fixture(scope="module")
def images():
    return np.concatenate([s.image for s in shape_samples(2, height=32, width=64)])


def _run(runner, x):
    with runner:
        (name,) = runner.input_spec
        return runner.infer({name: x})[runner.output_names[0]]


def test_torch_checkpoint_matches_onnxruntime(artifacts, images):
    torch_out = _run(open_runner(artifacts["pt"]), images)
    ort_out = _run(open_runner(artifacts["onnx"]), images)
    assert torch_out.shape == (2, 3, 32, 64)
    np.testing.assert_allclose(ort_out, torch_out, rtol=1e-4, atol=1e-5)


def test_torch_runner_matches_the_module_it_wraps(artifacts, images):
    net = thin_unet()
    with torch.no_grad():
        expected = net(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(_run(open_runner(artifacts["pt"], device="cpu"), images), expected, rtol=1e-6, atol=1e-6)


def test_onnx_metadata_net_on_torch_matches_onnxruntime(artifacts, images):
    runner = open_runner(artifacts["onnx"], "torch", checkpoint=artifacts["pt"])
    assert isinstance(runner, TorchRunner) and runner.info.arch == "unet"
    np.testing.assert_allclose(_run(runner, images), _run(open_runner(artifacts["onnx"]), images), rtol=1e-4, atol=1e-5)


def test_pad_crops_back_and_backends_agree(artifacts, images):
    odd = images[:, :, :30, :50]  # divisor is 4 for depth 2
    with pytest.raises(ShapeContractError, match="height 30 is not divisible by 4"):
        _run(open_runner(artifacts["pt"]), odd)
    torch_out = _run(open_runner(artifacts["pt"], pad=True), odd)
    ort_out = _run(open_runner(artifacts["onnx"], pad=True), odd)
    assert torch_out.shape == (2, 3, 30, 50)
    np.testing.assert_allclose(ort_out, torch_out, rtol=1e-4, atol=1e-5)


def test_open_runner_picks_backend_from_extension(artifacts):
    assert isinstance(open_runner(artifacts["pt"]), TorchRunner)
    ort = open_runner(artifacts["onnx"])
    assert isinstance(ort, OnnxRuntimeRunner) and ort.providers == ["CPUExecutionProvider"]
    assert open_runner(artifacts["onnx"], "onnxruntime-trt").providers[0] == "TensorrtExecutionProvider"


def test_open_runner_errors_name_the_valid_choices(artifacts, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown extension '\.txt'.*\.onnx"):
        (tmp_path / "model.txt").write_text("x")
        open_runner(tmp_path / "model.txt")
    with pytest.raises(ConfigError, match="choose one of: " + ", ".join(BACKENDS)):
        open_runner(artifacts["onnx"], "coreml")
    with pytest.raises(ConfigError, match="cannot run a .pt file; for .pt choose one of: torch"):
        open_runner(artifacts["pt"], "onnxruntime")
    with pytest.raises(ArtifactError, match="does not exist"):
        open_runner(tmp_path / "missing.onnx")
    with pytest.raises(ConfigError, match="--checkpoint"):
        open_runner(artifacts["onnx"], "torch")


def test_missing_execution_provider_is_a_clear_error(artifacts):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA execution provider is installed")
    with pytest.raises(MissingDependencyError, match="CUDAExecutionProvider.*onnxruntime-gpu"):
        _run(open_runner(artifacts["onnx"], "onnxruntime-cuda"), np.zeros((1, 3, 32, 32), np.float32))


def test_engine_without_tensorrt_is_a_user_error(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed")
    except ImportError:
        pass
    with pytest.raises(DeployUnetError):  # MissingDependencyError until the TensorRT runner lands
        with open_runner(engine):
            pass


def test_cuda_device_without_cuda_is_a_clear_error(artifacts):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(MissingDependencyError, match="no CUDA device"):
        open_runner(artifacts["pt"], device="cuda")
    assert open_runner(artifacts["pt"], device="auto").device.type == "cpu"


def test_checkpoint_of_another_net_is_refused(artifacts, tmp_path):
    fcn = create_net("fcn8s", width_mult=0.125, fc_channels=8, num_classes=3)
    save_checkpoint(tmp_path / "fcn.pt", fcn)
    with pytest.raises(ArtifactError, match="'fcn8s' net but the ONNX metadata says 'unet'"):
        open_runner(artifacts["onnx"], "torch", checkpoint=tmp_path / "fcn.pt")


def test_bare_state_dict_needs_the_net_named(tmp_path):
    torch.save(thin_unet().state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ArtifactError, match="does not name its architecture"):
        open_runner(tmp_path / "bare.pt")


def test_bad_inputs_give_one_line_errors(artifacts):
    with open_runner(artifacts["pt"]) as runner:
        with pytest.raises(ShapeContractError, match="has 1 channels; the model takes 3"):
            runner.infer({"input": np.zeros((1, 1, 32, 32), np.float32)})
        bad = np.zeros((1, 3, 32, 32), np.float32)
        bad[0, 0, 0, 0] = np.nan
        with pytest.raises(DeployUnetError, match="NaN or Inf"):
            runner.infer({"input": bad})


def test_torch_runner_restores_thread_count(artifacts):
    before = torch.get_num_threads()
    with open_runner(artifacts["pt"], threads=1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
