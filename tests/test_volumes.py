"""Volumes (issue 24): the reference 3D UNet, synthetic volumes, export with dynamic N, D, H, W and the
per-axis specialization check, the CLI's --size DxHxW / --spatial-dims / per-axis --divisor."""

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from deploy_unet.cli import cli
from deploy_unet.data import (
    SyntheticSpec,
    load_samples,
    parse_source,
    synthetic_volume,
    synthetic_volume_batch,
)
from deploy_unet.describe import read_model_info
from deploy_unet.errors import ConfigError, ShapeContractError
from deploy_unet.export import check_shapes, export_onnx, trace_shape
from deploy_unet.metadata import ModelInfo
from deploy_unet.nets import create_net
from deploy_unet.runtime.onnxruntime_runner import OnnxRuntimeRunner


def test_unet3d_states_its_contract_uniform_and_anisotropic():
    net = create_net("unet3d", depth=3, base_channels=4)
    assert net.shape_contract.spatial_dims == 3 and net.shape_contract.axis_divisors == (8, 8, 8)
    aniso = create_net("unet3d", depth=3, base_channels=4, pool_depth=1, norm="instance", up_mode="trilinear")
    assert aniso.shape_contract.axis_divisors == (2, 8, 8) and aniso.config["pool_depth"] == 1
    out = aniso(torch.randn(1, 1, 6, 16, 24))
    assert out.shape == (1, 3, 6, 16, 24)
    with pytest.raises(ShapeContractError, match=r"^height 12 is not divisible by 8"):
        aniso.check_input_shape(torch.randn(1, 1, 6, 12, 16))
    for norm in ("batch", "group", "none"):
        assert create_net("unet3d", depth=1, base_channels=8, norm=norm)(torch.randn(1, 1, 2, 4, 4)).shape[1] == 3
    with pytest.raises(ConfigError, match="norm='layer' is not valid"):
        create_net("unet3d", norm="layer")
    with pytest.raises(ConfigError, match="pool_depth=4 is out of range"):
        create_net("unet3d", depth=3, pool_depth=4)


def test_synthetic_volumes_are_seeded_and_hold_every_class():
    spec = SyntheticSpec(seed=3, depth=16, height=32, width=48)
    a, ma = synthetic_volume(spec, 5)
    b, mb = synthetic_volume(spec, 5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)
    assert a.shape == (1, 16, 32, 48) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    images, masks = synthetic_volume_batch(SyntheticSpec(seed=0, depth=32, height=64, width=64), 0, 4)
    assert set(np.unique(masks)) == {0, 1, 2}
    # the classes are visible: blobs brighter, tubes darker than the background
    means = [images[:, 0][masks == k].mean() for k in range(3)]
    assert means[1] > means[0] + 0.1 > means[2] + 0.15
    assert parse_source("synthetic:seed=4,size=8x16x24").synthetic.spatial_shape == (8, 16, 24)


def test_load_samples_gives_volumes_for_a_3d_net_at_a_valid_size():
    info = ModelInfo("unet3d", 8, 1, 3, spatial_dims=3, divisors=[2, 8, 8], mean=[0.4], std=[0.1])
    samples = load_samples("synthetic:seed=1,size=5x30x40", info, n=2)
    assert samples.images.shape == (2, 1, 6, 32, 40) and samples.masks.shape == (2, 6, 32, 40)
    assert "5x30x40 -> 6x32x40" in samples.notes[0]
    np.testing.assert_allclose(samples.images, (samples.raw - 0.4) / 0.1, rtol=1e-5, atol=1e-5)


def test_export_unet3d_dynamic_ndhw_runs_at_other_sizes(tmp_path):
    net = create_net("unet3d", depth=2, base_channels=4, pool_depth=1)
    path = tmp_path / "u3.onnx"
    result = export_onnx(net, path, depth=6, height=16, width=16)
    # traced off the traps: batch 2, every spatial axis distinct, each moved by its own divisor
    assert result.trace_shape == (2, 1, 6, 16, 20)
    changed = {axis for _, axis in check_shapes(result.trace_shape, (1, 1, 6, 16, 16), "all", (2, 4, 4))}
    assert changed == {None, "batch", "depth", "height", "width"}
    dims = [d.dim_param for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "depth", "height", "width"]
    info = read_model_info(path)
    assert info.spatial_dims == 3 and info.axis_divisors == (2, 4, 4) and info.export_shape == [1, 1, 6, 16, 16]
    x = np.random.default_rng(0).normal(size=(3, 1, 10, 12, 28)).astype(np.float32)
    with OnnxRuntimeRunner(path) as runner, torch.no_grad():
        got = runner.infer({"input": x})["logits"]
        np.testing.assert_allclose(got, net.eval()(torch.from_numpy(x)).numpy(), atol=1e-4)
        with pytest.raises(ShapeContractError, match="^depth 7 is not divisible by 2"):
            runner.infer({"input": x[:, :, :7]})


