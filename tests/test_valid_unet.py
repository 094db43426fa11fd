"""The original UNet (``padding="valid"``): its shape contract, export, and overlap-tile inference."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from deploy_unet.checkpoint import save_checkpoint
from deploy_unet.cli import cli
from deploy_unet.describe import read_model_info
from deploy_unet.engine.build import plan_build
from deploy_unet.errors import ConfigError, ShapeContractError
from deploy_unet.export import export_onnx
from deploy_unet.nets import create_net
from deploy_unet.runtime import open_runner, run_onnx
from deploy_unet.runtime.tiling import mirror_pad, resolve_tile_size, tile_axis, tile_infer
from deploy_unet.runtime.torch_runner import TorchRunner
from deploy_unet.shapes import ShapeContract, valid_unet_contract, validate_shape
from tests.conftest import smooth_images, thin_net

# Nearest upsampling: border 46, so b = 23 per side is not a multiple of the divisor 4 and the tiles must
# realign their pooling grid (the case that breaks a naive overlap-tile implementation).
VALID = {"depth": 2, "base_channels": 4, "padding": "valid", "up_mode": "nearest"}


def _sizes_the_module_accepts(net, sizes):
    """{h: output h} for the sizes at which the module runs with every pooled map even (hooks, not the formula)."""
    pooled: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: pooled.append(o.shape[-2]))
             for m in [net.stem, *net.down[:-1]]]
    accepted = {}
    try:
        for h in sizes:
            pooled.clear()
            try:
                with torch.no_grad():
                    out = net(torch.zeros(1, net.in_channels, h, 130))
            except RuntimeError:
                continue
            if all(p % 2 == 0 for p in pooled) and out.shape[-2] > 0:
                accepted[h] = out.shape[-2]
    finally:
        for hook in hooks:
            hook.remove()
    return accepted


@pytest.mark.parametrize("depth, up_mode", [(1, "transpose"), (2, "transpose"), (3, "transpose"),
                                            (2, "nearest"), (2, "bilinear")])
def test_contract_formula_matches_the_module(depth, up_mode):
    net = create_net("unet", depth=depth, base_channels=1, padding="valid", up_mode=up_mode, norm="none").eval()
    contract = net.shape_contract
    accepted = _sizes_the_module_accepts(net, range(1, 131))
    assert accepted, "some size below 131 must be valid"
    assert {h for h in range(1, 131) if contract.is_valid_input(h)} == set(accepted)
    assert all(contract.output_size(h) == out for h, out in accepted.items())


def test_paper_depth_4_gives_572_to_388():
    contract = valid_unet_contract(4)
    assert contract.is_valid_input(572) and contract.output_size(572) == 388
    assert contract.border_per_side == 92  # the paper's mirrored border (Fig. 2)
    net = create_net("unet", depth=4, base_channels=1, padding="valid", norm="none").eval()
    with torch.no_grad():
        assert tuple(net(torch.zeros(1, 3, 572, 572)).shape) == (1, 2, 388, 388)


def test_nearest_valid_inputs_and_one_line_error():
    contract = valid_unet_contract(2)  # 4k, >= 44 (output = input - 40)
    assert contract.smallest == 44
    assert contract.nearest_valid_inputs(50) == (48, 52)
    assert contract.nearest_valid_inputs(52) == (48, 52)
    assert contract.nearest_valid_inputs(10) == (None, 44)
    with pytest.raises(ShapeContractError) as err:
        contract.validate((48, 50), pad_hint="or pass --tile")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("width 50 is not a valid input size (4k >= 44")
    assert message.endswith("nearest valid: 52 or 48; or pass --tile")
    depth3 = valid_unet_contract(3)  # 8k + 4, >= 92
    assert (depth3.remainder, depth3.smallest, depth3.nearest_valid_inputs(100)) == (4, 92, (92, 100))


def test_padded_contract_keeps_the_divisor_messages():
    contract = thin_net("unet").shape_contract
    assert contract.is_divisor_only and contract.output_size(24) == 24
    with pytest.raises(ShapeContractError) as new:
        contract.validate((32, 20), pad_hint="or pass --pad")
    with pytest.raises(ShapeContractError) as old:
        validate_shape((32, 20), 8, "2**3 for UNet depth 3")
    assert str(new.value) == str(old.value)


def test_valid_padding_is_a_config_choice():
    with pytest.raises(ConfigError, match="padding='full' is not valid; choose one of: same, valid"):
        create_net("unet", padding="full")


# -- tiling geometry ---------------------------------------------------------------------------------
@pytest.mark.parametrize("rows, cols", [((3, 5), (0, 2)), ((9, 11), (12, 4)), ((25, 1), (7, 30))])
def test_mirror_pad_is_numpy_reflect_even_wider_than_the_image(rows, cols):
    x = np.arange(2 * 7 * 5, dtype=np.float32).reshape(1, 2, 7, 5)
    np.testing.assert_array_equal(mirror_pad(x, rows, cols), _reflect_one_at_a_time(x, rows, cols))
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        np.testing.assert_array_equal(mirror_pad(x, rows, cols), np.pad(x, [(0, 0), (0, 0), rows, cols], "reflect"))


def _reflect_one_at_a_time(x, rows, cols):
    """numpy ``reflect``, one side and one reflection (at most size - 1 wide) per np.pad call: numpy 1.x pads
    several reflections at once wrongly when the two sides differ (numpy#25926, fixed in 2.x), and the
    serve extra's PyTriton pins numpy < 2. Each edge reached is a mirror axis, so the steps compose exactly."""
    for axis, sides in ((2, rows), (3, cols)):
        size = x.shape[axis]
        for side, width in enumerate(sides):
            while width:
                step = min(width, size - 1)
                widths = [(0, 0)] * x.ndim
                widths[axis] = (step, 0) if side == 0 else (0, step)
                x, width = np.pad(x, widths, "reflect"), width - step
    return x


@pytest.mark.parametrize("up_loss, tile", [(0, 60), (2, 60), (0, 100), (2, 64)])
@pytest.mark.parametrize("size", [1, 7, 19, 20, 21, 100])
def test_tile_axis_covers_every_pixel_once_on_the_pooling_grid(size, up_loss, tile):
    contract = valid_unet_contract(2, up_loss)
    axis = tile_axis(size, tile, contract)
    d, b = contract.divisor, contract.border_per_side
    # Every tile starts at an image position that is a multiple of the divisor (the whole run's grid).
    assert axis.step % d == 0 and axis.pad_before % d == 0 and axis.pad_before - axis.skip == b
    assert axis.skip + axis.step <= contract.output_size(tile)
    covered = np.zeros(axis.count * axis.step, int)
    for origin in axis.origins:
        covered[origin:origin + axis.step] += 1
    assert (covered[:size] == 1).all() and axis.count == -(-size // axis.step)
    # The last tile ends where the padding ends.
    assert axis.origins[-1] + axis.tile == axis.pad_before + size + axis.pad_after


def test_tile_too_small_to_advance_is_a_clear_error():
    contract = ShapeContract(4, border=6, min_size=7)  # b = 3: skip 1, then stride multiple of 4
    with pytest.raises(ShapeContractError, match=r"tile 8 gives 2 output pixels.*at least 12$"):
        tile_axis(20, 8, contract)


def test_stitching_with_a_crop_as_the_net_puts_every_pixel_back():
    """A fake net that crops the border (what a valid net does to geometry) must stitch to the image."""
    contract = ShapeContract(4, border=6, min_size=7)
    b = contract.border_per_side
    image = np.random.default_rng(0).standard_normal((2, 3, 23, 17)).astype(np.float32)
    calls = []

    def crop_net(tiles):
        calls.append(len(tiles))
        return {"out": tiles[..., b:-b, b:-b]}

    out = tile_infer(crop_net, image, contract, (12, 16), max_batch=5)["out"]
    np.testing.assert_array_equal(out, image)
    # rows: stride 4 -> 6 tiles; cols: tile 16 gives 10, skip 1, stride 8 -> 3 tiles; 2 images; 5 per call.
    assert max(calls) == 5 and sum(calls) == 2 * 6 * 3


@pytest.mark.parametrize("depth, up_mode", [(2, "transpose"), (3, "transpose"), (2, "nearest"), (3, "bilinear")])
def test_torch_tiles_equal_the_whole_image_run(depth, up_mode):
    """Every depth/upsampling: stitched tiles == one whole-image run on its valid region. torch picks
    conv kernels by size, so the sums may round differently: 1e-6 here, bit-exact on ORT (below)."""
    net = thin_net("unet", depth=depth, base_channels=4, padding="valid", up_mode=up_mode)
    contract = net.shape_contract
    b = contract.border_per_side
    image = smooth_images(1, 3, 150, 131, seed=depth)
    h, w = contract.nearest_valid_inputs(150)[0], contract.nearest_valid_inputs(131)[0]
    with TorchRunner(net, device="cpu") as runner:
        whole = runner.infer({"input": image[..., :h, :w]})["logits"]
        runner.enable_tiling(contract.smallest_input_for_output(30))
        tiled = runner.infer({"input": image})["logits"]
    assert tiled.shape == (1, 2, 150, 131)
    np.testing.assert_allclose(tiled[..., b:h - b, b:w - b], whole, atol=1e-6, rtol=0)


# -- export and runners ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def valid_onnx(tmp_path_factory):
    """(net, onnx path, checkpoint, export CLI output): one export through the CLI, as a fresh clone does it."""
    net = thin_net("unet", **VALID)
    folder = tmp_path_factory.mktemp("valid")
    path, checkpoint = folder / "valid_unet.onnx", folder / "valid_unet.pt"
    save_checkpoint(checkpoint, net, mean=[0.5] * 3, std=[0.25] * 3)
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(checkpoint), "--height", "60", "--width", "76",
                                      "-o", str(path)])
    assert result.exit_code == 0, result.output
    return net, path, checkpoint, result.output


