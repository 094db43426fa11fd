"""Real TensorRT: build fp32/fp16/int8 engines and compare them with ONNX Runtime on the same ONNX.

Skipped (with the reason) where TensorRT, a CUDA device, or torch with CUDA is missing: none of this
has run on the development machines, which have no GPU and cannot install TensorRT.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from deploy_unet.engine.device import cuda_devices

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu, pytest.mark.slow]

if importlib.util.find_spec("tensorrt") is None:
    pytest.skip("TensorRT is not installed (pip install tensorrt)", allow_module_level=True)
_devices = cuda_devices()
if not _devices.devices:
    pytest.skip(f"no CUDA device ({_devices.error})", allow_module_level=True)
import torch  # noqa: E402

if not torch.cuda.is_available():
    pytest.skip("torch has no CUDA: the TensorRT runner allocates buffers with torch", allow_module_level=True)

from deploy_unet.engine.build import build_engine, plan_build  # noqa: E402
from deploy_unet.engine.manifest import read_manifest  # noqa: E402
from deploy_unet.runtime.onnxruntime_runner import OnnxRuntimeRunner  # noqa: E402
from deploy_unet.runtime.tensorrt_runner import TensorRTRunner  # noqa: E402


def _fp32_onnx(tmp_path: Path) -> Path:
    """The first shipped reference checkpoint's ONNX (by arch name) when this install has one, else a thin UNet."""
    from deploy_unet import shipped
    from deploy_unet.export import export_onnx

    checkpoints = shipped.available()
    if checkpoints:
        from deploy_unet.nets.loading import load_net  # the foundation's loader

        loaded = load_net(checkpoint=next(iter(checkpoints.values())))
        return export_onnx(loaded.net, tmp_path / "ref.onnx", height=128, width=128, mean=loaded.mean,
                           std=loaded.std, arch=loaded.arch).path
    from deploy_unet.nets import create_net

    torch.manual_seed(0)
    net = create_net("unet", depth=3, base_channels=8)
    return export_onnx(net, tmp_path / "unet.onnx", height=128, width=128).path


def _fp16_onnx(src: Path, dst: Path) -> Path:
    import onnx
    from onnxconverter_common import float16

    onnx.save(float16.convert_float_to_float16(onnx.load(src), keep_io_types=True), dst)
    return dst


def _int8_onnx(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.data = iter([{"input": rng.standard_normal((1, 3, 128, 128)).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.data, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    return dst


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trt")
    fp32 = _fp32_onnx(tmp)
    return {"fp32": fp32, "fp16": _fp16_onnx(fp32, tmp / "m.fp16.onnx"), "int8": _int8_onnx(fp32, tmp / "m.int8.onnx")}


# Tolerances: logits max-abs vs ONNX Runtime on the same file, and argmax-mask agreement.
GATES = {"fp32": (1e-3, 1.0), "fp16": (5e-2, 0.99), "int8": (None, 0.97)}


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_matches_onnxruntime(onnx_files, tmp_path, precision):
    onnx_path = onnx_files[precision]
    plan = plan_build(onnx_path, tmp_path / f"m.{precision}.engine", timing_cache=tmp_path / "cache.bin")
    assert plan.precision == precision
    result = build_engine(plan)
    manifest = read_manifest(result.manifest_path)
    assert manifest.precision == precision and manifest.gpu["name"] == _devices.devices[0].name
    x = np.random.default_rng(1).standard_normal((1, 3, 96, 160)).astype(np.float32)
    with OnnxRuntimeRunner(onnx_path) as ort_runner:
        expected = ort_runner.infer({"input": x})["logits"]
    with TensorRTRunner(result.engine_path) as trt_runner:
        got = trt_runner.infer({"input": x})["logits"]
    assert got.shape == expected.shape
    max_abs, agreement = GATES[precision]
    if max_abs is not None:
        assert np.abs(got.astype(np.float32) - expected).max() <= max_abs
    assert (got.argmax(1) == expected.argmax(1)).mean() >= agreement


def test_cuda_graph_and_layer_profile(onnx_files, tmp_path):
    plan = plan_build(onnx_files["fp32"], tmp_path / "m.engine")
    engine = build_engine(plan).engine_path
    x = np.random.default_rng(2).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with TensorRTRunner(engine) as plain:
        expected = plain.infer({"input": x})["logits"]
    with TensorRTRunner(engine, cuda_graph=True) as graphed:
        for _ in range(3):  # capture, then replays
            np.testing.assert_allclose(graphed.infer({"input": x})["logits"], expected, atol=1e-5)
    with TensorRTRunner(engine, layer_profile=True) as profiled:
        profiled.infer({"input": x})
        assert profiled.layer_times()
