"""predict on volume files: sliding window through a runner equals MONAI's sliding_window_inference with the
PyTorch net (logits and masks, a size that is not a multiple of the window), masks written in the input's format
and geometry, intensity from the metadata, resampling to the net's spacing and back, the slice picture."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deploy_unet.errors import ConfigError, ShapeContractError

nib = pytest.importorskip("nibabel", reason="the volumes extra: pip install 'deploy-unet[volumes]'")


class Tiny3d(torch.nn.Module):
    """A small 3D encoder-decoder (divisor 4): conv, pool, conv, pool, conv, upsample x4, skip, 3 classes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv3d(1, 6, 3, padding=1)
        self.b = torch.nn.Conv3d(6, 8, 3, padding=1)
        self.c = torch.nn.Conv3d(8, 8, 3, padding=1)
        self.up = torch.nn.ConvTranspose3d(8, 6, 4, stride=4)
        self.head = torch.nn.Conv3d(12, 3, 1)

    def forward(self, x):
        s = torch.relu(self.a(x))
        y = torch.relu(self.b(torch.nn.functional.max_pool3d(s, 2)))
        y = torch.relu(self.c(torch.nn.functional.max_pool3d(y, 2)))
        return self.head(torch.cat([s, torch.relu(self.up(y))], 1))


WINDOW = (16, 16, 16)
CT = "ct:-200,400"


@pytest.fixture(scope="module")
def net3d():
    return Tiny3d().eval()


@pytest.fixture(scope="module")
def onnx3d(tmp_path_factory, net3d):
    """The net exported as a user would (torch.onnx.export(dynamo=True), dynamic N, D, H, W), with deploy-unet
    metadata for a 3D net (spatial_dims 3, divisor 4, export size 16^3, CT window)."""
    import onnx

    from deploy_unet.metadata import ModelInfo, write_props
    from deploy_unet.volume_processing import volume_props

    path = tmp_path_factory.mktemp("net") / "tiny3d.onnx"
    d = torch.export.Dim.AUTO
    program = torch.onnx.export(net3d, (torch.zeros(2, 1, 16, 20, 24),), dynamo=True, input_names=["input"],
                                output_names=["logits"], dynamic_shapes={"x": {0: d, 2: d, 3: d, 4: d}})
    model = program.model_proto
    info = ModelInfo(arch="tiny3d", divisor=4, in_channels=1, num_classes=3, export_shape=[1, 1, *WINDOW],
                     spatial_dims=3, class_names=["background", "soft", "bright"],
                     extra=volume_props(intensity=CT, spacing="2x2x2"))
    write_props(model, info.to_props())
    onnx.save(model, str(path))
    return path


