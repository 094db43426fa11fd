"""deploy_unet.visualize: palette, indexed mask PNGs, overlays and gallery panels, checked pixel by pixel."""

from __future__ import annotations

import numpy as np
from PIL import Image

from deploy_unet.visualize import (
    PALETTE,
    CheckerboardMap,
    GallerySample,
    blend,
    checkerboard_image,
    disagreement_rgb,
    display_rgb,
    gallery_image,
    mask_image,
    overlay_image,
)


def test_palette_is_the_voc_colour_map():
    # VOC devkit labelcolormap: 15 person (192,128,128), 20 tv/monitor (0,64,128), 255 void (224,224,192)
    assert PALETTE[15].tolist() == [192, 128, 128]
    assert PALETTE[20].tolist() == [0, 64, 128]
    assert PALETTE[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in PALETTE.tolist()}) == 256  # every id its own colour


def test_mask_png_keeps_class_ids_and_large_ids(tmp_path):
    mask = np.random.default_rng(0).integers(0, 21, (13, 17))
    mask_image(mask).save(tmp_path / "m.png")
    back = Image.open(tmp_path / "m.png")
    assert back.mode == "P" and np.array_equal(np.asarray(back), mask)
    big = np.array([[0, 300], [1000, 7]])
    mask_image(big).save(tmp_path / "big.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "big.png")).astype(np.int64), big)


def test_overlay_blends_foreground_at_half_and_leaves_background():
    image = np.full((10, 12, 3), 100, np.uint8)
    mask = np.zeros((10, 12), np.int64)
    mask[:, 6:] = 1  # VOC class 1 = (128, 0, 0)
    out = blend(image, mask)
    assert (out[:, :6] == 100).all()
    assert out[0, 6].tolist() == [114, 50, 50]  # (100 + 128) / 2, (100 + 0) / 2
    named = blend(image, mask, ["road", "car"])  # class 0 is not a background here: coloured too
    assert named[0, 0].tolist() == [50, 50, 50]
    picture = overlay_image(image, mask, 2, ["background", "car"])
    assert picture.height > 10 and np.array_equal(np.asarray(picture)[:10, :12], out)


def test_display_rgb_of_16_bit_grey_and_chw_floats():
    grey16 = np.array([[0, 65535]], np.uint16)
    assert display_rgb(grey16).tolist() == [[[0, 0, 0], [255, 255, 255]]]
    chw = np.zeros((3, 2, 5), np.float32)
    chw[0] = 1.0
    assert display_rgb(chw)[0, 0].tolist() == [255, 0, 0]


def test_disagreement_marks_exactly_the_differing_pixels():
    image = np.zeros((4, 4, 3), np.uint8)
    ref = np.zeros((4, 4), np.int64)
    cand = ref.copy()
    cand[1, 2] = 3
    out = disagreement_rgb(image, ref, cand)
    red = (out == [230, 0, 0]).all(axis=2)
    assert red.sum() == 1 and red[1, 2]
    ring = (out == [255, 170, 60]).all(axis=2)
    assert ring.sum() == 15 and not ring[1, 2]  # the rest of the 4x4 tile: all within 3 pixels of (1, 2)


def test_gallery_and_checkerboard_panels_are_images():
    rng = np.random.default_rng(1)
    sample = GallerySample("synthetic[3]", 97.5, rng.random((3, 20, 24)).astype(np.float32),
                           rng.integers(0, 4, (20, 24)), rng.integers(0, 4, (20, 24)))
    panel = gallery_image([sample, sample], "candidate vs reference")
    assert panel.width >= 4 * 24 and panel.height >= 2 * 20
    maps = CheckerboardMap("synthetic[0]", 2, 0.3, 0.01, rng.standard_normal((20, 24)).astype(np.float32),
                           rng.standard_normal((20, 24)).astype(np.float32))
    assert checkerboard_image(maps, "worst map").width >= 3 * 24