def test_export_is_dynamic_and_self_describing(valid_onnx):
    net, path, _, output = valid_onnx
    # The export gate ran at the traced 2x3x60x76 and at valid sizes that move one axis each (the period is 4).
    assert "ONNX Runtime vs PyTorch max abs error: 2x3x60x76: " in output
    assert all(f", {shape}: " in output for shape in ("1x3x60x76", "2x3x64x76", "2x3x60x80"))
    model = onnx.load(str(path))
    out_dims = [d.dim_param for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert out_dims[0] == "batch" and out_dims[2:] == ["out_height", "out_width"]
    info = read_model_info(path)
    assert (info.padding, info.size_remainder, info.border, info.output_offset, info.min_size) == ("valid", 0, 46, 23, 48)
    assert info.net_config["padding"] == "valid"
    assert info.shape_contract == net.shape_contract
    # The file runs at a third valid size, larger than both export sizes, and matches PyTorch.
    x = smooth_images(2, 3, 96, 52, seed=3)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    got = run_onnx(path, x, threads=1)
    assert got.shape == (2, 2, 50, 6)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_export_refuses_an_invalid_size_without_a_file(tmp_path):
    path = tmp_path / "m.onnx"
    with pytest.raises(ShapeContractError, match=r"^height 62 .*nearest valid: 64 or 60; choose a valid --height/--width$"):
        export_onnx(thin_net("unet", **VALID), path, height=62, width=60)
    assert not path.exists()


def test_invalid_size_error_and_pad_is_refused(valid_onnx):
    _, path, _, _ = valid_onnx
    x = smooth_images(1, 3, 62, 64)
    with pytest.raises(ShapeContractError, match=r"^height 62 is not a valid input size .*nearest valid: 64 or 60; "
                                                 r"or run with tile=True \(--tile\) for any size$"):
        run_onnx(path, x)
    with pytest.raises(ConfigError, match="use --tile"):
        run_onnx(path, x, pad=True)
    with pytest.raises(ShapeContractError, match="tile-size"):
        run_onnx(path, x, tile=True, tile_size=50)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_stitched_tiles_equal_the_whole_image_run(valid_onnx, backend):
    """Identical receptive fields on the same pooling grid: each output pixel of a tile is computed from
    the same input window as in the whole-image run. ONNX Runtime fp32 CPU gives the same bits; torch
    picks conv kernels by size, so its sums may round differently (1e-6)."""
    net, path, checkpoint, _ = valid_onnx
    contract = net.shape_contract
    b = contract.border_per_side
    image = smooth_images(2, 3, 97, 83, seed=5)
    source = path if backend == "onnxruntime" else checkpoint
    h, w = contract.nearest_valid_inputs(97)[0], contract.nearest_valid_inputs(83)[0]  # 96, 80
    with open_runner(source, backend, threads=1) as runner:
        whole = runner.infer({"input": image[..., :h, :w]})["logits"]
    with open_runner(source, backend, threads=1, tile=True) as runner:
        if backend == "onnxruntime":
            assert runner.tile_size == (60, 76)  # the export size from the metadata
        tiled = runner.infer({"input": image})["logits"]
    assert tiled.shape == (2, 2, 97, 83)  # any size in, full size out
    assert whole.shape == (2, 2, h - 46, w - 46)
    if backend == "onnxruntime":
        np.testing.assert_array_equal(tiled[..., b:h - b, b:w - b], whole)
    else:
        np.testing.assert_allclose(tiled[..., b:h - b, b:w - b], whole, atol=1e-6, rtol=0)


def test_stitched_output_does_not_depend_on_the_tile_size(valid_onnx):
    _, path, _, _ = valid_onnx
    image = smooth_images(1, 3, 41, 70, seed=6)
    small = run_onnx(path, image, tile=True, tile_size=(52, 56), threads=1)
    large = run_onnx(path, image, tile=True, tile_size=(84, 100), tile_batch=1, threads=1)
    assert small.shape == (1, 2, 41, 70)
    np.testing.assert_array_equal(small, large)


def test_tiny_image_smaller_than_the_border_gets_a_full_size_mask(valid_onnx):
    net, path, _, _ = valid_onnx
    image = smooth_images(1, 3, 5, 3, seed=7)
    tiled = run_onnx(path, image, tile=True, threads=1)
    assert tiled.shape == (1, 2, 5, 3)
    # What the net computes on the (repeatedly) mirrored image, at the kept pixels: the same numbers.
    rows, cols = tile_axis(5, 60, net.shape_contract), tile_axis(3, 76, net.shape_contract)
    assert rows.count == cols.count == 1
    padded = mirror_pad(image, (rows.pad_before, rows.pad_after), (cols.pad_before, cols.pad_after))
    ref = run_onnx(path, np.ascontiguousarray(padded), threads=1)
    np.testing.assert_array_equal(tiled, ref[..., rows.skip:rows.skip + 5, cols.skip:cols.skip + 3])


def test_default_tile_size_is_the_export_size_and_is_checked():
    contract = valid_unet_contract(2)
    assert resolve_tile_size(contract, None, [1, 3, 60, 76]) == (60, 76)
    assert resolve_tile_size(contract, 92) == (92, 92)
    assert contract.is_valid_input(resolve_tile_size(contract, None)[0])
    with pytest.raises(ShapeContractError, match="height 46 .*choose a valid --tile-size"):
        resolve_tile_size(contract, (46, 60))


def test_padded_net_tiles_keep_full_size(thin_unet_onnx):
    """Border 0: tiles of the export size, no padding needed when the image is a multiple of them."""
    net, path = thin_unet_onnx
    image = smooth_images(1, 3, 64, 96, seed=8)
    tiled = run_onnx(path, image, tile=True, threads=1)
    assert tiled.shape == (1, 2, 64, 96)
    with torch.no_grad():
        first_tile = net(torch.from_numpy(image[..., :32, 32:64])).numpy()
    np.testing.assert_allclose(tiled[..., :32, 32:64], first_tile, atol=1e-5, rtol=0)


# -- build-engine profile (no TensorRT needed) -------------------------------------------------------
def test_engine_plan_checks_profiles_with_the_valid_contract(valid_onnx):
    _, path, _, _ = valid_onnx
    plan = plan_build(path)
    profile = plan.profiles[0]
    assert profile.min == (1, 3, 48, 48) and profile.opt == (1, 3, 60, 76) and profile.max == (1, 3, 120, 152)
    with pytest.raises(ShapeContractError, match=r"--max-shape 1x3x122x152: height 122 is not a valid input size "
                                                 r".*nearest valid: 124 or 120$"):
        plan_build(path, max_shape="1x3x122x152")


# -- CLI on the files a fresh clone makes ------------------------------------------------------------
def test_cli_validate_and_bench_with_tile(tmp_path, valid_onnx):
    _, onnx_path, checkpoint, _ = valid_onnx
    runner = CliRunner()
    report = tmp_path / "val.json"
    result = runner.invoke(cli, ["validate", str(onnx_path), "-r", str(checkpoint), "--tile", "--samples", "2",
                                 "--data", "synthetic:size=50x70", "--json", str(report)])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["outputs"][0]["shape"] == [1, 2, 50, 70] and data["outputs"][0]["max_abs"] < 1e-5
    result = runner.invoke(cli, ["validate", str(onnx_path), "-r", str(checkpoint), "--samples", "1",
                                 "--data", "synthetic:size=50x70", "--pad"])
    assert result.exit_code == 2 and "use --tile" in result.output
    bench_json = tmp_path / "bench.json"
    result = runner.invoke(cli, ["bench", str(onnx_path), "--tile", "--tile-size", "64x84", "--size", "50x70",
                                 "--iters", "2", "--warmup", "0", "--threads", "1", "--json", str(bench_json)])
    assert result.exit_code == 0, result.output
    bench_result = json.loads(bench_json.read_text())["results"][0]
    assert bench_result["tile_size"] == "64x84" and bench_result["label"].endswith("tiles 64x84")
    result = runner.invoke(cli, ["bench", str(onnx_path), "--size", "50x70", "--iters", "1"])
    assert result.exit_code == 2 and "nearest valid: 52 or 48; or pass --tile" in result.output
    result = runner.invoke(cli, ["bench", str(onnx_path), "--tile", "--tile-size", "9x", "--iters", "1"])
    assert result.exit_code == 2 and "--tile-size" in result.output


def test_torch_runner_from_checkpoint_states_the_valid_contract(valid_onnx):
    net, _, checkpoint, _ = valid_onnx
    runner = TorchRunner.from_checkpoint(checkpoint, device="cpu")
    assert runner.contract == net.shape_contract and runner.info.border == 46


def test_tensorrt_runner_reads_the_contract_and_max_batch_from_the_manifest(tmp_path):
    """No GPU needed: the engine's manifest carries the contract; tiles run up to the profile's max batch."""
    from test_manifest import make_manifest

    from deploy_unet.engine.manifest import manifest_path_for, model_section, write_manifest
    from deploy_unet.metadata import ModelInfo
    from deploy_unet.runtime.tensorrt_runner import TensorRTRunner

    contract = valid_unet_contract(2, up_loss=2)
    info = ModelInfo(arch="unet", divisor=4, in_channels=3, num_classes=2, net_config={"depth": 2},
                     export_shape=[1, 3, 60, 76], **ModelInfo.contract_fields(contract, "valid"))
    manifest = make_manifest()
    manifest.onnx["metadata"], manifest.model = info.to_props(), model_section(info)
    manifest.inputs[0]["max"] = [6, 3, 120, 152]
    path = tmp_path / "m.engine"
    path.write_bytes(b"not a real plan")
    write_manifest(manifest, manifest_path_for(path))
    runner = TensorRTRunner(path)
    assert runner.contract == contract
    runner.enable_tiling()
    assert (runner.tile_size, runner.tile_batch) == ((60, 76), 6)


def test_predict_runs_a_valid_net_as_tiles_and_refuses_padding(valid_onnx):
    """deploy-unet predict on the paper's UNet: padding cannot give a full-size mask, tiles can."""
    from deploy_unet.predict import predict

    _, path, _, _ = valid_onnx
    image = (np.random.default_rng(5).random((45, 70, 3)) * 255).astype(np.uint8)
    with pytest.raises(ConfigError, match="use tiles"):
        predict(path, [image], progress=False)
    report = predict(path, [image], tile=True, progress=False)
    x = ((image.astype(np.float32) / 255 - 0.5) / 0.25).transpose(2, 0, 1)[None]
    assert report.masks[0].shape == (45, 70)
    assert np.array_equal(report.masks[0], run_onnx(path, x, tile=True).argmax(axis=1)[0])
