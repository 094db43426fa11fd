"""Triton python-backend model written by ``deploy-unet triton-repo --ensemble``: logits -> mask.

Inputs: the model's logits (FP32 N x K x H' x W') and ``image_size`` (INT32 N x 2, from the preprocess
model). Output ``mask``: N x H x W class ids (argmax over K, the first on ties; UINT8 up to 256 classes),
cropped back to the image (``deploy_unet.processing.postprocess``, copied beside this file).
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils
from deploy_unet_processing.errors import DeployUnetError
from deploy_unet_processing.processing import Geometry, postprocess


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.logits_name = config["input"][0]["name"]
        # logits at 1/k of the model input (SegFormer: 4), upsampled bilinearly before the argmax
        self.stride = int(config.get("parameters", {}).get("output_stride", {}).get("string_value", "1"))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                logits = pb_utils.get_input_tensor_by_name(request, self.logits_name).as_numpy()
                sizes = pb_utils.get_input_tensor_by_name(request, "image_size").as_numpy()
                if len({(int(h), int(w)) for h, w in sizes}) != 1:
                    raise DeployUnetError(f"one request holds images of sizes {sizes.tolist()}; send one size")
                height, width = (int(v) for v in sizes[0])
                geometry = Geometry(height, width, logits.shape[-2] * self.stride, logits.shape[-1] * self.stride, "pad",
                                    self.stride)
                mask = np.ascontiguousarray(postprocess(logits, geometry))
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("mask", mask)]))
            except (DeployUnetError, ValueError) as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"postprocess: {exc}")))
        return responses
