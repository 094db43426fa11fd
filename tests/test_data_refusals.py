"""Bad data is refused where it enters (deploy_unet.data), in every command that reads data: one line naming
the source and the sample, exit 2, no file written."""

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from deploy_unet import data
from deploy_unet.cli import cli
from deploy_unet.describe import read_model_info
from deploy_unet.errors import DataError


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def images(n=10, h=32, w=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, 3, h, w)).astype(np.float32)


def one_error_line(result):
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("bad, kind", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_quantize_refuses_non_finite_calibration_data_naming_the_sample(tmp_path, thin_unet_onnx, bad, kind):
    _, model = thin_unet_onnx
    arr = images()
    arr[3, 1, 5, 7] = bad
    arr[6, 0, 0, 0] = bad
    calib = tmp_path / "calib.npy"
    np.save(calib, arr)
    out = tmp_path / "q.onnx"
    result = invoke("quantize", model, "--precision", "int8", "--calib", calib, "--calib-samples", 8, "-o", out)
    assert result.exit_code == 2
    line = one_error_line(result)
    assert line == (f"error: {calib}: sample 3 holds {kind} (1 of {3 * 32 * 32} values); 1 more samples too; "
                    "clean the data or drop that sample")
    assert not out.exists()


def test_quantize_refuses_nan_in_evaluation_data_before_writing(tmp_path, thin_unet_onnx):
    _, model = thin_unet_onnx
    arr = images(4)
    arr[2] = np.nan
    evaluation = tmp_path / "eval.npz"
    np.savez(evaluation, images=arr)
    out = tmp_path / "q.onnx"
    result = invoke("quantize", model, "--precision", "fp16", "--calib-samples", 8, "--eval", evaluation,
                    "--eval-samples", 4, "-o", out)
    assert result.exit_code == 2
    assert one_error_line(result).startswith(f"error: {evaluation}: sample 2 holds NaN ({3 * 32 * 32} of ")
    assert not out.exists()


def test_validate_refuses_inf_with_the_source_and_index(tmp_path, thin_unet_onnx):
    _, model = thin_unet_onnx
    arr = (images(5) * 255).astype(np.float64)
    arr[4, 2, 1, 1] = np.inf
    src = tmp_path / "val.npy"
    np.save(src, arr)
    result = invoke("validate", model, "--reference", model, "--data", src, "--samples", 5)
    assert result.exit_code == 2
    assert one_error_line(result).startswith(f"error: {src}: sample 4 holds Inf")


def test_float64_beyond_float32_range_is_refused_not_silently_inf(tmp_path):
    arr = images(2).astype(np.float64)
    arr[1, 0, 0, 0] = 1e300  # finite in float64, Inf once cast for the model
    src = tmp_path / "big.npy"
    np.save(src, arr)
    with pytest.raises(DataError, match="sample 1 holds Inf"):
        data.load_samples(str(src), n=2)


def test_an_undecodable_image_is_named_with_its_index(tmp_path, thin_unet_onnx):
    _, model = thin_unet_onnx
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray((images(1)[0].transpose(1, 2, 0) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    (folder / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # a PNG header, then garbage
    result = invoke("validate", model, "--reference", model, "--data", folder, "--samples", 3)
    assert result.exit_code == 2
    line = one_error_line(result)
    assert line.startswith(f"error: {folder / '1.png'}: sample 1 of {folder} cannot be decoded as an image (")
    assert line.endswith("replace or remove that file")


def test_truncated_image_is_refused(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8) + 100).save(folder / "a.jpg")
    full = (folder / "a.jpg").read_bytes()
    (folder / "a.jpg").write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match=r"a.jpg: sample 0 of .* cannot be decoded"):
        data.load_samples(str(folder), n=1)


@pytest.mark.parametrize("array, message", [
    (np.zeros((32, 32), np.float32), r"images have shape \(32, 32\) \(rank 2\); expected NCHW or NHWC"),
    (np.zeros((2, 1, 3, 32, 32), np.float32), r"\(rank 5\)"),
    (np.zeros((2, 3, 32, 32), np.bool_), "images have dtype bool; expected uint8"),
    (np.zeros((2, 3, 32, 32), np.complex64), "images have dtype complex64"),
    (np.array(["a", "b"]), "images have dtype <U1"),
])
def test_wrong_rank_or_dtype_is_refused(tmp_path, array, message):
    src = tmp_path / "bad.npy"
    np.save(src, array)
    with pytest.raises(DataError, match=message):
        data.load_samples(str(src), n=2)


def test_masks_must_be_finite_integers(tmp_path):
    src = tmp_path / "m.npz"
    masks = np.zeros((2, 32, 32), np.float32)
    masks[1, 3, 3] = 0.5
    np.savez(src, images=images(2), masks=masks)
    with pytest.raises(DataError, match="masks hold non-integer values"):
        data.load_samples(str(src), n=2)
    masks[1, 3, 3] = np.nan
    np.savez(src, images=images(2), masks=masks)
    with pytest.raises(DataError, match=r"m.npz masks: mask 1 holds NaN"):
        data.load_samples(str(src), n=2)


def test_good_data_still_loads_and_synthetic_is_always_finite(tmp_path, thin_unet_onnx):
    _, model = thin_unet_onnx
    src = tmp_path / "ok.npy"
    np.save(src, (images(3) * 255).astype(np.uint8))
    samples = data.load_samples(str(src), read_model_info(model), n=3)
    assert np.isfinite(samples.images).all() and samples.images.shape == (3, 3, 32, 32)
    synthetic = data.load_samples("synthetic:seed=9,noise=0.5,density=5", n=4)
    assert np.isfinite(synthetic.images).all()
