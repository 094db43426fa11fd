"""Triton repositories and `serve` for volume nets (issue 24): 5-D dims (C, D, H, W) in configs parsed with
Triton's own schema, an engine's 5-D profile as the D/H/W range, and the request handler on NCDHW volumes.
The engine here is built by the fake TensorRT (tests/trt_fakes.py): configs only, no GPU run."""

from __future__ import annotations

import numpy as np
import pytest
from test_engine_rtx import _fake_build_env
from test_volumes_engine import volume_onnx
from trt_fakes import fake_tensorrt

from deploy_unet.engine.build import build_engine, plan_build
from deploy_unet.errors import ConfigError, ShapeContractError
from deploy_unet.runtime import open_runner
from deploy_unet.serving.handler import InferenceHandler, SizeLimit
from deploy_unet.serving.repository import RepositoryOptions, write_repository

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient[grpc] (the serve extra)")
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402


def parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_triton_repo_for_a_volume_onnx_and_its_engine(tmp_path, monkeypatch):
    onnx_path = volume_onnx(tmp_path / "vol.onnx")
    _fake_build_env(monkeypatch, fake_tensorrt())
    engine = build_engine(plan_build(onnx_path, tmp_path / "vol3d.engine", max_shape="4x1x16x64x64")).engine_path
    repo = write_repository([onnx_path, engine], tmp_path / "repo", RepositoryOptions(warmup=True))
    assert repo.parsed_with_triton_schema
    onnx_cfg = parse(tmp_path / "repo" / "vol" / "config.pbtxt")
    assert list(onnx_cfg.input[0].dims) == [1, -1, -1, -1] and list(onnx_cfg.output[0].dims) == [3, -1, -1, -1]
    assert onnx_cfg.max_batch_size == 8
    assert list(onnx_cfg.model_warmup[0].inputs["input"].dims) == [1, 8, 32, 32]  # the export shape, per axis
    text = (tmp_path / "repo" / "vol" / "config.pbtxt").read_text()
    assert "D, H and W: depth divisible by 2, height by 8, width by 8" in text
    engine_dir = tmp_path / "repo" / "vol3d"
    engine_cfg = parse(engine_dir / "config.pbtxt")
    assert engine_cfg.platform == "tensorrt_plan" and engine_cfg.max_batch_size == 4
    assert list(engine_cfg.input[0].dims) == [1, -1, -1, -1]
    assert "D in [2, 16], H in [8, 64], W in [8, 64] (opt 8x32x32), batch up to 4" in (
        engine_dir / "config.pbtxt").read_text()
    with pytest.raises(ConfigError, match="volume net \\(NCDHW\\): the --ensemble takes 2D images"):
        write_repository([onnx_path], tmp_path / "repo2", RepositoryOptions(ensemble=True))


def test_handler_serves_volumes_and_refuses_a_bad_axis(tmp_path):
    onnx_path = volume_onnx(tmp_path / "vol.onnx")
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 16, 24)).astype(np.float32)
    with open_runner(onnx_path) as runner:
        handler = InferenceHandler(runner, "tensor", "logits", SizeLimit(max_hw=(64, 64), depth_range=(2, 16)))
        (out,) = handler([{"input": x}])
        np.testing.assert_allclose(out["logits"], runner.infer({"input": x})["logits"], atol=1e-6)
        with pytest.raises(ShapeContractError, match="^depth 7 is not divisible by 2"):
            handler([{"input": x[:, :, :7]}])
        with pytest.raises(ShapeContractError, match="depth 18 is outside \\[2, 16\\]"):
            handler([{"input": np.zeros((1, 1, 18, 16, 16), np.float32)}])


def test_serve_states_5d_dims_and_refuses_image_input_for_a_volume_net(tmp_path):
    from deploy_unet.serving.server import ServeOptions, TritonService

    onnx_path = volume_onnx(tmp_path / "vol.onnx")
    service = TritonService(ServeOptions(str(onnx_path), threads=1, instances=1, output="mask"))
    try:
        service._open_handlers()  # what `serve` does before starting Triton: runners, handlers, the served model
        model = service.model
        assert model.input_dims == (1, -1, -1, -1) and model.output_dims == (-1, -1, -1)
        assert model.size_rule.startswith("D, H and W: depth divisible by 2, height by 8, width by 8")
        service._warm_up()  # one NCDHW request at the export size
    finally:
        service.stop()
    image = TritonService(ServeOptions(str(onnx_path), threads=1, instances=1, input_kind="image"))
    try:
        with pytest.raises(ConfigError, match="volume net \\(NCDHW\\): --input image takes 2D images"):
            image._open_handlers()
    finally:
        image.stop()
