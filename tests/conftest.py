"""Shared fixtures: thin nets (fast on 2 CPU cores) and one exported thin UNet reused across tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

THIN = {
    "unet": {"base_channels": 4, "depth": 3},
    "fcn8s": {"width_mult": 0.0625, "fc_channels": 64},
    "fcn16s": {"width_mult": 0.0625, "fc_channels": 64},
    "fcn32s": {"width_mult": 0.0625, "fc_channels": 64},
}


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(1)


def thin_net(arch: str, **overrides):
    from deploy_unet.nets import create_net

    torch.manual_seed(0)
    net = create_net(arch, **{**THIN[arch], **overrides}).eval()
    _randomize_norm_stats(net)
    return net


def _randomize_norm_stats(net) -> None:
    """Fresh BatchNorm stats are mean 0 / var 1; give them values so a wrong fold would show."""
    gen = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


@pytest.fixture(scope="session")
def thin_unet_onnx(tmp_path_factory):
    """(net, path) of a thin depth-3 UNet exported at 1x3x32x32 with all axes dynamic."""
    from deploy_unet.export import export_onnx

    net = thin_net("unet")
    path = tmp_path_factory.mktemp("onnx") / "thin_unet.onnx"
    export_onnx(net, path, height=32, width=32, mean=[0.5] * 3, std=[0.25] * 3)
    return net, path


@pytest.fixture(scope="session")
def shipped_unet3d_onnx(tmp_path_factory):
    """The shipped 3D UNet (models/unet3d_synthetic.pt) exported at 1x1x32x64x64, N/D/H/W dynamic."""
    from deploy_unet import shipped
    from deploy_unet.export import export_onnx

    path = tmp_path_factory.mktemp("onnx3d") / "unet3d.onnx"
    export_onnx(shipped.checkpoint("unet3d"), path, depth=32, height=64, width=64)
    return path


def smooth_images(n: int, channels: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Images with structure (blurred blobs), not bare noise: closer to what segmentation nets see."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, channels, height // 4 + 1, width // 4 + 1)).astype(np.float32)
    x = np.repeat(np.repeat(x, 4, axis=2), 4, axis=3)[:, :, :height, :width]
    return (x + 0.1 * rng.standard_normal(x.shape)).astype(np.float32)


ZOO_SKIP = ("zoo suite (third-party nets, minutes): run `python -m pytest -m zoo` in a venv with "
            "deploy-unet[zoo] installed over a torch that matches torchvision (.ci/run does)")


def pytest_collection_modifyitems(config, items):
    """The zoo suite runs only when asked for by marker (`-m zoo`), so the main suite stays fast even
    where monai or smp happen to be installed."""
    if "zoo" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason=ZOO_SKIP)
    for item in items:
        if item.get_closest_marker("zoo") is not None:
            item.add_marker(skip)
