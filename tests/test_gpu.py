"""torch on CUDA: the runner (true fp32, pinned transfers, device-side mask), CUDA-event phases in bench, CUDA-graph
replay, validate against ONNX Runtime on CPU, doctor, and the bench harness overhead.

Skipped, with the reason, where torch has no CUDA device: none of this has run on the development machines.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu]

if torch.version.cuda is None or not torch.cuda.is_available():
    pytest.skip(f"no CUDA device for torch {torch.__version__}", allow_module_level=True)

from deploy_unet import shipped  # noqa: E402
from deploy_unet.bench import bench_runner  # noqa: E402
from deploy_unet.doctor import run_doctor  # noqa: E402
from deploy_unet.runtime import open_runner  # noqa: E402
from deploy_unet.runtime.torch_runner import tf32_flags  # noqa: E402
from deploy_unet.validate import validate_artifacts  # noqa: E402

UNET = shipped.checkpoint("unet")


@pytest.fixture(scope="module")
def unet_onnx(tmp_path_factory):
    from deploy_unet.export import export_onnx
    from deploy_unet.nets.loading import load_net

    loaded = load_net(checkpoint=UNET)
    path = tmp_path_factory.mktemp("gpu") / "unet.onnx"
    export_onnx(loaded.net, path, height=256, width=256, mean=loaded.mean, std=loaded.std, arch=loaded.arch,
                net_config=loaded.net_config, checkpoint_sha256=loaded.checkpoint.sha256)
    return path


def _x(batch=2, size=256, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def test_cuda_runner_is_true_fp32_and_restores_tf32():
    before = tf32_flags()
    x = _x()
    with open_runner(UNET, device="cpu") as cpu, open_runner(UNET, device="cuda") as gpu:
        assert tf32_flags() == (False, False)
        a, b = cpu.infer({"input": x})["logits"], gpu.infer({"input": x})["logits"]
    assert tf32_flags() == before
    assert np.linalg.norm(b - a) / np.linalg.norm(a) < 1e-5  # TF32 gives ~1e-4 on this net


def test_cuda_mask_is_the_argmax_of_the_cuda_logits():
    x = _x()
    with open_runner(UNET, device="cuda") as logits_runner, open_runner(UNET, device="cuda", output="mask") as masks:
        logits = logits_runner.infer({"input": x})["logits"]
        mask = masks.infer({"input": x})["mask"]
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, logits.argmax(1))


def test_results_survive_the_next_call():
    """Pinned output memory is reused only after the caller drops it: an earlier result must not change."""
    with open_runner(UNET, device="cuda") as runner:
        first = runner.infer({"input": _x(seed=1)})["logits"]
        kept = first.copy()
        runner.infer({"input": _x(seed=2)})
    np.testing.assert_array_equal(first, kept)


def test_bench_times_phases_with_cuda_events():
    with open_runner(UNET, device="cuda") as runner:
        result = bench_runner(runner, batch=2, height=256, width=256, warmup=3, iters=10)
    assert set(result.phases_ms) == {"h2d", "compute", "d2h"}
    phase_sum = sum(result.phases_ms[p].median for p in ("h2d", "compute", "d2h"))
    assert 0 < phase_sum <= result.latency_ms.median * 1.05


def test_cuda_graph_replay_matches_eager():
    x = _x()
    with open_runner(UNET, device="cuda") as eager, open_runner(UNET, device="cuda", cuda_graph=True) as graphed:
        want, got = eager.infer({"input": x})["logits"], graphed.infer({"input": x})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_validate_torch_cuda_against_onnxruntime_cpu(unet_onnx):
    report = validate_artifacts(UNET, unet_onnx, ref_backend="onnxruntime", samples=4, device="cuda", progress=False)
    assert report.passed, [g.describe() for g in report.failed_gates]  # the strict fp32 gate: TF32 is off


def test_validate_allow_tf32_uses_the_tf32_gate(unet_onnx):
    report = validate_artifacts(UNET, unet_onnx, samples=4, device="cuda", progress=False, allow_tf32=True)
    assert report.passed, [g.describe() for g in report.failed_gates]


def test_doctor_on_a_gpu():
    report = run_doctor()
    assert report.backend("torch-cuda").usable
    assert report.cuda["devices"] and report.cuda["devices"][0]["name"] == torch.cuda.get_device_name(0)


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 8])
def test_bench_harness_overhead_is_at_most_5_percent(batch):
    """bench's median (runner + harness, --output mask) vs a bare loop doing the same work by hand: pinned input,
    H2D, forward, argmax to uint8 on the device, D2H into pinned memory, synchronize."""
    from deploy_unet.nets.loading import load_net

    x = _x(batch=batch, size=512)
    with open_runner(UNET, device="cuda", output="mask") as runner:
        result = bench_runner(runner, batch=batch, height=512, width=512, warmup=10, iters=50)

    net = load_net(checkpoint=UNET).net.cuda().eval()
    pinned = torch.from_numpy(x).pin_memory()
    host = torch.empty((batch, 512, 512), dtype=torch.uint8, pin_memory=True)
    bare = []
    with torch.inference_mode():
        for i in range(60):
            t0 = time.perf_counter()
            y = net(pinned.to("cuda", non_blocking=True)).argmax(1).to(torch.uint8)
            host.copy_(y, non_blocking=True)
            torch.cuda.current_stream().synchronize()
            if i >= 10:
                bare.append((time.perf_counter() - t0) * 1e3)
    assert result.latency_ms.median <= 1.05 * float(np.median(bare)), (result.latency_ms.median, np.median(bare))


def _rel(a, b):
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b))


def test_cuda_graph_runner_replays_new_data_and_keeps_a_graph_per_shape():
    fast = {"torch_precision": "fp16", "channels_last": True}
    first, second, small = _x(seed=1), _x(seed=2), _x(batch=1, size=128, seed=3)
    with open_runner(UNET, device="cuda", **fast) as plain, \
            open_runner(UNET, device="cuda", cuda_graph=True, **fast) as graphed:
        inputs = (first, second, small, first)  # back to the first shape: its kept graph replays
        want = [plain.infer({"input": x})["logits"] for x in inputs]
        got = [graphed.infer({"input": x})["logits"] for x in inputs]
        assert len(graphed._graphs) == 2
        assert graphed.mode == "fp16 channels_last cuda-graph"
    for g, w in zip(got, want):
        assert g.shape == w.shape and _rel(g, w) < 1e-3  # same fp16 kernels, captured or not
    assert _rel(got[1], got[0]) > 0.01  # the replay saw the second input, not the captured first one


def test_fp16_cuda_graph_candidate_passes_the_fp16_gates_against_onnxruntime_cpu(unet_onnx):
    report = validate_artifacts(UNET, unet_onnx, ref_backend="onnxruntime", samples=4, device="cuda", progress=False,
                                candidate_options={"torch_precision": "fp16", "channels_last": True,
                                                   "cuda_graph": True})
    assert report.precision == "fp16"
    assert report.passed, [g.describe() for g in report.failed_gates]


def test_bench_times_cuda_graph_phases():
    with open_runner(UNET, device="cuda", cuda_graph=True, output="mask") as runner:
        result = bench_runner(runner, batch=2, height=256, width=256, warmup=3, iters=10)
    assert "cuda-graph" in result.label
    assert set(result.phases_ms) == {"h2d", "compute", "d2h"}
    assert sum(result.phases_ms[p].median for p in ("h2d", "compute", "d2h")) <= result.latency_ms.median * 1.05


@pytest.mark.slow
def test_compiled_runner_gives_the_eager_logits():
    x = _x(batch=1, size=128)
    with open_runner(UNET, device="cuda") as eager, \
            open_runner(UNET, device="cuda", compile="max-autotune-no-cudagraphs") as compiled:
        want, got = eager.infer({"input": x})["logits"], compiled.infer({"input": x})["logits"]
    assert _rel(got, want) < 1e-4  # TF32 is off in both


def test_volume_net_fp16_channels_last_3d_cuda_graph_matches_fp32_on_the_gpu():
    # The 3D UNet in every fast mode the runner has: NDHWC (channels_last_3d) fp16 weights, a captured graph.
    unet3d = shipped.checkpoint("unet3d")
    x = np.random.default_rng(4).standard_normal((2, 1, 32, 64, 64)).astype(np.float32)
    with open_runner(unet3d, device="cuda") as fp32, open_runner(
            unet3d, device="cuda", torch_precision="fp16", channels_last=True, cuda_graph=True) as fast:
        want = fp32.infer({"input": x})["logits"]
        got = fast.infer({"input": x})["logits"]
        again = fast.infer({"input": x})["logits"]  # the replay
    assert got.shape == want.shape == (2, 3, 32, 64, 64)
    assert _rel(got, want) < 5e-3 and np.array_equal(got, again)
    assert (got.argmax(1) == want.argmax(1)).mean() > 0.999
