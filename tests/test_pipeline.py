"""The main job end to end on a thin net: every file in the report folder exists and parses."""

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from deploy_unet.checkpoint import save_checkpoint
from deploy_unet.cli import cli
from deploy_unet.describe import read_model_info
from tests.conftest import thin_net


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline")
    net = thin_net("unet", num_classes=4)
    ckpt = folder / "thin.pt"
    save_checkpoint(ckpt, net, mean=[0.45] * 3, std=[0.15] * 3)
    out = folder / "out"
    result = CliRunner().invoke(cli, [
        "pipeline", "--checkpoint", str(ckpt), "-o", str(out), "--height", "64", "--width", "64",
        "--calib-samples", "8", "--eval-samples", "4", "--iters", "3", "--no-openvino",  # its rows: test_openvino.py
    ])
    return result, out


def test_pipeline_exits_cleanly_and_prints_the_summary(pipeline_run):
    result, _ = pipeline_run
    # A random-init net's int8 masks may disagree with fp32: exit 1 (gate) is a legitimate outcome,
    # but it must be the gate, never a crash.
    assert result.exit_code in (0, 1), result.output
    assert "Traceback" not in result.output
    assert "[1/6] export to ONNX" in result.output and "[6/6] report" in result.output
    if result.exit_code == 1:
        assert "gate(s) failed" in result.output


