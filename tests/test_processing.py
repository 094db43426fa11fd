"""deploy_unet.processing: image -> model input -> mask at the image's size, checked against independent
references (Pillow's conversions, numpy's reflect pad, the runner's own pad-and-crop path)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from deploy_unet.errors import ConfigError, ShapeContractError
from deploy_unet.metadata import ModelInfo
from deploy_unet.processing import (
    Geometry,
    Preprocessing,
    adapt_channels,
    logits_to_mask,
    postprocess,
    preprocess,
    resize_nearest,
    to_unit_float,
)
from deploy_unet.shapes import ShapeContract, valid_unet_contract


def _rgb(h, w, seed=0, channels=3, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    top = 255 if dtype == np.uint8 else 65535
    return rng.integers(0, top + 1, size=(h, w, channels)).astype(dtype)


def test_scaling_16_bit_matches_8_bit_for_the_same_levels():
    eight = _rgb(5, 7)
    sixteen = eight.astype(np.uint16) * 257  # 65535 / 255 = 257: the same intensity in 16 bits
    np.testing.assert_allclose(to_unit_float(sixteen), to_unit_float(eight), atol=1e-6)
    assert to_unit_float(np.array([[0, 255]], np.uint8)).tolist() == [[0.0, 1.0]]
    with pytest.raises(ConfigError, match="int64 is not supported"):
        to_unit_float(np.zeros((2, 2), np.int64))


def test_channel_rules_agree_with_pillow():
    rgba = _rgb(6, 9, channels=4)
    rgb = np.asarray(Image.fromarray(rgba, "RGBA").convert("RGB"))
    grey = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    as_float = to_unit_float(rgba)
    np.testing.assert_array_equal(adapt_channels(as_float, 3), to_unit_float(rgb).transpose(2, 0, 1))
    # Pillow rounds luma to 8 bits; ours stays float: within half a level
    np.testing.assert_allclose(adapt_channels(to_unit_float(rgb), 1)[0], to_unit_float(grey), atol=0.5 / 255 + 1e-6)
    # grey -> RGB repeats; grey + alpha -> grey
    g = to_unit_float(grey)
    assert np.array_equal(adapt_channels(g, 3), np.stack([g, g, g]))
    assert np.array_equal(adapt_channels(np.stack([g, 1 - g], axis=2), 1)[0], g)
    # alpha never changes the result
    other_alpha = rgba.copy()
    other_alpha[..., 3] = 0
    assert np.array_equal(adapt_channels(to_unit_float(other_alpha), 3), adapt_channels(as_float, 3))
    with pytest.raises(ShapeContractError, match="5 channels but the model takes 3"):
        adapt_channels(np.zeros((4, 4, 5), np.float32), 3)


def test_pad_fit_normalizes_then_reflect_pads_bottom_right():
    image = _rgb(37, 45, seed=1)
    spec = Preprocessing(3, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0), contract=ShapeContract(8))
    out = preprocess(image, spec)
    assert out.array.shape == (1, 3, 40, 48) and out.array.dtype == np.float32
    assert out.geometry == Geometry(37, 45, 40, 48, "pad") and out.geometry.padding == (3, 3)
    expected = (image.astype(np.float64) / 255 - np.array([0.1, 0.2, 0.3])) / np.array([0.5, 0.25, 2.0])
    expected = np.pad(expected.transpose(2, 0, 1), ((0, 0), (0, 3), (0, 3)), mode="reflect")
    np.testing.assert_allclose(out.array[0], expected, rtol=1e-5, atol=1e-5)


def test_pad_in_graph_model_gets_no_host_padding():
    spec = Preprocessing(3, contract=ShapeContract(16), pad_in_graph=True)
    out = preprocess(_rgb(21, 30), spec)
    assert out.array.shape == (1, 3, 21, 30)
    with pytest.raises(ShapeContractError, match="below 9"):
        preprocess(_rgb(5, 30), spec)


def test_batches_of_one_size_and_mixed_sizes_refused():
    spec = Preprocessing(1, contract=ShapeContract(4))
    batch = preprocess([_rgb(6, 6, seed=i) for i in range(3)], spec)
    assert batch.array.shape == (3, 1, 8, 8)
    nhwc = preprocess(np.stack([_rgb(6, 6, seed=i) for i in range(3)]), spec)
    assert np.array_equal(batch.array, nhwc.array)
    with pytest.raises(ShapeContractError, match="different sizes"):
        preprocess([_rgb(6, 6), _rgb(6, 7)], spec)


def test_postprocess_crops_pad_and_accepts_runner_sized_outputs():
    geometry = Geometry(5, 6, 8, 8, "pad")
    logits = np.zeros((2, 3, 8, 8), np.float32)
    logits[:, 2, :, 3:] = 1.0  # class 2 on the right, class 0 (first on ties) elsewhere
    mask = postprocess(logits, geometry)
    assert mask.shape == (2, 5, 6) and mask.dtype == np.uint8
    assert (mask[:, :, 3:] == 2).all() and (mask[:, :, :3] == 0).all()
    # a runner that cropped already (pad in graph, tiles) or output="mask" ids
    assert np.array_equal(postprocess(logits[..., :5, :6], geometry), mask)
    assert np.array_equal(postprocess(logits.argmax(1).astype(np.int64), geometry), mask)
    with pytest.raises(ShapeContractError, match="matches neither"):
        postprocess(logits[..., :7, :7], geometry)


def test_resize_fit_and_nearest_back():
    spec = Preprocessing(3, contract=ShapeContract(8), fit="resize", size=(16, 16))
    out = preprocess(_rgb(30, 50), spec)
    assert out.array.shape == (1, 3, 16, 16) and out.geometry.fit == "resize"
    small = np.zeros((1, 16, 16), np.uint8)
    small[:, :, 8:] = 1  # right half
    back = postprocess(small, out.geometry)
    assert back.shape == (1, 30, 50)
    assert (back[:, :, 25:] == 1).all() and (back[:, :, :25] == 0).all()
    assert np.array_equal(resize_nearest(back, 16, 16), small)
    with pytest.raises(ShapeContractError, match="not divisible by 8"):
        Preprocessing(3, contract=ShapeContract(8), fit="resize", size=(20, 16))


def test_valid_net_needs_tiles_not_padding():
    contract = valid_unet_contract(2)
    with pytest.raises(ConfigError, match="use tiles"):
        Preprocessing(3, contract=contract, fit="pad")
    out = preprocess(_rgb(23, 31), Preprocessing(3, contract=contract, fit="tile"))
    assert out.array.shape == (1, 3, 23, 31)


def test_logits_to_mask_dtype_follows_class_count():
    assert logits_to_mask(np.zeros((1, 4, 2, 2), np.float32)).dtype == np.uint8
    assert logits_to_mask(np.zeros((1, 300, 2, 2), np.float32)).dtype == np.int32
    binary = np.array([[[[-1.0, 0.0], [0.5, 3.0]]]], np.float32)  # one channel: logit > 0 is class 1
    assert logits_to_mask(binary).tolist() == [[[0, 0], [1, 1]]]


def test_from_model_info_then_ort_equals_the_runners_pad_path(thin_unet_onnx):
    """preprocess + a bare ORT run + postprocess == the runner's own pad=True path, at an odd size."""
    import onnxruntime as ort

    from deploy_unet.data import normalize
    from deploy_unet.describe import read_model_info
    from deploy_unet.runtime import run_onnx

    _, path = thin_unet_onnx
    info = read_model_info(path)
    spec = Preprocessing.from_model_info(info)
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.25, 0.25, 0.25) and spec.contract.divisor == 8
    image = _rgb(19, 27, seed=3)
    batch = preprocess(image, spec)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": batch.array})
    mask = postprocess(logits, batch.geometry)
    unpadded = normalize((image.astype(np.float32) / 255).transpose(2, 0, 1)[None], info.mean, info.std)
    reference = run_onnx(path, unpadded, pad=True).argmax(1)
    assert mask.shape == (1, 19, 27)
    assert np.array_equal(mask, reference)


def test_from_model_info_resize_defaults_to_export_size():
    info = ModelInfo(arch="unet", divisor=16, in_channels=1, num_classes=2, export_shape=[1, 1, 64, 96])
    spec = Preprocessing.from_model_info(info, fit="resize")
    assert spec.size == (64, 96)
    assert preprocess(_rgb(10, 10, channels=1)[..., 0], spec).array.shape == (1, 1, 64, 96)