def _scan(shape=(37, 29, 21), seed=0) -> np.ndarray:
    """A CT-like volume in HU: -1000 air around a body of ~40 HU with bright (~300 HU) and soft blobs."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = (zz**2 + yy**2 + xx**2) < 0.8
    vol = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, shape)
    vol[(zz - 0.2) ** 2 + (yy + 0.1) ** 2 + xx**2 < 0.08] = 300.0
    vol[(zz + 0.3) ** 2 + (yy - 0.3) ** 2 + (xx - 0.2) ** 2 < 0.05] = 120.0
    return vol.astype(np.int16)


def _affine() -> np.ndarray:
    a = np.diag([1.5, 0.9, 2.5, 1.0])
    a[:3, :3] = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]) @ a[:3, :3]
    a[:3, 3] = [120.0, -80.5, 33.0]
    return a


def _monai(net, volume_cf, window, overlap, mode, sw_batch=3, mirror=False) -> np.ndarray:
    inferers = pytest.importorskip("monai.inferers", reason="the MONAI comparison needs monai (dev extra)")
    x = torch.from_numpy(volume_cf[None])
    with torch.no_grad():
        def run(v):
            return inferers.sliding_window_inference(v, window, sw_batch, net, overlap=overlap, mode=mode)

        out = run(x)
        if mirror:  # nnU-Net's TTA: the mean over all 8 flips (MONAI applied to each flipped volume)
            import itertools

            flips = [c for i in range(3) for c in itertools.combinations((2, 3, 4), i + 1)]
            for f in flips:
                out = out + torch.flip(run(torch.flip(x, f)), f)
            out = out / (len(flips) + 1)
    return out[0].numpy()


@pytest.mark.parametrize("overlap,mode", [(0.5, "gaussian"), (0.25, "constant")])
def test_runner_sliding_window_equals_monai_with_the_pytorch_net(onnx3d, net3d, overlap, mode):
    """ONNX Runtime through predict's sliding window vs MONAI's sliding_window_inference on the PyTorch net, on a
    37x29x21 volume (no axis a multiple of the 16^3 window; one axis (21) barely above it)."""
    from deploy_unet.predict_volume import SlidingWindow, sliding_window_logits
    from deploy_unet.runtime import open_runner

    volume = np.random.default_rng(3).random((1, 37, 29, 21), np.float32)
    ref = _monai(net3d, volume, WINDOW, overlap, mode)
    with open_runner(onnx3d) as runner:
        spent = {}
        logits, count = sliding_window_logits(runner, volume, WINDOW, SlidingWindow(overlap=overlap, blend=mode,
                                                                                     sw_batch=3), spent)
    assert logits.shape == ref.shape == (3, 37, 29, 21)
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4)
    assert (logits.argmax(0) == ref.argmax(0)).mean() >= 0.999
    assert count == {0.5: 4 * 3 * 2, 0.25: 3 * 3 * 2}[overlap]  # MONAI's grid: steps 8 and 12
    assert spent["model"] > 0 and spent["windows + blend"] > 0


def test_mirroring_equals_monai_over_all_flips(onnx3d, net3d):
    from deploy_unet.predict_volume import SlidingWindow, sliding_window_logits
    from deploy_unet.runtime import open_runner

    volume = np.random.default_rng(4).random((1, 20, 18, 17), np.float32)
    ref = _monai(net3d, volume, WINDOW, 0.5, "gaussian", mirror=True)
    with open_runner(onnx3d) as runner:
        logits, _ = sliding_window_logits(runner, volume, WINDOW, SlidingWindow(mirror_axes=(0, 1, 2), sw_batch=2))
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4)


def test_predict_nifti_writes_the_mask_with_the_inputs_affine_and_equals_monai(tmp_path, onnx3d, net3d):
    from deploy_unet.predict import predict
    from deploy_unet.volume_processing import Intensity

    hu = _scan()
    image = nib.Nifti1Image(hu, _affine())
    image.set_qform(_affine(), code=1)
    nib.save(image, str(tmp_path / "scan.nii.gz"))
    report = predict(onnx3d, [tmp_path / "scan.nii.gz"], tmp_path / "out", progress=False)

    mask_path = tmp_path / "out" / "scan.mask.nii.gz"
    back = nib.load(str(mask_path))
    assert back.shape == hu.shape and back.get_data_dtype() == np.uint8
    np.testing.assert_allclose(back.affine, nib.load(str(tmp_path / "scan.nii.gz")).affine, atol=0)
    assert back.header.get_qform(coded=True)[1] == 1
    mask = np.asanyarray(back.dataobj)
    # The reference: the metadata's CT window (clip -200..400, scale to 0..1), then MONAI with the PyTorch net.
    x = Intensity.parse(CT).apply(hu[None].astype(np.float32))
    ref = _monai(net3d, x, WINDOW, 0.5, "gaussian", sw_batch=4).argmax(0)
    assert (mask == ref).mean() >= 0.999
    data = json.loads((tmp_path / "out" / "predictions.json").read_text())
    entry = data["volumes"][0]
    assert entry["size"] == list(hu.shape) and entry["files"]["mask"].endswith("scan.mask.nii.gz")
    assert data["sliding_window"]["intensity"] == CT and data["sliding_window"]["window"] == list(WINDOW)
    assert data["fit"] == "sliding-window"
    assert {s["stage"] for s in data["stage_seconds"]} >= {"read", "preprocess", "model", "windows + blend", "write"}
    from PIL import Image

    with Image.open(tmp_path / "out" / "scan.slices.png") as picture:
        assert picture.width > 3 * 64 and picture.height > 64
    assert report.images[0].name == "scan"


def test_predict_resamples_to_the_nets_spacing_and_back(tmp_path, onnx3d):
    """The metadata says 2 mm; a 1.5 x 0.9 x 2.5 mm scan is resampled for the net and the mask comes back on the
    scan's own grid (same shape and affine)."""
    from deploy_unet.predict import predict

    hu = _scan((30, 40, 18))
    nib.save(nib.Nifti1Image(hu, _affine()), str(tmp_path / "ct.nii"))
    report = predict(onnx3d, [tmp_path / "ct.nii"], tmp_path / "out", resample=True, progress=False,
                     keep_masks=True)
    entry = report.images[0]
    assert entry.resampled_to == [round(30 * 1.5 / 2), round(40 * 0.9 / 2), round(18 * 2.5 / 2)]
    back = nib.load(str(tmp_path / "out" / "ct.mask.nii"))
    assert back.shape == hu.shape
    np.testing.assert_allclose(back.affine, _affine(), atol=1e-6)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), entry.mask)


