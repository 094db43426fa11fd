"""Real TensorRT-RTX: fp32/fp16/int8 Q/DQ engines of the shipped UNet and FCN-8s, a timing cache written, reused
and merged by two builds, manifests; then either parity with ONNX Runtime (a GPU TensorRT-RTX runs on) or the
one-line refusal (compute capability 9.0: H100/H200, where deserialize_cuda_engine returns None).

Skipped, with the reason, without TensorRT-RTX or a CUDA device: none of this has run on the development machines.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from deploy_unet.engine.device import TENSORRT_RTX, cuda_devices, runs_on

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu, pytest.mark.slow]


def _rtx_present() -> bool:
    for module in TENSORRT_RTX.modules:
        try:
            if importlib.util.find_spec(module) is not None:
                return True
        except (ImportError, ValueError):
            continue
    return False


if not _rtx_present():
    pytest.skip("TensorRT-RTX is not installed (pip install 'deploy-unet[tensorrt-rtx]')", allow_module_level=True)
_devices = cuda_devices()
if not _devices.devices:
    pytest.skip(f"no CUDA device ({_devices.error})", allow_module_level=True)

from deploy_unet import shipped  # noqa: E402
from deploy_unet.engine.build import build_engine, plan_build  # noqa: E402
from deploy_unet.engine.manifest import read_manifest  # noqa: E402
from deploy_unet.errors import ArtifactError  # noqa: E402

GPU = _devices.devices[0]
RUNS_HERE = runs_on(TENSORRT_RTX.runs_on, GPU.compute_capability)
GATES = {"fp32": (1e-3, 0.999), "fp16": (5e-2, 0.99), "int8": (None, 0.95)}  # max-abs logits, mask agreement


@pytest.fixture(scope="module", params=["unet", "fcn8s"])
def onnx_files(request, tmp_path_factory):
    from deploy_unet.export import export_onnx
    from deploy_unet.nets.loading import load_net
    from deploy_unet.precision import quantize

    arch = request.param
    tmp = tmp_path_factory.mktemp(arch)
    loaded = load_net(checkpoint=shipped.checkpoint(arch))
    fp32 = tmp / f"{arch}.onnx"
    export_onnx(loaded.net, fp32, height=256, width=256, mean=loaded.mean, std=loaded.std, arch=loaded.arch,
                net_config=loaded.net_config, checkpoint_sha256=loaded.checkpoint.sha256)
    files = {"fp32": fp32}
    for precision in ("fp16", "int8"):
        files[precision] = quantize(fp32, precision, target="tensorrt", calib_samples=8, eval_source=None,
                                    progress=False).path
    return arch, files


def test_builds_run_or_are_refused_and_share_a_timing_cache(onnx_files, tmp_path):
    arch, files = onnx_files
    cache = tmp_path / "rtx.timing.cache"
    sizes = []
    for precision, onnx_path in files.items():
        plan = plan_build(onnx_path, tmp_path / f"{arch}.{precision}.rtx.engine", engine_lib="tensorrt-rtx",
                          timing_cache=cache)
        result = build_engine(plan)
        manifest = read_manifest(result.manifest_path)
        assert manifest.library == "tensorrt-rtx" and manifest.precision == precision
        assert manifest.runs_on == list(TENSORRT_RTX.runs_on) and manifest.gpu["name"] == GPU.name
        assert cache.is_file()
        sizes.append(cache.stat().st_size)
        _run_or_refusal(result.engine_path, onnx_path, precision)
    assert sizes == sorted(sizes)  # each build merged into, never replaced, the shared cache


def test_second_build_reuses_the_timing_cache(onnx_files, tmp_path):
    arch, files = onnx_files
    cache = tmp_path / "rtx.timing.cache"
    first = build_engine(plan_build(files["fp32"], tmp_path / "a.engine", engine_lib="tensorrt-rtx", timing_cache=cache))
    size = cache.stat().st_size
    second = build_engine(plan_build(files["fp32"], tmp_path / "b.engine", engine_lib="tensorrt-rtx", timing_cache=cache))
    assert cache.stat().st_size >= size
    print(f"{arch}: first build {first.seconds:.2f} s, second (cache reused) {second.seconds:.2f} s")


def _run_or_refusal(engine_path, onnx_path, precision):
    from deploy_unet.runtime.onnxruntime_runner import OnnxRuntimeRunner
    from deploy_unet.runtime.tensorrt_runner import TensorRTRunner

    x = np.random.default_rng(0).standard_normal((1, 3, 256, 256)).astype(np.float32)
    if not RUNS_HERE:
        with pytest.raises(ArtifactError) as err:
            TensorRTRunner(engine_path).activate()
        message = str(err.value)
        assert "\n" not in message and f"compute capability {GPU.compute_capability}" in message
        assert " ".join(TENSORRT_RTX.runs_on) in message
        return
    with OnnxRuntimeRunner(onnx_path) as ort_runner:
        expected = ort_runner.infer({"input": x})["logits"]
    with TensorRTRunner(engine_path) as runner:
        got = runner.infer({"input": x})["logits"]
    max_abs, agreement = GATES[precision]
    if max_abs is not None:
        assert np.abs(got.astype(np.float32) - expected).max() <= max_abs
    assert (got.argmax(1) == expected.argmax(1)).mean() >= agreement
