"""`triton-repo`: model repositories whose configs parse with Triton's own schema and say what the artifact is.

Every config written here is parsed with tritonclient's ``model_config_pb2`` (``google.protobuf.text_format``,
which rejects unknown fields); the assertions read the parsed messages, not the text.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from serving_helpers import fake_engine, require_serve_extra

from deploy_unet.cli import cli
from deploy_unet.describe import read_model_info
from deploy_unet.errors import ArtifactError, ConfigError
from deploy_unet.fileio import sha256_file
from deploy_unet.metadata import load_onnx, write_props
from deploy_unet.serving.pbtxt import check_model_config
from deploy_unet.serving.repository import RepositoryOptions, write_repository

require_serve_extra()

from google.protobuf import text_format  # noqa: E402  (installed with tritonclient)
from tritonclient.grpc import model_config_pb2  # noqa: E402

FAST = dict(calib="synthetic:seed=1,size=32x32", calib_samples=8, eval_source="synthetic:seed=2,size=32x32",
            eval_samples=2, progress=False, max_dice_drop=1.0)


def parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def dtype_name(value: int) -> str:
    return model_config_pb2.DataType.Name(value)


@pytest.fixture(scope="module")
def thin_onnx(thin_unet_onnx):
    return thin_unet_onnx[1]


@pytest.fixture(scope="module")
def precisions(thin_onnx, tmp_path_factory):
    """The thin UNet as fp16 and as TensorRT-placement int8 (Q/DQ) ONNX."""
    from deploy_unet.precision import quantize

    folder = tmp_path_factory.mktemp("prec")
    fp16 = quantize(thin_onnx, "fp16", output=folder / "thin.fp16.onnx", **FAST).path
    int8 = quantize(thin_onnx, "int8", target="tensorrt", output=folder / "thin.int8.onnx", **FAST).path
    return {"fp16": fp16, "int8": int8}


def test_onnx_model_folder_states_the_artifact(thin_onnx, tmp_path):
    repo = write_repository([thin_onnx], tmp_path / "repo", RepositoryOptions(instances=2, max_queue_delay_us=250))
    assert repo.parsed_with_triton_schema
    folder = tmp_path / "repo" / "thin_unet"
    assert sha256_file(folder / "1" / "model.onnx") == sha256_file(thin_onnx)
    config = parse(folder / "config.pbtxt")
    info = read_model_info(thin_onnx)
    assert (config.name, config.platform, config.max_batch_size) == ("thin_unet", "onnxruntime_onnx", 8)
    (inp,), (out,) = config.input, config.output
    assert (inp.name, dtype_name(inp.data_type), list(inp.dims)) == ("input", "TYPE_FP32", [3, -1, -1])
    assert (out.name, dtype_name(out.data_type), list(out.dims)) == ("logits", "TYPE_FP32", [info.num_classes, -1, -1])
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    (group,) = config.instance_group
    assert group.count == 2 and model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_GPU"
    (warm,) = config.model_warmup
    assert warm.batch_size == 1 and list(warm.inputs["input"].dims) == [3, 32, 32]  # the export shape
    assert warm.inputs["input"].zero_data
    assert not config.optimization.execution_accelerators.gpu_execution_accelerator
    text = (folder / "config.pbtxt").read_text()
    assert "divisible by 8 (= 2**3 for UNet depth 3)" in text  # the contract, as a comment
    assert "divisible by 8" in (tmp_path / "repo" / "README.md").read_text()


def test_engine_max_batch_comes_from_its_profile_and_never_exceeds_it(thin_onnx, tmp_path):
    engine = fake_engine(tmp_path, thin_onnx, max_batch=4)
    write_repository([engine], tmp_path / "repo")
    folder = tmp_path / "repo" / "thin.fp16"
    config = parse(folder / "config.pbtxt")
    assert (config.platform, config.max_batch_size) == ("tensorrt_plan", 4)
    assert (folder / "1" / "model.plan").read_bytes() == engine.read_bytes()
    assert list(config.model_warmup[0].inputs["input"].dims) == [3, 64, 64]  # the profile's opt shape
    text = (folder / "config.pbtxt").read_text()
    assert "H in [16, 128], W in [16, 128] (opt 64x64), batch up to 4" in text
    assert "H in [16, 128]" in (tmp_path / "repo" / "README.md").read_text()

    with pytest.raises(ConfigError, match="--max-batch 8 exceeds thin.fp16.engine's optimization profile "
                                          r"\(max batch 4\).*only supports max-batch 4"):
        write_repository([engine], tmp_path / "repo2", RepositoryOptions(max_batch=8))
    write_repository([engine], tmp_path / "repo3", RepositoryOptions(max_batch=2))
    assert parse(tmp_path / "repo3" / "thin.fp16" / "config.pbtxt").max_batch_size == 2
    with pytest.raises(ConfigError, match="runs on a GPU only"):
        write_repository([engine], tmp_path / "repo4", RepositoryOptions(kind="cpu"))
    assert not (tmp_path / "repo2").exists() and not (tmp_path / "repo4").exists()


def test_engine_profile_of_batch_one_gets_no_dynamic_batcher(thin_onnx, tmp_path):
    engine = fake_engine(tmp_path, thin_onnx, max_batch=1)
    write_repository([engine], tmp_path / "repo")
    config = parse(tmp_path / "repo" / "thin.fp16" / "config.pbtxt")
    assert config.max_batch_size == 1 and not config.HasField("dynamic_batching")


def test_static_export_keeps_its_full_shape_and_max_batch_zero(tmp_path):
    from conftest import thin_net

    from deploy_unet.export import export_onnx

    path = tmp_path / "static.onnx"
    export_onnx(thin_net("unet"), path, height=32, width=32, dynamic="none", verify=False)
    write_repository([path], tmp_path / "repo")
    config = parse(tmp_path / "repo" / "static" / "config.pbtxt")
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [1, 3, 32, 32]
    assert not config.HasField("dynamic_batching")
    assert list(config.model_warmup[0].inputs["input"].dims) == [1, 3, 32, 32]
    assert "fixed 32x32" in (tmp_path / "repo" / "static" / "config.pbtxt").read_text()
    with pytest.raises(ConfigError, match="fixed batch of 1"):
        write_repository([path], tmp_path / "repo2", RepositoryOptions(max_batch=4))


def _trt_params(config) -> dict[str, str]:
    (acc,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt"
    return dict(acc.parameters)


def test_tensorrt_accelerator_precision_follows_the_graph_and_qdq_gets_no_calibration_table(
        thin_onnx, precisions, tmp_path):
    write_repository([thin_onnx, precisions["fp16"], precisions["int8"]], tmp_path / "repo",
                     RepositoryOptions(accelerator="tensorrt"))
    modes = {}
    for name in ("thin_unet", "thin.fp16", "thin.int8"):
        params = _trt_params(parse(tmp_path / "repo" / name / "config.pbtxt"))
        modes[name] = params["precision_mode"]
        assert params["trt_engine_cache_enable"] == "1" and params["trt_timing_cache_enable"] == "1"
        assert params["trt_engine_cache_path"] == params["trt_timing_cache_path"]
        assert not any("calibration" in key for key in params), params  # ORT refuses a table for a Q/DQ model
        # build-engine's default profile (one divisor step .. twice the export size), batch up to max_batch_size
        assert (params["trt_profile_min_shapes"], params["trt_profile_opt_shapes"], params["trt_profile_max_shapes"]) \
            == ("input:1x3x8x8", "input:1x3x32x32", "input:8x3x64x64")
    assert modes == {"thin_unet": "FP32", "thin.fp16": "FP16", "thin.int8": "INT8"}
    with pytest.raises(ConfigError, match="runs on a GPU"):
        write_repository([thin_onnx], tmp_path / "cpu", RepositoryOptions(accelerator="tensorrt", kind="cpu"))


def test_ensemble_graph_is_consistent_in_names_types_and_batch(thin_onnx, tmp_path):
    write_repository([thin_onnx], tmp_path / "repo", RepositoryOptions(ensemble=True))
    configs = {p.parent.name: parse(p) for p in (tmp_path / "repo").glob("*/config.pbtxt")}
    assert set(configs) == {"thin_unet", "thin_unet_preprocess", "thin_unet_postprocess", "thin_unet_ensemble"}
    ensemble = configs["thin_unet_ensemble"]
    assert ensemble.platform == "ensemble"
    assert {c.max_batch_size for c in configs.values()} == {8}  # an ensemble may not exceed its steps' max batch
    # Walk the steps: every step input is an ensemble input or an earlier step's output, of the same type and dims.
    tensors = {t.name: (t.data_type, list(t.dims)) for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        inputs = {t.name: (t.data_type, list(t.dims)) for t in model.input}
        outputs = {t.name: (t.data_type, list(t.dims)) for t in model.output}
        assert set(step.input_map) == set(inputs), step.model_name
        for model_input, tensor in step.input_map.items():
            assert tensors[tensor][0] == inputs[model_input][0], (step.model_name, model_input)
            assert len(tensors[tensor][1]) == len(inputs[model_input][1])
        for model_output, tensor in step.output_map.items():
            tensors[tensor] = outputs[model_output]
    for out in ensemble.output:
        assert tensors[out.name] == (out.data_type, list(out.dims))
    assert dtype_name(ensemble.input[0].data_type) == "TYPE_UINT8"
    assert (ensemble.output[0].name, dtype_name(ensemble.output[0].data_type)) == ("mask", "TYPE_UINT8")
    params = json.loads(configs["thin_unet_preprocess"].parameters["preprocessing"].string_value)
    info = read_model_info(thin_onnx)
    assert (params["mean"], params["std"], params["divisor"]) == (info.mean, info.std, 8)
    for which in ("preprocess", "postprocess"):
        assert configs[f"thin_unet_{which}"].backend == "python"
        assert (tmp_path / "repo" / f"thin_unet_{which}" / "1" / "model.py").is_file()
    assert (tmp_path / "repo" / "thin_unet_ensemble" / "1").is_dir()  # Triton wants a version folder


def test_vendored_processing_runs_without_deploy_unet_and_equals_it(thin_onnx, tmp_path):
    """The python models' copy of deploy_unet.processing imports with NumPy alone (as in NVIDIA's container)
    and gives the same arrays as the original."""
    from deploy_unet.processing import Preprocessing, preprocess

    write_repository([thin_onnx], tmp_path / "repo", RepositoryOptions(ensemble=True))
    version = tmp_path / "repo" / "thin_unet_preprocess" / "1"
    image = (np.random.default_rng(0).random((1, 21, 30, 3)) * 255).astype(np.uint8)
    np.save(tmp_path / "image.npy", image)
    script = (
        "import sys, numpy as np\n"
        f"sys.path.insert(0, {str(version)!r})\n"
        "from deploy_unet_processing.processing import Preprocessing, preprocess\n"
        "from deploy_unet_processing.shapes import ShapeContract\n"
        f"x = np.load({str(tmp_path / 'image.npy')!r})\n"
        "spec = Preprocessing(3, (0.5,) * 3, (0.25,) * 3, ShapeContract(8))\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, preprocess(x, spec).array)\n"
        "assert not any(m == 'deploy_unet' or m.startswith('deploy_unet.') for m in sys.modules), 'imported deploy_unet'\n"
    )
    # -I: isolated (no site-packages of this checkout on the path beyond the venv, no cwd): deploy_unet unreachable
    subprocess.run([sys.executable, "-I", "-c", script], check=True, cwd=tmp_path)
    expected = preprocess(image, Preprocessing.from_model_info(read_model_info(thin_onnx))).array
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)
    assert expected.shape == (1, 3, 24, 32)


def test_valid_convolution_net_is_refused_for_the_ensemble(thin_onnx, tmp_path):
    model = load_onnx(thin_onnx)
    write_props(model, {"padding": "valid", "size_remainder": "4", "border": "60", "output_offset": "30",
                        "min_size": "68"})
    import onnx

    path = tmp_path / "valid.onnx"
    onnx.save(model, path)
    with pytest.raises(ConfigError, match="valid-convolution net.*serve --input image"):
        write_repository([path], tmp_path / "repo", RepositoryOptions(ensemble=True))
    write_repository([path], tmp_path / "plain")  # without the ensemble it is fine: the contract is a comment
    assert "a valid input size (8k + 4 >= 68" in (tmp_path / "plain" / "valid" / "config.pbtxt").read_text()


def test_existing_output_is_kept_unless_forced_and_a_failed_run_leaves_nothing(thin_onnx, tmp_path):
    out = tmp_path / "repo"
    write_repository([thin_onnx], out)
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(ConfigError, match="exists and is not empty; pass --force"):
        write_repository([thin_onnx], out)
    with pytest.raises(ArtifactError, match="does not exist"):
        write_repository([thin_onnx, tmp_path / "missing.onnx"], out, force=True)
    assert sorted(p.name for p in out.rglob("*")) == before  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]  # no staging folder left
    write_repository([thin_onnx], out, RepositoryOptions(max_batch=2), force=True)
    assert parse(out / "thin_unet" / "config.pbtxt").max_batch_size == 2
    with pytest.raises(ConfigError, match="two models would be named 'thin_unet'"):
        write_repository([thin_onnx, thin_onnx], tmp_path / "dup")


def test_config_check_is_strict():
    assert check_model_config('name: "m"\nmax_batch_size: 2\n') is not None
    with pytest.raises(ArtifactError, match="does not parse as a Triton ModelConfig"):
        check_model_config('name: "m"\nmax_batch: 2\n')  # an unknown field, as a typo would make it


def test_cli_writes_the_repository_and_refuses_in_one_line(thin_onnx, tmp_path):
    engine = fake_engine(tmp_path, thin_onnx, max_batch=4)
    result = CliRunner().invoke(cli, ["triton-repo", str(thin_onnx), str(engine), "-o", str(tmp_path / "r"),
                                      "--ensemble", "--name", "unet", "--name", "unet_trt"])
    assert result.exit_code == 0, result.output
    assert "parsed with Triton's model_config schema" in result.output
    assert "unet_trt: tensorrt_plan, max_batch_size 4" in result.output
    names = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert names == ["README.md", "unet", "unet_ensemble", "unet_postprocess", "unet_preprocess", "unet_trt",
                     "unet_trt_ensemble", "unet_trt_postprocess", "unet_trt_preprocess"]
    pre = json.loads(parse(tmp_path / "r" / "unet_trt_preprocess" / "config.pbtxt")
                     .parameters["preprocessing"].string_value)
    assert (pre["min_hw"], pre["max_hw"]) == ([16, 16], [128, 128])  # the engine profile, checked per image
    bad = CliRunner().invoke(cli, ["triton-repo", str(engine), "-o", str(tmp_path / "x"), "--max-batch", "16"])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and bad.output.startswith("error: --max-batch 16")
