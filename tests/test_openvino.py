"""The openvino backend on the shipped UNet's own ONNX files (fp32, fp16, int8 in both Q/DQ placements),
against ONNX Runtime on the same files, and the precision it records and is gated by."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from deploy_unet.errors import ArtifactError, ConfigError, MissingDependencyError
from deploy_unet.runtime import open_runner
from deploy_unet.runtime.base import runner_precision

ov = pytest.importorskip("openvino", reason="the openvino extra is not installed (pip install 'deploy-unet[openvino]')")

SIZE = 64


def _bf16_cpu() -> bool:
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(scope="module")
def unet_files(tmp_path_factory):
    """The shipped UNet exported as the pipeline does, and its fp16 and int8 (both placements) files."""
    from deploy_unet.export import export_onnx
    from deploy_unet.nets.loading import load_net
    from deploy_unet.precision import quantize
    from deploy_unet.shipped import checkpoint

    out = tmp_path_factory.mktemp("ov")
    loaded = load_net(checkpoint=checkpoint("unet"))
    fp32 = out / "unet.onnx"
    export_onnx(loaded.net, fp32, height=SIZE, width=SIZE, mean=loaded.mean, std=loaded.std, arch=loaded.arch,
                net_config=loaded.net_config, checkpoint_sha256=loaded.checkpoint.sha256)
    files = {"fp32": fp32}
    common = dict(calib="synthetic:seed=1", calib_samples=8, eval_source=None, progress=False,
                  calib_cache=out / "calib.json")
    files["fp16"] = quantize(fp32, "fp16", target="tensorrt", **common).path
    files["int8-tensorrt"] = quantize(fp32, "int8", target="tensorrt", **common).path
    files["int8-onnxruntime"] = quantize(fp32, "int8", target="onnxruntime", **common).path
    return files


@pytest.fixture(scope="module")
def images():
    from deploy_unet.data import SyntheticSpec, synthetic_batch

    raw = synthetic_batch(SyntheticSpec(seed=2, height=SIZE, width=SIZE), 0, 2, num_classes=4)[0]
    return raw.astype(np.float32)


def _run(path, backend, x, **options):
    with open_runner(path, backend, **options) as runner:
        (name,) = runner.input_spec
        return runner.infer({name: x})[runner.output_names[0]], runner


def _compare(a, b):
    rel = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    cos = float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))
    masks = float((a.argmax(1) == b.argmax(1)).mean() * 100)
    return rel, cos, masks


# (file, --ov-precision, max rel L2 vs ORT on the same file, min mask agreement %): f32 is the same math as ORT's
# fp32 (fp16 weights widened as ORT does); int8 of the onnxruntime placement runs the same u8/s8 grid as ORT's
# fused int8 convolutions (measured identical); the TensorRT placement runs int8 on OpenVINO but dequantize +
# fp32 on ORT (measured rel L2 0.005 with the Concat rewrite of openvino/graph.py, 0.086 without it).
CASES = [
    ("fp32", "f32", 1e-4, 99.9),
    ("fp16", "f32", 1e-3, 99.9),
    ("int8-onnxruntime", "f32", 0.02, 99.5),
    ("int8-tensorrt", "f32", 0.03, 99.5),
]


@pytest.mark.parametrize("key,precision,max_rel,min_masks", CASES)
def test_openvino_matches_onnxruntime_on_the_shipped_unet(unet_files, images, key, precision, max_rel, min_masks):
    ref, _ = _run(unet_files[key], "onnxruntime", images)
    got, runner = _run(unet_files[key], "openvino", images, ov_precision=precision)
    rel, cos, masks = _compare(got, ref)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert rel <= max_rel, f"{key}: rel L2 {rel:.3g} vs ORT"
    assert masks >= min_masks, f"{key}: masks {masks:.2f}% vs ORT"
    assert runner.inference_precision == "f32"
    expected = "int8" if key.startswith("int8") else key
    assert runner_precision(runner) == expected
    if key.startswith("int8"):  # OpenVINO really runs the convolutions in int8
        low, total = runner.int8_convolutions
        assert total > 0 and low == total
    # the TensorRT placement's 4 skip Concats share one scale per Concat: folded for OpenVINO
    assert runner.concats_rewritten == (4 if key == "int8-tensorrt" else 0)


def test_concat_rewrite_is_exact_on_onnxruntime(unet_files, images, tmp_path):
    """Concat(DQ(a), DQ(b)) with one scale and zero point == DQ(Concat(a, b)): ORT gives the same logits."""
    import onnx
    import onnxruntime as ort

    from deploy_unet.openvino.graph import fold_concat_dequantize

    model = onnx.load(unet_files["int8-tensorrt"])
    assert fold_concat_dequantize(model) == 4
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    concats = [n for n in model.graph.node if n.op_type == "Concat"]
    assert len(concats) == 4 and all(producer[i] == "QuantizeLinear" for n in concats for i in n.input)
    onnx.checker.check_model(model)
    onnx.save(model, tmp_path / "folded.onnx")
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": images})[0]  # noqa: E731
    np.testing.assert_array_equal(run(tmp_path / "folded.onnx"), run(unet_files["int8-tensorrt"]))
    ort_placement = onnx.load(unet_files["int8-onnxruntime"])  # different scales per input: left alone
    assert fold_concat_dequantize(ort_placement) == 0


def test_auto_precision_is_read_back_and_recorded(unet_files, images):
    ref, _ = _run(unet_files["fp32"], "onnxruntime", images)
    got, runner = _run(unet_files["fp32"], "openvino", images)  # auto: OpenVINO's own default
    assert runner.ov_precision == "auto"
    assert runner.inference_precision == ("bf16" if _bf16_cpu() else "f32")
    assert runner_precision(runner) == ("bf16" if _bf16_cpu() else "fp32")
    assert runner.mode == runner_precision(runner)
    rel, _, masks = _compare(got, ref)
    assert rel <= 3e-2 and masks >= 99.0


@pytest.mark.skipif(not _bf16_cpu(), reason="this CPU has no bf16 (AVX512-BF16/AMX): OpenVINO cannot run bf16 here")
def test_forced_bf16_is_gated_as_bf16(unet_files):
    from deploy_unet.validate import DEFAULT_GATES, validate_artifacts

    report = validate_artifacts(unet_files["fp32"], unet_files["fp32"], backend="openvino", ref_backend="onnxruntime",
                                samples=2, progress=False, data=f"synthetic:seed=2,size={SIZE}x{SIZE}",
                                candidate_options={"ov_precision": "bf16"})
    assert report.precision == "bf16"
    assert {g.metric: g.threshold for g in report.gates} == DEFAULT_GATES["bf16"]
    assert report.passed
    # forced f32: the fp32 gates, and they hold
    exact = validate_artifacts(unet_files["fp32"], unet_files["fp32"], backend="openvino", ref_backend="onnxruntime",
                               samples=2, progress=False, data=f"synthetic:seed=2,size={SIZE}x{SIZE}",
                               candidate_options={"ov_precision": "f32"})
    assert exact.precision == "fp32" and exact.passed


def test_bf16_gates_sit_between_fp16_and_int8():
    from deploy_unet.validate import DEFAULT_GATES

    for metric in ("rel_l2", "miou_drop"):
        assert DEFAULT_GATES["fp16"][metric] < DEFAULT_GATES["bf16"][metric] < DEFAULT_GATES["int8"][metric]
    for metric in ("cosine", "mask_agreement"):
        assert DEFAULT_GATES["fp16"][metric] > DEFAULT_GATES["bf16"][metric] > DEFAULT_GATES["int8"][metric]


def test_output_mask_and_batch(unet_files, images):
    with open_runner(unet_files["fp32"], "openvino", ov_precision="f32", output="mask") as runner:
        out = runner.infer({"input": images})
    assert list(out) == ["mask"] and out["mask"].shape == (2, SIZE, SIZE) and out["mask"].dtype == np.uint8


def test_unknown_device_is_one_line(unet_files):
    with pytest.raises(ConfigError, match="OpenVINO device 'TPU' is not available here.*--ov-device"):
        with open_runner(unet_files["fp32"], "openvino", ov_device="TPU"):
            pass


def test_openvino_options_on_another_backend_are_refused(unet_files):
    with pytest.raises(ConfigError, match="--ov-precision applies to the openvino backend only"):
        open_runner(unet_files["fp32"], "onnxruntime", ov_precision="f32")


def test_bad_precision_name_is_refused(unet_files):
    with pytest.raises(ConfigError, match="--ov-precision 'fp64' is not valid"):
        open_runner(unet_files["fp32"], "openvino", ov_precision="fp64")


def test_missing_extra_is_one_line(unet_files, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'deploy-unet\[openvino\]'"):
        with open_runner(unet_files["fp32"], "openvino"):
            pass


def test_bad_ir_is_one_line(tmp_path):
    xml = tmp_path / "broken.xml"
    xml.write_text("<net name='x' version='11'><layers><layer id='0' type='Nope'/></layers></net>")
    with pytest.raises(ArtifactError, match="no broken.bin beside it"):
        open_runner(xml)
    (tmp_path / "broken.bin").write_bytes(b"\0" * 8)
    with pytest.raises(ArtifactError, match="OpenVINO cannot read .*broken.xml"):
        with open_runner(xml):
            pass


def test_cli_validate_runs_the_openvino_backend(unet_files, tmp_path):
    from click.testing import CliRunner

    from deploy_unet.cli import cli
    from deploy_unet.shipped import checkpoint

    result = CliRunner().invoke(cli, ["validate", str(unet_files["int8-onnxruntime"]), "--backend", "openvino",
                                      "-r", str(checkpoint("unet")), "-n", "2",
                                      "--data", f"synthetic:seed=2,size={SIZE}x{SIZE}"])
    assert result.exit_code == 0, result.output
    assert "openvino" in result.output and "passed all int8 gates" in result.output


def test_bench_times_several_backends_in_the_same_rounds(thin_unet_onnx):
    from deploy_unet.bench import bench

    _, thin_unet_onnx = thin_unet_onnx
    report = bench([thin_unet_onnx], backend="onnxruntime,openvino", iters=4, rounds=2, warmup=1, sizes=[(32, 32)],
                   batches=[1, 2], progress=False, runner_options={"ov_precision": "f32"})
    labels = [r.label for r in report.results]
    name = thin_unet_onnx.name
    assert labels == [f"{name} [onnxruntime fp32]"] * 2 + [f"{name} [openvino fp32]"] * 2
    assert [r.backend for r in report.results] == ["onnxruntime"] * 2 + ["openvino"] * 2
    for r in report.results:  # every configuration had its turn in each of the same rounds
        assert r.rounds == 2 and len(r.round_medians_ms) == 2 and r.iters == 4
    ov_b1 = next(r for r in report.results if r.backend == "openvino" and r.batch == 1)
    assert len(ov_b1.speedup_rounds) == 2  # against ORT at the same batch, round by round


def test_bench_backend_list_errors(thin_unet_onnx):
    from deploy_unet.bench import bench

    _, thin_unet_onnx = thin_unet_onnx
    with pytest.raises(ConfigError, match="names a backend twice"):
        bench([thin_unet_onnx], backend="openvino,openvino", iters=1, progress=False)
    with pytest.raises(ConfigError, match="cannot run a .onnx file|not known"):
        bench([thin_unet_onnx], backend="onnxruntime,tensorrt", iters=1, progress=False)


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """`deploy-unet pipeline` on a thin UNet with its defaults: openvino imports, so its rows and the openvino
    int8 placement are made."""
    from click.testing import CliRunner

    from deploy_unet.checkpoint import save_checkpoint
    from deploy_unet.cli import cli
    from tests.conftest import thin_net

    tmp_path = tmp_path_factory.mktemp("pipeline-ov")
    ckpt = tmp_path / "thin.pt"
    save_checkpoint(ckpt, thin_net("unet", num_classes=4), mean=[0.45] * 3, std=[0.15] * 3)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["pipeline", "--checkpoint", str(ckpt), "-o", str(out), "--height", "64",
                                      "--width", "64", "--calib-samples", "8", "--eval-samples", "4", "--iters", "3",
                                      "--precisions", "fp32,int8"])
    return result, out


def test_pipeline_adds_openvino_rows_with_gates_and_speedups(pipeline_run):
    import json

    result, out = pipeline_run
    assert result.exit_code in (0, 1), result.output  # a random-init net's int8 may fail a gate, never crash
    report = json.loads((out / "report.json").read_text())
    labels = [a["label"] for a in report["pipeline"]["artifacts"]]
    assert labels[-4:] == ["OpenVINO fp32", "OpenVINO int8 (tensorrt Q/DQ)", "OpenVINO int8 (onnxruntime Q/DQ)",
                           "OpenVINO int8 (openvino Q/DQ)"]
    backends = [v["candidate_backend"].split()[0] for v in report["validation"]]
    assert backends.count("openvino") == 4 and backends.count("onnxruntime") == 3
    timed = [(Path(r["artifact"]).name, r["backend"]) for r in report["bench"]["results"]]
    # every OpenVINO path is timed, the TensorRT-placement file too (OpenVINO runs it in int8); ORT skips that one
    assert {("unet.onnx", "openvino"), ("unet.int8.onnx", "openvino"), ("unet.int8.ort.onnx", "openvino")} <= set(timed)
    assert ("unet.int8.onnx", "onnxruntime") not in timed
    assert all(r["rounds"] == 3 for r in report["bench"]["results"])  # one run, the same interleaved rounds
    markdown = (out / "report.md").read_text()
    assert "OpenVINO" in markdown and "[openvino" in markdown
    if any(v["passed"] for v in report["validation"]):
        assert "fastest CPU path on this machine" in markdown


def test_pipeline_makes_the_openvino_int8_placement_and_gates_it_on_openvino(pipeline_run):
    """The default pipeline (openvino installed) makes unet.int8.ov.onnx from the same calibration as the other
    int8 files, validates it against PyTorch and times it on OpenVINO only, under its own label, with its gate."""
    import json

    from deploy_unet.describe import read_model_info
    from deploy_unet.validate import DEFAULT_GATES

    result, out = pipeline_run
    path = out / "unet.int8.ov.onnx"
    assert path.is_file() and "int8 (openvino)" in result.output  # the precision step names it
    info = read_model_info(path)
    assert info.precision == "int8" and info.extra["quant_target"] == "openvino"
    assert info.extra["calib_source"] == read_model_info(out / "unet.int8.onnx").extra["calib_source"]
    assert info.extra["calib_fingerprint"] == read_model_info(out / "unet.int8.ort.onnx").extra["calib_fingerprint"]
    report = json.loads((out / "report.json").read_text())
    (entry,) = [a for a in report["pipeline"]["artifacts"] if Path(a["file"]).name == path.name]
    assert entry["label"] == "OpenVINO int8 (openvino Q/DQ)" and entry["target"] == "openvino"
    assert entry["backend"] == "openvino" and entry["benchmarked"]
    (check,) = [v for v in report["validation"] if Path(v["candidate"]).name == path.name]
    assert check["candidate_backend"].startswith("openvino int8") and check["precision"] == "int8"
    # the int8 gates, measured on what OpenVINO ran; the verdict is theirs
    gates = {g["metric"]: g for g in check["gates"]}
    assert {m: g["threshold"] for m, g in gates.items()} == DEFAULT_GATES["int8"]
    assert check["passed"] == all(g["passed"] for g in gates.values())
    if not check["passed"]:
        assert result.exit_code == 1 and "unet.int8.ov.onnx" in result.output
    timed = [(Path(r["artifact"]).name, r["backend"]) for r in report["bench"]["results"]]
    assert (path.name, "openvino") in timed and (path.name, "onnxruntime") not in timed
    assert any(n.startswith("the openvino-placement int8 ONNX") for n in report["pipeline"]["notes"])
    row = next(line for line in result.output.splitlines() if "unet.int8.ov.onnx [openvino]" in line)
    assert ("pass" if check["passed"] else "FAIL") in row  # the console table shows its gate result
    markdown = (out / "report.md").read_text()
    assert "| OpenVINO int8 (openvino Q/DQ) | `unet.int8.ov.onnx` |" in markdown
    assert "](gallery/unet.int8.ov.onnx.openvino.gallery.png)" in markdown
    assert (out / "gallery" / "unet.int8.ov.onnx.openvino.gallery.png").is_file()


def test_pipeline_openvino_placement_is_nncf_pattern(pipeline_run):
    """The pipeline's file follows the same rules `quantize --target openvino` is held to, against the pipeline's
    own fp32 export and tensorrt placement (one calibration cache)."""
    from tests.test_precision import assert_openvino_placement

    _, out = pipeline_run
    assert_openvino_placement(out / "unet.int8.ov.onnx", out / "unet.onnx", out / "unet.int8.onnx")


def test_fastest_cpu_path_ranks_by_round_ratios_and_only_paths_that_passed():
    from types import SimpleNamespace as NS

    from deploy_unet.pipeline import fastest_cpu_path

    def result(name, backend, precision, rounds):
        return NS(artifact=f"/x/{name}", backend=backend, precision=precision, round_medians_ms=rounds,
                  latency_ms=NS(median=float(np.median(rounds))))

    def check(name, backend, passed=True):
        return NS(candidate=f"/x/{name}", candidate_backend=backend, passed=passed)

    results = [result("m.pt", "torch", "fp32", [50, 50, 50]),
               result("m.onnx", "onnxruntime", "fp32", [20, 40, 20]),
               result("m.int8.ort.onnx", "onnxruntime", "int8", [10, 20, 10]),
               result("m.onnx", "openvino", "bf16", [5, 10, 5]),
               result("m.int8.onnx", "openvino", "int8", [2, 4, 2])]  # fastest, but failed its gate
    checks = [check("m.onnx", "onnxruntime"), check("m.int8.ort.onnx", "onnxruntime int8"),
              check("m.onnx", "openvino bf16"), check("m.int8.onnx", "openvino int8+bf16", passed=False)]
    line = fastest_cpu_path(NS(results=results), checks, [])
    assert line.startswith("fastest CPU path on this machine (gates passed): m.onnx on openvino (bf16), 5.00 ms")
    assert "4.00x (rounds 4.00-4.00x) faster than ONNX Runtime fp32" in line
    assert "2.00x (rounds 2.00-2.00x) faster than ONNX Runtime's fastest, m.int8.ort.onnx on onnxruntime" in line
    assert fastest_cpu_path(NS(results=results), [], []) == ""  # nothing passed: no claim


def test_ir_round_trip_with_manifest(unet_files, images, tmp_path):
    import json

    from deploy_unet.describe import read_model_info
    from deploy_unet.fileio import sha256_file
    from deploy_unet.openvino.convert import convert_openvino

    src = unet_files["int8-tensorrt"]
    result = convert_openvino(src, tmp_path / "ir" / "unet.int8.xml")
    assert sorted(p.name for p in result.xml.parent.iterdir()) == [
        "unet.int8.bin", "unet.int8.openvino.json", "unet.int8.xml"]  # no staging folder left
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["source_onnx_sha256"] == sha256_file(src) and manifest["bin_sha256"] == sha256_file(result.bin)
    assert manifest["openvino_version"] == ov.__version__.split("-")[0] and manifest["device"] == "CPU"
    assert manifest["concats_rewritten"] == 4 and manifest["compress_to_fp16"] is False
    info = read_model_info(src)
    from_onnx, onnx_runner = _run(src, "openvino", images, ov_precision="f32")
    from_ir, ir_runner = _run(result.xml, None, images, ov_precision="f32")  # .xml: openvino by default
    assert ir_runner.backend == "openvino" and ir_runner.info.divisor == info.divisor
    assert ir_runner.info.mean == info.mean and ir_runner.info.precision == "int8" == runner_precision(ir_runner)
    assert ir_runner.concats_rewritten == 4
    np.testing.assert_allclose(from_ir, from_onnx, rtol=0, atol=1e-4)
    # the shape contract comes from the carried-over metadata: a size off the divisor is refused as for the ONNX
    from deploy_unet.errors import ShapeContractError

    with open_runner(result.xml) as runner, pytest.raises(ShapeContractError):
        runner.infer({"input": images[:, :, :-3, :-3]})
    # a .bin changed after conversion is refused by its manifest
    data = bytearray(result.bin.read_bytes())
    data[-1] ^= 0xFF
    result.bin.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match its manifest"):
        open_runner(result.xml)


def test_ir_compressed_to_fp16_is_gated_as_fp16(unet_files, tmp_path):
    from deploy_unet.openvino.convert import convert_openvino

    result = convert_openvino(unet_files["fp32"], tmp_path / "w16.xml", compress_fp16=True)
    assert result.bin.stat().st_size < 0.6 * unet_files["fp32"].stat().st_size
    with open_runner(result.xml, ov_precision="f32") as runner:
        assert runner_precision(runner) == "fp16"


def test_convert_refusals_leave_nothing(tmp_path, unet_files):
    from click.testing import CliRunner

    from deploy_unet.cli import cli

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    result = CliRunner().invoke(cli, ["convert-openvino", str(bad), "-o", str(tmp_path / "out" / "m.xml")])
    assert result.exit_code == 2 and result.output.startswith("error:") and len(result.output.splitlines()) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    result = CliRunner().invoke(cli, ["convert-openvino", str(unet_files["fp32"]), "-o", str(tmp_path / "m.bin")])
    assert result.exit_code == 2 and "must end in .xml" in result.output


def test_doctor_reports_openvino_devices_and_int8_bf16_flags():
    from deploy_unet.doctor import format_report, run_doctor

    report = run_doctor()
    assert report.openvino["version"] and "CPU" in report.openvino["devices"]
    assert set(report.openvino["isa"]) >= {"AVX512-VNNI", "AVX512-BF16", "AMX-INT8", "AMX-BF16"}
    assert report.backend("openvino").usable
    text = format_report(report)
    assert "OpenVINO" in text and "int8/bf16 ISA" in text


def test_triton_repo_openvino_backend_configs_parse_with_tritons_schema(unet_files, tmp_path):
    """triton-repo --backend openvino: Triton's OpenVINO backend, model.xml + model.bin converted here."""
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient (the serve extra)")
    from click.testing import CliRunner
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from deploy_unet.cli import cli

    out = tmp_path / "repo"
    result = CliRunner().invoke(cli, ["triton-repo", str(unet_files["int8-tensorrt"]), "-o", str(out),
                                      "--backend", "openvino", "--name", "unet_ov", "--ensemble"])
    assert result.exit_code == 0, result.output
    assert "parsed with Triton's model_config schema" in result.output
    config = text_format.Parse((out / "unet_ov" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.backend == "openvino" and not config.platform
    assert {k: v.string_value for k, v in config.parameters.items()} == {
        "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "TARGET_DEVICE": "CPU"}
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_CPU"
    assert config.max_batch_size == 8 and list(config.input[0].dims) == [3, -1, -1]
    version = out / "unet_ov" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["model.bin", "model.openvino.json", "model.xml"]
    with open_runner(version / "model.xml") as runner:  # the IR Triton loads runs here as the ONNX did
        assert runner.concats_rewritten == 4 and runner_precision(runner) == "int8"
    assert (out / "unet_ov_ensemble" / "config.pbtxt").is_file()
    refused = CliRunner().invoke(cli, ["triton-repo", str(unet_files["fp32"]), "-o", str(tmp_path / "r2"),
                                       "--backend", "openvino", "--accelerator", "tensorrt"])
    assert refused.exit_code == 2 and "--accelerator applies to ONNX Runtime's backend" in refused.output


@pytest.mark.serve
def test_serve_runs_the_openvino_runner(thin_unet_onnx):
    """`deploy-unet serve --backend openvino` on the real bundled Triton: answers equal the in-process runner."""
    from serving_helpers import ServeProcess, require_serve_extra

    require_serve_extra()
    import tritonclient.http as httpclient

    _, path = thin_unet_onnx
    proc = ServeProcess.ready(path, "--backend", "openvino", "--ov-precision", "f32", "--threads", "1",
                              "--instances", "1", "--max-size", "64x64", "--model-name", "thin_ov", model="thin_ov")
    try:
        x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
        with open_runner(path, "openvino", ov_precision="f32", threads=1) as runner:
            expected = runner.infer({"input": x})["logits"]
        client = httpclient.InferenceServerClient(proc.http_url)
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        served = client.infer("thin_ov", [inp]).as_numpy("logits")
        np.testing.assert_allclose(served, expected, rtol=0, atol=1e-4 * max(1.0, float(np.abs(expected).max())))
        assert "openvino" in proc.stderr()
    finally:
        proc.cleanup()


def test_quantize_gate_and_auto_fallback_on_openvino(unet_files, tmp_path):
    from deploy_unet.data import load_samples
    from deploy_unet.describe import read_model_info
    from deploy_unet.precision import gate, quantize

    info = read_model_info(unet_files["fp32"])
    samples = load_samples(f"synthetic:seed=2,size={SIZE}x{SIZE}", info, 4)
    spec = gate.GateSpec(0.05, min_mask_agreement=95.0, max_rel_l2=0.15)
    on_ort = gate.evaluate(unet_files["fp32"], unet_files["int8-tensorrt"], samples, info.num_classes, spec=spec)
    on_ov = gate.evaluate(unet_files["fp32"], unet_files["int8-tensorrt"], samples, info.num_classes, spec=spec,
                          backend="openvino")
    assert on_ov.passed and on_ort.passed
    assert abs(on_ov.mask_agreement - on_ort.mask_agreement) < 1.0 and on_ov.rel_l2 != on_ort.rel_l2  # it ran OV
    result = quantize(unet_files["fp32"], "int8", target="tensorrt", calib="synthetic:seed=1", calib_samples=8,
                      calib_cache=tmp_path / "c.json", eval_source=f"synthetic:seed=3,size={SIZE}x{SIZE}",
                      eval_samples=4, auto_fallback=True, min_mask_agreement=95.0, max_rel_l2=0.15,
                      output=tmp_path / "fb.onnx", progress=False, gate_backend="openvino")
    assert result.gate is not None and result.gate.passed and result.fallback is not None


def test_openvino_int8_placement_runs_in_int8_within_the_int8_gate(unet_files, images):
    """quantize --target openvino (NNCF's pattern) of the shipped UNet, from the same calibration as the other
    placements: OpenVINO runs every convolution in int8, folds its 4 shared-scale Concats (uint8 here), and the
    logits stay within the int8 gate against fp32, as close as the tensorrt placement's."""
    from deploy_unet.precision import quantize
    from deploy_unet.validate import DEFAULT_GATES

    fp32 = unet_files["fp32"]
    path = quantize(fp32, "int8", target="openvino", calib="synthetic:seed=1", calib_samples=8, eval_source=None,
                    progress=False, calib_cache=fp32.parent / "calib.json").path
    assert path.name == "unet.int8.ov.onnx"
    ref, _ = _run(fp32, "onnxruntime", images)
    got, runner = _run(path, "openvino", images)
    trt, _ = _run(unet_files["int8-tensorrt"], "openvino", images)
    rel, cos, masks = _compare(got, ref)
    gates = DEFAULT_GATES["int8"]
    assert runner_precision(runner) == "int8"
    low, total = runner.int8_convolutions
    assert total > 0 and low == total
    assert runner.concats_rewritten == 4
    assert rel <= gates["rel_l2"] and cos >= gates["cosine"] and masks >= gates["mask_agreement"], (rel, cos, masks)
    trt_rel = _compare(trt, ref)[0]
    assert rel <= 1.5 * trt_rel, f"openvino placement rel L2 {rel:.4f} vs tensorrt placement's {trt_rel:.4f}"
    on_ort, _ = _run(path, "onnxruntime", images)  # a plain Q/DQ file: ORT runs it too, to the same result
    assert _compare(on_ort, ref)[0] <= gates["rel_l2"]
