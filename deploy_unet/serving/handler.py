"""The inference callable PyTriton calls with each batch of requests: the project's runner inside.

Triton's dynamic batcher hands over a list of requests. Requests are grouped by shape and each group runs
as one ``Runner.infer`` call (Triton itself batches only equal shapes for ``-1`` dims, so a group is the
whole batch in practice); outputs are split back per request, in order. Requests of different sizes are
never padded to a common size: a padded net sees the padding near the border, so the result would change.

Every request is checked before anything runs, and a failure names the rule (the shape contract, the size
limit, the channels). PyTriton 0.7 can fail only a whole batch, not one request of it, so a bad request
fails the requests batched with it; those are requests of its own shape, since Triton never batches
unequal shapes, except for content errors (NaN or Inf values) in an equal-shape batch.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from deploy_unet.errors import DeployUnetError, ShapeContractError
from deploy_unet.runtime.base import MASK_OUTPUT
from deploy_unet.shapes import check_size_pad_in_graph

INPUT_KINDS = ("tensor", "image")
IMAGE_INPUT = "image"


@dataclass(frozen=True)
class SizeLimit:
    """The H, W a served model accepts beyond its contract: an engine's profile, or ``--max-size``."""

    min_hw: tuple[int, int] = (1, 1)
    max_hw: tuple[int, int] | None = None
    why: str = "--max-size"
    of_model_input: bool = False  # an engine profile bounds what the model is fed (a padded image), not the image
    depth_range: tuple[int, int] | None = None  # volumes: an engine profile's D range

    def check_depth(self, depth: int) -> None:
        if self.depth_range is not None and not self.depth_range[0] <= depth <= self.depth_range[1]:
            lo, hi = self.depth_range
            raise ShapeContractError(f"depth {depth} is outside [{lo}, {hi}], the depths {self.why} takes")

    def check(self, height: int, width: int, what: str = "input") -> None:
        lo_h, lo_w = self.min_hw
        if height < lo_h or width < lo_w:
            raise ShapeContractError(f"{what} {height}x{width} is below {lo_h}x{lo_w}, the smallest {self.why} takes")
        if self.max_hw is not None:
            hi_h, hi_w = self.max_hw
            if height > hi_h or width > hi_w:
                raise ShapeContractError(f"{what} {height}x{width} exceeds {hi_h}x{hi_w}, the largest {self.why} takes; "
                                         "send a smaller image (or tile it on the client)")


class InferenceHandler:
    """One model instance: a runner (active for the handler's lifetime) and the request <-> batch plumbing.

    ``input_kind``: ``tensor`` (the model's own normalized float NCHW, the contract enforced) or ``image``
    (uint8 N x H x W x C of any size, preprocessed as ``deploy_unet.processing`` does and cropped back).
    The output is what the runner was opened for: logits, or ``mask`` (argmax on the runner's device).
    """

    def __init__(self, runner, input_kind: str, output_name: str, limit: SizeLimit, preprocessing=None,
                 log: Callable[[str], None] | None = None):
        self.runner = runner
        self.log = log or (lambda message: None)
        self.input_kind = input_kind
        self.output_name = output_name
        self.limit = limit
        self.preprocessing = preprocessing
        (self.input_name,) = runner.input_spec
        self._lock = threading.Lock()  # one batch at a time per runner (Triton runs one per instance anyway)
        self.batches = 0  # how many runner calls ran (tests read it to see batching)

    def __call__(self, requests) -> list[dict[str, np.ndarray]]:
        key = IMAGE_INPUT if self.input_kind == "image" else self.input_name
        arrays = [np.asarray(request[key]) for request in requests]
        try:
            for array in arrays:  # check all before running any: the rule, not an error from deep inside
                self._check(array)
        except DeployUnetError as exc:
            self.log(f"refused {len(arrays)} request(s): {exc}")
            raise
        groups: OrderedDict[tuple, list[int]] = OrderedDict()
        for index, array in enumerate(arrays):
            groups.setdefault(array.shape[1:], []).append(index)
        results: list[dict[str, np.ndarray] | None] = [None] * len(arrays)
        for indices in groups.values():
            batch = np.concatenate([arrays[i] for i in indices]) if len(indices) > 1 else arrays[indices[0]]
            try:
                output = self._run(batch)
            except Exception as exc:
                self.log(f"failed {len(indices)} request(s) of shape {list(batch.shape)}: {type(exc).__name__}: {exc}")
                raise
            start = 0
            for i in indices:
                n = arrays[i].shape[0]
                results[i] = {self.output_name: output[start:start + n]}
                start += n
        return results  # type: ignore[return-value]

    def _check(self, array: np.ndarray) -> None:
        if self.input_kind == "image":
            if array.ndim != 4:
                raise ShapeContractError(f"image has shape {list(array.shape)}; send N x H x W x C uint8")
            height, width = int(array.shape[1]), int(array.shape[2])
            if self.limit.of_model_input and self.preprocessing is not None:
                self.limit.check(*self.preprocessing.input_size(height, width), "padded image")
            else:
                self.limit.check(height, width, "image")
            return
        # Triton has checked dtype, rank and channels against the config; the contract and the limit are ours.
        if array.ndim == 5:  # volumes (NCDHW): D, H, W each against its divisor; the limit on D and on H, W
            self.limit.check_depth(int(array.shape[2]))
            self.limit.check(int(array.shape[3]), int(array.shape[4]))
            self.runner.contract.validate(tuple(int(v) for v in array.shape[2:]), "or pad the volume on the client")
            if not np.isfinite(array).all():
                raise DeployUnetError("input contains NaN or Inf values; send finite float32 data")
            return
        height, width = (int(v) for v in array.shape[2:4])
        self.limit.check(height, width)
        runner = self.runner
        if runner.tile:
            pass  # any size
        elif runner.pad_in_graph:
            check_size_pad_in_graph((height, width), runner.divisor)
        else:
            runner.contract.validate((height, width), "or serve with --input image, which takes any image size")
        if not np.isfinite(array).all():
            raise DeployUnetError("input contains NaN or Inf values; send finite float32 data")

    def _run(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self.batches += 1
            if self.input_kind == "tensor":
                return self.runner.infer({self.input_name: batch})[self.output_name]
            from deploy_unet.processing import postprocess, preprocess

            prepared = preprocess(batch, self.preprocessing)
            (runner_output,) = self.runner.infer({self.input_name: prepared.array}).values()
            if self.output_name == MASK_OUTPUT or runner_output.ndim == 3:
                return postprocess(runner_output, prepared.geometry)
            g = prepared.geometry
            return np.ascontiguousarray(runner_output[..., : g.height, : g.width])

