"""runtime/windows.py: the N-D sliding-window core, checked against MONAI's own ``sliding_window_inference``
(logits and masks, 2D and 3D, Gaussian and constant, overlap 0.25/0.5, odd sizes and sizes below the window),
chunked = whole, crop mode = whole-image logits on a zero-padded pooling net, mirroring as nnU-Net does it, and
the valid-convolution grid = ``runtime/tiling.tile_infer``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deploy_unet.errors import ConfigError
from deploy_unet.runtime import windows as W

monai_inferers = pytest.importorskip("monai.inferers", reason="the MONAI comparison needs monai (dev extra)")


def _net(dims: int, k: int = 3, pool: bool = False) -> torch.nn.Module:
    conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
    pool_t = torch.nn.MaxPool2d if dims == 2 else torch.nn.MaxPool3d
    torch.manual_seed(dims)
    layers = [conv(2, 6, 3, padding=1), torch.nn.ReLU()]
    if pool:  # divisor 4, receptive radius 1 + 2 + 4 + 4 + ... < 24
        layers += [pool_t(2), conv(6, 6, 3, padding=1), torch.nn.ReLU(), pool_t(2), conv(6, 6, 3, padding=1),
                   torch.nn.Upsample(scale_factor=4, mode="nearest")]
    layers += [conv(6, k, 3, padding=1)]
    return torch.nn.Sequential(*layers).eval()


def _runner(net):
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    return run


CASES = [
    # spatial size, window: a size not a multiple of the window, one smaller than it, 3D likewise
    ((75, 110), (32, 32)),
    ((20, 45), (32, 32)),
    ((21, 40, 37), (16, 16, 16)),
    ((10, 30, 12), (16, 16, 16)),
]


@pytest.mark.parametrize("size,window", CASES)
@pytest.mark.parametrize("overlap", [0.25, 0.5])
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_equals_monai_sliding_window_inference(size, window, overlap, mode):
    net = _net(len(size))
    image = np.random.default_rng(1).random((1, 2, *size), np.float32)
    with torch.no_grad():
        ref = monai_inferers.sliding_window_inference(torch.from_numpy(image), window, 3, net, overlap=overlap,
                                                      mode=mode).numpy()
    grid = W.blend_grid(size, window, overlap, mode)
    out = W.sliding_window(_runner(net), image, grid, sw_batch=3)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert (out.argmax(1) == ref.argmax(1)).all()
    if mode == "constant":  # the same float32 operations in the same order as MONAI's
        assert np.array_equal(out, ref)


def test_importance_map_is_monais():
    from monai.data.utils import compute_importance_map

    for shape in [(64, 64), (96, 80), (16, 24, 20), (7,)]:
        ref = compute_importance_map(shape, mode="gaussian", sigma_scale=0.125).numpy()
        np.testing.assert_allclose(W.importance_map(shape), ref, rtol=1e-6)
    assert (W.importance_map((5, 6), "constant") == 1).all()


@pytest.mark.parametrize("size,window,chunk", [((75, 110), 32, (23, 40)), ((21, 40, 37), 16, (8, 13, 50))])
def test_chunked_equals_whole_byte_for_byte_with_single_window_batches(size, window, chunk):
    """A pixel's windows are added in grid order whatever region it is computed in: with one window per
    runner call the result cannot depend on the chunking; with batches of several, within float tolerance."""
    net = _net(len(size))
    image = np.random.default_rng(2).random((2, *size), np.float32)
    grid = W.blend_grid(size, window, 0.5)
    read = W.array_reader(image)
    for sw_batch, exact in ((1, True), (4, False)):
        whole = W.blend_region(_runner(net), read, grid, (0,) * len(size), size, sw_batch=sw_batch)
        pieces = np.zeros_like(whole)
        regions = W.chunk_regions(size, chunk)
        for lo, hi in reversed(regions):  # any order
            pieces[(slice(None), *(slice(a, b) for a, b in zip(lo, hi)))] = W.blend_region(
                _runner(net), read, grid, lo, hi, sw_batch=sw_batch)
        if exact:
            assert np.array_equal(pieces, whole)
        else:
            np.testing.assert_allclose(pieces, whole, rtol=1e-5, atol=1e-6)


def test_region_reads_only_its_halo_and_runs_only_its_windows():
    grid = W.blend_grid((1000, 1000), 64, 0.5)
    calls, boxes = [], []
    image = np.zeros((1, 1000, 1000), np.float32)

    def read(lo, hi):
        boxes.append((lo, hi))
        return image[(slice(None), *(slice(a, b) for a, b in zip(lo, hi)))]

    def run(x):
        calls.append(x.shape[0])
        return np.zeros((x.shape[0], 2, *x.shape[2:]), np.float32)

    out = W.blend_region(run, read, grid, (400, 400), (464, 464), sw_batch=4)
    assert out.shape == (2, 64, 64)
    (lo, hi), = boxes
    assert all(a >= 400 - 64 and b <= 464 + 64 for a, b in zip(lo, hi))
    assert sum(calls) == grid.windows_for((400, 400), (464, 464)) == 16  # windows starting at 352, 384, 416, 448 per axis
    assert max(calls) <= 4


def test_crop_mode_with_receptive_halo_equals_whole_image_logits():
    """A zero-padded net with two 2x pools (divisor 4; receptive radius 1 + 2 + 4 + 8 < 24 px): windows of
    64 keeping their centre (halo 24) give whole-image logits within 1e-5, image borders included."""
    net = _net(2, pool=True)
    size = (96, 136)  # multiples of the divisor, not of the window or the step
    image = np.random.default_rng(3).random((1, 2, *size), np.float32)
    with torch.no_grad():
        whole = net(torch.from_numpy(image)).numpy()
    grid = W.crop_grid(size, 64, halo=24, divisor=4)
    assert all(ax.count > 2 for ax in grid.axes)
    out = W.sliding_window(_runner(net), image, grid, sw_batch=2)
    np.testing.assert_allclose(out, whole, atol=1e-5)
    chunked = np.concatenate([W.blend_region(_runner(net), W.array_reader(image[0]), grid, (0, a), (96, b))
                              for a, b in ((0, 50), (50, 136))], axis=2)
    assert np.array_equal(chunked, out[0]) or np.allclose(chunked, out[0], atol=1e-6)
    # a halo too small for the net is visibly not the whole-image result: the test can fail
    small = W.sliding_window(_runner(net), image, W.crop_grid(size, 32, halo=0, divisor=4), sw_batch=2)
    assert np.abs(small - whole).max() > 1e-3


def test_crop_mode_kept_parts_partition_the_image():
    grid = W.crop_grid((100, 37), (32, 16), halo=(8, 2), divisor=(4, 1))
    for ax in grid.axes:
        covered = np.zeros(ax.size, int)
        for i in range(ax.count):
            a, b = ax.out_range(i)
            covered[a:b] += 1
            if a > 0:
                assert a - ax.in_starts[i] >= 8 or ax.window == 16
        assert (covered == 1).all()


def test_mirroring_averages_flipped_runs_like_nnunet():
    net = _net(2)
    image = np.random.default_rng(4).random((1, 2, 32, 32), np.float32)
    run = _runner(net)
    seen = []

    def counting(x):
        seen.append(x.shape[0])
        return run(x)

    grid = W.blend_grid((32, 32), 32, 0.5, "constant")
    out = W.sliding_window(counting, image, grid, sw_batch=1, mirror_axes=(0, 1))
    assert seen == [4]  # the window and its 3 flips in one runner call
    x = torch.from_numpy(image)
    with torch.no_grad():  # nnU-Net's _internal_maybe_mirror_and_predict
        ref = net(x)
        for axes in [(2,), (3,), (2, 3)]:
            ref += torch.flip(net(torch.flip(x, axes)), axes)
        ref = (ref / 4).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert W.mirror_combinations((0, 1, 2)) == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    capped = []
    W.sliding_window(lambda x: capped.append(x.shape[0]) or run(x), image, grid, mirror_axes=(0, 1), max_batch=3)
    assert capped == [3, 1]


def test_valid_grid_is_the_exact_overlap_tile():
    """valid_grid wraps tiling.tile_axis: the same numbers as tile_infer for a valid-convolution net."""
    from deploy_unet.runtime.tiling import tile_infer
    from deploy_unet.shapes import ShapeContract

    contract = ShapeContract(1, border=4)
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 3)).eval()
    image = np.random.default_rng(5).random((1, 2, 45, 61), np.float32)
    ref = tile_infer(lambda x: {"y": _runner(net)(x)}, image, contract, (20, 20), 4)["y"]
    out = W.sliding_window(_runner(net), image, W.valid_grid((45, 61), 20, contract), sw_batch=4)
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="overlap"):
        W.blend_grid((10, 10), 4, 1.0)
    with pytest.raises(ConfigError, match="blend mode"):
        W.blend_grid((10, 10), 4, 0.5, "median")
    with pytest.raises(ConfigError, match="halo"):
        W.crop_grid((10, 10), 8, halo=4)
    with pytest.raises(ConfigError, match="sw-batch"):
        W.blend_region(lambda x: x, W.array_reader(np.zeros((1, 10, 10))), W.blend_grid((10, 10), 4), (0, 0),
                       (10, 10), sw_batch=0)
