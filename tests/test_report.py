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


def _rounds_report(medians_by_label):
    """A BenchReport of configurations with the given per-round medians (ms), ratios as bench computes them."""
    from deploy_unet.bench import BenchReport, BenchResult, add_ratios

    results = []
    for label, medians in medians_by_label.items():
        samples = [m for m in medians for _ in range(2)]
        results.append(BenchResult(label, label, "fake", "cpu", "fp32", 1, 8, 8, 0, len(samples), 1.0,
                                   LatencyStats.of(samples), 1.0, None, "rss_peak_delta", samples_ms=samples,
                                   arch="unet", rounds=len(medians), round_iters=[2] * len(medians),
                                   round_medians_ms=list(medians)))
    schedule = {"rounds": 3, "iters_per_round": 2, "wait_policy": {"summary": "idle threads wait passively (test)"}}
    return BenchReport(add_ratios(results), {"cpu": "test"}, "2026-01-01T00:00:00", schedule)


def test_overlapping_ranges_say_not_separable_instead_of_ranking(tmp_path):
    from rich.console import Console

    from deploy_unet.report import bench_rows, bench_table, plot_latency

    # b's rounds overlap a's (not separable); c is clearly faster in every round
    report = _rounds_report({"a.onnx": [10.0, 12.0, 11.0], "b.onnx": [11.5, 9.5, 13.0], "c.onnx": [5.0, 6.0, 5.5]})
    rows = {row[0]: row for row in bench_rows(report)}
    assert rows["b.onnx"][15] == "not separable" and rows["b.onnx"][6] == "9.50-13.00"
    assert rows["c.onnx"][15] == "2.00x" and rows["c.onnx"][16] == "2.00-2.00x"
    assert rows["a.onnx"][15] == "1.00x" and rows["a.onnx"][16] == "-"

    md = render_markdown(report)
    assert "| not separable |" in md
    assert "Not separable on this run: a.onnx and b.onnx" in md and "c.onnx and" not in md
    assert "3 interleaved rounds" in md and "Idle threads wait passively (test)." in md

    console = Console(width=200, record=True)
    console.print(bench_table(report))
    text = console.export_text()
    assert "not separable" in text and "Not separable on this run: a.onnx and b.onnx" in text

    data = json.loads(write_json(tmp_path / "r.json", report.to_dict()).read_text())
    b = data["results"][1]
    assert b["round_medians_ms"] == [11.5, 9.5, 13.0] and b["not_separable_from"] == ["a.onnx"]
    assert b["speedup_rounds"] == pytest.approx([10 / 11.5, 12 / 9.5, 11 / 13]) and b["round_range_ms"] == [9.5, 13.0]
    assert plot_latency(report, tmp_path / "l.png").read_bytes()[:8] == PNG_MAGIC


def test_summary_shows_the_speedup_range_or_not_separable(results):
    from deploy_unet.report import summary_rows

    _, validations = results
    report = _rounds_report({"model.pt": [10.0, 12.0, 11.0], "model.onnx": [5.0, 6.0, 5.5],
                             "model.int8.onnx": [11.0, 10.5, 12.5]})
    rows = {row[0]: row for row in summary_rows(validations, report)}
    assert rows["model.onnx"][-1] == "2.00x (2.00-2.00x)"
    assert rows["model.int8.onnx"][-1].startswith("not separable (")