def test_predict_mha_and_dicom_and_npy(tmp_path, onnx3d):
    sitk = pytest.importorskip("SimpleITK")
    from deploy_unet.predict import predict

    hu = _scan((24, 20, 18))
    image = sitk.GetImageFromArray(hu.transpose(2, 1, 0))
    image.SetSpacing((0.8, 0.8, 2.0))
    image.SetOrigin((1.0, 2.0, 3.0))
    image.SetDirection((0.0, 1, 0, -1, 0, 0, 0, 0, 1))
    sitk.WriteImage(image, str(tmp_path / "a.mha"))
    np.save(tmp_path / "v.npy", hu)
    predict(onnx3d, [tmp_path / "a.mha", tmp_path / "v.npy"], tmp_path / "out", progress=False)
    back = sitk.ReadImage(str(tmp_path / "out" / "a.mask.mha"))
    assert back.GetSize() == image.GetSize() and back.GetDirection() == image.GetDirection()
    assert back.GetOrigin() == image.GetOrigin() and back.GetSpacing() == image.GetSpacing()
    assert np.load(tmp_path / "out" / "v.mask.npy").shape == hu.shape
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "v.mask.npy"),
                                  sitk.GetArrayFromImage(back).transpose(2, 1, 0))


def test_refusals(tmp_path, onnx3d):
    from deploy_unet.predict import predict
    from deploy_unet.scale.stream import StreamOptions

    nib.save(nib.Nifti1Image(_scan((20, 20, 20)), np.eye(4)), str(tmp_path / "s.nii.gz"))
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "i.png")
    with pytest.raises(ConfigError, match="mix volumes and 2D images"):
        predict(onnx3d, [tmp_path / "s.nii.gz", tmp_path / "i.png"], tmp_path / "o", progress=False)
    with pytest.raises(ShapeContractError, match="nearest valid"):
        predict(onnx3d, [tmp_path / "s.nii.gz"], tmp_path / "o", stream_options=StreamOptions(window=(16, 18, 16)),
                progress=False)
    with pytest.raises(ConfigError, match="intensity"):
        predict(onnx3d, [tmp_path / "s.nii.gz"], tmp_path / "o", intensity="ct:400,100", progress=False)
    (tmp_path / "bad.nii.gz").write_bytes(b"junk")
    report = predict(onnx3d, [tmp_path / "bad.nii.gz", tmp_path / "s.nii.gz"], tmp_path / "o2", progress=False)
    assert [s["source"] for s in report.skipped] == [str(tmp_path / "bad.nii.gz")]
    assert (tmp_path / "o2" / "s.mask.nii.gz").exists() and not (tmp_path / "o2" / "bad.mask.nii.gz").exists()


