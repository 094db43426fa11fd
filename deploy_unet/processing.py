"""Image pre- and post-processing for a deployed model: NumPy in, NumPy out, no files, no CLI.

The one place that turns a user's image into the tensor a deploy-unet model takes, and the model's output
back into a mask at the image's own size. ``predict`` (folders of files), the Triton serving code (raw
uint8 images over the wire) and the C++ sample (``cpp/src/preprocess.cpp``, tested equal) follow it.

    spec = Preprocessing.from_model_info(info)            # from the ONNX metadata / checkpoint / manifest
    batch = preprocess(image_hwc_uint8, spec)              # -> batch.array (1, C, H', W') float32
    mask = postprocess(logits_nchw, batch.geometry)        # -> (1, H, W) uint8 class ids, H x W = image's

Preprocessing, in order:

1. **Scale** to [0, 1]: uint8 / 255, uint16 / 65535 (16-bit PNG/TIFF), bool as 0/1; float images are taken
   to be in [0, 1] already (no rescaling).
2. **Channels** to the model's ``in_channels`` (images are H x W grey or H x W x C, channels RGB order,
   as Pillow gives them): grey -> RGB by repeating; RGB -> grey by ITU-R 601 luma (0.299, 0.587, 0.114,
   as Pillow's ``convert("L")``); RGBA -> RGB by dropping alpha (Pillow's ``convert("RGB")``); grey+alpha
   -> grey. Anything else is refused in one line.
3. **Normalize** with the metadata's ``mean``/``std`` (none recorded: no normalization).
4. **Fit** the shape contract: ``pad`` (default) reflect-pads bottom/right to the divisor, the rule of
   ``shapes.pad_to_multiple`` and of ``export --pad-in-graph`` (a pad-in-graph model pads itself, so
   nothing is added on the host); ``resize`` resizes bilinearly (half-pixel centres) to a valid size;
   ``tile`` leaves the size alone for a runner with tiling on (a valid-convolution net).

Postprocessing takes NCHW logits (argmax over classes; one channel: logit > 0) or NHW class ids (a runner's ``output="mask"``)
and gives ``(N, H, W)`` uint8 (int32 above 256 classes) cropped back (``pad``) or resized back with
nearest neighbour (``resize``) to each image's own size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from deploy_unet.errors import ConfigError, ShapeContractError
from deploy_unet.shapes import PAD_MODES, ShapeContract, check_size_pad_in_graph, pad_to_multiple

__all__ = [
    "FITS",
    "Geometry",
    "Preprocessed",
    "Preprocessing",
    "adapt_channels",
    "logits_to_mask",
    "postprocess",
    "preprocess",
    "probabilities",
    "resize_bilinear",
    "resize_nearest",
    "to_unit_float",
]

FITS = ("pad", "resize", "tile")
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, Pillow's RGB -> L weights


@dataclass(frozen=True)
class Preprocessing:
    """What a model needs of an image: its channel count, normalization and shape contract, and the fit.

    Build it with ``from_model_info`` (the artifact's own metadata) rather than by hand, so preprocessing
    can never drift from what the model was exported with.
    """

    in_channels: int
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    contract: ShapeContract = ShapeContract(1)
    pad_in_graph: bool = False
    fit: str = "pad"
    size: tuple[int, int] | None = None  # fit="resize": the model input size (H, W)
    pad_mode: str = "reflect"
    # A model described from a foreign ONNX (describe.py) or with low-resolution logits (export):
    scale: float = 1.0  # pixels in [0, 1] are multiplied by it before mean/std (255: a net trained on 0..255)
    output_stride: int = 1  # input H / logits H (4: SegFormer); logits are upsampled bilinearly (half-pixel)

    def __post_init__(self) -> None:
        if self.fit not in FITS:
            raise ConfigError(f"fit {self.fit!r} is not valid; choose one of: {', '.join(FITS)}")
        if self.pad_mode not in PAD_MODES:
            raise ConfigError(f"pad mode {self.pad_mode!r} is not valid; choose one of: {', '.join(PAD_MODES)}")
        if self.in_channels < 1:
            raise ConfigError(f"in_channels {self.in_channels} must be >= 1")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values and len(values) not in (1, self.in_channels):
                raise ConfigError(f"{name} has {len(values)} values for {self.in_channels} channels; give 1 or "
                                  f"{self.in_channels}")
        if self.std and any(s == 0 for s in self.std):
            raise ConfigError(f"std {list(self.std)} holds a zero; normalization divides by it")
        if self.fit == "resize":
            if self.size is None:
                raise ConfigError("fit 'resize' needs a size (H, W), e.g. --resize 256x256")
            if self.pad_in_graph:
                check_size_pad_in_graph(self.size, self.contract.divisor)
            else:
                self.contract.validate(self.size, "pick a valid --resize size")
        elif self.fit == "pad" and not self.contract.is_divisor_only:
            raise ConfigError(
                "padding cannot give a full-size mask for a net whose output is smaller than its input "
                f"(input must be {self.contract.rule()}); use tiles (--tile, fit='tile') or --resize to a valid size"
            )

    @classmethod
    def from_model_info(
        cls, info, fit: str = "pad", size: tuple[int, int] | None = None, pad_mode: str = "reflect"
    ) -> Preprocessing:
        """The preprocessing a model's ``ModelInfo`` asks for (channels, mean/std, contract, pad-in-graph).

        ``fit="resize"`` without a ``size`` uses the export size when the metadata records a static one.
        """
        if fit == "resize" and size is None:
            shape = list(getattr(info, "export_shape", None) or [])
            if len(shape) == 4 and all(isinstance(v, int) and v > 0 for v in shape[2:]):
                size = (int(shape[2]), int(shape[3]))
        return cls(
            in_channels=int(info.in_channels),
            mean=tuple(float(v) for v in (info.mean or ())),
            std=tuple(float(v) for v in (info.std or ())),
            contract=info.shape_contract,
            pad_in_graph=bool(getattr(info, "pad_in_graph", False)),
            fit=fit,
            size=tuple(int(v) for v in size) if size is not None else None,
            pad_mode=pad_mode,
            scale=float(getattr(info, "value_scale", 1.0) or 1.0),
            output_stride=int(getattr(info, "output_stride", 1) or 1),
        )

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The (H, W) the model is fed for an image of ``height`` x ``width``."""
        if self.fit == "resize":
            return self.size  # type: ignore[return-value]
        if self.fit == "pad" and not self.pad_in_graph:
            d = self.contract.divisor
            return height + (-height) % d, width + (-width) % d
        return height, width


@dataclass(frozen=True)
class Geometry:
    """How images of one size were fitted to the model, so ``postprocess`` can undo it."""

    height: int  # the images' own size
    width: int
    input_height: int  # what the model was fed
    input_width: int
    fit: str
    output_stride: int = 1  # the model's logits are input / output_stride (postprocess upsamples them)

    @property
    def padding(self) -> tuple[int, int]:
        """(bottom, right) pixels added by ``fit="pad"`` (0, 0 otherwise)."""
        if self.fit != "pad":
            return 0, 0
        return self.input_height - self.height, self.input_width - self.width


@dataclass(frozen=True)
class Preprocessed:
    """A model-ready batch: ``array`` (N, C, H', W') float32, C-contiguous, and its ``geometry``."""

    array: np.ndarray
    geometry: Geometry


# --- the steps, each usable on its own ----------------------------------------------------------------


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """uint8 / 255, uint16 / 65535, bool 0/1, float kept (assumed in [0, 1]); float32 out, same shape."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255.0)
    if image.dtype == np.uint16:
        return image.astype(np.float32) / np.float32(65535.0)
    if image.dtype == np.bool_:
        return image.astype(np.float32)
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float32, copy=False)
    raise ConfigError(f"image dtype {image.dtype} is not supported; give uint8, uint16 (16-bit) or float in [0, 1]")


def adapt_channels(image: np.ndarray, in_channels: int) -> np.ndarray:
    """(H, W) or (H, W, C) float -> (in_channels, H, W): grey <-> RGB, RGBA -> RGB, grey+alpha -> grey."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ShapeContractError(f"image has shape {image.shape}; expected H x W (grey) or H x W x C")
    c = image.shape[2]
    if c == 2:  # grey + alpha
        image, c = image[:, :, :1], 1
    if c == 4 and in_channels != 4:  # RGBA: drop alpha, as Pillow's convert("RGB") does
        image, c = image[:, :, :3], 3
    if c == in_channels:
        out = image
    elif c == 1:
        out = np.repeat(image, in_channels, axis=2)
    elif c == 3 and in_channels == 1:
        r, g, b = (image[:, :, i] for i in range(3))  # spelled out in float32: the C++ side repeats it
        out = (np.float32(LUMA[0]) * r + np.float32(LUMA[1]) * g + np.float32(LUMA[2]) * b)[:, :, None]
    else:
        raise ShapeContractError(
            f"image has {image.shape[2]} channels but the model takes {in_channels}; "
            "give grey, RGB or RGBA images (or convert them to the model's channels first)"
        )
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)


