"""Build plans (no TensorRT needed): profiles vs the divisor, precision from the graph, flags per version."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from onnx import TensorProto
from trt_fakes import fake_tensorrt, make_onnx

from deploy_unet.cli import cli
from deploy_unet.engine import build as build_mod
from deploy_unet.engine import device as device_mod
from deploy_unet.engine.build import (
    build_engine,
    network_flag_names,
    network_flags,
    parse_shape,
    plan_build,
)
from deploy_unet.engine.device import DeviceReport, GpuInfo
from deploy_unet.engine.manifest import read_manifest
from deploy_unet.errors import ArtifactError, ConfigError, MissingDependencyError, ShapeContractError

PRECISIONS = ("fp32", "fp16", "int8")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_plan_reads_precision_from_graph_and_derives_default_profile(tmp_path, precision):
    onnx_path = make_onnx(tmp_path / f"m.{precision}.onnx", precision, divisor=16, export_shape=(2, 3, 64, 96))
    plan = plan_build(onnx_path)
    assert plan.precision == precision
    assert plan.input_name == "input" and plan.output_names == ["logits"]
    (profile,) = plan.profiles
    assert profile.min == (1, 3, 16, 16)  # one divisor step, batch 1
    assert profile.opt == (2, 3, 64, 96)  # the export shape
    assert profile.max == (2, 3, 128, 192)  # twice the export H and W
    assert plan.engine_path == str(tmp_path / f"m.{precision}.engine")
    assert plan.manifest_path == plan.engine_path + ".json"
    json.dumps(plan.to_dict())  # the --plan-only output is plain JSON
    assert not plan.warnings


def test_precision_evidence_counts_nodes(tmp_path):
    plan = plan_build(make_onnx(tmp_path / "q.onnx", "int8"))
    ev = plan.precision_evidence
    assert (ev.quantize_nodes, ev.dequantize_nodes) == (1, 2)
    plan16 = plan_build(make_onnx(tmp_path / "h.onnx", "fp16"))
    assert plan16.precision_evidence.fp16_initializers == 1 and plan16.precision_evidence.casts_to_fp16 == 1


def test_graph_wins_over_metadata_with_a_warning(tmp_path):
    plan = plan_build(make_onnx(tmp_path / "m.onnx", "fp16", metadata_precision="fp32"))
    assert plan.precision == "fp16"
    assert any("metadata says precision 'fp32'" in w for w in plan.warnings)


def test_asymmetric_uint8_qdq_is_flagged(tmp_path):
    plan = plan_build(make_onnx(tmp_path / "m.onnx", "int8", zero_point_type=TensorProto.UINT8))
    assert plan.precision == "int8"
    assert any("UINT8" in w and "symmetric" in w for w in plan.warnings)


def test_user_shapes_and_derivation_from_opt(tmp_path):
    onnx_path = make_onnx(tmp_path / "m.onnx", divisor=32, export_shape=(1, 3, 64, 64))
    plan = plan_build(onnx_path, opt_shape="4x3x128x160", max_shape="8x3x256x320")
    (profile,) = plan.profiles
    assert profile.min == (1, 3, 32, 32) and profile.opt == (4, 3, 128, 160) and profile.max == (8, 3, 256, 320)


@pytest.mark.parametrize(
    "option, value, expected",
    [
        ("max_shape", "1x3x100x128", "--max-shape 1x3x100x128: height 100 is not divisible by 16"),
        ("min_shape", "1x3x16x8", "--min-shape 1x3x16x8: width 8 is not divisible by 16"),
        ("opt_shape", "1x3x70x64", "--opt-shape 1x3x70x64: height 70 is not divisible by 16"),
    ],
)
def test_divisor_violations_name_the_profile_shape(tmp_path, option, value, expected):
    onnx_path = make_onnx(tmp_path / "m.onnx", divisor=16)
    with pytest.raises(ShapeContractError) as err:
        plan_build(onnx_path, **{option: value})
    message = str(err.value)
    assert message.startswith(expected)
    assert "nearest valid" in message and "--pad" not in message  # an engine profile cannot pad
    assert "\n" not in message


def test_profile_order_channels_and_format_are_checked(tmp_path):
    onnx_path = make_onnx(tmp_path / "m.onnx", divisor=16)
    with pytest.raises(ShapeContractError, match="min <= opt <= max"):
        plan_build(onnx_path, min_shape="1x3x128x128", opt_shape="1x3x64x64")
    with pytest.raises(ShapeContractError, match="1 channels, but the model takes 3"):
        plan_build(onnx_path, opt_shape="1x1x64x64")
    with pytest.raises(ConfigError, match="BxCxHxW"):
        plan_build(onnx_path, max_shape="256x256")
    assert parse_shape("1x3x32x64", "--x") == (1, 3, 32, 64)


def test_fixed_input_dims_are_respected(tmp_path):
    onnx_path = make_onnx(tmp_path / "m.onnx", input_dims=(1, 3, 64, 64), export_shape=(1, 3, 64, 64))
    (profile,) = plan_build(onnx_path).profiles
    assert profile.min == profile.opt == profile.max == (1, 3, 64, 64)
    with pytest.raises(ShapeContractError, match="fixes it to 64"):
        plan_build(onnx_path, max_shape="1x3x128x128")


def test_bad_builder_options(tmp_path):
    onnx_path = make_onnx(tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="--hardware-compat"):
        plan_build(onnx_path, hardware_compat="turing+")
    with pytest.raises(ConfigError, match="0 to 5"):
        plan_build(onnx_path, opt_level=7)
    with pytest.raises(ConfigError, match="overwrite the ONNX"):
        plan_build(onnx_path, output=onnx_path)


# -- network flags by name, per TensorRT major ----------------------------------------------------


def test_network_flags_by_name():
    assert network_flag_names(10) == ["STRONGLY_TYPED"]
    assert network_flag_names(11) == []
    with pytest.raises(ConfigError, match="10.x or 11.x"):
        network_flag_names(8)
    # 10.x: STRONGLY_TYPED is member 1 -> bit 1; a hard-coded integer would break on 11.x where it is 0.
    assert network_flags(fake_tensorrt("10.16.0.72", strongly_typed_value=1)) == 1 << 1
    assert network_flags(fake_tensorrt("10.3.0.30", strongly_typed_value=3)) == 1 << 3
    assert network_flags(fake_tensorrt("11.1.0.10", strongly_typed_value=0)) == 0


# -- build_engine: the one-line refusals, and its call sequence on a recording fake -----------------


def _no_gpu(monkeypatch):
    monkeypatch.setattr(device_mod, "cuda_devices", lambda: DeviceReport(source="torch", error="no driver"))


def _fake_gpu(monkeypatch, trt):
    gpu = GpuInfo(0, "NVIDIA Fake 4090", "8.9", 24000)
    monkeypatch.setattr(build_mod, "require_cuda_device", lambda index=0, library=None: gpu)
    library = device_mod.ENGINE_LIBRARIES["tensorrt-rtx" if trt.__version__.startswith("1.") else "tensorrt"]
    monkeypatch.setattr(build_mod, "import_engine_library", lambda name=None: (library, trt))
    return gpu


def test_build_without_gpu_stops_before_tensorrt(tmp_path, monkeypatch):
    _no_gpu(monkeypatch)
    onnx_path = make_onnx(tmp_path / "m.onnx")
    plan = plan_build(onnx_path)
    with pytest.raises(MissingDependencyError, match="no CUDA device \\(no driver\\)"):
        build_engine(plan)
    assert not Path(plan.engine_path).exists() and not Path(plan.manifest_path).exists()


def test_cli_build_engine_without_gpu_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    _no_gpu(monkeypatch)
    onnx_path = make_onnx(tmp_path / "m.onnx")
    result = CliRunner().invoke(cli, ["build-engine", str(onnx_path), "-o", str(tmp_path / "out.engine")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no CUDA device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_cli_build_engine_here_without_tensorrt(tmp_path):
    """The real environment, no fakes: this machine has neither TensorRT nor a GPU."""
    pytest.importorskip("onnx")
    if device_mod.tensorrt_installed() and device_mod.cuda_devices().devices:
        pytest.skip("TensorRT and a GPU are present: test_tensorrt_gpu.py covers real builds")
    onnx_path = make_onnx(tmp_path / "m.onnx")
    proc = subprocess.run(
        [sys.executable, "-m", "deploy_unet.cli", "build-engine", str(onnx_path)],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr
    assert ("TensorRT" in proc.stderr) or ("CUDA" in proc.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_cli_plan_only_prints_json(tmp_path):
    onnx_path = make_onnx(tmp_path / "m.onnx", "int8")
    result = CliRunner().invoke(cli, ["build-engine", str(onnx_path), "--plan-only", "--max-shape", "1x3x256x256"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["precision"] == "int8"
    assert plan["profiles"][0]["max"] == [1, 3, 256, 256]
    assert plan["network_flags"] == {"10": ["STRONGLY_TYPED"], "11": [], "tensorrt-rtx": ["STRONGLY_TYPED"]}
    assert plan["engine_lib"] == "auto"
    assert not (tmp_path / "m.engine").exists()


@pytest.mark.parametrize("version, flag_value, expected_mask", [("10.16.0.72", 1, 2), ("11.1.0.10", 0, 0)])
def test_build_engine_call_sequence_on_fake(tmp_path, monkeypatch, version, flag_value, expected_mask):
    trt = fake_tensorrt(version, strongly_typed_value=flag_value)
    gpu = _fake_gpu(monkeypatch, trt)
    onnx_path = make_onnx(tmp_path / "m.onnx", "fp16", divisor=16, export_shape=(1, 3, 64, 64))
    plan = plan_build(
        onnx_path, workspace_mib=512, opt_level=5, hardware_compat="ampere+", version_compatible=True, refit=True,
        timing_cache=tmp_path / "cache.bin",
    )
    result = build_engine(plan)
    assert ("create_network", expected_mask) in trt.calls
    assert ("set_shape", "input", (1, 3, 16, 16), (1, 3, 64, 64), (1, 3, 128, 128)) in trt.calls
    assert ("set_memory_pool_limit", "WORKSPACE", 512 << 20) in trt.calls
    build_call = next(c for c in trt.calls if c[0] == "build")
    assert build_call == ("build", ["VERSION_COMPATIBLE", "REFIT"], 5, "AMPERE_PLUS", "DETAILED")
    assert Path(result.engine_path).read_bytes() == b"FAKE-PLAN"
    manifest = read_manifest(result.manifest_path)
    assert manifest.tensorrt_version == version and manifest.gpu == gpu.to_dict()
    assert manifest.precision == "fp16" and manifest.version_compatible and manifest.hardware_compat == "ampere+"
    assert manifest.inputs[0]["name"] == "input" and manifest.inputs[0]["max"] == [1, 3, 128, 128]
    assert manifest.outputs[0]["name"] == "logits"
    assert manifest.model["divisor"] == 16 and manifest.model["mean"] == [0.5] * 3
    assert manifest.builder["network_flags"] == network_flag_names(int(version.split(".")[0]))


def test_timing_cache_merges_with_a_concurrent_writer(tmp_path, monkeypatch):
    """Two builds share one cache file: the second must keep the first one's entries, not clobber them."""
    trt = fake_tensorrt()
    _fake_gpu(monkeypatch, trt)
    cache = tmp_path / "shared.cache"
    cache.write_bytes(b"entry-from-an-earlier-build")
    plan = plan_build(make_onnx(tmp_path / "m.onnx"), timing_cache=cache)
    original_build = trt.Builder.build_serialized_network

    def build_while_another_writes(self, network, config):
        cache.write_bytes(b"entry-from-an-earlier-build\nentry-from-a-parallel-build")  # lands mid-build
        return original_build(self, network, config)

    monkeypatch.setattr(trt.Builder, "build_serialized_network", build_while_another_writes)
    build_engine(plan)
    entries = set(cache.read_bytes().decode().split("\n"))
    assert "entry-from-an-earlier-build" in entries and "entry-from-a-parallel-build" in entries
    assert any(e.startswith("tactic-from-") for e in entries)
    assert not list(tmp_path.glob(".shared.cache.*.tmp"))  # the atomic write left no temp file


