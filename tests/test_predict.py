"""deploy-unet predict: masks at each image's size, equal to an independent preprocessing + bare ONNX Runtime run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from PIL import Image

from deploy_unet.cli import cli
from deploy_unet.data import SyntheticSpec, synthetic_sample
from deploy_unet.describe import read_model_info
from deploy_unet.shipped import checkpoint

SHIPPED_UNET = checkpoint("unet")


def _scene(h: int, w: int, index: int) -> np.ndarray:
    image, _ = synthetic_sample(SyntheticSpec(seed=11, height=h, width=w), index)
    return (image.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)


@pytest.fixture(scope="module")
def shipped_fp32(tmp_path_factory) -> Path:
    """The shipped UNet exported as the pipeline does (at a small size)."""
    from deploy_unet.export import export_onnx

    folder = tmp_path_factory.mktemp("predict_model")
    return export_onnx(SHIPPED_UNET, folder / "unet.onnx", height=64, width=64).path


@pytest.fixture(scope="module")
def int8_ort(shipped_fp32) -> Path:
    """The shipped UNet as the pipeline ships it for CPUs: int8 with ONNX Runtime's Q/DQ placement."""
    from deploy_unet.precision import quantize

    return quantize(shipped_fp32, "int8", target="onnxruntime", calib_samples=8, eval_source=None,
                    progress=False).path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Odd sizes, grey, RGBA, 16-bit grey, JPEG, and one file that is not an image at all."""
    folder = tmp_path_factory.mktemp("user_images")
    Image.fromarray(_scene(75, 101, 0)).save(folder / "odd.png")
    Image.fromarray(_scene(75, 101, 1)).save(folder / "odd_twin.png")  # same size: batched with odd.png
    Image.fromarray(_scene(37, 50, 2)).convert("L").save(folder / "grey.png")
    rgb = _scene(48, 33, 3)
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 90, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray((_scene(40, 44, 4).mean(axis=2) * 257).astype(np.uint16)).save(folder / "deep.png")
    Image.fromarray(_scene(64, 90, 5)).save(folder / "photo.jpg", quality=95)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
    return folder


def _reference_mask(path: Path, onnx_path: Path) -> np.ndarray:
    """Independent of deploy_unet.processing: Pillow's own conversions, numpy reflect pad, a bare ORT session."""
    info = read_model_info(onnx_path)
    with Image.open(path) as im:
        if im.mode == "I;16":
            grey = np.asarray(im).astype(np.float64) / 65535.0
            x = np.stack([grey] * 3)
        else:
            x = np.asarray(im.convert("RGB")).astype(np.float64).transpose(2, 0, 1) / 255.0
    x = (x - np.array(info.mean)[:, None, None]) / np.array(info.std)[:, None, None]
    h, w = x.shape[1:]
    d = info.divisor
    x = np.pad(x, ((0, 0), (0, -h % d), (0, -w % d)), mode="reflect")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": x[None].astype(np.float32)})
    return logits[0].argmax(axis=0)[:h, :w]


def test_predict_folder_masks_equal_direct_onnxruntime_and_skip_the_unreadable(int8_ort, images, tmp_path):
    out = tmp_path / "masks"
    result = CliRunner().invoke(cli, ["predict", str(int8_ort), str(images), "-o", str(out), "--batch", "2"])
    assert result.exit_code == 1, result.output  # broken.png: named, skipped, the run fails at the end
    assert "Traceback" not in result.output
    assert "skipped" in result.output and "broken.png" in result.output
    assert result.output.strip().splitlines()[-1].startswith("error: 1 of 7 inputs could not be read")
    classes_seen = set()
    for name in ("odd", "odd_twin", "grey", "rgba", "deep", "photo"):
        source = next(images.glob(f"{name}.*"))
        with Image.open(source) as im:
            w, h = im.size
        mask_png = Image.open(out / f"{name}.mask.png")
        assert mask_png.mode == "P" and mask_png.size == (w, h)
        mask = np.asarray(mask_png)
        assert np.array_equal(mask, _reference_mask(source, int8_ort)), name
        classes_seen |= set(np.unique(mask).tolist())
        overlay = Image.open(out / f"{name}.overlay.png")
        assert overlay.width >= w and overlay.height > h  # the legend goes below the image
    assert len(classes_seen) >= 3  # the masks say something: not all background
    assert not (out / "broken.mask.png").exists()