def test_volume_processing_units():
    from deploy_unet.volume_processing import Intensity, resample_linear, resample_nearest, volume_props

    x = np.array([[-1000.0, -200.0, 100.0, 400.0, 3000.0]])
    np.testing.assert_allclose(Intensity.parse("ct:-200,400").apply(x), [[0, 0, 0.5, 1, 1]])
    np.testing.assert_allclose(Intensity.parse("ct:-200,400,100,50").apply(x), [[-6, -6, 0, 6, 6]])
    z = Intensity.parse("zscore").apply(np.arange(10.0)[None])
    assert abs(z.mean()) < 1e-6 and abs(z.std() - 1) < 1e-5
    assert volume_props("CT:-57,164", "1.5") == {"intensity": "ct:-57,164", "spacing": "1.5,1.5,1.5"}
    ramp = np.arange(8, dtype=np.float32)[None, :, None, None] * np.ones((1, 8, 2, 2), np.float32)
    up = resample_linear(ramp, (16, 2, 2))[0, :, 0, 0]  # half-voxel centres: value o / 2 - 0.25, edges clamped
    np.testing.assert_allclose(up[1:15], np.arange(1, 15) / 2 - 0.25, atol=1e-6)
    assert up[0] == 0 and up[15] == 7
    np.testing.assert_array_equal(resample_linear(ramp, (8, 2, 2)), ramp)
    mask = np.random.default_rng(0).integers(0, 3, (5, 7, 3))
    np.testing.assert_array_equal(resample_nearest(resample_nearest(mask, (10, 14, 6)), (5, 7, 3)), mask)
    with pytest.raises(ConfigError):
        Intensity.parse("window:1,2")


def test_slice_picture_goes_through_the_largest_structure():
    from deploy_unet.visualize import largest_structure_slices, volume_slices_image

    mask = np.zeros((20, 30, 10), np.uint8)
    mask[2:5, 3:6, 1:3] = 1
    mask[10:16, 20:28, 6:9] = 2  # the largest structure
    mask[12, 20:28, 6:9] = 2
    at = largest_structure_slices(mask)
    assert 10 <= at[0] < 16 and 20 <= at[1] < 28 and 6 <= at[2] < 9
    picture = volume_slices_image(np.random.default_rng(0).random(mask.shape), mask, 3, None, (1.0, 1.0, 4.0))
    assert picture.mode == "RGB" and picture.width > 300


def test_cli_predict_on_a_nifti(tmp_path, onnx3d):
    """`deploy-unet predict ART scan.nii.gz -o out/` with the shared window options in their volume form."""
    from click.testing import CliRunner

    from deploy_unet.cli import cli

    nib.save(nib.Nifti1Image(_scan((24, 20, 18)), _affine()), str(tmp_path / "scan.nii.gz"))
    args = ["predict", str(onnx3d), str(tmp_path / "scan.nii.gz"), "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, [*args, "--window", "16x16x16", "--overlap", "0.25", "--sw-batch", "2",
                                      "--mirror", "0,1,2", "--intensity", "zscore"])
    assert result.exit_code == 0, result.output
    assert "(NAME.mask.nii.gz, NAME.slices.png, predictions.json)" in result.output  # what it really wrote
    back = nib.load(str(tmp_path / "out" / "scan.mask.nii.gz"))
    assert back.shape == (24, 20, 18)
    np.testing.assert_allclose(back.affine, _affine(), atol=1e-6)
    data = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert data["sliding_window"] | {"spacing": None} == {
        "window": [16, 16, 16], "overlap": 0.25, "blend": "gaussian", "sw_batch": 2, "mirror_axes": [0, 1, 2],
        "intensity": "zscore", "resample": False, "spacing": None}
    bad = CliRunner().invoke(cli, [*args, "--window", "16x18x16"])
    assert bad.exit_code == 2 and bad.output.count("error:") == 1 and "height 18" in bad.output
    assert "Traceback" not in bad.output


