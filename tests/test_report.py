"""report: JSON / Markdown / PNG files from bench and validation results, written atomically."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers_runners import ConstantRunner

from deploy_unet.bench import LatencyStats, bench_runner
from deploy_unet.report import render_markdown, validation_table, write_json, write_report
from deploy_unet.validate import Sample, validate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def results():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    mask = np.argmax(ref, axis=1)
    samples = [Sample(np.zeros((1, 3, 8, 8), np.float32), mask)]
    good = validate(ConstantRunner([ref], name="model.onnx"), ConstantRunner([ref], name="model.pt"), samples)
    bad = validate(ConstantRunner([ref * 1.2], name="model.int8.onnx"), ConstantRunner([ref], name="model.pt"),
                   samples, precision="int8")
    bench = bench_runner(ConstantRunner([ref]), height=8, width=8, warmup=1, iters=5, phase_clock=None)
    from deploy_unet.bench import BenchReport

    return BenchReport([bench], {"cpu": "test"}, "2026-01-01T00:00:00"), [good, bad]


def test_write_report_writes_every_file_and_they_parse(tmp_path, results):
    bench, validations = results
    written = write_report(tmp_path / "out", bench, validations, title="thin")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "latency.png", "report.json", "report.md", "validation.png"]
    data = json.loads(written["json"].read_text())
    assert [v["candidate"] for v in data["validation"]] == ["model.onnx", "model.int8.onnx"]
    assert data["validation"][1]["passed"] is False
    assert data["bench"]["results"][0]["iters"] == 5
    md = written["markdown"].read_text()
    assert md.startswith("# thin") and "| model.int8.onnx |" in md and "![latency](latency.png)" in md
    assert "**gate failed** for model.int8.onnx: rel_l2" in md
    for name in ("latency.png", "validation.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == PNG_MAGIC


def test_markdown_reports_phases_when_measured(results):
    bench, _ = results
    stats = LatencyStats(1, 1, 1, 1, 1, 1, 1, 0)
    bench.results[0].phases_ms = {"h2d": stats, "compute": stats, "d2h": stats}
    md = render_markdown(bench)
    assert "| configuration | batch | size | H2D | compute | D2H |" in md


def test_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "r.json"
    with pytest.raises(TypeError):
        write_json(target, {"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_terminal_table_has_a_column_per_candidate(results):
    _, validations = results
    table = validation_table(validations)
    assert len(table.columns) == 3  # metric + two candidates
