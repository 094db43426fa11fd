"""The C++ engine wrapper and unet_infer compile (g++ -fsyntax-only) against TensorRT's or TensorRT-RTX's headers.

Headers are never in this repository: point DEPLOY_UNET_TRT_INCLUDE (TensorRT) or DEPLOY_UNET_TRT_RTX_INCLUDE
(TensorRT-RTX) at a folder holding NvInferRuntime.h; CUDA headers come from DEPLOY_UNET_CUDA_INCLUDE or the
usual toolkit folders. Each case skips, saying why, when its headers or g++ are missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "cpp" / "src" / "trt_engine.cpp", ROOT / "cpp" / "tools" / "unet_infer.cpp"]
CUDA_CANDIDATES = ["/usr/local/cuda-13.0/include", "/usr/local/cuda/include", "/usr/include"]


def _cuda_include() -> str | None:
    for folder in filter(None, [os.environ.get("DEPLOY_UNET_CUDA_INCLUDE"), *CUDA_CANDIDATES]):
        if (Path(folder) / "cuda_runtime_api.h").is_file():
            return folder
    return None


@pytest.mark.parametrize("library, variable", [("tensorrt-rtx", "DEPLOY_UNET_TRT_RTX_INCLUDE"),
                                               ("tensorrt", "DEPLOY_UNET_TRT_INCLUDE")])
def test_engine_wrapper_compiles_against_the_headers(library, variable):
    headers = os.environ.get(variable)
    if not headers or not (Path(headers) / "NvInferRuntime.h").is_file():
        pytest.skip(f"{variable} does not name a folder with {library}'s NvInferRuntime.h")
    cuda = _cuda_include()
    if cuda is None:
        pytest.skip("no CUDA headers (cuda_runtime_api.h); set DEPLOY_UNET_CUDA_INCLUDE")
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ is not installed")
    for source in SOURCES:
        proc = subprocess.run(
            [compiler, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", f"-I{ROOT / 'cpp' / 'include'}",
             "-isystem", headers, "-isystem", cuda, str(source)],
            capture_output=True, text=True,
        )
        assert proc.returncode == 0, f"{source.name} against {library} headers in {headers}:\n{proc.stderr}"
        assert "warning" not in proc.stderr, proc.stderr
