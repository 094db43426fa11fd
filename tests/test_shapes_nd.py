"""The shape contract in N spatial dims: per-axis divisors, axis names, pad/crop per axis, metadata and the
runners' checks on NCDHW arrays (issue 24, item 1)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from deploy_unet.errors import ShapeContractError
from deploy_unet.metadata import ModelInfo, read_props, write_props
from deploy_unet.shapes import (
    ShapeContract,
    crop_back,
    is_valid,
    nearest_valid_shape,
    pad_to_multiple,
    per_axis,
    validate_shape,
)


def test_3d_error_names_the_axis_and_its_nearest_sizes():
    with pytest.raises(ShapeContractError) as err:
        validate_shape((30, 64, 64), 16, "2**4 for UNet3D depth 4", spatial_dims=3)
    assert str(err.value) == (
        "depth 30 is not divisible by 16 (= 2**4 for UNet3D depth 4); nearest valid: 32 or 16; or pass --pad"
    )


def test_per_axis_divisors_check_each_axis_with_its_own():
    validate_shape((20, 64, 96), (4, 32, 32))  # depth pools twice, height/width five times
    with pytest.raises(ShapeContractError, match=r"^width 100 is not divisible by 32.*nearest valid: 128 or 96"):
        validate_shape((20, 64, 100), (4, 32, 32))
    with pytest.raises(ShapeContractError, match=r"^depth 21 is not divisible by 4.*nearest valid: 24 or 20"):
        validate_shape((21, 64, 96), (4, 32, 32))
    assert is_valid((20, 64, 96), (4, 32, 32)) and not is_valid((20, 64, 96), 32)
    assert nearest_valid_shape((21, 65, 96), (4, 32, 32)) == (24, 96, 96)


def test_wrong_number_of_axes_is_one_line():
    with pytest.raises(ShapeContractError, match=r"expected a spatial shape \(D, H, W\), got \(64, 64\)"):
        validate_shape((64, 64), 16, spatial_dims=3)
    with pytest.raises(ShapeContractError, match="2 divisors"):
        per_axis((4, 32), 3)


@pytest.mark.parametrize("mode", ["reflect", "constant", "edge"])
def test_3d_pad_then_crop_is_identity_per_axis(mode):
    x = np.random.default_rng(0).normal(size=(2, 1, 5, 13, 21)).astype(np.float32)
    padded, padding = pad_to_multiple(x, (4, 8, 16), mode)
    assert padded.shape == (2, 1, 8, 16, 32)
    assert padding.sizes == (5, 13, 21) and padding.pads == (3, 3, 11)
    np.testing.assert_array_equal(crop_back(padded, padding), x)
    padded, padding = pad_to_multiple(x, 8, mode, spatial_dims=3)
    assert padded.shape == (2, 1, 8, 16, 24)
    np.testing.assert_array_equal(crop_back(padded, padding), x)


def test_2d_padding_keeps_its_fields():
    padded, padding = pad_to_multiple(np.ones((1, 1, 5, 7), np.float32), 4)
    assert (padding.height, padding.width, padding.pad_bottom, padding.pad_right, padding.depth) == (5, 7, 3, 1, None)
    assert padded.shape == (1, 1, 8, 8)


def test_contract_per_axis_and_lcm():
    c = ShapeContract.per_axis((4, 32, 32), reason="nnU-Net pooling")
    assert c.spatial_dims == 3 and c.axis_divisors == (4, 32, 32) and c.divisor == 32
    assert c.is_valid_shape((8, 64, 32)) and not c.is_valid_shape((8, 48, 32))
    assert c.rule_text() == "depth divisible by 4, height by 32, width by 32 (= nnU-Net pooling)"
    with pytest.raises(ShapeContractError, match="^height 48 is not divisible by 32"):
        c.validate((8, 48, 32))
    assert ShapeContract.per_axis((16, 16, 16)) == ShapeContract(16, spatial_dims=3)  # one value: plain
    assert ShapeContract.per_axis((6, 4, 4)).divisor == 12


def test_model_info_records_dims_and_divisors_and_old_files_mean_2d():
    info = ModelInfo("unet3d", 16, 1, 2, net_config={"depth": 2}, spatial_dims=3, divisors=[4, 16, 16])
    props = info.to_props()
    assert props["spatial_dims"] == "3" and props["divisors"] == "[4, 16, 16]"
    back = ModelInfo.from_props(props)
    assert back.spatial_dims == 3 and back.axis_divisors == (4, 16, 16) and not back.extra
    assert back.shape_contract.axis_divisors == (4, 16, 16)
    old = ModelInfo("unet", 16, 3, 2).to_props()
    assert "spatial_dims" not in old and "divisors" not in old  # 2D files are written as before
    legacy = ModelInfo.from_props(old)
    assert legacy.spatial_dims == 2 and legacy.shape_contract == ShapeContract(16, reason=legacy.contract_reason)
    fields = ModelInfo.contract_fields(ShapeContract.per_axis((4, 16, 16)))
    assert fields == {"padding": "same", "spatial_dims": 3, "divisors": [4, 16, 16]}


def _conv3d_onnx(path, info: ModelInfo | None, channels=1, classes=2):
    w = np.random.default_rng(1).normal(size=(classes, channels, 1, 1, 1)).astype(np.float32)
    node = helper.make_node("Conv", ["input", "w"], ["logits"], kernel_shape=[1, 1, 1])
    graph = helper.make_graph(
        [node], "conv3d",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", channels, "D", "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes, "D", "H", "W"])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if info is not None:
        write_props(model, info.to_props())
    onnx.save(model, path)
    return w


def test_onnxruntime_runner_runs_5d_checks_each_axis_and_pads(tmp_path):
    pytest.importorskip("onnxruntime")
    from deploy_unet.runtime.onnxruntime_runner import OnnxRuntimeRunner

    path = tmp_path / "c3.onnx"
    info = ModelInfo("unet3d", 16, 1, 2, net_config={"depth": 2}, spatial_dims=3, divisors=[4, 16, 16])
    w = _conv3d_onnx(path, info)
    assert read_props(onnx.load(path))["spatial_dims"] == "3"
    x = np.random.default_rng(2).normal(size=(1, 1, 8, 16, 32)).astype(np.float32)
    with OnnxRuntimeRunner(path) as runner:
        out = runner.infer({"input": x})["logits"]
        np.testing.assert_allclose(out, np.einsum("oc,ncdhw->nodhw", w[:, :, 0, 0, 0], x), rtol=1e-5, atol=1e-5)
        with pytest.raises(ShapeContractError, match=r"^depth 6 is not divisible by 4"):
            runner.infer({"input": x[:, :, :6]})
        with pytest.raises(ShapeContractError, match=r"expected 5-D NCDHW \(N, C, D, H, W\)"):
            runner.infer({"input": x[:, :, 0]})
    with OnnxRuntimeRunner(path, pad=True, output="mask") as runner:
        odd = x[:, :, :7, :13, :30]
        mask = runner.infer({"input": odd})["mask"]
        assert mask.shape == (1, 7, 13, 30)
    # no metadata: the rank of the graph's input says it is a volume net
    bare = tmp_path / "bare.onnx"
    _conv3d_onnx(bare, None)
    with OnnxRuntimeRunner(bare) as runner:
        assert runner.infer({"input": x[:, :, :5, :7, :9]})["logits"].shape == (1, 2, 5, 7, 9)


def test_torch_runner_takes_a_volume_net_stating_its_contract():
    torch = pytest.importorskip("torch")
    from deploy_unet.runtime.torch_runner import TorchRunner

    class Vol(torch.nn.Module):
        divisor = 8
        in_channels = 1
        shape_contract = ShapeContract(8, spatial_dims=3)

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 2, 1)

        def forward(self, x):
            return self.conv(x)

    with TorchRunner(Vol(), device="cpu", pad=True) as runner:
        out = runner.infer({"input": np.ones((1, 1, 5, 9, 8), np.float32)})["logits"]
        assert out.shape == (1, 2, 5, 9, 8)
    with TorchRunner(Vol(), device="cpu") as runner, pytest.raises(ShapeContractError, match="^height 9 is not"):
        runner.infer({"input": np.ones((1, 1, 8, 9, 8), np.float32)})
