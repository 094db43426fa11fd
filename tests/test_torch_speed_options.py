"""The torch runner's speed options (--torch-precision fp16, --channels-last, --compile, --cuda-graph): same answers
as the plain fp32 runner within each precision's tolerance, the fp32 net left untouched, options a backend does not
have refused in one line. What runs on a CPU is tested here; the CUDA side (graphs, fp16 on tensor cores) is in
tests/test_gpu.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers_runners import thin_artifacts

from deploy_unet.bench import bench_runner
from deploy_unet.cli import cli
from deploy_unet.errors import ConfigError
from deploy_unet.runtime import open_runner
from deploy_unet.validate import validate_artifacts


@pytest.fixture(scope="module")
def paths():
    return thin_artifacts()


def _x(batch=2, size=32, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def _logits(path, **options):
    with open_runner(path, device="cpu", **options) as runner:
        return runner.infer({"input": _x()})["logits"]


def _rel_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_channels_last_gives_the_fp32_logits(paths):
    plain = _logits(paths["pt"])
    nhwc = _logits(paths["pt"], channels_last=True)
    assert nhwc.flags.c_contiguous and nhwc.dtype == np.float32
    assert _rel_l2(nhwc, plain) < 1e-5


def test_channels_last_on_a_volume_net_uses_the_3d_layout():
    # A 3D net's conv weights are 5-D: torch.channels_last (4-D only) raised "required rank 4 tensor"; the runner
    # lays a volume net out channels_last_3d (NDHWC) and gives the same logits.
    from deploy_unet import shipped

    x = np.random.default_rng(0).standard_normal((1, 1, 16, 16, 16)).astype(np.float32)
    with open_runner(shipped.checkpoint("unet3d"), device="cpu") as runner:
        plain = runner.infer({"input": x})["logits"]
    with open_runner(shipped.checkpoint("unet3d"), device="cpu", channels_last=True) as runner:
        assert runner.input_spec["input"].shape == ("N", 1, "D", "H", "W")
        ndhwc = runner.infer({"input": x})["logits"]
        assert runner._module.stem[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert ndhwc.flags.c_contiguous and ndhwc.shape == plain.shape
    assert _rel_l2(ndhwc, plain) < 1e-5


def test_fp16_is_close_to_fp32_and_leaves_the_fp32_net_alone(paths):
    plain = _logits(paths["pt"])
    runner = open_runner(paths["pt"], device="cpu", torch_precision="fp16")
    with runner:
        half = runner.infer({"input": _x()})["logits"]
    assert half.dtype == np.float32  # logits come back as fp32, whatever ran inside
    error = _rel_l2(half, plain)
    assert 0 < error < 5e-3  # not zero: it really ran in half; fp16 has 11 bits of mantissa
    assert {p.dtype for p in runner.net.parameters()} == {torch.float32}
    assert runner.mode == "fp16"


def test_compile_gives_the_eager_logits(paths):
    plain = _logits(paths["pt"])
    compiled = _logits(paths["pt"], compile="default")
    assert _rel_l2(compiled, plain) < 1e-5


def test_cuda_graph_without_cuda_is_one_clear_error(paths):
    with pytest.raises(ConfigError, match="--cuda-graph needs a CUDA device.*--device cuda"):
        open_runner(paths["pt"], device="cpu", cuda_graph=True)


@pytest.mark.parametrize("options, message", [
    ({"compile": "fastest"}, "not a torch.compile mode"),
    ({"torch_precision": "int8"}, "--torch-precision 'int8' is not valid"),
])
def test_bad_speed_options_are_refused(paths, options, message):
    with pytest.raises(ConfigError, match=message):
        open_runner(paths["pt"], device="cpu", **options)


@pytest.mark.parametrize("options, flag", [
    ({"compile": "default"}, "--compile applies to the torch backend only"),
    ({"channels_last": True}, "--channels-last applies to the torch backend only"),
    ({"torch_precision": "fp16"}, "--torch-precision applies to the torch backend only"),
    ({"cuda_graph": True}, "--cuda-graph applies to the torch and tensorrt backends"),
])
def test_options_a_backend_lacks_are_refused(paths, options, flag):
    with pytest.raises(ConfigError, match=flag):
        open_runner(paths["onnx"], **options)


def test_bench_labels_say_how_the_net_ran(paths):
    with open_runner(paths["pt"], device="cpu", channels_last=True, torch_precision="fp16") as runner:
        result = bench_runner(runner, batch=1, height=32, width=32, warmup=1, iters=2)
    assert "[torch fp16 channels_last]" in result.label
    assert result.precision == "fp16"


def test_validate_applies_the_options_to_the_candidate_only(paths):
    """An fp16 candidate is held to the fp16 gates against the plain fp32 reference: a reference that also ran
    in fp16 would show a zero error."""
    report = validate_artifacts(paths["pt"], paths["pt"], samples=2, device="cpu", progress=False,
                                candidate_options={"torch_precision": "fp16", "channels_last": True})
    assert report.precision == "fp16"
    assert (report.candidate_backend, report.reference_backend) == ("torch fp16 channels_last", "torch")
    assert report.passed, [g.describe() for g in report.failed_gates]
    assert report.outputs[0].max_abs > 0


@pytest.mark.parametrize("args, expected", [
    (["--compile", "default"], "--compile applies to the torch backend only"),
    (["--cuda-graph"], "--cuda-graph applies to the torch and tensorrt backends"),
])
def test_cli_refuses_a_speed_option_for_onnxruntime(paths, tmp_path, args, expected):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(cli, ["bench", str(paths["onnx"]), "--iters", "1", "--json", str(out), *args])
    assert result.exit_code == 2
    assert expected in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_cli_cuda_graph_on_cpu_exits_2(paths):
    result = CliRunner().invoke(cli, ["bench", str(paths["pt"]), "--device", "cpu", "--cuda-graph", "--iters", "1"])
    assert result.exit_code == 2
    assert "--cuda-graph needs a CUDA device" in result.output
