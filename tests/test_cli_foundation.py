import json
import os
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
from click.testing import CliRunner

from deploy_unet.cli import cli
from deploy_unet.describe import read_model_info
from tests.conftest import smooth_images


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_export_writes_a_dynamic_model_from_net_options(tmp_path):
    out = tmp_path / "u.onnx"
    result = invoke("export", "--depth", 2, "--base-channels", 4, "--num-classes", 3,
                    "--height", 32, "--width", 48, "-o", out)
    assert result.exit_code == 0, result.output
    assert "ONNX Runtime vs PyTorch max abs error" in result.output
    info = read_model_info(out)
    assert (info.divisor, info.num_classes, info.export_shape) == (4, 3, [1, 3, 32, 48])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for h, w in [(8, 12), (20, 4)]:  # sizes other than the export one
        assert session.run(None, {"input": smooth_images(2, 3, h, w)})[0].shape == (2, 3, h, w)


def test_export_non_divisible_size_is_one_line_exit_2_and_no_file(tmp_path):
    out = tmp_path / "u.onnx"
    result = invoke("export", "--depth", 2, "--base-channels", 4, "--height", 30, "-o", out)
    assert result.exit_code == 2
    assert "error: height 30 is not divisible by 4 (= 2**2 for UNet depth 2); nearest valid: 32 or 28" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_export_option_the_arch_lacks_is_rejected(tmp_path):
    result = invoke("export", "--arch", "fcn8s", "--depth", 3, "-o", tmp_path / "f.onnx")
    assert result.exit_code == 2
    assert "unknown option(s) depth for net 'fcn8s'" in result.output


def test_export_mean_with_wrong_length(tmp_path):
    result = invoke("export", "--depth", 1, "--base-channels", 2, "--mean", "0.5,0.5", "-o", tmp_path / "u.onnx")
    assert result.exit_code == 2
    assert "--mean has 2 values; the net takes 3 channels" in result.output


def test_export_missing_checkpoint(tmp_path):
    result = invoke("export", "--checkpoint", tmp_path / "nope.pt", "-o", tmp_path / "u.onnx")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_inspect_json_reports_io_metadata_and_ops(thin_unet_onnx):
    _, path = thin_unet_onnx
    result = invoke("inspect", path, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}]
    assert report["outputs"][0]["shape"] == ["batch", 2, "height", "width"]
    assert report["metadata"]["divisor"] == "8"
    # A depth-3 UNet: 3 pools, 3 skip concats, 3 up-convs.
    assert report["op_histogram"]["MaxPool"] == 3
    assert report["op_histogram"]["Concat"] == 3
    assert report["op_histogram"]["ConvTranspose"] == 3
    assert report["quantize_linear"] == report["dequantize_linear"] == report["cast"] == 0
    assert report["file_size_bytes"] == Path(path).stat().st_size
    assert report["parameters"] > 0


def test_inspect_table_output(thin_unet_onnx):
    _, path = thin_unet_onnx
    result = invoke("inspect", path)
    assert result.exit_code == 0
    assert "(batch, 3, height, width)" in result.output and "ConvTranspose" in result.output


def test_inspect_missing_file():
    result = invoke("inspect", "missing.onnx")
    assert result.exit_code == 2 and result.output.strip() == "error: ONNX file missing.onnx does not exist"


def test_inspect_non_onnx_file(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"\x00garbage")
    result = invoke("inspect", tmp_path / "x.onnx")
    assert result.exit_code == 2 and "is not a readable ONNX file" in result.output


def test_installed_console_script_runs(tmp_path, thin_unet_onnx):
    """The real entry point, as a user runs it: `deploy-unet` from the environment's bin folder."""
    _, path = thin_unet_onnx
    script = Path(sys.executable).parent / "deploy-unet"
    assert script.exists(), "install the project (pip install -e .) so the console script exists"
    help_out = subprocess.run([script, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("export", "inspect"):
        assert command in help_out
    done = subprocess.run([script, "inspect", path, "--json"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["metadata"]["arch"] == "unet"
    bad = subprocess.run([script, "inspect", tmp_path / "none.onnx"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr


def test_help_needs_no_tensorrt():
    code = "import sys, deploy_unet.cli; assert 'tensorrt' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
