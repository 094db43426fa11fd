"""The request handler behind `serve`, without a server: grouping by shape, order, checks before running."""

from __future__ import annotations

import numpy as np
import pytest

from deploy_unet.errors import ConfigError, DeployUnetError, ShapeContractError
from deploy_unet.runtime import open_runner
from deploy_unet.serving.handler import InferenceHandler, SizeLimit
from deploy_unet.serving.server import ServeOptions, TritonService


@pytest.fixture(scope="module")
def runner(thin_unet_onnx):
    with open_runner(thin_unet_onnx[1], threads=1) as r:
        yield r


def x(seed, n, h, w):
    return np.random.default_rng(seed).standard_normal((n, 3, h, w)).astype(np.float32)


def test_requests_of_mixed_shapes_run_one_batch_per_shape_and_come_back_in_order(runner):
    handler = InferenceHandler(runner, "tensor", "logits", SizeLimit(max_hw=(64, 64)))
    requests = [{"input": x(0, 1, 16, 16)}, {"input": x(1, 2, 32, 24)}, {"input": x(2, 1, 16, 16)},
                {"input": x(3, 1, 32, 24)}]
    outputs = handler(requests)
    assert handler.batches == 2  # one runner call per distinct shape, not per request
    for request, output in zip(requests, outputs, strict=True):
        expected = runner.infer({"input": request["input"]})["logits"]
        assert output["logits"].shape == expected.shape
        np.testing.assert_allclose(output["logits"], expected, atol=1e-5)


def test_one_bad_request_is_refused_before_anything_runs(runner):
    handler = InferenceHandler(runner, "tensor", "logits", SizeLimit(max_hw=(64, 64)), log=(lines := []).append)
    with pytest.raises(ShapeContractError, match="width 20 is not divisible by 8.*serve with --input image"):
        handler([{"input": x(0, 1, 16, 16)}, {"input": x(1, 1, 16, 20)}])
    assert handler.batches == 0 and lines == [lines[0]] and lines[0].startswith("refused 2 request(s): width 20")
    with pytest.raises(ShapeContractError, match="72x16 exceeds 64x64, the largest --max-size takes"):
        handler([{"input": x(0, 1, 72, 16)}])
    with pytest.raises(DeployUnetError, match="NaN or Inf"):
        handler([{"input": np.full((1, 3, 16, 16), np.inf, np.float32)}])


def test_serve_options_are_checked_before_anything_starts(thin_unet_onnx):
    onnx = str(thin_unet_onnx[1])
    with pytest.raises(ConfigError, match="must differ"):
        TritonService(ServeOptions(onnx, http_port=9000, grpc_port=9000))
    with pytest.raises(ConfigError, match="--model-name 'a/b' may hold only"):
        TritonService(ServeOptions(onnx, model_name="a/b"))
    with pytest.raises(ConfigError, match="--input 'png' is not valid"):
        TritonService(ServeOptions(onnx, input_kind="png"))
