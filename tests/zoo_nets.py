"""The model zoo: architectures users deploy from segmentation_models_pytorch (smp) and MONAI, as they
would pass them to ``deploy-unet export --model PKG:CALLABLE --model-arg KEY=VALUE ... --divisor D``.

One table, imported by the zoo tests (``tests/test_zoo.py``), the zoo benchmark (``benchmarks/zoo.py``)
and anyone else who wants real third-party nets (e.g. mixed-precision work). Widths and depths are the
libraries' own small settings (resnet18, efficientnet-b0, mobilenet_v2, mit_b0; MONAI nets with 8..64
channels) so a CPU runs the whole table in minutes; weights are random (``encoder_weights=None``,
``pretrained=False``): nothing is downloaded.

Each net names the families it stands for, so the table shows what is covered: encoders (ResNet,
EfficientNet, MobileNet), attention gates, group and instance norm, dilated/ASPP heads, pyramid pooling
and transformer encoders.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

NUM_CLASSES = 4
EXPORT_SIZE = 64  # square on purpose: the exporter must not infer H == W from the sample


@dataclass(frozen=True)
class ZooNet:
    name: str
    library: str  # "smp" | "monai": the import that must work for this net
    model: str  # PKG.MODULE:CALLABLE, as --model takes it
    args: dict[str, Any]  # --model-arg KEY=VALUE pairs
    divisor: int
    covers: tuple[str, ...]  # the families this net stands for
    # Extra export options this net needs (none for most: defaults must work); with them, why.
    export_options: tuple[str, ...] = ()
    # What `export` on defaults must say instead of working (a net that cannot take a dynamic axis),
    # as a regex on the one error line; the net then exports with `export_options`.
    refused_on_defaults: str = ""
    ci: bool = True  # False: too slow for CI on 2 cores; the benchmark still runs it
    note: str = ""
    requires: tuple[str, ...] = field(default=())  # further modules the net imports (e.g. einops)

    @property
    def available(self) -> bool:
        modules = {"smp": "segmentation_models_pytorch", "monai": "monai"}[self.library], *self.requires
        return all(importlib.util.find_spec(m) is not None for m in modules)

    def model_args(self) -> list[str]:
        """``--model-arg`` items that rebuild ``args`` exactly (Python literals)."""
        items = []
        for key, value in self.args.items():
            items += ["--model-arg", f"{key}={value!r}" if not isinstance(value, str) else f"{key}={value}"]
        return items

    def cli_args(self) -> list[str]:
        return ["--model", self.model, *self.model_args(), "--divisor", str(self.divisor)]

    def build(self):
        """The nn.Module itself, as ``--model`` builds it."""
        from deploy_unet.nets.loading import import_model

        return import_model(self.model, self.args)


SMP = "segmentation_models_pytorch"
MONAI = "monai.networks.nets"

ZOO: tuple[ZooNet, ...] = (
    ZooNet("smp-unet-resnet18", "smp", f"{SMP}:Unet",
           {"encoder_name": "resnet18", "encoder_weights": None, "classes": NUM_CLASSES}, 32,
           ("ResNet encoder", "UNet decoder", "batch norm")),
    ZooNet("smp-fpn-efficientnet-b0", "smp", f"{SMP}:FPN",
           {"encoder_name": "efficientnet-b0", "encoder_weights": None, "classes": NUM_CLASSES}, 32,
           ("EfficientNet encoder (depthwise, squeeze-excitation, swish)", "feature pyramid")),
    ZooNet("smp-pspnet-mobilenet_v2", "smp", f"{SMP}:PSPNet",
           {"encoder_name": "mobilenet_v2", "encoder_weights": None, "classes": NUM_CLASSES}, 8,
           ("MobileNet encoder (inverted residuals, ReLU6)", "pyramid pooling"),
           export_options=("--dynamic", "batch"),
           refused_on_defaults=r"only runs at the traced (height|width) .*AdaptiveAvgPool2d\(output_size=\(?[236]"
                               r".*onnxscript#1646.*--dynamic batch",
           note="its pyramid pooling is nn.AdaptiveAvgPool2d with bins 2, 3, 6: ONNX has no adaptive pooling and "
                "torch's decomposition (GatherND on indices computed at trace time) fixes the pooled map's size "
                "(https://github.com/microsoft/onnxscript/issues/1646, "
                "https://github.com/pytorch/pytorch/issues/74034); exported with fixed H, W it works"),
    ZooNet("smp-deeplabv3plus-resnet18", "smp", f"{SMP}:DeepLabV3Plus",
           {"encoder_name": "resnet18", "encoder_weights": None, "classes": NUM_CLASSES}, 16,
           ("dilated convolutions", "ASPP head (atrous rates, image pooling)")),
    ZooNet("smp-segformer-mit_b0", "smp", f"{SMP}:Segformer",
           {"encoder_name": "mit_b0", "encoder_weights": None, "classes": NUM_CLASSES}, 32,
           ("transformer encoder (Mix Transformer: efficient self-attention, layer norm, GELU)",),
           note="traced at batch 1 (the old default) torch.export bakes the batch into its reshapes"),
    ZooNet("monai-attentionunet", "monai", f"{MONAI}:AttentionUnet",
           {"spatial_dims": 2, "in_channels": 3, "out_channels": NUM_CLASSES, "channels": (8, 16, 32, 64),
            "strides": (2, 2, 2)}, 8,
           ("attention gates",)),
    ZooNet("monai-segresnet", "monai", f"{MONAI}:SegResNet",
           {"spatial_dims": 2, "in_channels": 3, "out_channels": NUM_CLASSES, "init_filters": 8}, 8,
           ("group norm", "residual blocks")),
    ZooNet("monai-unet-instancenorm", "monai", f"{MONAI}:UNet",
           {"spatial_dims": 2, "in_channels": 3, "out_channels": NUM_CLASSES, "channels": (8, 16, 32, 64),
            "strides": (2, 2, 2), "num_res_units": 2, "norm": "instance"}, 8,
           ("instance norm", "residual units", "strided convolutions")),
    ZooNet("monai-unetr", "monai", f"{MONAI}:UNETR",
           {"in_channels": 3, "out_channels": NUM_CLASSES, "img_size": EXPORT_SIZE, "spatial_dims": 2,
            "feature_size": 8, "hidden_size": 96, "mlp_dim": 192, "num_heads": 4}, 16,
           ("transformer encoder (ViT: patch embedding, learned positional embedding)",),
           export_options=("--dynamic", "batch"),
           refused_on_defaults=r"does not take a dynamic (height|width).*--dynamic batch",
           note="its positional embedding has one entry per 16x16 patch of img_size, so H and W are fixed: "
                "on defaults export refuses it in one line and names --dynamic batch",
           requires=("einops",)),
    ZooNet("monai-swinunetr", "monai", f"{MONAI}:SwinUNETR",
           {"in_channels": 3, "out_channels": NUM_CLASSES, "spatial_dims": 2, "feature_size": 12,
            "depths": (1, 1, 1, 1), "num_heads": (1, 2, 2, 4)}, 32,
           ("transformer encoder (shifted windows)",), ci=False,
           note="benchmark only: torch.export alone takes 1.5-2.5 min on 2 cores. At 256x256 it works on defaults; "
                "at 64x64 its last stage's map (2x2) is smaller than the 7x7 window, MONAI then clips the window to "
                "the map in Python, and the graph only runs at that size: the per-axis check refuses it naming the "
                "width. Its int8 for ONNX Runtime needed a fix (value_info, below)",
           requires=("einops",)),
)


def by_name(name: str) -> ZooNet:
    for net in ZOO:
        if net.name == name:
            return net
    raise KeyError(f"no zoo net {name!r}; known: {', '.join(n.name for n in ZOO)}")


# -- volumes (issue 24): MONAI's 3D nets, exported as a user would, with no --divisor -----------------------
# deploy_unet/nets/known.py reads each net's contract from its own settings (strides, blocks_down, patch_size);
# ``divisors`` is what it must find (depth, height, width).


@dataclass(frozen=True)
class VolumeZooNet:
    name: str
    model: str  # PKG.MODULE:CALLABLE
    args: dict[str, Any]
    divisors: tuple[int, int, int]  # the per-axis contract the net's own settings give
    size: tuple[int, int, int]  # export D x H x W
    covers: tuple[str, ...]
    refused_size: tuple[int, int, int] | None = None  # a size export must refuse in one line naming the axis
    refused_match: str = ""
    ci: bool = True  # False: refusal only in CI (a full export takes minutes on 2 cores)
    requires: tuple[str, ...] = field(default=())

    @property
    def available(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in ("monai", *self.requires))

    def cli_args(self, size=None) -> list[str]:
        items = ["--model", self.model]
        for key, value in self.args.items():
            items += ["--model-arg", f"{key}={value!r}" if not isinstance(value, str) else f"{key}={value}"]
        return items + ["--in-channels", "1", "--size", "x".join(map(str, size or self.size))]

    def build(self):
        from deploy_unet.nets.loading import import_model

        return import_model(self.model, self.args)


VOLUME_CLASSES = 3  # the synthetic volumes: background, blob, tube

ZOO_3D: tuple[VolumeZooNet, ...] = (
    VolumeZooNet("monai-unet-3d", f"{MONAI}:UNet",
                 {"spatial_dims": 3, "in_channels": 1, "out_channels": VOLUME_CLASSES, "channels": (8, 16, 32),
                  "strides": (2, 2), "num_res_units": 1, "norm": "instance"}, (4, 4, 4), (8, 16, 24),
                 ("MONAI UNet(spatial_dims=3)", "instance norm", "strided Conv3d", "ConvTranspose3d")),
    VolumeZooNet("monai-segresnet-3d", f"{MONAI}:SegResNet",
                 {"spatial_dims": 3, "in_channels": 1, "out_channels": VOLUME_CLASSES, "init_filters": 8},
                 (8, 8, 8), (8, 16, 24), ("group norm (3D)", "residual blocks", "trilinear-free upsampling")),
    VolumeZooNet("monai-dynunet-anisotropic", f"{MONAI}:DynUNet",
                 {"spatial_dims": 3, "in_channels": 1, "out_channels": VOLUME_CLASSES, "kernel_size": [3, 3, 3, 3],
                  "strides": [1, [1, 2, 2], [2, 2, 2], [2, 2, 2]],
                  "upsample_kernel_size": [[1, 2, 2], [2, 2, 2], [2, 2, 2]], "filters": [8, 16, 32, 64]},
                 (4, 8, 8), (4, 16, 24), ("DynUNet / nnU-Net anisotropic strides (per-axis divisors)",
                                          "instance norm", "leaky ReLU")),
    VolumeZooNet("monai-attentionunet-3d", f"{MONAI}:AttentionUnet",
                 {"spatial_dims": 3, "in_channels": 1, "out_channels": VOLUME_CLASSES, "channels": (8, 16, 32),
                  "strides": (2, 2)}, (4, 4, 4), (8, 16, 24), ("attention gates (3D)",)),
    VolumeZooNet("monai-swinunetr-3d", f"{MONAI}:SwinUNETR",
                 {"in_channels": 1, "out_channels": VOLUME_CLASSES, "spatial_dims": 3, "feature_size": 12,
                  "depths": (1, 1, 1, 1), "num_heads": (1, 2, 2, 4)}, (32, 32, 32), (32, 32, 32),
                 ("transformer encoder (shifted windows, 3D)",), refused_size=(48, 32, 32),
                 refused_match=r"^error: depth 48 is not divisible by 32 \(= MONAI SwinUNETR: patch_size\*\*5",
                 ci=False, requires=("einops",)),
)