def test_pipeline_writes_every_artifact_with_the_right_precision(pipeline_run):
    _, out = pipeline_run
    expected = {"unet.onnx": "fp32", "unet.fp16.onnx": "fp16", "unet.int8.onnx": "int8", "unet.int8.ort.onnx": "int8"}
    assert not (out / "unet.int8.ov.onnx").exists()  # --no-openvino: the default targets leave openvino out
    for name, precision in expected.items():
        onnx.checker.check_model(str(out / name))
        info = read_model_info(out / name)
        assert info.precision == precision
        assert info.export_shape == [1, 3, 64, 64]
    ops = {n.op_type for n in onnx.load(str(out / "unet.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_pipeline_report_folder_parses(pipeline_run):
    _, out = pipeline_run
    report = json.loads((out / "report.json").read_text())
    labels = [a["label"] for a in report["pipeline"]["artifacts"]]
    assert labels[0] == "PyTorch (reference)" and len(labels) == 5
    assert len(report["validation"]) == 4
    # The reference is timed too; the TensorRT-placement int8 ONNX is validated but not timed on ORT CPU.
    timed = [r["artifact"] for r in report["bench"]["results"]]
    assert len(timed) == 4 and not any(t.endswith("unet.int8.onnx") for t in timed)
    untimed = [a["file"] for a in report["pipeline"]["artifacts"] if not a["benchmarked"]]
    assert [Path(f).name for f in untimed] == ["unet.int8.onnx"]
    assert "TensorRT engines skipped" in report["pipeline"]["notes"][0]
    assert any(n.startswith("not benchmarked: unet.int8.onnx") for n in report["pipeline"]["notes"])
    markdown = (out / "report.md").read_text()
    for heading in ("## Validation against", "## Latency", "## Where the time went", "![latency](latency.png)"):
        assert heading in markdown
    # Timed in interleaved rounds (--iters 3: 3 rounds of 1), each speedup with its per-round data
    bench = report["bench"]
    assert bench["schedule"]["rounds"] == 3 and "wait_policy" in bench["schedule"]
    assert all(len(r["round_medians_ms"]) == 3 and len(r["speedup_rounds"]) == 3 for r in bench["results"])
    assert "Timed in 3 interleaved rounds" in markdown
    for png in ("latency.png", "validation.png"):
        with Image.open(out / png) as image:
            image.verify()
            assert image.format == "PNG"


def test_pipeline_report_shows_the_gallery(pipeline_run):
    _, out = pipeline_run
    text = (out / "report.md").read_text()
    assert "## What the masks look like" in text
    for name in ("unet.onnx", "unet.fp16.onnx", "unet.int8.onnx", "unet.int8.ort.onnx"):
        assert f"](gallery/{name}.gallery.png)" in text
        with Image.open(out / "gallery" / f"{name}.gallery.png") as picture:
            assert picture.width >= 4 * 64  # image | reference | candidate | disagreement, 64 px samples


def test_pipeline_records_where_the_time_went(pipeline_run):
    result, out = pipeline_run
    stages = json.loads((out / "report.json").read_text())["pipeline"]["stage_seconds"]
    steps = [s["stage"] for s in stages if not s["group"]]
    # The report step writes report.json while it runs, so it is the one step not in it.
    assert steps == ["export", "precision", "TensorRT engines", "validate", "bench"]
    by_group = {}
    for s in stages:
        by_group.setdefault(s["group"], []).append(s["stage"])
    assert "torch.onnx.export (dynamo)" in by_group["export"]
    assert "unet.fp16.onnx: calibration" in by_group["precision"]  # the first job calibrates...
    assert "unet.int8.onnx: calibration (from cache)" in by_group["precision"]  # ...the others reuse it
    assert by_group["validate"][0] == "reference (PyTorch) inference"
    assert {"unet.onnx inference", "unet.int8.onnx inference"} <= set(by_group["validate"])
    assert "unet.int8.onnx" not in by_group["bench"] and "thin.pt" in by_group["bench"]
    # A step's parts never add up to more than the step (they are measured inside it).
    seconds = {s["stage"]: s["seconds"] for s in stages if not s["group"]}
    for group in by_group:
        if group:
            parts = sum(s["seconds"] for s in stages if s["group"] == group)
            assert parts <= seconds[group] + 1e-3, (group, parts, seconds[group])
    assert "time per stage" in result.output


def test_bench_selection_is_explicit_about_the_tensorrt_placement():
    from deploy_unet.pipeline import Artifact, PipelineConfig, _bench_selection

    fp32 = Artifact("ONNX fp32", Path("m.onnx"), "fp32")
    trt = Artifact("ONNX int8 (tensorrt Q/DQ)", Path("m.int8.onnx"), "int8", target="tensorrt")
    ort = Artifact("ONNX int8 (onnxruntime Q/DQ)", Path("m.int8.ort.onnx"), "int8", target="onnxruntime")
    engine = Artifact("TensorRT int8", Path("m.int8.engine"), "int8", target="tensorrt")
    timed, untimed = _bench_selection(PipelineConfig(), [fp32, trt, ort, engine])
    assert untimed == [trt] and timed == [fp32, ort, engine]  # the engine built from it is timed
    timed, untimed = _bench_selection(PipelineConfig(bench_tensorrt_qdq=True), [fp32, trt, ort])
    assert untimed == [] and timed == [fp32, trt, ort]


def test_pipeline_without_checkpoint_for_unshipped_arch(tmp_path):
    result = CliRunner().invoke(cli, ["pipeline", "--checkpoint", str(tmp_path / "missing.pt"), "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.startswith("error: checkpoint") and "does not exist" in result.output


def test_pipeline_bad_precision_list(tmp_path):
    result = CliRunner().invoke(cli, ["pipeline", "--precisions", "fp32,int4", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "choose from fp32, fp16, int8" in result.output


def test_pipeline_threads_follow_the_cpus_this_process_may_use(monkeypatch):
    from deploy_unet import machine
    from deploy_unet.pipeline import PipelineConfig, _threads

    # A container that sees 64 CPUs but may use 2 of them (docker --cpus=2).
    monkeypatch.setattr(machine, "cpu_info", lambda: machine.CpuInfo(logical_cpus=64, available_cpus=64, quota_cpus=2.0))
    threads, why = _threads(PipelineConfig())
    assert threads == 2 and "quota 2 CPUs" in why
    assert _threads(PipelineConfig(threads=3)) == (3, "--threads")


def test_pipeline_openvino_target_without_the_extra_is_one_usage_line(tmp_path, monkeypatch):
    """An explicit --int8-targets openvino where openvino does not import: one error line saying how to install
    it, exit 2, before any work (no output folder). The default then leaves the openvino placement out."""
    import sys

    from deploy_unet.pipeline import PipelineConfig, resolve_int8_targets

    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["pipeline", "-o", str(out), "--int8-targets", "tensorrt,openvino"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --int8-targets openvino needs the openvino extra")
    assert "pip install 'deploy-unet[openvino]'" in result.output and len(result.output.splitlines()) == 1
    assert not out.exists()
    assert resolve_int8_targets(PipelineConfig()).int8_targets == ("tensorrt", "onnxruntime")
    # not asked for int8 at all: the target is not used, so nothing to refuse
    assert resolve_int8_targets(PipelineConfig(precisions=("fp32",), int8_targets=("openvino",))).int8_targets == (
        "openvino",)


def test_pipeline_int8_targets_resolve_with_openvino_on_and_off(tmp_path, monkeypatch):
    from deploy_unet import pipeline
    from deploy_unet.pipeline import PipelineConfig, _fallback_options, resolve_int8_targets

    monkeypatch.setattr(pipeline, "_openvino_version", lambda: "2026.4.1")  # as if the extra were installed
    assert resolve_int8_targets(PipelineConfig()).int8_targets == ("tensorrt", "onnxruntime", "openvino")
    assert resolve_int8_targets(PipelineConfig(openvino="off")).int8_targets == ("tensorrt", "onnxruntime")
    explicit = PipelineConfig(int8_targets=("tensorrt",))
    assert resolve_int8_targets(explicit).int8_targets == ("tensorrt",)  # an explicit list is kept as given
    result = CliRunner().invoke(cli, ["pipeline", "-o", str(tmp_path / "o"), "--int8-targets", "openvino",
                                      "--no-openvino"])
    assert result.exit_code == 2 and "--no-openvino turns off" in result.output and not (tmp_path / "o").exists()
    result = CliRunner().invoke(cli, ["pipeline", "-o", str(tmp_path / "o"), "--int8-targets", "openvino,int4"])
    assert result.exit_code == 2 and "choose from tensorrt, onnxruntime, openvino" in result.output
    # --auto-fallback: the openvino placement's search is gated on OpenVINO, in fp32 (its only higher precision)
    options = _fallback_options(PipelineConfig(fallback_precision="fp16"), "openvino")
    assert options["gate_backend"] == "openvino" and options["fallback_precision"] is None
    assert _fallback_options(PipelineConfig(), "tensorrt")["gate_backend"] == "onnxruntime"