def test_export_stores_intensity_and_spacing(tmp_path):
    """export --intensity/--spacing write the metadata predict reads (checked before the export runs)."""
    from click.testing import CliRunner

    from deploy_unet.cli import cli
    from deploy_unet.describe import read_model_info
    from deploy_unet.volume_processing import volume_settings

    out = tmp_path / "u.onnx"
    base = ["export", "--depth", "1", "--base-channels", "2", "--height", "16", "--width", "16", "-o", str(out)]
    result = CliRunner().invoke(cli, [*base, "--intensity", "ct:-57,164", "--spacing", "1.5x1.5x2"])
    assert result.exit_code == 0, result.output
    info = read_model_info(out)
    assert info.extra["intensity"] == "ct:-57,164" and info.extra["spacing"] == "1.5,1.5,2"
    intensity, spacing = volume_settings(info)
    assert (intensity.kind, intensity.low, intensity.high, spacing) == ("ct", -57, 164, (1.5, 1.5, 2.0))
    bad = CliRunner().invoke(cli, [*base[:-1], str(tmp_path / "v.onnx"), "--intensity", "ct:1"])
    assert bad.exit_code == 2 and "intensity" in bad.output and not (tmp_path / "v.onnx").exists()


def test_shipped_unet3d_on_a_nifti_scan(tmp_path):
    """The shipped 3D UNet, exported, predicts a synthetic scan written as NIfTI (anisotropic affine) from file to
    file: the mask has the scan's shape and affine and matches the ground truth (the net's card: held-out Dice
    0.986)."""
    from deploy_unet import shipped
    from deploy_unet.data import SyntheticSpec, synthetic_volume
    from deploy_unet.export import export_onnx
    from deploy_unet.predict import predict

    if "unet3d" not in shipped.available():
        pytest.skip("this checkout has no shipped unet3d checkpoint")
    onnx_path = tmp_path / "u3.onnx"
    export_onnx(shipped.checkpoint("unet3d"), onnx_path, depth=32, height=64, width=64)
    image, truth = synthetic_volume(SyntheticSpec(seed=5, height=80, width=72, depth=40), 0)
    affine = np.diag([1.2, 0.7, 0.7, 1.0])
    affine[:3, 3] = [5.0, -3.0, 10.0]
    nib.save(nib.Nifti1Image(image[0], affine), str(tmp_path / "scan.nii.gz"))
    predict(onnx_path, [tmp_path / "scan.nii.gz"], tmp_path / "out", progress=False)
    back = nib.load(str(tmp_path / "out" / "scan.mask.nii.gz"))
    mask = np.asanyarray(back.dataobj)
    assert mask.shape == truth.shape == (40, 80, 72)
    np.testing.assert_allclose(back.affine, nib.load(str(tmp_path / "scan.nii.gz")).affine, atol=0)
    assert (mask == truth).mean() >= 0.99
    for c in (1, 2):
        dice = 2 * ((mask == c) & (truth == c)).sum() / ((mask == c).sum() + (truth == c).sum())
        assert dice >= 0.9, (c, dice)


def test_validation_gallery_of_volumes_shows_slices(tmp_path):
    """The pipeline's gallery for a volume net: orthogonal slices through the differing voxels."""
    from types import SimpleNamespace

    from PIL import Image

    from deploy_unet.report import write_galleries
    from deploy_unet.visualize import GallerySample

    ref = np.zeros((12, 20, 16), np.int32)
    ref[3:9, 5:15, 4:12] = 1
    cand = ref.copy()
    cand[7, 14, 11] = 0
    sample = GallerySample("vol 3", 99.99, np.random.default_rng(0).random((1, 12, 20, 16), np.float32), ref, cand)
    report = SimpleNamespace(gallery=[sample], candidate="u3.int8.onnx", candidate_backend="onnxruntime",
                             precision="int8", reference="u3.pt", reference_backend="torch", num_samples=4,
                             checkerboard_worse=False)
    written = write_galleries(tmp_path, [report])
    assert [p.name for _, p in written] == ["u3.int8.onnx.gallery.png"]
    with Image.open(written[0][1]) as picture:
        assert picture.height > 3 * 12 and picture.width > 4 * 16
