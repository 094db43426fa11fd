"""A written repository's python models (the ensemble's preprocess and postprocess) on the real bundled
``tritonserver --model-repository``.

The bundled server has the python backend only, so each main model (``onnxruntime_onnx`` /
``tensorrt_plan``) is replaced by a stand-in: a python model with the same name, inputs, outputs and
batching that runs the ONNX file in ONNX Runtime. Everything else (the generated preprocess, postprocess
and ensemble configs, the model.py files and their vendored processing code) is loaded as written.
"""

from __future__ import annotations

import contextlib
import shutil
import time

import numpy as np
import pytest
from serving_helpers import fake_engine, require_serve_extra

pytestmark = pytest.mark.serve
require_serve_extra()

import tritonclient.http as httpclient  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from deploy_unet.describe import read_model_info  # noqa: E402
from deploy_unet.processing import Preprocessing, postprocess, preprocess  # noqa: E402
from deploy_unet.runtime import open_runner  # noqa: E402
from deploy_unet.serving.repository import RepositoryOptions, write_repository  # noqa: E402
from deploy_unet.serving.server import free_port  # noqa: E402

STAND_IN = '''
import json
import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Stand-in for an onnxruntime_onnx / tensorrt_plan model: the same IO, run by ONNX Runtime on CPU."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input = config["input"][0]["name"]
        self.output = config["output"][0]["name"]
        path = config["parameters"]["stand_in_onnx"]["string_value"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, self.input).as_numpy()
            y = self.session.run([self.output], {self.input: x})[0]
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output, y)]))
        return responses
'''


def stand_in(folder, onnx_path):
    """Turn a generated main-model folder into the python stand-in, keeping its name, IO and batching."""
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    config.platform = ""
    config.backend = "python"
    for group in config.instance_group:
        group.kind = model_config_pb2.ModelInstanceGroup.KIND_CPU
    config.ClearField("optimization")
    config.ClearField("model_warmup")
    config.parameters["stand_in_onnx"].string_value = str(onnx_path)
    (folder / "config.pbtxt").write_text(text_format.MessageToString(config))
    for name in ("model.onnx", "model.plan"):
        (folder / "1" / name).unlink(missing_ok=True)
    (folder / "1" / "model.py").write_text(STAND_IN)


@contextlib.contextmanager
def bundled_tritonserver(repository):
    """The bundled tritonserver on free loopback ports with ``--model-repository`` (through PyTriton's launcher,
    with the libpython fix ``serve`` applies)."""
    from pytriton.triton import Triton, TritonConfig

    from deploy_unet.serving.environment import server_environment

    config = TritonConfig(model_repository=repository, http_address="127.0.0.1", http_port=free_port(),
                          grpc_address="127.0.0.1", grpc_port=free_port(), metrics_address="127.0.0.1",
                          metrics_port=free_port(), exit_timeout_secs=5, log_verbose=0,
                          log_file=repository.parent / "tritonserver.log")
    with server_environment():
        triton = Triton(config=config)
        triton.run()
    try:
        yield triton, f"127.0.0.1:{config.http_port}"
    finally:
        triton.stop()


def infer_image(client, model, image):
    inp = httpclient.InferInput("image", list(image.shape), "UINT8")
    inp.set_data_from_numpy(image)
    return client.infer(model, [inp]).as_numpy("mask")


def test_ensemble_python_models_run_in_tritonserver_and_equal_predict_processing(thin_unet_onnx, tmp_path):
    onnx_path = thin_unet_onnx[1]
    engine = fake_engine(tmp_path, onnx_path, max_batch=4, min_hw=16, opt_hw=32, max_hw=64)
    repo = tmp_path / "repo"
    write_repository([onnx_path, engine], repo, RepositoryOptions(ensemble=True, max_queue_delay_us=0),
                     names=["unet", "unet_trt"])
    pristine = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    for name in ("unet", "unet_trt"):
        stand_in(repo / name, onnx_path)

    spec = Preprocessing.from_model_info(read_model_info(onnx_path))
    rgb = (np.random.default_rng(5).random((2, 30, 45, 3)) * 255).astype(np.uint8)
    grey = (np.random.default_rng(6).random((1, 19, 21, 1)) * 255).astype(np.uint8)
    started = time.monotonic()
    with bundled_tritonserver(repo) as (triton, url), open_runner(onnx_path, threads=1) as runner, \
            httpclient.InferenceServerClient(url) as client:
        index = client.get_model_repository_index(headers={"triton-access-token": triton.get_access_token()})
        assert {m["name"]: m["state"] for m in index} == {
            name: "READY" for name in ("unet", "unet_preprocess", "unet_postprocess", "unet_ensemble",
                                       "unet_trt", "unet_trt_preprocess", "unet_trt_postprocess", "unet_trt_ensemble")}
        for image in (rgb, grey):
            prepared = preprocess(image, spec)
            expected = postprocess(runner.infer({"input": prepared.array})["logits"], prepared.geometry)
            for model in ("unet_ensemble", "unet_trt_ensemble"):
                mask = infer_image(client, model, image)
                assert mask.dtype == np.uint8 and mask.shape == image.shape[:3]
                np.testing.assert_array_equal(mask, expected)

        with pytest.raises(InferenceServerException, match="preprocess: image has 5 channels but the model takes 3"):
            infer_image(client, "unet_ensemble", np.zeros((1, 8, 8, 5), np.uint8))
        # The engine's profile (H, W 16..64) is checked on the padded image, in one line, before TensorRT would fail.
        with pytest.raises(InferenceServerException, match=r"padded image size 72x64 is outside the model's "
                                                           r"optimization profile \(H 16\.\.64, W 16\.\.64\)"):
            infer_image(client, "unet_trt_ensemble", np.zeros((1, 70, 60, 3), np.uint8))
        np.testing.assert_array_equal(infer_image(client, "unet_trt_ensemble", grey),  # still serving
                                      postprocess(runner.infer({"input": preprocess(grey, spec).array})["logits"],
                                                  preprocess(grey, spec).geometry))
    assert not triton.is_alive()
    assert time.monotonic() - started < 120
    # The ensemble parts ran exactly as written: only the two main models were swapped for stand-ins.
    for relative, content in pristine.items():
        if relative.parts[0] not in ("unet", "unet_trt"):
            assert (repo / relative).read_bytes() == content, relative
    shutil.rmtree(repo)