def test_parser_errors_are_all_listed_with_their_nodes(tmp_path, monkeypatch):
    errors = [(3, "Resize_3", "Resize", "scales must be constant"), (7, "Conv_7", "Conv", "bad weights")]
    _fake_gpu(monkeypatch, fake_tensorrt(parse_errors=errors))
    plan = plan_build(make_onnx(tmp_path / "m.onnx"))
    with pytest.raises(ArtifactError) as err:
        build_engine(plan)
    message = str(err.value)
    assert "2 error(s)" in message
    assert "node 3 'Resize_3' (Resize): scales must be constant" in message
    assert "node 7 'Conv_7' (Conv): bad weights" in message
    assert not Path(plan.engine_path).exists()


def test_failed_build_reports_the_logged_error_and_writes_nothing(tmp_path, monkeypatch):
    _fake_gpu(monkeypatch, fake_tensorrt(fail_build=True))
    plan = plan_build(make_onnx(tmp_path / "m.onnx"))
    with pytest.raises(ArtifactError, match="out of tactics"):
        build_engine(plan)
    assert not Path(plan.engine_path).exists() and not Path(plan.manifest_path).exists()


# -- plans for real exported nets (slow: two torch exports) -----------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Thin UNet and FCN-32s exported by deploy_unet.export, then made fp16 (onnxconverter-common,
    keep_io_types) and int8 (ONNX Runtime static QDQ, symmetric int8), as the precision stage will."""
    import numpy as np
    import onnx
    import torch
    from onnxconverter_common import float16
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from deploy_unet.export import export_onnx
    from deploy_unet.nets import create_net

    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("nets")
    files = {}
    for arch, cfg, size in (("unet", {"depth": 3, "base_channels": 4}, 64),
                            ("fcn32s", {"width_mult": 0.125, "fc_channels": 16}, 64)):
        fp32 = export_onnx(create_net(arch, **cfg), tmp / f"{arch}.onnx", height=size, width=size, verify=False).path
        fp16 = tmp / f"{arch}.fp16.onnx"
        onnx.save(float16.convert_float_to_float16(onnx.load(fp32), keep_io_types=True), fp16)

        class Reader(CalibrationDataReader):
            def __init__(self, size=size):
                self.data = iter([{"input": np.random.default_rng(i).random((1, 3, size, size), np.float32)}
                                  for i in range(2)])

            def get_next(self):
                return next(self.data, None)

        int8 = tmp / f"{arch}.int8.onnx"
        quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
        files[arch] = {"fp32": fp32, "fp16": fp16, "int8": int8}
    return files


@pytest.mark.slow
@pytest.mark.parametrize("arch, divisor", [("unet", 8), ("fcn32s", 32)])
def test_plans_for_exported_nets_at_each_precision(exported, arch, divisor):
    for precision, path in exported[arch].items():
        plan = plan_build(path)
        assert plan.precision == precision, (arch, precision, plan.precision_evidence)
        assert plan.model.divisor == divisor and plan.input_name == "input"
        (profile,) = plan.profiles
        assert profile.min == (1, 3, divisor, divisor) and profile.opt == (1, 3, 64, 64)
        assert profile.max == (1, 3, 128, 128)
        for shape in (profile.min, profile.opt, profile.max):
            assert shape[2] % divisor == 0 and shape[3] % divisor == 0
        with pytest.raises(ShapeContractError, match=f"not divisible by {divisor}"):
            plan_build(path, max_shape=f"1x3x{128 + divisor // 2}x128")
        if precision == "int8":
            assert plan.precision_evidence.quantize_nodes > 0
            assert not any("zero point" in w for w in plan.warnings)
