"""Shared helpers for the runner / validate / bench tests: thin nets, ONNX export, shape images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from deploy_unet.checkpoint import save_checkpoint
from deploy_unet.metadata import ModelInfo, load_onnx, write_props
from deploy_unet.nets import create_net
from deploy_unet.runtime.base import Runner, TensorSpec
from deploy_unet.validate import Sample

THIN_UNET = dict(in_channels=3, num_classes=3, depth=2, base_channels=4)


def thin_unet(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    net = create_net("unet", **{**THIN_UNET, **overrides}).eval()
    # Non-trivial BatchNorm statistics, so eval-mode numerics are exercised.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net


def save_thin_checkpoint(path: Path, net=None) -> Path:
    net = net or thin_unet()
    save_checkpoint(path, net, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    return path


def export_thin(net, path: Path, height: int = 32, width: int = 32, precision: str = "fp32") -> Path:
    """ONNX with dynamic batch/H/W and deploy-unet metadata (the lead's export_onnx when it exists)."""
    try:
        from deploy_unet.export import export_onnx
    except ImportError:
        export_onnx = None
    if export_onnx is not None:
        return Path(export_onnx(net, path, height=height, width=width, verify=False).path)
    x = torch.randn(1, net.in_channels, height, width)
    dims = {0: torch.export.Dim("batch", min=1, max=64),
            2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    program = torch.onnx.export(net.eval(), (x,), dynamo=True, input_names=["input"], output_names=["logits"],
                                dynamic_shapes={"x": dims}, verbose=False)
    program.save(str(path))
    model = load_onnx(path)
    info = ModelInfo(arch=net.arch, divisor=net.divisor, in_channels=net.in_channels, num_classes=net.num_classes,
                     net_config=dict(net.config), precision=precision, export_shape=[1, net.in_channels, height, width])
    write_props(model, info.to_props())
    import onnx

    onnx.save(model, str(path))
    return path


def shape_samples(n: int = 3, channels: int = 3, height: int = 32, width: int = 32, classes: int = 3,
                  batch: int = 1, seed: int = 0) -> list[Sample]:
    """Smooth images of discs and boxes on a gradient, with their class masks (not noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    samples = []
    for _ in range(n):
        images, masks = [], []
        for _ in range(batch):
            mask = np.zeros((height, width), np.int64)
            cy, cx, r = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width, rng.uniform(0.15, 0.3) * height
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1
            y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
            mask[y0:y0 + height // 4, x0:x0 + width // 4] = min(2, classes - 1)
            base = (xx / width + yy / height) * 0.5
            image = np.stack([base + 0.8 * (mask == k) * (c + 1) / channels for c, k in
                              zip(range(channels), [1, 2, 1, 2][:channels], strict=False)])
            images.append(((image - 0.5) / 0.25).astype(np.float32))
            masks.append(mask)
        samples.append(Sample(np.stack(images), np.stack(masks)))
    return samples


class ConstantRunner(Runner):
    """Returns pre-set outputs in turn (one per infer call): constructed cases for metrics and gates."""

    backend = "fake"

    def __init__(self, outputs: list[np.ndarray], divisor: int = 1, in_channels: int = 3, info=None, name="fake"):
        super().__init__(divisor=divisor, in_channels=in_channels)
        self.outputs = outputs
        self.calls = 0
        self.info = info
        self.source = name

    @property
    def input_spec(self):
        return {"input": TensorSpec("input", "float32", ("N", self.in_channels, "H", "W"))}

    @property
    def output_names(self):
        return ["logits"]

    def _infer(self, feeds):
        out = self.outputs[self.calls % len(self.outputs)]
        self.calls += 1
        return {"logits": out}


_CACHE: dict = {}


def thin_artifacts() -> dict[str, Path]:
    """A thin UNet's checkpoint and ONNX export, built once per test session (export takes seconds)."""
    if not _CACHE:
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="deploy-unet-runners-"))
        net = thin_unet()
        _CACHE["pt"] = save_thin_checkpoint(root / "thin.pt", net)
        _CACHE["onnx"] = export_thin(net, root / "thin.onnx")
        _CACHE["root"] = root
    return _CACHE
