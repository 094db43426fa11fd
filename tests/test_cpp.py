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
TOOLS = ("unet_preprocess", "unet_postprocess", "unet_manifest", "unet_convert")

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


# -- PNG / JPEG (libpng, libjpeg) and the same mask as `deploy-unet predict` ------------------------------


def _formats(build: Path) -> set[str]:
    return set(run_tool(build, "unet_convert", "--formats").stdout.split())


@pytest.fixture(scope="session")
def codec_tools(cpp_tools) -> Path:
    missing = {"png", "jpeg"} - _formats(cpp_tools)
    if missing:
        pytest.skip(f"this C++ build has no {' or '.join(sorted(missing))} support (apt install libpng-dev "
                    "libjpeg-dev, then re-run cmake)")
    return cpp_tools


def _user_images(folder: Path) -> dict[str, Path]:
    """What users have: odd-size RGB PNG, grey, RGBA, palette with transparency, 16-bit grey and RGB, JPEG."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:45, 0:61]
    smooth = np.stack([(xx * 4) % 256, (yy * 5) % 256, ((xx + yy) * 3) % 256], axis=2)
    rgb = np.clip(smooth + rng.integers(-20, 21, smooth.shape), 0, 255).astype(np.uint8)
    paths = {}
    for name, image in (("rgb.png", Image.fromarray(rgb)), ("grey.png", Image.fromarray(rgb).convert("L")),
                        ("rgba.png", Image.fromarray(np.dstack([rgb, rgb[..., 0]]))),
                        ("grey16.png", Image.fromarray(rgb[..., 1].astype(np.uint16) * 251)),
                        ("photo.jpg", Image.fromarray(rgb)), ("greyphoto.jpg", Image.fromarray(rgb).convert("L"))):
        paths[name] = folder / name
        image.save(paths[name], **({"quality": 90} if name.endswith(".jpg") else {}))
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 3
    palette.save(folder / "palette.png", transparency=3)
    paths["palette.png"] = folder / "palette.png"
    # 16-bit RGB: Pillow keeps each sample's high byte; so does the C++ reader
    raw16 = rgb.astype(">u2") * 257 + rng.integers(0, 200, rgb.shape).astype(">u2")
    _write_png16_rgb(folder / "rgb16.png", raw16)
    paths["rgb16.png"] = folder / "rgb16.png"
    return paths


def _write_png16_rgb(path: Path, samples: np.ndarray) -> None:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one): signature, IHDR, one IDAT, IEND."""
    import struct
    import zlib

    h, w, _ = samples.shape
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    rows = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_png_and_jpeg_decode_as_pillow_does(codec_tools, tmp_path):
    """unet_convert decodes each file and writes it losslessly as PNG; Pillow reads both: same pixels."""
    from deploy_unet.predict import read_image

    for name, path in _user_images(tmp_path).items():
        out = tmp_path / f"{name}.out.png"
        proc = run_tool(codec_tools, "unet_convert", path, out)
        assert proc.returncode == 0, proc.stderr
        ours, theirs = np.asarray(Image.open(out)), read_image(path)
        if theirs.dtype == np.uint16:
            ours = ours.astype(np.uint16)
        assert ours.shape == theirs.shape, name
        np.testing.assert_array_equal(ours, theirs, err_msg=name)


def test_preprocessing_is_bitwise_python_processing(codec_tools, tmp_path):
    """C++ to_model_input + pad == deploy_unet.processing.preprocess, for every kind of user image."""
    from deploy_unet.predict import read_image
    from deploy_unet.processing import Preprocessing, preprocess
    from deploy_unet.shapes import ShapeContract

    for channels in (3, 1):
        mean, std = [0.485, 0.456, 0.406][:channels], [0.229, 0.224, 0.225][:channels]
        spec = Preprocessing(channels, mean=tuple(mean), std=tuple(std), contract=ShapeContract(16))
        for name, path in _user_images(tmp_path).items():
            out = tmp_path / "x.npy"
            proc = run_tool(codec_tools, "unet_preprocess", path, out, "--in-channels", channels,
                            "--mean", ",".join(map(repr, mean)), "--std", ",".join(map(repr, std)), "--divisor", 16)
            assert proc.returncode == 0, proc.stderr
            np.testing.assert_array_equal(np.load(out), preprocess(read_image(path), spec).array,
                                          err_msg=f"{name} -> {channels} channel(s)")


