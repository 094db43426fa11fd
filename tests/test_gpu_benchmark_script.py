"""benchmarks/gpu.py without a GPU: it refuses in one line, and its table renders what it measured."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

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
            "command": "python benchmarks/gpu.py", "fp16_peak_tflops": 989.0, "rows": [row], "iters": 5, "warmup": 1}
    text = gpu.markdown(data)
    assert "| unet 512x512 | 8 | eager fp16 channels_last | 2.000 | 2.500 | 4000 | 1.00x | 97.0 | 9.8% |" in text
