"""benchmarks/gpu.py without a GPU: it refuses in one line, and its table renders what it measured."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the script would run for real")
def test_refuses_without_cuda(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "gpu.md")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert not (tmp_path / "gpu.md").exists()


def test_markdown_table_and_peak_lookup():
    gpu = _module()
    assert gpu.fp16_peak("NVIDIA H100 80GB HBM3") == 989.0 and gpu.fp16_peak("NVIDIA GeForce RTX 4090") == 165.0
    assert gpu.fp16_peak("Some Future GPU") is None
    row = {"arch": "unet", "batch": 8, "size": 512, "mode": gpu.BASELINE, "p50_ms": 2.0, "p99_ms": 2.5,
           "images_per_s": 4000.0, "speed_vs_fp16_eager": 1.0, "tflops": 97.0, "fraction_of_fp16_peak": 0.098}
    data = {"machine": {"gpu": "G", "compute_capability": "9.0", "driver": "1", "cuda": "13.0", "cudnn": "9",
                        "torch": "2", "python": "3", "date": "d"},
            "command": "python benchmarks/gpu.py", "fp16_peak_tflops": 989.0, "rows": [row], "iters": 5, "warmup": 1,
            "summary": []}
    text = gpu.markdown(data)
    assert "| unet 512x512 | 8 | eager fp16 channels_last | 2.000 | 2.500 | 4000 | 1.00x | 97.0 | 9.8% |" in text


def test_summary_sets_the_best_runner_against_the_best_bare_mode():
    gpu = _module()
    bare = [{"arch": "unet", "batch": 1, "mode": m, "p50_ms": t} for m, t in (("eager fp32", 1.8), ("graph", 1.0))]
    ours = [{"arch": "unet", "batch": 1, "size": 512, "mode": f"runner: {m}", "bare_mode": m, "compute_p50_ms": t,
             "compute_p99_ms": t, "end_to_end_p50_ms": t + 1, "h2d_p50_ms": 0.5, "d2h_p50_ms": 0.5,
             "compute_vs_bare": 1.0} for m, t in (("fp32", 1.9), ("fp16 cuda-graph", 1.1))]
    (s,) = gpu.summary(bare + ours)
    assert (s["best_bare"], s["best_runner"]) == ("graph", "runner: fp16 cuda-graph")
    assert s["ratio"] == pytest.approx(1.1)
    data = {"machine": {k: "x" for k in ("gpu", "compute_capability", "driver", "cuda", "cudnn", "torch", "python",
                                         "date")},
            "command": "c", "fp16_peak_tflops": None, "rows": ours, "iters": 1, "warmup": 1, "summary": [s]}
    text = gpu.markdown(data)
    assert "| unet | 1 | graph | 1.000 | runner: fp16 cuda-graph | 1.100 | 1.10x |" in text
    assert "| unet 512x512 | 1 | runner: fp32 | 1.900 | 1.900 | 1.00x | 0.500 | 0.500 | 2.900 |" in text


SESSION = SCRIPT.parent / "gpu_session.sh"


@pytest.mark.parametrize("script", ["gpu_session.sh", "gpu_session_prepare.sh"])
def test_session_scripts_parse(script):
    proc = subprocess.run(["bash", "-n", str(SCRIPT.parent / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("part, message", [
    ("nonsense", "error: unknown part 'nonsense'"),
    ("rtx", "error: TensorRT-RTX halves missing"),
])
def test_session_refuses_what_it_cannot_do(tmp_path, part, message):
    env = {"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out"), "GPU_SESSION_WORK": str(tmp_path / "work"),
           "RTX_HALF_A": str(tmp_path / "absent"), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SESSION), part], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert message in (tmp_path / "out" / f"{part}.log").read_text()
    assert (tmp_path / "out" / f"{part}.tar.gz").exists()  # what it has is packed even when it stops


def test_volume_net_is_timed_at_the_3d_size_in_the_3d_layout():
    # What the GPU session will run for the 3D UNet, checked here on the CPU: a cubic NCDHW input of --size-3d, and
    # fp16 modes laid out channels_last_3d (torch.channels_last raises on 5-D weights).
    gpu = _module()
    from deploy_unet import shipped
    from deploy_unet.nets.loading import load_net

    args = gpu.argparse.Namespace(size=512, size_3d=16)
    net3d = load_net(checkpoint=shipped.checkpoint("unet3d")).net.eval()
    net2d = load_net(checkpoint=shipped.checkpoint("unet")).net.eval()
    assert gpu.spatial_size(net3d, args) == (16, 16, 16) and gpu.spatial_size(net2d, args) == (512, 512)
    assert gpu.shape_label((128, 128, 128)) == "128x128x128"
    x = torch.randn(1, net3d.in_channels, 16, 16, 16)
    with torch.inference_mode():
        y = gpu.make_callable(gpu.BASELINE, net3d, x)()
    assert y.shape == (1, net3d.num_classes, 16, 16, 16) and y.dtype == torch.float16
    row = {"arch": "unet3d", "batch": 1, "size": 128, "shape": "128x128x128", "mode": gpu.BASELINE, "p50_ms": 9.0,
           "p99_ms": 9.5, "images_per_s": 111.0, "speed_vs_fp16_eager": 1.0, "tflops": 50.0,
           "fraction_of_fp16_peak": None}
    data = {"machine": {k: "x" for k in ("gpu", "compute_capability", "driver", "cuda", "cudnn", "torch", "python",
                                         "date")},
            "command": "c", "fp16_peak_tflops": None, "rows": [row], "iters": 1, "warmup": 1, "summary": []}
    assert "| unet3d 128x128x128 | 1 | eager fp16 channels_last | 9.000 |" in gpu.markdown(data)


def test_stream_check_makes_a_tiled_scene_and_compares_masks(tmp_path):
    # The GPU session's streamed-predict check, run on the CPU: a tiled RGB TIFF with edges to segment, and the
    # share of equal pixels of two masks.
    tifffile = pytest.importorskip("tifffile")
    spec = importlib.util.spec_from_file_location("gpu_stream_check", SCRIPT.with_name("gpu_stream_check.py"))
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    check.main(["make", str(tmp_path / "big.tif"), "--size", "1100"])
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        page = tif.pages[0]
        assert page.shape == (1100, 1100, 3) and page.is_tiled and page.tilelength == 512
        image = page.asarray()
    assert image.std() > 20 and len(np.unique(image[..., 2])) > 50  # not blank, not constant
    a = (image[..., 0] > 128).astype(np.uint8)
    b = a.copy()
    b[:10] = 1 - b[:10]
    tifffile.imwrite(tmp_path / "a.tif", a)
    tifffile.imwrite(tmp_path / "b.tif", b)
    assert check.compare(str(tmp_path / "a.tif"), str(tmp_path / "b.tif")) == pytest.approx(1 - 10 / 1100)
