"""How --arch / net options combine with --checkpoint: one rule (nets.loading.build_net) for every command."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from deploy_unet import shipped
from deploy_unet.checkpoint import load_checkpoint, save_checkpoint
from deploy_unet.cli import cli
from deploy_unet.errors import ConfigError
from deploy_unet.metadata import ModelInfo
from deploy_unet.nets.loading import load_net
from deploy_unet.runtime.torch_runner import TorchRunner
from tests.conftest import smooth_images, thin_net

SHIPPED_UNET = shipped.checkpoint("unet")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def run(net, x):
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


@pytest.fixture
def unet_ckpt(tmp_path):
    """A thin UNet (base_channels 4, depth 3, 2 classes) whose config differs from the registry defaults."""
    net = thin_net("unet", up_mode="bilinear")
    path = tmp_path / "thin_unet.pt"
    save_checkpoint(path, net)
    return path, net


def test_agreeing_arch_changes_nothing(unet_ckpt):
    path, net = unet_ckpt
    plain, named = load_net(checkpoint=path), load_net("unet", checkpoint=path)
    assert named.arch == plain.arch == "unet"
    assert named.net_config == plain.net_config == net.config  # not the registry's default unet
    x = smooth_images(1, 3, 16, 16)
    np.testing.assert_array_equal(run(named.net, x), run(net, x))


def test_an_override_the_weights_fit_is_applied(unet_ckpt):
    path, net = unet_ckpt
    loaded = load_net(checkpoint=path, options={"up_mode": "nearest"})  # no weights in either upsampling
    assert loaded.net_config == {**net.config, "up_mode": "nearest"}
    assert not loaded.warnings
    for key, value in net.state_dict().items():
        torch.testing.assert_close(loaded.net.state_dict()[key], value)


def test_a_non_strict_override_loads_what_fits_and_says_so(unet_ckpt):
    path, net = unet_ckpt
    loaded = load_net("unet", {"num_classes": 5}, checkpoint=path, strict=False)
    assert loaded.net_config["num_classes"] == 5 and loaded.net_config["base_channels"] == 4
    (warning,) = loaded.warnings
    assert "--num-classes 5 overrides" in warning and "num_classes=2" in warning and "--no-strict" in warning
    torch.testing.assert_close(loaded.net.stem[0].weight, net.stem[0].weight)  # the backbone came along
    assert loaded.net.head.weight.shape[0] == 5


@pytest.mark.parametrize("args, named, not_named", [
    (["--depth", 2], ["--depth 2 conflicts", "trained with depth=3;", "drop --depth or", "for depth 2"], []),
    (["--arch", "fcn8s"], ["--arch fcn8s conflicts", "trained with arch=unet;", "drop --arch or"], []),
    (["--base-channels", 8, "--num-classes", 5, "--depth", 3],  # depth 3 agrees with the checkpoint
     ["--num-classes 5 and --base-channels 8 conflict", "trained with num_classes=2, base_channels=4;",
      "drop --num-classes and --base-channels or", "for num_classes 5, base_channels 8"], ["depth"]),
])
def test_a_conflicting_option_is_one_line_exit_2_and_no_file(tmp_path, unet_ckpt, args, named, not_named):
    path, _ = unet_ckpt
    out = tmp_path / "out.onnx"
    result = invoke("export", "--checkpoint", path, *args, "-o", out)
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("error: ")
    assert f" with {path}, which was trained with " in result.output
    for text in named:
        assert text in result.output
    for text in not_named:
        assert text not in result.output
    assert not out.exists()


def test_pipeline_arch_that_contradicts_the_checkpoint(tmp_path, unet_ckpt):
    path, _ = unet_ckpt
    out = tmp_path / "run"
    result = invoke("pipeline", "--arch", "fcn8s", "--checkpoint", path, "-o", out)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --arch fcn8s conflicts with") and "arch=unet" in result.output
    assert not out.exists()


def test_onnx_metadata_that_contradicts_the_checkpoint(unet_ckpt):
    """validate/bench --backend torch --checkpoint: the ONNX file's net config takes the place of options."""
    path, net = unet_ckpt
    info = ModelInfo(arch="unet", divisor=4, in_channels=3, num_classes=2, net_config={**net.config, "depth": 2})
    with pytest.raises(ConfigError, match=r"the ONNX metadata \(depth=2\) conflicts with .*trained with depth=3"):
        TorchRunner.from_model_info(info, path)
    agreeing = ModelInfo(arch="unet", divisor=8, in_channels=3, num_classes=2, net_config=dict(net.config))
    runner = TorchRunner.from_model_info(agreeing, path, device="cpu")
    assert runner.net.config == net.config


def test_plain_state_dict_takes_the_options_as_given(tmp_path):
    net = thin_net("unet", num_classes=3)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    assert load_checkpoint(tmp_path / "w.pt").arch is None
    loaded = load_net("unet", dict(base_channels=4, depth=3, num_classes=3), checkpoint=tmp_path / "w.pt")
    x = smooth_images(1, 3, 16, 16)
    np.testing.assert_array_equal(run(loaded.net, x), run(net, x))


def test_shipped_checkpoint_exports_with_its_own_arch_named(tmp_path):
    """The user's command: `export --arch unet --checkpoint models/unet_synthetic.pt` built the default net."""
    out = tmp_path / "fp32.onnx"
    result = invoke("export", "--arch", "unet", "--checkpoint", SHIPPED_UNET, "-o", out,
                    "--height", 32, "--width", 32, "--no-simplify")
    assert result.exit_code == 0, result.output
    x = smooth_images(1, 3, 32, 32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    without_arch = load_net(checkpoint=SHIPPED_UNET).net
    np.testing.assert_allclose(session.run(None, {"input": x})[0], run(without_arch, x), atol=1e-4)
