"""Triton python-backend model written by ``deploy-unet triton-repo --ensemble``: images -> model input.

Input ``image``: UINT8, N x H x W x C (1 grey, 3 RGB, 4 RGBA; any H and W; the N images of one request
share a size). Outputs: the model's input (FP32 N x C x H' x W': scaled to [0, 1], normalized with the
model's mean/std, padded bottom/right to the divisor with reflect, unless the graph pads itself) and
``image_size`` (INT32 N x 2: each image's H, W, for the postprocess model's crop).

Everything comes from the ``preprocessing`` parameter of config.pbtxt (the artifact's metadata); the code
is ``deploy_unet.processing``, copied beside this file as ``deploy_unet_processing`` (NumPy only).
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils
from deploy_unet_processing.errors import DeployUnetError
from deploy_unet_processing.processing import Preprocessing, preprocess
from deploy_unet_processing.shapes import ShapeContract


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = json.loads(config["parameters"]["preprocessing"]["string_value"])
        self.input_name = params["input_name"]
        self.spec = Preprocessing(
            in_channels=int(params["in_channels"]),
            mean=tuple(params["mean"]),
            std=tuple(params["std"]),
            contract=ShapeContract(int(params["divisor"]), reason=params.get("contract_reason", "")),
            pad_in_graph=bool(params["pad_in_graph"]),
            fit="pad",
            scale=float(params.get("scale", 1.0)),
            output_stride=int(params.get("output_stride", 1)),
        )
        self.min_hw = params.get("min_hw")
        self.max_hw = params.get("max_hw")

    def _check_range(self, height, width):
        """An engine's profile fixes the H/W range it runs; say so here instead of failing inside TensorRT."""
        if self.max_hw is None:
            return
        (lo_h, lo_w), (hi_h, hi_w) = self.min_hw, self.max_hw
        if not (lo_h <= height <= hi_h and lo_w <= width <= hi_w):
            raise DeployUnetError(
                f"padded image size {height}x{width} is outside the model's optimization profile "
                f"(H {lo_h}..{hi_h}, W {lo_w}..{hi_w}); resize the image, or rebuild the engine with a wider "
                "--min-shape/--max-shape"
            )

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                images = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
                if images.ndim != 4:
                    raise DeployUnetError(f"image has shape {list(images.shape)}; send N x H x W x C uint8")
                batch = preprocess(images, self.spec)
                self._check_range(*batch.array.shape[-2:])
                size = np.tile(np.array([[batch.geometry.height, batch.geometry.width]], dtype=np.int32),
                               (images.shape[0], 1))
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(self.input_name, batch.array), pb_utils.Tensor("image_size", size)]))
            except (DeployUnetError, ValueError) as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"preprocess: {exc}")))
        return responses