def normalize(chw: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(N, C, H, W) or (C, H, W) -> (x - mean) / std per channel (no-op when neither is given)."""
    if not mean and not std:
        return chw.astype(np.float32, copy=False)
    c = chw.shape[-3]
    shape = (-1, 1, 1)
    m = np.asarray(mean or [0.0] * c, dtype=np.float32).reshape(shape)
    s = np.asarray(std or [1.0] * c, dtype=np.float32).reshape(shape)
    return ((chw - m) / s).astype(np.float32)


def prepare_region(pixels: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """A region of an image as stored ((h, w) or (h, w, C)) -> the net's (C, h, w) float32 input, pixel by pixel
    (unit float, channels, mean/std: no statistic over the image), so a streamed chunk is prepared exactly as
    the same pixels of the whole image (``scale.stream``)."""
    return normalize(adapt_channels(to_unit_float(pixels), spec.in_channels), spec.mean, spec.std)


def resize_bilinear(chw: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of (..., C, h, w) to (..., C, height, width), half-pixel centres (ONNX Resize's
    ``half_pixel``, torch ``align_corners=False``), edges clamped."""
    h0, w0 = chw.shape[-2:]
    if (h0, w0) == (height, width):
        return chw.astype(np.float32, copy=False)
    ys = np.clip((np.arange(height) + 0.5) * h0 / height - 0.5, 0, h0 - 1)
    xs = np.clip((np.arange(width) + 0.5) * w0 / width - 0.5, 0, w0 - 1)
    y0, x0 = np.floor(ys).astype(np.intp), np.floor(xs).astype(np.intp)
    y1, x1 = np.minimum(y0 + 1, h0 - 1), np.minimum(x0 + 1, w0 - 1)
    fy = (ys - y0).astype(np.float32)[:, None]
    fx = (xs - x0).astype(np.float32)[None, :]
    rows0, rows1 = chw[..., y0, :], chw[..., y1, :]
    top = rows0[..., x0] * (1 - fx) + rows0[..., x1] * fx
    bottom = rows1[..., x0] * (1 - fx) + rows1[..., x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def resize_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of (..., h, w) class ids to (..., height, width), pixel-centre sampling."""
    h0, w0 = mask.shape[-2:]
    if (h0, w0) == (height, width):
        return mask
    ys = np.minimum(((np.arange(height) + 0.5) * h0 / height).astype(np.intp), h0 - 1)
    xs = np.minimum(((np.arange(width) + 0.5) * w0 / width).astype(np.intp), w0 - 1)
    return mask[..., ys[:, None], xs[None, :]]


def _as_image_list(images) -> list[np.ndarray]:
    """One image (H, W) / (H, W, C), a batch (N, H, W, C), or a sequence of equal-size images."""
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images)
        if images.ndim in (2, 3):
            return [images]
        raise ShapeContractError(f"images have shape {images.shape}; expected H x W, H x W x C or N x H x W x C")
    items = [np.asarray(im) for im in images]
    if not items:
        raise ConfigError("no images given")
    return items


# --- the two entry points ------------------------------------------------------------------------------


def preprocess(images, spec: Preprocessing) -> Preprocessed:
    """Images of one size -> the model's NCHW float32 batch and the geometry to undo the fit.

    ``images``: one image (H x W grey, or H x W x C; uint8, uint16 or float in [0, 1]), an N x H x W x C
    array, or a sequence of images of the same H and W (batch by size first; mixed sizes are refused).
    """
    items = _as_image_list(images)
    sizes = {tuple(im.shape[:2]) for im in items}
    if len(sizes) > 1:
        raise ShapeContractError(f"images of different sizes {sorted(sizes)} cannot share a batch; "
                                 "preprocess each size separately")
    (height, width), = sizes
    if height < 1 or width < 1:
        raise ShapeContractError(f"image size {height}x{width} is empty")
    chw = np.stack([adapt_channels(to_unit_float(im), spec.in_channels) for im in items])
    if spec.fit == "resize":
        chw = resize_bilinear(chw, *spec.size)  # type: ignore[misc]
    if spec.scale != 1.0:
        chw = chw * np.float32(spec.scale)
    batch = normalize(chw, spec.mean, spec.std)
    if spec.fit == "pad":
        if spec.pad_in_graph:
            check_size_pad_in_graph((height, width), spec.contract.divisor)
        else:
            batch, _ = pad_to_multiple(batch, spec.contract.divisor, spec.pad_mode)
    in_h, in_w = batch.shape[-2:]
    geometry = Geometry(height, width, int(in_h), int(in_w), spec.fit, spec.output_stride)
    return Preprocessed(np.ascontiguousarray(batch, dtype=np.float32), geometry)


def logits_to_mask(logits: np.ndarray) -> np.ndarray:
    """(N, C, H, W) scores -> (N, H, W) class ids: argmax over C (the first on ties, as ``np.argmax``),
    uint8 up to 256 classes, else int32 (the runners' ``output="mask"`` gives the same). One channel is a
    binary net: class 1 where the logit is > 0 (as ``validate`` scores it)."""
    if logits.ndim != 4:
        raise ShapeContractError(f"logits have shape {logits.shape}; expected N x C x H x W")
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).astype(np.uint8)
    return logits.argmax(axis=1).astype(np.uint8 if logits.shape[1] <= 256 else np.int32)


def postprocess(output: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The model's output -> (N, H, W) class ids at the images' own size.

    ``output``: NCHW logits (argmax over C), or NHW class ids (a runner with ``output="mask"``). Its
    spatial size is the model input's (cropped or resized back here) or already the image's (a runner that
    padded in the graph, cropped, or tiled): both are accepted, anything else is refused.
    """
    output = upsample_logits(np.asarray(output), geometry)
    if output.ndim == 4:
        mask = logits_to_mask(output)
    elif output.ndim == 3 and (np.issubdtype(output.dtype, np.integer) or output.dtype == np.bool_):
        mask = output if output.dtype in (np.uint8, np.int32) else output.astype(np.int32)
        if mask.dtype == np.int32 and mask.size and 0 <= mask.min() and mask.max() <= 255:
            mask = mask.astype(np.uint8)
    else:
        raise ShapeContractError(
            f"output has shape {output.shape} and dtype {output.dtype}; expected N x C x H x W logits or "
            "N x H x W integer class ids"
        )
    hw = tuple(mask.shape[-2:])
    if hw == (geometry.height, geometry.width):
        return mask
    if hw != (geometry.input_height, geometry.input_width):
        raise ShapeContractError(
            f"output is {hw[0]}x{hw[1]}, but the model was fed {geometry.input_height}x{geometry.input_width} "
            f"for images of {geometry.height}x{geometry.width}; it matches neither"
        )
    if geometry.fit == "resize":
        return np.ascontiguousarray(resize_nearest(mask, geometry.height, geometry.width))
    return np.ascontiguousarray(mask[..., : geometry.height, : geometry.width])


def upsample_logits(output: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Logits (or class ids) at 1/output_stride of the model input -> the model input's size: logits
    bilinearly with half-pixel centres (``F.interpolate(mode="bilinear", align_corners=False)``, as
    SegFormer's ``post_process_semantic_segmentation`` does), class ids by nearest neighbour. Anything else
    is returned as it is."""
    stride = geometry.output_stride
    low = (geometry.input_height // stride, geometry.input_width // stride) if stride > 1 else None
    if low is None or output.ndim not in (3, 4) or tuple(output.shape[-2:]) != low:
        return output
    if output.ndim == 4:
        return resize_bilinear(output.astype(np.float32, copy=False), geometry.input_height, geometry.input_width)
    return np.ascontiguousarray(resize_nearest(output, geometry.input_height, geometry.input_width))


def upsample_to(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """NCHW logits at 1/k of ``height`` x ``width`` (one integer k for both axes) upsampled to it, bilinearly
    (half-pixel); any other size is returned as it is. Scores against ground truth at the input's size."""
    lh, lw = logits.shape[-2:]
    if (lh, lw) == (height, width) or not lh or not lw or height % lh or width % lw or height // lh != width // lw:
        return logits
    return resize_bilinear(logits.astype(np.float32, copy=False), height, width)


def probabilities(logits: np.ndarray, geometry: Geometry) -> np.ndarray:
    """NCHW logits -> (N, C, H, W) float32 class probabilities at the images' own size: softmax over C
    (one channel: the sigmoid of the logit, the probability of class 1), cropped back (``pad``) or
    resized back bilinearly (``resize``)."""
    logits = upsample_logits(np.asarray(logits, dtype=np.float32), geometry)
    if logits.ndim != 4:
        raise ShapeContractError(f"logits have shape {logits.shape}; expected N x C x H x W")
    if logits.shape[1] == 1:
        probs = 1.0 / (1.0 + np.exp(-logits))
    else:
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = shifted / shifted.sum(axis=1, keepdims=True)
    hw = tuple(probs.shape[-2:])
    if hw == (geometry.height, geometry.width):
        return probs.astype(np.float32, copy=False)
    if hw != (geometry.input_height, geometry.input_width):
        raise ShapeContractError(f"logits are {hw[0]}x{hw[1]}; expected {geometry.input_height}x"
                                 f"{geometry.input_width} (the model input) or {geometry.height}x{geometry.width}")
    if geometry.fit == "resize":
        return resize_bilinear(probs, geometry.height, geometry.width)
    return np.ascontiguousarray(probs[..., : geometry.height, : geometry.width])
