"""The shipped UNet checkpoint served by its torch runner: a tritonclient request gets the right mask.

"Right" two ways: equal to the same runner called in this process, and close to the scene's ground truth
(the model's held-out Dice is 0.999 on these synthetic scenes, so a wrong crop, channel order or
normalization would show as a low agreement).
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import ServeProcess, require_serve_extra

pytestmark = pytest.mark.serve
require_serve_extra()

import tritonclient.grpc as grpcclient  # noqa: E402

from deploy_unet.data import SyntheticSpec, synthetic_sample  # noqa: E402
from deploy_unet.runtime import open_runner  # noqa: E402

SHIPPED = Path(__file__).resolve().parent.parent / "models" / "unet_synthetic.pt"


def test_shipped_unet_checkpoint_answers_an_image_with_the_right_mask():
    scene, truth = synthetic_sample(SyntheticSpec(seed=11, height=200, width=300), 0)  # 200x300: not a multiple of 16
    image = np.round(scene.transpose(1, 2, 0) * 255).astype(np.uint8)[None]  # 1 x H x W x 3, as a PNG decodes
    proc = ServeProcess.ready(SHIPPED, "--input", "image", "--output", "mask", "--device", "cpu", "--threads", "1",
                              model="unet_synthetic")
    try:
        client = grpcclient.InferenceServerClient(proc.grpc_url)
        try:
            inp = grpcclient.InferInput("image", list(image.shape), "UINT8")
            inp.set_data_from_numpy(image)
            mask = client.infer("unet_synthetic", [inp]).as_numpy("mask")[0]
        finally:
            client.close()
        assert "(torch, " in proc.stderr()
        assert proc.stop(signal.SIGTERM) == 0
    finally:
        proc.cleanup()

    from deploy_unet.processing import Preprocessing, postprocess, preprocess

    with open_runner(SHIPPED, device="cpu", threads=1) as runner:
        prepared = preprocess(image, Preprocessing.from_model_info(runner.info))
        expected = postprocess(runner.infer({"input": prepared.array})["logits"], prepared.geometry)[0]
    assert mask.shape == truth.shape == (200, 300) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, expected)
    assert (mask == truth).mean() > 0.98
    assert set(np.unique(truth)) <= set(np.unique(mask)) | {0}  # every object class in the scene is found
