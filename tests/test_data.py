import numpy as np
import pytest
from PIL import Image

from deploy_unet import data
from deploy_unet.errors import ArtifactError, ConfigError
from deploy_unet.metadata import ModelInfo

SPEC = data.SyntheticSpec(seed=3, height=64, width=96)


def test_generator_is_deterministic_per_seed_and_index():
    a_img, a_mask = data.synthetic_sample(SPEC, 5)
    b_img, b_mask = data.synthetic_sample(SPEC, 5)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    # a batch starting elsewhere reproduces the same sample at the same index
    batch_img, _ = data.synthetic_batch(SPEC, 4, 2)
    np.testing.assert_array_equal(batch_img[1], a_img)
    other, _ = data.synthetic_sample(data.SyntheticSpec(seed=4, height=64, width=96), 5)
    assert not np.array_equal(other, a_img)


def test_generator_shapes_types_and_range():
    images, masks = data.synthetic_batch(SPEC, 0, 3)
    assert images.shape == (3, 3, 64, 96) and images.dtype == np.float32
    assert masks.shape == (3, 64, 96) and masks.dtype == np.int64
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert set(np.unique(masks)) <= {0, 1, 2, 3}


def test_mask_matches_image_colour_cue():
    # over many scenes every class shows up, and its pixels carry that class's colour cue
    images, masks = data.synthetic_batch(data.SyntheticSpec(seed=0, height=96, width=96), 0, 16)
    rgb = images.transpose(0, 2, 3, 1)
    means = {k: rgb[masks == k].mean(axis=0) for k in range(4)}
    assert all((masks == k).any() for k in range(4))
    assert np.argmax(means[1]) == 0  # ellipses are red-dominant
    assert np.argmax(means[2]) == 1  # polygons green-dominant
    assert np.argmax(means[3]) == 2  # thin structures blue-dominant
    # background is not flat: textured
    assert rgb[masks == 0].std(axis=0).min() > 0.05


def test_fewer_classes_use_fewer_shape_kinds_and_grey_input():
    images, masks = data.synthetic_batch(SPEC, 0, 4, num_classes=2, in_channels=1)
    assert images.shape[1] == 1
    assert set(np.unique(masks)) <= {0, 1}


def test_parse_source_options_and_errors(tmp_path):
    src = data.parse_source("synthetic:seed=7,size=128x64,noise=0.1")
    assert src.synthetic == data.SyntheticSpec(seed=7, height=128, width=64, noise=0.1)
    with pytest.raises(ConfigError, match="unknown"):
        data.parse_source("synthetic:colour=red")
    with pytest.raises(ConfigError, match="key=value"):
        data.parse_source("synthetic:seed=x")
    with pytest.raises(ArtifactError, match="neither"):
        data.parse_source(str(tmp_path / "missing"))


def test_calibration_and_evaluation_sources_must_differ(tmp_path):
    with pytest.raises(ConfigError, match="must differ"):
        data.check_distinct_sources("synthetic:seed=1", "synthetic:seed=1,size=64x64")
    data.check_distinct_sources("synthetic:seed=1", "synthetic:seed=2")
    with pytest.raises(ConfigError, match="must differ"):
        data.check_distinct_sources(str(tmp_path), str(tmp_path) + "/")


def _info(**kw):
    base = dict(arch="unet", divisor=16, in_channels=3, num_classes=4, mean=[0.5] * 3, std=[0.25] * 3)
    base.update(kw)
    return ModelInfo(**base)


def test_load_samples_synthetic_normalizes_and_keeps_raw():
    s = data.load_samples("synthetic:seed=1,size=32x32", _info(), 2)
    assert s.images.shape == (2, 3, 32, 32) and s.masks.shape == (2, 32, 32)
    np.testing.assert_allclose(s.images, (s.raw - 0.5) / 0.25, rtol=1e-6)


def test_folder_reader_with_masks_resizes_to_divisor(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "images" / f"s{i}.png")
        mask = np.zeros((30, 40), np.uint8)
        mask[5:15, 10:30] = 2
        Image.fromarray(mask).save(tmp_path / "masks" / f"s{i}.png")
    s = data.load_samples(str(tmp_path), _info(), None)
    assert s.images.shape == (3, 3, 32, 48)  # 30x40 -> next multiples of 16
    assert s.masks.shape == (3, 32, 48) and set(np.unique(s.masks)) == {0, 2}
    assert s.notes and "resized" in s.notes[0]
    padded = data.load_samples(str(tmp_path), _info(), 2, fit="pad")
    assert padded.images.shape == (2, 3, 32, 48) and padded.padding.pad_bottom == 2


def test_folder_reader_missing_mask_is_a_clear_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    with pytest.raises(ArtifactError, match="no mask for a.png"):
        data.load_samples(str(tmp_path), _info(), None)


def test_npz_reader_nhwc_uint8_and_label_check(tmp_path):
    images = np.full((4, 16, 16, 3), 255, np.uint8)
    masks = np.ones((4, 16, 16), np.int64)
    np.savez(tmp_path / "d.npz", images=images, masks=masks)
    s = data.load_samples(str(tmp_path / "d.npz"), _info(mean=[], std=[]), 2)
    assert s.images.shape == (2, 3, 16, 16) and float(s.images.max()) == 1.0
    np.save(tmp_path / "x.npy", images.transpose(0, 3, 1, 2).astype(np.float32) / 255)
    assert data.load_samples(str(tmp_path / "x.npy"), _info(), None).masks is None
    np.savez(tmp_path / "bad.npz", images=images, masks=masks * 9)
    with pytest.raises(ArtifactError, match="4 classes"):
        data.load_samples(str(tmp_path / "bad.npz"), _info(), None)