def test_predictions_json_describes_each_image(int8_ort, images, tmp_path):
    out = tmp_path / "masks"
    CliRunner().invoke(cli, ["predict", str(int8_ort), str(images / "odd.png"), str(images / "odd_twin.png"),
                             str(images / "grey.png"), "-o", str(out), "--batch", "2"])
    report = json.loads((out / "predictions.json").read_text())
    assert report["artifact"] == str(int8_ort) and report["backend"] == "onnxruntime"
    assert report["precision"] == "int8" and report["fit"] == "pad" and report["num_classes"] == 4
    assert report["class_names"] == ["background", "ellipse", "polygon", "thin"]
    assert report["machine"]["cpu"] and report["skipped"] == []
    assert {s["stage"] for s in report["stage_seconds"]} >= {"open runner", "inference", "write outputs"}
    by_name = {e["name"]: e for e in report["images"]}
    assert [e["name"] for e in report["images"]] == ["odd", "odd_twin", "grey"]  # input order
    assert by_name["odd"]["batch"] == 2 and by_name["grey"]["batch"] == 1  # same size ran together
    for name, entry in by_name.items():
        mask = np.asarray(Image.open(out / f"{name}.mask.png"))
        assert entry["size"] == list(mask.shape)
        counts = np.bincount(mask.ravel(), minlength=4) / mask.size
        got = [entry["class_fractions"][f"{i} {n}"] for i, n in enumerate(report["class_names"])]
        np.testing.assert_allclose(got, counts, atol=1e-6)


def test_batched_and_single_runs_give_the_same_masks(shipped_fp32, images, tmp_path):
    from deploy_unet.predict import predict

    inputs = [images / "odd.png", images / "odd_twin.png", images / "rgba.png"]
    one = predict(shipped_fp32, inputs, batch=1, progress=False)
    three = predict(shipped_fp32, inputs, batch=3, progress=False)
    assert [p.batch for p in three.images] == [2, 2, 1]
    for a, b in zip(one.masks, three.masks, strict=True):
        assert len(np.unique(a)) >= 2 and np.array_equal(a, b)


def test_mask_png_palette_is_the_voc_colour_map(thin_unet_onnx, images, tmp_path):
    _, path = thin_unet_onnx
    from deploy_unet.predict import predict

    predict(path, [images / "grey.png"], tmp_path, progress=False)
    palette = Image.open(tmp_path / "grey.mask.png").getpalette()[:3 * 6]
    # PASCAL VOC's colour map: background black, aeroplane (128,0,0), bicycle (0,128,0), bird (128,128,0), ...
    assert palette == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128, 128, 0, 128]


def test_in_memory_arrays_return_masks_and_write_nothing(thin_unet_onnx, tmp_path, monkeypatch):
    _, path = thin_unet_onnx
    from deploy_unet.predict import predict

    monkeypatch.chdir(tmp_path)
    grey16 = (np.arange(23 * 29, dtype=np.uint16).reshape(23, 29) * 50)
    report = predict(path, [_scene(30, 41, 0), grey16, np.stack([_scene(16, 16, 1)] * 2)], progress=False)
    assert [m.shape for m in report.masks] == [(30, 41), (23, 29), (16, 16), (16, 16)]
    assert list(tmp_path.iterdir()) == []


