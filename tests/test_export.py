import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from deploy_unet.checkpoint import save_checkpoint
from deploy_unet.describe import read_model_info
from deploy_unet.errors import ArtifactError, ConfigError, ShapeContractError
from deploy_unet.export import export_onnx
from deploy_unet.nets.loading import load_net
from deploy_unet.runtime import run_onnx
from tests.conftest import smooth_images, thin_net


def ort_run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def torch_run(net, x):
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("arch, overrides", [
    ("unet", {"up_mode": "transpose"}),
    ("unet", {"up_mode": "bilinear"}),
    ("unet", {"up_mode": "nearest", "norm": "none"}),
    ("fcn8s", {}),
    ("fcn16s", {}),
    ("fcn32s", {}),
])
def test_exported_model_matches_pytorch_at_several_sizes_and_batches(tmp_path, arch, overrides):
    net = thin_net(arch, **overrides)
    d = net.divisor
    path = tmp_path / "m.onnx"
    export_onnx(net, path, height=2 * d, width=2 * d)
    for batch, h, w in [(1, 2 * d, 2 * d), (3, 3 * d, d), (1, d, 4 * d)]:
        x = smooth_images(batch, 3, h, w, seed=h + w)
        ref = torch_run(net, x)
        got = ort_run(path, x)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-4 * max(1.0, np.abs(ref).max()), rtol=0)


def test_dims_are_named_and_dynamic(thin_unet_onnx):
    _, path = thin_unet_onnx
    model = onnx.load(path)
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(model.graph.input[0]) == ["batch", 3, "height", "width"]
    assert dims(model.graph.output[0]) == ["batch", 2, "height", "width"]


def test_static_export_keeps_fixed_dims(tmp_path):
    net = thin_net("unet")
    path = tmp_path / "static.onnx"
    result = export_onnx(net, path, height=32, width=64, batch=2, dynamic="none")
    model = onnx.load(path)
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 32, 64]
    assert list(result.parity) == ["2x3x32x64"]  # no second size to try


def test_metadata_round_trip(thin_unet_onnx):
    net, path = thin_unet_onnx
    info = read_model_info(path)
    assert info.arch == "unet"
    assert info.divisor == net.divisor == 8
    assert (info.in_channels, info.num_classes) == (3, 2)
    assert info.net_config == net.config
    assert info.mean == [0.5] * 3 and info.std == [0.25] * 3
    assert info.precision == "fp32"
    assert info.export_shape == [1, 3, 32, 32]
    assert info.extra["torch_version"] == torch.__version__
    assert info.extra["exporter"].startswith("torch.onnx.export")


def test_non_divisible_export_size_is_refused_without_a_file(tmp_path):
    path = tmp_path / "bad.onnx"
    with pytest.raises(ShapeContractError, match="height 36 is not divisible by 8.*nearest valid: 40 or 32"):
        export_onnx(thin_net("unet"), path, height=36, width=32)
    assert list(tmp_path.iterdir()) == []


def test_failed_parity_leaves_no_file(tmp_path):
    path = tmp_path / "m.onnx"
    with pytest.raises(Exception, match="differs from PyTorch"):
        export_onnx(thin_net("unet"), path, height=32, width=32, tolerance=-1.0)  # no error is small enough
    assert list(tmp_path.iterdir()) == []


def test_runtime_contract_error_instead_of_concat_failure(thin_unet_onnx):
    _, path = thin_unet_onnx
    x = smooth_images(1, 3, 30, 31)
    with pytest.raises(ShapeContractError, match=r"height 30 is not divisible by 8 \(= 2\*\*3 for UNet depth 3\); nearest valid: 32 or 24"):
        run_onnx(path, x)


def test_pad_run_crop_equals_direct_run_on_a_divisible_size(thin_unet_onnx):
    _, path = thin_unet_onnx
    x = smooth_images(2, 3, 40, 48)
    np.testing.assert_array_equal(run_onnx(path, x, pad=True), run_onnx(path, x))


def test_pad_run_crop_on_non_divisible_size_matches_torch_on_the_padded_input(thin_unet_onnx):
    net, path = thin_unet_onnx
    x = smooth_images(1, 3, 30, 37)
    got = run_onnx(path, x, pad=True)
    assert got.shape == (1, 2, 30, 37)
    padded = np.pad(x, [(0, 0), (0, 0), (0, 2), (0, 3)], mode="reflect")
    ref = torch_run(net, padded)[..., :30, :37]
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_wrong_channel_count_is_a_clear_error(thin_unet_onnx):
    _, path = thin_unet_onnx
    with pytest.raises(ShapeContractError, match="has 1 channels; the model takes 3"):
        run_onnx(path, smooth_images(1, 1, 32, 32))


