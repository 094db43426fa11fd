"""The C++ runtime's pre/post-processing gives the same tensors and masks as the Python side.

The CPU part of ``CMakeLists.txt`` is configured and built once per session (or taken from
``DEPLOY_UNET_CPP_BUILD``, a build folder CI already made); skipped when cmake or a C++ compiler is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from test_manifest import make_manifest
from trt_fakes import make_onnx

from deploy_unet.data import normalize
from deploy_unet.engine.manifest import write_manifest
from deploy_unet.shapes import Padding, crop_back, pad_to_multiple

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("unet_preprocess", "unet_postprocess", "unet_manifest")

pytestmark = pytest.mark.slow  # the first test pays for the cmake build (~15 s on 2 cores)


@pytest.fixture(scope="session")
def cpp_tools(tmp_path_factory) -> Path:
    prebuilt = os.environ.get("DEPLOY_UNET_CPP_BUILD")
    if prebuilt:
        build = Path(prebuilt)
    else:
        if shutil.which("cmake") is None:
            pytest.skip("cmake is not installed: the C++ parity tests need it (apt install cmake g++)")
        if not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")):
            pytest.skip("no C++ compiler (c++/g++/clang++) found: apt install g++")
        build = tmp_path_factory.mktemp("cpp-build")
        configure = subprocess.run(
            ["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
             "-DDEPLOY_UNET_WITH_TENSORRT=OFF"],
            capture_output=True, text=True,
        )
        assert configure.returncode == 0, configure.stdout + configure.stderr
        jobs = str(min(2, os.cpu_count() or 1))
        built = subprocess.run(
            ["cmake", "--build", str(build), "-j", jobs, "--target", *TOOLS], capture_output=True, text=True
        )
        assert built.returncode == 0, built.stdout + built.stderr
    for tool in TOOLS:
        if not (build / tool).is_file():
            pytest.fail(f"{build / tool} was not built")
    return build


def run_tool(build: Path, tool: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(build / tool), *map(str, args)], capture_output=True, text=True)


def python_preprocess(path: Path, mean, std, divisor: int, mode: str = "reflect") -> np.ndarray:
    """The Python reference: decode with Pillow, /255, then the project's own data.normalize and
    shapes.pad_to_multiple, so the C++ is held to the code the runners use."""
    pixels = np.asarray(Image.open(path))
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    x = pixels.astype(np.float32).transpose(2, 0, 1)[None] / np.float32(255.0)
    padded, _ = pad_to_multiple(normalize(x, mean, std), divisor, mode)
    return padded


def write_image(path: Path, height: int, width: int, channels: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(path)
    return path


@pytest.mark.parametrize(
    "height, width, channels, divisor, mode",
    [
        (37, 50, 3, 16, "reflect"),  # ordinary padding
        (3, 5, 3, 16, "reflect"),  # pad longer than the image: numpy reflects repeatedly
        (1, 7, 1, 8, "reflect"),  # one-row image: numpy repeats it
        (20, 9, 1, 32, "edge"),
        (17, 18, 3, 4, "constant"),
        (32, 64, 3, 16, "reflect"),  # already divisible: no padding
    ],
)
def test_preprocess_matches_python(cpp_tools, tmp_path, height, width, channels, divisor, mode):
    suffix = "ppm" if channels == 3 else "pgm"
    image = write_image(tmp_path / f"in.{suffix}", height, width, channels, seed=height * width)
    mean, std = [0.485, 0.456, 0.406][:channels], [0.229, 0.224, 0.225][:channels]
    out = tmp_path / "x.npy"
    proc = run_tool(cpp_tools, "unet_preprocess", image, out, "--mean", ",".join(map(repr, mean)),
                    "--std", ",".join(map(repr, std)), "--divisor", divisor, "--pad-mode", mode)
    assert proc.returncode == 0, proc.stderr
    cpp = np.load(out)
    expected = python_preprocess(image, mean, std, divisor, mode)
    assert cpp.dtype == np.float32 and cpp.shape == expected.shape
    np.testing.assert_allclose(cpp, expected, rtol=0, atol=1e-6)


def test_postprocess_masks_are_identical(cpp_tools, tmp_path):
    """Full path on a real (tiny) model: C++ preprocess -> ONNX Runtime -> C++ crop+argmax == Python."""
    model = make_onnx(tmp_path / "m.onnx", num_classes=5, divisor=16)
    image = write_image(tmp_path / "in.ppm", 45, 61, 3, seed=7)
    x = tmp_path / "x.npy"
    assert run_tool(cpp_tools, "unet_preprocess", image, x, "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25",
                    "--divisor", 16).returncode == 0
    logits = ort.InferenceSession(str(model)).run(None, {"input": np.load(x)})[0]
    # Ties in argmax go to the first class in both implementations; add some on purpose.
    logits[:, 3] = logits[:, 1]
    np.save(tmp_path / "logits.npy", logits)
    proc = run_tool(cpp_tools, "unet_postprocess", tmp_path / "logits.npy", tmp_path / "mask.pgm",
                    "--height", 45, "--width", 61)
    assert proc.returncode == 0, proc.stderr
    cpp_mask = np.asarray(Image.open(tmp_path / "mask.pgm"))
    padding = Padding(45, 61, logits.shape[2] - 45, logits.shape[3] - 61)
    py_mask = crop_back(logits, padding)[0].argmax(axis=0).astype(np.uint8)
    assert cpp_mask.shape == (45, 61)
    assert len(np.unique(py_mask)) > 1  # a non-trivial mask
    np.testing.assert_array_equal(cpp_mask, py_mask)


def test_manifest_reader_matches_python(cpp_tools, tmp_path):
    manifest = make_manifest()
    path = tmp_path / "m.engine.json"
    write_manifest(manifest, path)
    proc = run_tool(cpp_tools, "unet_manifest", path)
    assert proc.returncode == 0, proc.stderr
    values = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    model = manifest.model
    assert values["input_name"] == model["input_name"] and values["output_name"] == model["output_name"]
    assert int(values["divisor"]) == model["divisor"] and int(values["in_channels"]) == model["in_channels"]
    np.testing.assert_allclose([float(v) for v in values["mean"].split(",")], model["mean"], atol=1e-6)
    np.testing.assert_allclose([float(v) for v in values["std"].split(",")], model["std"], atol=1e-6)
    assert values["pad_in_graph"] == "0"
    manifest.model["pad_in_graph"] = True  # export --pad-in-graph: unet_infer then leaves the padding to the engine
    write_manifest(manifest, path)
    values = dict(line.split("=", 1) for line in run_tool(cpp_tools, "unet_manifest", path).stdout.splitlines())
    assert values["pad_in_graph"] == "1"


def test_bad_inputs_fail_with_one_line(cpp_tools, tmp_path):
    bogus = tmp_path / "not-an-image.ppm"
    bogus.write_text("hello")
    proc = run_tool(cpp_tools, "unet_preprocess", bogus, tmp_path / "x.npy")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "x.npy").exists()
    other = tmp_path / "other.json"
    other.write_text('{"format": "something"}')
    proc = run_tool(cpp_tools, "unet_manifest", other)
    assert proc.returncode == 2 and "not a deploy-unet engine manifest" in proc.stderr


@pytest.mark.parametrize("cc, runs", [("9.0", False), ("8.9", True), ("8.0", True), ("12.1", True), ("13.0", True),
                                      ("7.5", False)])
def test_cpp_refuses_a_gpu_outside_the_manifests_list(cpp_tools, tmp_path, cc, runs):
    """The check unet_infer makes before deserializing (TrtEngine), on the manifest a TensorRT-RTX build writes."""
    manifest = make_manifest("1.7.1.116")
    manifest.library, manifest.runs_on = "tensorrt-rtx", ["8.0", "8.6", "8.9", "12.0", "12.1", ">12.0"]
    path = tmp_path / "m.rtx.engine.json"
    write_manifest(manifest, path)
    proc = run_tool(cpp_tools, "unet_manifest", path, "--cc", cc)
    values = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    assert values["library"] == "tensorrt-rtx" and values["runs_on"] == "8.0 8.6 8.9 12.0 12.1 >12.0"
    if runs:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1
        assert f"(compute capability {cc}), cannot run this TensorRT-RTX engine" in proc.stderr


def test_cpp_reads_old_manifests_as_tensorrt_and_ampere_plus(cpp_tools, tmp_path):
    manifest = make_manifest()
    manifest.runs_on = [">=8.0"]
    path = tmp_path / "m.engine.json"
    write_manifest(manifest, path)
    assert run_tool(cpp_tools, "unet_manifest", path, "--cc", "8.6").returncode == 0
    assert run_tool(cpp_tools, "unet_manifest", path, "--cc", "7.5").returncode == 1
    manifest.runs_on = None
    write_manifest(manifest, path)
    proc = run_tool(cpp_tools, "unet_manifest", path, "--cc", "7.5")
    assert proc.returncode == 0 and "library=tensorrt\n" in proc.stdout  # nothing recorded: not checked


@pytest.mark.parametrize("height, width, tile, border, divisor", [
    (37, 50, (56, 60), 46, 4),  # b = 23: realigned to the pooling grid (skip 1)
    (3, 5, (60, 76), 40, 4),  # image smaller than the border: the padding reflects repeatedly
    (97, 83, (104, 112), 88, 8),  # depth 3: b = 44, skip 4
    (64, 96, (32, 32), 0, 8),  # a padded net: no border
])
def test_tile_geometry_and_mirror_pad_match_python(cpp_tools, tmp_path, height, width, tile, border, divisor):
    """unet_infer --tile cuts its tiles from the same mirror-padded image with the same geometry as
    deploy_unet/runtime/tiling.py (the stitching itself is checked by ctest with a cropping fake net)."""
    from deploy_unet.runtime.tiling import mirror_pad, tile_axis
    from deploy_unet.shapes import ShapeContract

    image = write_image(tmp_path / "in.ppm", height, width, 3, seed=height + width)
    out = tmp_path / "tiles.npy"
    proc = run_tool(cpp_tools, "unet_preprocess", image, out, "--tile-size", f"{tile[0]}x{tile[1]}",
                    "--border", border, "--divisor", divisor)
    assert proc.returncode == 0, proc.stderr
    contract = ShapeContract(divisor, border=border, min_size=border + 1)
    rows, cols = tile_axis(height, tile[0], contract), tile_axis(width, tile[1], contract)
    expected_lines = [f"{name} {a.count} {a.step} {a.skip} {a.pad_before} {a.pad_after}"
                      for name, a in (("rows", rows), ("cols", cols))]
    assert proc.stdout.splitlines() == expected_lines
    x = python_preprocess(image, None, None, 1)
    np.testing.assert_array_equal(np.load(out), mirror_pad(x, (rows.pad_before, rows.pad_after),
                                                           (cols.pad_before, cols.pad_after)))


def test_manifest_reader_reads_the_valid_contract(cpp_tools, tmp_path):
    from deploy_unet.engine.manifest import model_section
    from deploy_unet.metadata import ModelInfo
    from deploy_unet.shapes import valid_unet_contract

    manifest = make_manifest()
    info = ModelInfo(arch="unet", divisor=16, in_channels=3, num_classes=2, export_shape=[1, 3, 572, 572],
                     **ModelInfo.contract_fields(valid_unet_contract(4), "valid"))
    manifest.model = model_section(info)
    path = tmp_path / "m.engine.json"
    write_manifest(manifest, path)
    proc = run_tool(cpp_tools, "unet_manifest", path)
    assert proc.returncode == 0, proc.stderr
    values = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    assert (values["size_remainder"], values["border"], values["min_size"]) == ("12", "184", "188")
    assert int(values["max_batch"]) == manifest.inputs[0]["max"][0]