def test_cpp_mask_equals_python_predict_mask(codec_tools, tmp_path):
    """The same image through C++ (decode, preprocess) -> ONNX Runtime -> C++ (crop, argmax, indexed PNG) and
    through `deploy-unet predict`: the same mask file contents, the same palette."""
    from deploy_unet.describe import read_model_info
    from deploy_unet.predict import predict

    model = make_onnx(tmp_path / "m.onnx", num_classes=5, divisor=16)
    info = read_model_info(model)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (tmp_path / "in").mkdir()
    images = _user_images(tmp_path / "in")
    predict(model, list(images.values()), tmp_path / "py", progress=False)
    for name, path in images.items():
        x = tmp_path / "x.npy"
        assert run_tool(codec_tools, "unet_preprocess", path, x, "--in-channels", 3, "--mean",
                        ",".join(map(repr, info.mean)), "--std", ",".join(map(repr, info.std)),
                        "--divisor", 16).returncode == 0
        np.save(tmp_path / "logits.npy", session.run(None, {"input": np.load(x)})[0])
        h, w = np.asarray(Image.open(path)).shape[:2]
        cpp_mask = tmp_path / "cpp.mask.png"
        proc = run_tool(codec_tools, "unet_postprocess", tmp_path / "logits.npy", cpp_mask, "--height", h, "--width", w)
        assert proc.returncode == 0, proc.stderr
        ours, theirs = Image.open(cpp_mask), Image.open(tmp_path / "py" / f"{Path(name).stem}.mask.png")
        assert ours.mode == theirs.mode == "P" and ours.getpalette() == theirs.getpalette()
        assert len(np.unique(np.asarray(theirs))) > 1, name  # a mask with something in it
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs), err_msg=name)


def test_a_build_without_libpng_says_so_and_reads_ppm_only(tmp_path):
    """-DDEPLOY_UNET_WITH_PNG=OFF -DDEPLOY_UNET_WITH_JPEG=OFF stands for a machine without the -dev packages."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    build = tmp_path / "build"
    configure = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), "-DDEPLOY_UNET_WITH_TENSORRT=OFF",
                                "-DDEPLOY_UNET_WITH_PNG=OFF", "-DDEPLOY_UNET_WITH_JPEG=OFF"],
                               capture_output=True, text=True)
    assert configure.returncode == 0, configure.stderr
    assert "PNG support NOT built" in configure.stdout and "JPEG support NOT built" in configure.stdout
    assert "deploy-unet image formats: PGM/PPM\n" in configure.stdout
    built = subprocess.run(["cmake", "--build", str(build), "-j", "2", "--target", "unet_convert"],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    assert _formats(build) == {"pnm"}
    png = write_image(tmp_path / "in.png", 4, 5, 3, seed=1)
    proc = run_tool(build, "unet_convert", png, tmp_path / "out.ppm")
    assert proc.returncode == 2 and "PNG support was not built" in proc.stderr and "libpng-dev" in proc.stderr
    ppm = write_image(tmp_path / "in.ppm", 4, 5, 3, seed=1)
    assert run_tool(build, "unet_convert", ppm, tmp_path / "out.ppm").returncode == 0


@pytest.mark.parametrize("key, value, words", [("output_stride", 4, "logits are at 1/4 of the input"),
                                               ("value_scale", 255.0, "(value_scale)")])
def test_cpp_refuses_low_resolution_logits_and_scaled_pixels_in_one_line(cpp_tools, tmp_path, key, value, words):
    """Issue 27: the C++ sample makes masks from full-size logits of [0, 1] pixels; other engines are refused."""
    manifest = make_manifest()
    manifest.model[key] = value
    path = tmp_path / "m.engine.json"
    write_manifest(manifest, path)
    proc = run_tool(cpp_tools, "unet_manifest", path)
    assert proc.returncode != 0 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert words in proc.stderr
