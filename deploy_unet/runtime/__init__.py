"""Runners: one protocol (``Runner``) over torch, ONNX Runtime and TensorRT backends."""

from __future__ import annotations

import os

import numpy as np

from deploy_unet.runtime.base import Runner, TensorSpec

__all__ = ["Runner", "TensorSpec", "run_onnx"]


def run_onnx(path: str | os.PathLike, array: np.ndarray, pad: bool = False, **runner_options) -> np.ndarray:
    """Run an ONNX model's single input on ONNX Runtime with the shape contract checked first.

    Without ``pad`` a non-divisible H/W raises a one-line ShapeContractError (instead of ORT's
    "Concat ... mismatched dimensions"); with ``pad`` the input is padded, run and cropped back.
    """
    from deploy_unet.runtime.onnxruntime_runner import OnnxRuntimeRunner

    with OnnxRuntimeRunner(path, pad=pad, **runner_options) as runner:
        (name,) = runner.input_spec
        return runner.infer({name: array})[runner.output_names[0]]
