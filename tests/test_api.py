"""The top-level Python API: lazy, cheap to import, typed and documented, the CLI's own entry points, and the
README's "Python API" example runs as written."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

import deploy_unet
from deploy_unet.cli import cli

REPO = Path(__file__).resolve().parent.parent
PUBLIC = ("create_net", "export_onnx", "quantize", "build_engine", "open_runner", "validate", "bench", "predict")
HEAVY = ("torch", "onnx", "onnxruntime", "tensorrt", "tensorrt_rtx", "cuda", "pycuda", "matplotlib")
GPU_LIBS = ("tensorrt", "tensorrt_rtx", "tensorrt_bindings", "tensorrt_rtx_bindings", "cuda", "pycuda")


def _modules_after(code: str) -> dict[str, list[str]]:
    script = (
        "import json, sys\n" + code + "\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "heavy": sorted({m.split(".")[0] for m in loaded} & set(HEAVY)),
        "gpu": sorted({m.split(".")[0] for m in loaded} & set(GPU_LIBS)),
        "ours": sorted(m for m in loaded if m.startswith("deploy_unet")),
    }


def test_import_deploy_unet_loads_nothing_heavy():
    loaded = _modules_after("import deploy_unet")
    assert loaded["heavy"] == [] and loaded["ours"] == ["deploy_unet"]


def test_touching_every_public_name_loads_no_tensorrt_or_cuda():
    loaded = _modules_after("import deploy_unet\n" + "\n".join(f"deploy_unet.{n}" for n in PUBLIC))
    assert loaded["gpu"] == []
    assert "deploy_unet.runtime.tensorrt_runner" not in loaded["ours"]


@pytest.mark.parametrize("name", PUBLIC)
def test_each_public_name_is_documented_and_typed(name):
    entry = getattr(deploy_unet, name)
    assert callable(entry) and name in dir(deploy_unet) and name in deploy_unet.__all__
    doc = inspect.getdoc(getattr(entry, "__entry__", entry))
    assert doc and len(doc) > 40
    signature = inspect.signature(entry)
    assert signature.return_annotation is not inspect.Signature.empty
    untyped = [p.name for p in signature.parameters.values() if p.annotation is inspect.Parameter.empty]
    assert untyped == []


def test_stage_modules_stay_modules_and_call_their_entry_point():
    import deploy_unet.bench as bench_module
    from deploy_unet.bench import bench, bench_runner  # noqa: F401  (every import form keeps working)
    from deploy_unet.predict import predict
    from deploy_unet.validate import validate_artifacts

    assert deploy_unet.bench is bench_module and bench_module.__entry__ is bench
    assert deploy_unet.validate.__entry__ is validate_artifacts
    assert deploy_unet.predict.__entry__ is predict
    assert inspect.signature(deploy_unet.validate) == inspect.signature(validate_artifacts)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        deploy_unet.nope  # noqa: B018


class _Called(Exception):
    pass


def _raise_called(*_args, **_kwargs):
    raise _Called


@pytest.mark.parametrize("target, args", [
    ("deploy_unet.predict.predict", ["predict", "{onnx}", "{onnx}", "-o", "{tmp}/m"]),
    ("deploy_unet.validate.validate_artifacts", ["validate", "{onnx}", "-r", "{onnx}"]),
    ("deploy_unet.bench.bench", ["bench", "{onnx}"]),
    ("deploy_unet.precision.quantize", ["quantize", "{onnx}", "--precision", "fp16"]),
    ("deploy_unet.engine.build.build_engine", ["build-engine", "{onnx}", "-o", "{tmp}/x.engine"]),
    ("deploy_unet.export.export_onnx", ["export", "--arch", "unet", "--depth", "2", "-o", "{tmp}/x.onnx"]),
])
def test_the_cli_calls_the_public_functions(target, args, thin_unet_onnx, tmp_path, monkeypatch):
    """Each command reaches the very function object the package exposes (patched here to stop it)."""
    import importlib

    module_name, attribute = target.rsplit(".", 1)
    module = importlib.import_module(module_name)
    public = {"predict": "predict", "validate_artifacts": "validate", "bench": "bench", "quantize": "quantize",
              "build_engine": "build_engine", "export_onnx": "export_onnx"}[attribute]
    exposed = getattr(deploy_unet, public)
    assert getattr(exposed, "__entry__", exposed) is getattr(module, attribute)
    monkeypatch.setattr(module, attribute, _raise_called)
    filled = [a.format(onnx=thin_unet_onnx[1], tmp=tmp_path) for a in args]
    result = CliRunner().invoke(cli, filled)
    assert isinstance(result.exception, _Called), result.output


def _readme_python_api_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README's Python API section has no ```python block"
    return match.group(1)


def test_readme_python_api_example_runs_as_written(tmp_path):
    """As CI runs it (.ci/readme_example.py): pasted into an empty folder, nothing else prepared."""
    code = _readme_python_api_block()
    assert len(code.strip().splitlines()) <= 13  # a short example, not a tutorial
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1].startswith("True {'0 background': ")
    assert (tmp_path / "masks" / "image_0000.overlay.png").is_file()
    assert Image.open(tmp_path / "masks" / "image_0000.mask.png").size == (150, 100)
    assert json.loads((tmp_path / "masks" / "predictions.json").read_text())["images"][0]["size"] == [100, 150]