# --- checkpoints -----------------------------------------------------------------------------------


def test_self_describing_checkpoint_needs_no_options(tmp_path):
    net = thin_net("unet", num_classes=4, up_mode="nearest")
    ckpt = tmp_path / "net.pt"
    save_checkpoint(ckpt, net, mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.5])
    loaded = load_net(checkpoint=ckpt)
    assert loaded.arch == "unet" and loaded.net_config == net.config
    assert loaded.mean == [0.1, 0.2, 0.3]
    x = smooth_images(1, 3, 16, 16)
    np.testing.assert_array_equal(torch_run(loaded.net, x), torch_run(net, x))


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model", "module_prefix"])
def test_plain_state_dict_layouts_load(tmp_path, wrap):
    net = thin_net("unet")
    state = net.state_dict()
    obj = {
        "bare": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state},
        "module_prefix": {f"module.{k}": v for k, v in state.items()},
    }[wrap]
    torch.save(obj, tmp_path / "w.pt")
    loaded = load_net("unet", dict(base_channels=4, depth=3), checkpoint=tmp_path / "w.pt")
    x = smooth_images(1, 3, 16, 16)
    np.testing.assert_array_equal(torch_run(loaded.net, x), torch_run(net, x))


def test_checkpoint_key_errors_list_the_keys(tmp_path):
    state = thin_net("unet").state_dict()
    state.pop("head.weight")
    state["extra.bias"] = torch.zeros(1)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ArtifactError, match=r"missing keys head\.weight; unexpected keys extra\.bias.*--no-strict"):
        load_net("unet", dict(base_channels=4, depth=3), checkpoint=tmp_path / "w.pt")
    loaded = load_net("unet", dict(base_channels=4, depth=3), checkpoint=tmp_path / "w.pt", strict=False)
    torch.testing.assert_close(loaded.net.stem[0].weight, state["stem.0.weight"])


def test_checkpoint_for_another_config_is_a_shape_mismatch(tmp_path):
    torch.save(thin_net("unet").state_dict(), tmp_path / "w.pt")
    with pytest.raises(ArtifactError, match="shape mismatch in stem.0.weight"):
        load_net("unet", dict(base_channels=8, depth=3), checkpoint=tmp_path / "w.pt")


def test_unreadable_checkpoint(tmp_path):
    (tmp_path / "w.pt").write_text("not a checkpoint")
    with pytest.raises(ArtifactError, match="could not be read"):
        load_net(checkpoint=tmp_path / "w.pt")


# --- user modules ------------------------------------------------------------------------------------

CUSTOM_MODULE = '''
import torch
from torch import nn

class TinySeg(nn.Module):
    """One pooling stage: the divisor is 2."""
    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.head = nn.Conv2d(7, 3, 1)

    def forward(self, image):
        skip = image
        x = self.up(torch.relu(self.enc(nn.functional.max_pool2d(image, 2))))
        return self.head(torch.cat([x, skip], 1))

def make():
    return TinySeg()
'''


@pytest.fixture
def custom_module(tmp_path, monkeypatch):
    (tmp_path / "my_seg_models.py").write_text(CUSTOM_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_seg_models:make"


def test_user_module_exports_with_its_divisor(tmp_path, custom_module):
    torch.manual_seed(0)
    loaded = load_net(model=custom_module, divisor=2)
    path = tmp_path / "custom.onnx"
    export_onnx(loaded.net, path, height=10, width=14, arch=loaded.arch, divisor=loaded.divisor)
    info = read_model_info(path)
    assert (info.arch, info.divisor, info.num_classes) == ("custom:my_seg_models:make", 2, 3)
    x = smooth_images(2, 3, 6, 8)
    np.testing.assert_allclose(ort_run(path, x), torch_run(loaded.net, x), atol=1e-5)


def test_user_module_without_divisor_is_refused(custom_module):
    with pytest.raises(ConfigError, match="--model needs --divisor"):
        load_net(model=custom_module)


def test_bad_model_spec():
    with pytest.raises(ConfigError, match="not of the form package.module:callable"):
        load_net(model="no_colon_here", divisor=2)
    with pytest.raises(ConfigError, match="cannot import 'surely_missing_module'"):
        load_net(model="surely_missing_module:make", divisor=2)


def test_metadata_net_config_is_json(thin_unet_onnx):
    _, path = thin_unet_onnx
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert json.loads(props["net_config"])["depth"] == 3