def test_resize_fit_masks_come_back_at_image_size(int8_ort, images, tmp_path):
    import torch
    import torch.nn.functional as F

    out = tmp_path / "masks"
    result = CliRunner().invoke(cli, ["predict", str(int8_ort), str(images / "odd.png"), "-o", str(out),
                                      "--resize", "64x96"])
    assert result.exit_code == 0, result.output
    mask = np.asarray(Image.open(out / "odd.mask.png"))
    assert mask.shape == (75, 101)
    # independent: torch's bilinear (half-pixel) down, ORT, argmax, torch's nearest-exact (pixel centres) up
    info = read_model_info(int8_ort)
    x = torch.from_numpy(np.asarray(Image.open(images / "odd.png").convert("RGB"), np.float32).transpose(2, 0, 1)
                         / 255.0)[None]
    x = F.interpolate(x, size=(64, 96), mode="bilinear", align_corners=False, antialias=False)
    x = (x - torch.tensor(info.mean)[:, None, None]) / torch.tensor(info.std)[:, None, None]
    session = ort.InferenceSession(str(int8_ort), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": x.numpy().astype(np.float32)})
    small = torch.from_numpy(logits.argmax(axis=1)[:, None].astype(np.float32))
    expected = F.interpolate(small, size=(75, 101), mode="nearest-exact")[0, 0].numpy().astype(np.uint8)
    assert (mask == expected).mean() > 0.999  # bilinear weights may round apart by an ulp at a class edge


def test_output_mask_and_probabilities(shipped_fp32, images, tmp_path):
    path = shipped_fp32
    from deploy_unet.predict import predict

    logits_run = predict(path, [images / "odd.png"], tmp_path / "a", save_probs=True, keep_masks=True, progress=False)
    mask_run = predict(path, [images / "odd.png"], output="mask", progress=False)
    assert len(np.unique(mask_run.masks[0])) >= 2 and np.array_equal(logits_run.masks[0], mask_run.masks[0])
    probs = np.load(tmp_path / "a" / "odd.probs.npy")
    assert probs.dtype == np.float16 and probs.shape == (4, 75, 101)
    np.testing.assert_allclose(probs.astype(np.float32).sum(axis=0), 1.0, atol=5e-3)
    top = np.sort(probs.astype(np.float32), axis=0)
    clear = top[-1] - top[-2] > 1e-2  # where float16 rounding cannot swap the winner
    assert np.array_equal(probs.argmax(axis=0)[clear], logits_run.masks[0][clear])


def test_class_names_from_export_reach_the_legend_and_json(tmp_path, images):
    out = tmp_path / "unet.onnx"
    runner = CliRunner()
    result = runner.invoke(cli, ["export", "--arch", "unet", "--depth", "2", "--base-channels", "4", "--num-classes",
                                 "3", "--height", "32", "--width", "32", "--class-names", "sky,road", "-o", str(out)])
    assert result.exit_code == 2 and "2 name(s)" in result.output and not out.exists()
    result = runner.invoke(cli, ["export", "--arch", "unet", "--depth", "2", "--base-channels", "4", "--num-classes",
                                 "3", "--height", "32", "--width", "32", "--class-names", "sky,road,car", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert read_model_info(out).class_names == ["sky", "road", "car"]
    result = runner.invoke(cli, ["predict", str(out), str(images / "grey.png"), "-o", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "m" / "predictions.json").read_text())
    assert list(report["images"][0]["class_fractions"]) == ["0 sky", "1 road", "2 car"]


def test_usage_errors_are_one_line_and_write_nothing(thin_unet_onnx, tmp_path):
    _, path = thin_unet_onnx
    runner = CliRunner()
    out = tmp_path / "never"
    for args, message in (
        ([str(tmp_path / "missing")], "does not exist"),
        ([str(Path(__file__))], "is not an image"),
        ([str(tmp_path), "--resize", "20x20"], None),  # empty folder -> "holds no images"
    ):
        result = runner.invoke(cli, ["predict", str(path), *args, "-o", str(out)])
        assert result.exit_code == 2, result.output
        line = result.output.strip().splitlines()[-1]
        assert line.startswith("error:") and (message is None or message in line)
        assert "Traceback" not in result.output and not out.exists()
    result = runner.invoke(cli, ["predict", str(path), str(Path(__file__).parent), "--output", "mask", "--save-probs",
                                 "-o", str(out)])
    assert result.exit_code == 2 and "--save-probs needs the logits" in result.output


def test_an_image_the_model_cannot_take_is_skipped_not_fatal(thin_unet_onnx, tmp_path):
    _, path = thin_unet_onnx
    from deploy_unet.predict import predict

    five = tmp_path / "five.npy"
    np.save(five, np.zeros((1, 20, 20, 5), np.uint8))
    good = tmp_path / "good.npy"
    np.save(good, np.stack([_scene(20, 24, 0), _scene(20, 24, 1)]))
    report = predict(path, [five, good], tmp_path / "out", progress=False)
    assert [p.name for p in report.images] == ["good_0000", "good_0001"]
    assert len(report.skipped) == 1 and "5 channels" in report.skipped[0]["error"]
    assert (tmp_path / "out" / "good_0001.mask.png").is_file()


def test_a_nan_image_is_skipped_by_name_and_its_batch_neighbours_are_written(thin_unet_onnx, tmp_path):
    _, path = thin_unet_onnx
    from deploy_unet.predict import predict

    stack = np.stack([_scene(20, 24, 0), _scene(20, 24, 1), _scene(20, 24, 2)]).astype(np.float32) / 255
    stack[1, 3, 4, 0] = np.nan
    stack[1, 5, 6, 1] = np.inf
    np.save(tmp_path / "mixed.npy", stack)
    report = predict(path, [tmp_path / "mixed.npy"], tmp_path / "out", batch=3, progress=False)
    assert [p.name for p in report.images] == ["mixed_0000", "mixed_0002"]
    assert len(report.skipped) == 1 and report.skipped[0]["source"].endswith("mixed.npy[1]")
    assert "2 NaN or Inf" in report.skipped[0]["error"]
    assert not (tmp_path / "out" / "mixed_0001.mask.png").exists()