def test_trace_shape_volumes():
    assert trace_shape((1, 1, 32, 32, 32), "all", 8) == (2, 1, 32, 40, 48)
    assert trace_shape((1, 1, 2, 64, 64), "all", (2, 32, 32)) == (2, 1, 4, 64, 96)  # depth 2 collides with batch
    assert trace_shape((1, 1, 16, 32, 48), "batch", 8) == (2, 1, 16, 32, 48)


class FixedDepth(nn.Module):
    """A net with a learned embedding along depth: it only runs at depth 8 (as a fixed positional embedding)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 3, padding=1)
        self.pos = nn.Parameter(torch.zeros(1, 1, 8, 1, 1))

    def forward(self, x):
        return self.conv(x + self.pos)


def test_a_net_fixed_on_depth_is_refused_naming_depth(tmp_path):
    with pytest.raises(ConfigError) as err:
        export_onnx(FixedDepth(), tmp_path / "f.onnx", depth=8, height=16, width=16, divisor=4, spatial_dims=3,
                    in_channels=1)
    message = str(err.value)
    assert "\n" not in message and "depth" in message and "--size DxHxW" in message
    assert not (tmp_path / "f.onnx").exists()
    # with the spatial axes static it exports
    result = export_onnx(FixedDepth(), tmp_path / "f.onnx", depth=8, height=16, width=16, divisor=4,
                         spatial_dims=3, dynamic="batch", in_channels=1)
    assert result.info.spatial_dims == 3


def test_cli_export_volume_sizes_and_refusals(tmp_path):
    runner = CliRunner()
    out = tmp_path / "v.onnx"
    ok = runner.invoke(cli, ["export", "--arch", "unet3d", "--depth", "2", "--base-channels", "4", "--size",
                             "8x16x16", "-o", str(out)])
    assert ok.exit_code == 0, ok.output
    assert "volumes NCDHW" in ok.output and read_model_info(out).export_shape == [1, 1, 8, 16, 16]
    bad = runner.invoke(cli, ["export", "--arch", "unet3d", "--depth", "2", "--size", "10x16x16", "-o", str(out)])
    assert bad.exit_code == 2 and "depth 10 is not divisible by 4" in bad.output and "Traceback" not in bad.output
    nosize = runner.invoke(cli, ["export", "--arch", "unet3d", "-o", str(out)])
    assert nosize.exit_code == 2 and "--size DxHxW" in nosize.output
    # a --model net that does not say it is 3D: --spatial-dims 3 and a per-axis --divisor
    aniso = tmp_path / "a.onnx"
    res = runner.invoke(cli, ["export", "--model", "torch.nn:Conv3d", "--model-arg", "in_channels=1",
                              "--model-arg", "out_channels=2", "--model-arg", "kernel_size=3", "--model-arg",
                              "padding=1", "--in-channels", "1", "--spatial-dims", "3", "--divisor", "2,4,4",
                              "--size", "6x8x12", "-o", str(aniso)])
    assert res.exit_code == 0, res.output
    info = read_model_info(aniso)
    assert info.axis_divisors == (2, 4, 4) and info.spatial_dims == 3
    res = runner.invoke(cli, ["export", "--model", "torch.nn:Conv3d", "--model-arg", "in_channels=1",
                              "--model-arg", "out_channels=2", "--model-arg", "kernel_size=3", "--model-arg",
                              "padding=1", "--in-channels", "1", "--divisor", "2,4,4", "--size", "6x8x10",
                              "-o", str(aniso)])
    assert res.exit_code == 2 and "width 10 is not divisible by 4" in res.output


def test_known_third_party_contracts_and_spatial_dims_from_the_net():
    from deploy_unet.nets.known import reconcile_divisor, stated_contract, stated_spatial_dims

    assert stated_spatial_dims(nn.Sequential(nn.Conv3d(1, 2, 3), nn.ReLU())) == 3
    assert stated_spatial_dims(nn.Conv2d(1, 2, 3)) == 2 and stated_contract(nn.Conv3d(1, 2, 3)) is None
    monai = pytest.importorskip("monai.networks.nets")
    dyn = monai.DynUNet(spatial_dims=3, in_channels=1, out_channels=2, kernel_size=[3, 3, 3],
                        strides=[1, [1, 2, 2], [2, 2, 2]], upsample_kernel_size=[[1, 2, 2], [2, 2, 2]])
    contract = stated_contract(dyn)
    assert contract.axis_divisors == (2, 4, 4) and contract.spatial_dims == 3
    assert stated_contract(monai.SegResNet(spatial_dims=3, init_filters=8)).axis_divisors == (8, 8, 8)
    assert reconcile_divisor(contract, None, (4, 8, 8), "DynUNet").axis_divisors == (4, 8, 8)  # stricter: kept
    with pytest.raises(ConfigError, match=r"--divisor 3,4,4 is not a multiple of DynUNet's own 2,4,4"):
        reconcile_divisor(contract, None, (3, 4, 4), "DynUNet")
