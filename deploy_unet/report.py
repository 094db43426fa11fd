"""Render bench and validation results: rich tables for the terminal, JSON, Markdown and PNG plots.

Every file is written atomically; plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deploy_unet.bench import BenchReport, BenchResult, not_separable, round_ratios
from deploy_unet.fileio import atomic_path, json_safe, write_text_atomic
from deploy_unet.machine import machine_line
from deploy_unet.validate import GATE_METRICS, ValidationReport


# -- formatting --------------------------------------------------------------------------------------
def _num(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def _gate_cell(report: ValidationReport) -> str:
    failed = report.failed_gates
    if not failed:
        return "pass"
    return "FAIL: " + ", ".join(sorted({g.metric for g in failed}))


def _truth_cell(report: ValidationReport, out_index: int = 0) -> str:
    out = report.outputs[out_index]
    if out.candidate_vs_truth is None or out.reference_vs_truth is None:
        return "n/a"
    return f"{_num(out.candidate_vs_truth.mean_iou)} / {_num(out.reference_vs_truth.mean_iou)}"


def _checkerboard_cell(out) -> str:
    """Checkerboard score (metrics.checkerboard_scores) of the candidate's and the reference's logits."""
    if out.candidate_checkerboard is None or out.reference_checkerboard is None:
        return "n/a"
    return f"{_num(out.candidate_checkerboard, 4)} / {_num(out.reference_checkerboard, 4)}"


def _agreement_cell(out) -> str:
    """Pooled mask agreement; for volumes also the lowest of any one volume (one bad volume stays visible)."""
    volumes = getattr(out, "volume_agreement", None)
    if not volumes:
        return _num(out.mask_agreement, 3)
    return f"{_num(out.mask_agreement, 3)} (lowest volume {_num(min(volumes), 3)})"


VALIDATION_COLUMNS = (
    "candidate", "backend", "precision", "output", "samples", "max abs", "mean abs", "rel L2", "cosine",
    "mask agree %", "mDice vs ref", "mIoU vs ref", "mIoU vs truth (cand / ref)", "checkerboard (cand / ref)",
    "gates",
)


def validation_rows(reports: Sequence[ValidationReport]) -> list[list[str]]:
    rows = []
    for report in reports:
        for i, out in enumerate(report.outputs):
            rows.append([
                os.path.basename(report.candidate), report.candidate_backend, report.precision, out.name,
                str(report.num_samples), _num(out.max_abs, 5), _num(out.mean_abs, 5), _num(out.rel_l2, 5),
                _num(out.cosine, 6), _agreement_cell(out), _num(out.vs_reference.mean_dice, 4),
                _num(out.vs_reference.mean_iou, 4), _truth_cell(report, i), _checkerboard_cell(out),
                _gate_cell(report),
            ])
    return rows


BENCH_COLUMNS = (
    "configuration", "precision", "batch", "size", "mean ms", "median ms", "round medians ms", "p90", "p95", "p99",
    "min", "max", "first ms", "img/s", "peak MiB", "speedup vs first", "speedup range",
)
NOT_SEPARABLE = "not separable"


def _groups(report: BenchReport) -> dict[tuple, list[BenchResult]]:
    """Entries compared with each other (same net, batch and size), the first being their baseline."""
    groups: dict[tuple, list[BenchResult]] = {}
    for r in report.results:
        groups.setdefault((r.arch, r.batch, r.height, r.width, getattr(r, "depth", 0)), []).append(r)
    return groups


def _baselines(report: BenchReport) -> dict[int, BenchResult]:
    return {id(r): members[0] for members in _groups(report).values() for r in members}


def _range(bounds: tuple[float, float] | None, digits: int = 2, unit: str = "") -> str:
    return "-" if bounds is None else f"{_num(bounds[0], digits)}-{_num(bounds[1], digits)}{unit}"


def speedup_cell(r: BenchResult, baseline: BenchResult | None, with_range: bool = False) -> str:
    """``0.51x``, or "not separable" where the rounds disagree on which of it and its baseline is faster."""
    if baseline is not None and baseline is not r and not_separable(r, baseline):
        text = NOT_SEPARABLE
    else:
        text = f"{r.speedup_vs_first:.2f}x"
    if with_range and r.speedup_range is not None and baseline is not r:
        text += f" ({_range(r.speedup_range)}x)"
    return text


def bench_rows(report: BenchReport) -> list[list[str]]:
    rows = []
    base = _baselines(report)
    for r in report.results:
        s = r.latency_ms
        rows.append([
            r.label, r.precision, str(r.batch), r.size, _num(s.mean, 2), _num(s.median, 2), _range(r.round_range_ms),
            _num(s.p90, 2), _num(s.p95, 2), _num(s.p99, 2), _num(s.min, 2), _num(s.max, 2), _num(r.first_run_ms, 1),
            _num(r.throughput_ips, 1), _num(r.peak_memory_mib, 1), speedup_cell(r, base[id(r)]),
            "-" if base[id(r)] is r else _range(r.speedup_range, unit="x"),
        ])
    return rows


def bench_notes(report: BenchReport) -> list[str]:
    """How the table was timed, how to read its ranges, and which entries this run cannot tell apart."""
    schedule = report.schedule or {}
    rounds = schedule.get("rounds") or (report.results[0].rounds if report.results else 1)
    notes = []
    if rounds > 1:
        per = schedule.get("iters_per_round")
        turn = f"{per} timed iterations" if per else f"{_num(schedule.get('duration_per_round_s'), 2)} s"
        notes.append(f"Timed in {rounds} interleaved rounds (each configuration of a batch and size gets a turn of "
                     f"{turn} per round after one untimed call, A B C, A B C, ...). Median: over all iterations; round "
                     "medians: the min-max "
                     "of the per-round medians. Speedup: the first entry's round median over this one's, round by "
                     "round, for the same net, batch and size; the median over the rounds and its min-max "
                     "(\"not separable\" where that min-max includes 1.00x).")
    else:
        notes.append("Timed in one block per configuration (--rounds 1): no ranges, so nothing is checked for "
                     "separability; speedup is the first entry's median over this one's.")
    policy = schedule.get("wait_policy")
    if policy:
        notes.append(policy["summary"][0].upper() + policy["summary"][1:] + ".")
    for members in _groups(report).values():
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                if not_separable(a, b):
                    ratios = round_ratios(a, b)
                    notes.append(f"Not separable on this run: {a.label} and {b.label} at batch {a.batch}, {a.size} "
                                 f"(some rounds found one faster, others the other: {a.label}'s round median over "
                                 f"{b.label}'s ranged {_range((min(ratios), max(ratios)))}x); do not rank them from "
                                 "this run: rerun on a quieter machine or with more --rounds.")
    return notes


def phase_rows(report: BenchReport) -> list[list[str]]:
    """H2D / compute / D2H medians (ms) for configurations timed with CUDA events."""
    return [
        [r.label, str(r.batch), r.size] + [_num(r.phases_ms[p].median, 3) if p in r.phases_ms else "n/a"
                                            for p in ("h2d", "compute", "d2h")]
        for r in report.results if r.phases_ms
    ]


# -- terminal ----------------------------------------------------------------------------------------
def _table(title: str, columns: Sequence[str], rows: list[list[str]]):
    from rich.table import Table

    table = Table(title=title)
    for i, col in enumerate(columns):
        # Numbers never wrap mid-digit; the (long) first column folds instead.
        table.add_column(col, justify="left" if i == 0 else "right", overflow="fold", no_wrap=i > 0)
    from rich.markup import escape

    for row in rows:  # escaped: a label's "[openvino bf16]" is text, not rich markup
        table.add_row(*(escape(cell) for cell in row))
    return table


SUMMARY_COLUMNS = ("artifact", "prec", "rel L2", "agree %", "Dice GT", "gates", "p50 ms", "speedup")


def summary_rows(validations: Sequence[ValidationReport], bench: BenchReport | None) -> list[list[str]]:
    """One row per artifact: the numbers a person compares first, parity and speed side by side."""
    timings = {(os.path.abspath(r.artifact), r.backend): r for r in (bench.results if bench else [])}
    base = _baselines(bench) if bench else {}
    rows = []
    for v in validations:
        out = v.outputs[0]
        backend = v.candidate_backend.split()[0] if v.candidate_backend else ""
        timing = timings.get((os.path.abspath(v.candidate), backend))
        truth = out.candidate_vs_truth.mean_dice if out.candidate_vs_truth else None
        rows.append([
            os.path.basename(v.candidate) + (" [openvino]" if backend == "openvino" else ""), v.precision,
            _num(out.rel_l2), _num(out.mask_agreement, 3), _num(truth, 4),
            "pass" if v.passed else "FAIL: " + ", ".join(g.metric for g in v.failed_gates),
            _num(timing.latency_ms.median, 2) if timing else "-",
            speedup_cell(timing, base[id(timing)], with_range=True) if timing else "-",
        ])
    return rows


def summary_table(validations: Sequence[ValidationReport], bench: BenchReport | None = None):
    return _table("summary (reference: first benchmark entry)", SUMMARY_COLUMNS, summary_rows(validations, bench))


def stage_table(stages):
    """Where a long command's time went (a ``timing.StageTimes``), sub-stages indented under their step."""
    return _table(f"time per stage (total {stages.total:.1f} s)", ("stage", "seconds", "share"), stages.rows())


def validation_table(reports: ValidationReport | Sequence[ValidationReport]):
    """Metrics as rows, one column per candidate output: stays readable in an 80-column terminal."""
    reports = [reports] if isinstance(reports, ValidationReport) else list(reports)
    ref = reports[0].reference if reports else ""
    rows = validation_rows(reports)
    heads = [f"{r[0]}\n{r[1]}, {r[3]}" for r in rows]
    transposed = [[VALIDATION_COLUMNS[i]] + [r[i] for r in rows] for i in (2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14)]
    return _table(f"validation vs {os.path.basename(ref)}", ["metric", *heads], transposed)


def layer_rows(report, top: int = 10) -> list[list[str]]:
    """The ``top`` layers adding the most error (``precision.layerwise.LayerReport.worst``)."""
    fp16 = report.precision == "fp16"
    rows = []
    for x in report.worst(top):
        rows.append([str(x.index), x.layer, x.node, x.op, _num(x.local_sqnr_db, 1), _num(x.local_rel_l2, 4),
                     _num(x.sqnr_db, 1), _num(x.rel_l2, 4),
                     f"{_num(x.max_abs_ref, 1)}" + (f" ({100 * x.fp16_range_share:.2g}% of fp16)" if fp16 else "")])
    return rows


LAYER_COLUMNS = ("depth", "layer", "node", "op", "local SQNR dB", "local rel L2", "SQNR dB", "rel L2", "max |x|")


def layer_table(report, top: int = 10):
    name = os.path.basename(report.candidate)
    title = (f"{name}: the {min(top, len(report.layers))} of {len(report.layers)} layers adding the most error "
             f"(local: this layer's own {report.precision or 'precision'} on fp32 inputs; SQNR/rel L2: accumulated "
             f"up to it; {report.samples} images)")
    return _table(title, LAYER_COLUMNS, layer_rows(report, top))


def gate_table(report: ValidationReport):
    rows = [[g.metric, g.output, _num(g.value, 6), ("<= " if g.direction == "max" else ">= ") + f"{g.threshold:g}",
             {True: "pass", False: "FAIL", None: "n/a (no ground truth)"}[g.passed]] for g in report.gates]
    return _table(f"{report.precision} gates", ("metric", "output", "value", "gate", "result"), rows)


TERMINAL_BENCH_COLUMNS = (0, 2, 3, 5, 6, 7, 12, 13, 14, 15, 16)  # the rest is in JSON / Markdown


def bench_table(report: BenchReport):
    """The latency table and, under it, how it was timed and which entries cannot be told apart."""
    from rich.console import Group
    from rich.text import Text

    cols = [BENCH_COLUMNS[i].replace(" ms", "").replace("speedup vs first", "vs first").replace("speedup range", "range")
            for i in TERMINAL_BENCH_COLUMNS]
    rows = [[row[i] for i in TERMINAL_BENCH_COLUMNS] for row in bench_rows(report)]
    notes = [Text(n, style="yellow" if n.startswith("Not separable") else "dim") for n in bench_notes(report)]
    return Group(_table("latency (ms)", cols, rows), *notes)


# -- files -------------------------------------------------------------------------------------------
def report_dict(bench: BenchReport | None = None, validations: Sequence[ValidationReport] = ()) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if validations:
        data["validation"] = [v.to_dict() for v in validations]
    if bench is not None:
        data["bench"] = json_safe(bench.to_dict())
    return data


def write_json(path: str | os.PathLike, data: Any) -> Path:
    write_text_atomic(path, json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")
    return Path(path)


def _md_table(columns: Sequence[str], rows: list[list[str]]) -> str:
    esc = [[c.replace("|", "\\|") for c in row] for row in rows]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in esc]
    return "\n".join(lines)


GALLERY_SAMPLES = 4  # worst samples per candidate in a gallery


def write_galleries(folder: str | os.PathLike, validations: Sequence[ValidationReport]) -> list[tuple[str, Path]]:
    """Per candidate that kept samples (``gallery=k``): ``NAME.gallery.png`` (worst mask agreement first:
    image | reference mask | candidate mask | disagreement) and, when its checkerboard score exceeds the
    reference's, ``NAME.checkerboard.png`` (the worst map). Returns [(caption, path)] in that order."""
    from deploy_unet.visualize import checkerboard_image, gallery_image, save_png, volume_gallery_image

    written: list[tuple[str, Path]] = []
    for v in validations:
        if not v.gallery:
            continue
        name = os.path.basename(v.candidate)
        if v.candidate_backend.startswith("openvino"):  # the same file on ONNX Runtime keeps its own pictures
            name += ".openvino"
        heading = (f"{name} ({v.candidate_backend}, {v.precision}) vs {os.path.basename(v.reference)} "
                   f"({v.reference_backend}): {len(v.gallery)} lowest mask agreement of {v.num_samples} sample(s)")
        draw = volume_gallery_image if v.gallery[0].reference_mask.ndim == 3 else gallery_image  # volumes: slices
        path = save_png(draw(v.gallery, heading), Path(folder) / f"{name}.gallery.png")
        written.append((f"{name} ({v.precision}): lowest mask agreement first", path))
        if v.checkerboard_worse:
            board = v.checkerboard_map
            path = save_png(checkerboard_image(board, f"{name}: the logit map whose checkerboard score exceeds "
                                               "the reference's most"), Path(folder) / f"{name}.checkerboard.png")
            written.append((f"{name}: checkerboard score above the reference's (worst map: {board.name}, class "
                            f"{board.class_id}, {board.candidate_score:.4f} vs {board.reference_score:.4f})", path))
    return written


def render_markdown(
    bench: BenchReport | None = None,
    validations: Sequence[ValidationReport] = (),
    title: str = "deploy-unet report",
    plots: dict[str, str] | None = None,
    preamble: str = "",
    galleries: Sequence[tuple[str, str]] = (),
) -> str:
    """Markdown with a validation table, gate failures, the galleries, a latency table and links to the plots."""
    parts = [f"# {title}", ""] + ([preamble, ""] if preamble else [])
    if validations:
        parts += [f"## Validation against {validations[0].reference} ({validations[0].reference_backend})", "",
                  _md_table(VALIDATION_COLUMNS, validation_rows(validations)), ""]
        for v in validations:
            for g in v.failed_gates:
                parts.append(f"- **gate failed** for {os.path.basename(v.candidate)}: {g.describe()}")
        gates = {v.precision: {g.metric: g.threshold for g in v.gates} for v in validations}
        parts += [""] + [f"- {p} gates: " + ", ".join(f"{k} {'<=' if GATE_METRICS[k] == 'max' else '>='} {t:g}"
                                                      for k, t in g.items()) for p, g in gates.items()] + [""]
    if galleries:
        parts += ["## What the masks look like", "",
                  "Per candidate, the samples where its masks agree least with the reference's: image | reference "
                  "mask | candidate mask | disagreement (red).", ""]
        for caption, path in galleries:
            parts += [f"**{caption}**", "", f"![{caption}]({path})", ""]
    if bench is not None:
        parts += ["## Latency", "", _md_table(BENCH_COLUMNS, bench_rows(bench)), ""]
        phases = phase_rows(bench)
        if phases:
            parts += ["CUDA-event phase medians (ms):", "",
                      _md_table(("configuration", "batch", "size", "H2D", "compute", "D2H"), phases), ""]
        first = bench.results[0].iters if bench.results else 0
        parts += [f"- {note}" for note in bench_notes(bench)] + [""]
        parts += [f"Peak memory is {bench.results[0].memory_kind if bench.results else 'n/a'} (the largest rise over "
                  f"each configuration's own calls); {first} timed iterations after warmup.", "",
                  "Machine: " + machine_line(bench.machine) + f"; run {bench.created}.", ""]
    for name, path in (plots or {}).items():
        parts += [f"![{name}]({path})", ""]
    return "\n".join(parts)


def write_markdown(path: str | os.PathLike, text: str) -> Path:
    write_text_atomic(path, text)
    return Path(path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return Path(path)


def plot_latency(bench: BenchReport, path: str | os.PathLike) -> Path:
    """Box plot of the per-iteration latencies of every configuration (median line, p5-p95 whiskers) and,
    when timed in rounds, each configuration's median per round: a burst of the machine shows as a bump
    that every configuration of that round shares."""
    plt = _pyplot()
    results: list[BenchResult] = bench.results
    labels = [f"{r.label}\nb{r.batch} {r.size}" for r in results]
    data = [r.samples_ms or [r.latency_ms.median] for r in results]
    in_rounds = any(len(r.round_medians_ms) > 1 for r in results)
    height = 1.0 + 0.6 * max(len(results), 1)
    fig, axes = plt.subplots(2 if in_rounds else 1, 1, figsize=(8, height + (3.2 if in_rounds else 0)), squeeze=False,
                             gridspec_kw={"height_ratios": [height, 3.0], "hspace": 0.25 + 1.2 / (height + 3)}
                             if in_rounds else None)
    ax = axes[0][0]
    try:
        style = dict(whis=(5, 95), showfliers=True, flierprops={"markersize": 2})
        try:
            ax.boxplot(data, orientation="horizontal", **style)  # matplotlib >= 3.10
        except TypeError:
            ax.boxplot(data, vert=False, **style)
        ax.set_yticks(range(1, len(labels) + 1), labels, fontsize=8)
        ax.invert_yaxis()  # first configuration on top, as in the table
        lows = [min(d) for d in data if len(d)]
        log = bool(lows and min(lows) > 0 and max(max(d) for d in data) / min(lows) > 30)
        if log:
            ax.set_xscale("log")  # backends and sizes often differ by orders of magnitude
        ax.set_xlabel("latency per batch (ms)")
        ax.set_title("latency distribution (box: quartiles, whiskers: p5-p95)")
        ax.grid(axis="x", alpha=0.3)
        if in_rounds:
            rounds_ax = axes[1][0]
            for r, label in zip(results, labels):
                if r.round_medians_ms:
                    rounds_ax.plot(range(1, len(r.round_medians_ms) + 1), r.round_medians_ms, marker="o",
                                   markersize=3, label=label.replace("\n", " "))
            if log:
                rounds_ax.set_yscale("log")
            from matplotlib.ticker import MaxNLocator

            rounds_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            rounds_ax.set_xlabel("round")
            rounds_ax.set_ylabel("median per round (ms)")
            rounds_ax.set_title("median per round (a slower spell of the machine lifts every line of its rounds)")
            rounds_ax.grid(alpha=0.3)
            rounds_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_validation(validations: Sequence[ValidationReport], path: str | os.PathLike) -> Path:
    """Per-class Dice of each candidate's masks vs the reference's (and vs truth, hatched, when known)."""
    import numpy as np

    plt = _pyplot()
    num_classes = max(v.num_classes for v in validations)
    series = []
    for v in validations:
        out = v.outputs[0]
        name = f"{os.path.basename(v.candidate)} ({v.precision})"
        series.append((name + " vs ref", out.vs_reference.dice_per_class, None))
        if out.candidate_vs_truth is not None:
            series.append((name + " vs truth", out.candidate_vs_truth.dice_per_class, "//"))
    width = 0.8 / max(len(series), 1)
    x = np.arange(num_classes)
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * num_classes * max(len(series), 1) / 2 + 3) + 3, 4))
    try:
        lowest = 1.0
        for i, (name, dice, hatch) in enumerate(series):
            values = [np.nan if d is None else d for d in dice] + [np.nan] * (num_classes - len(dice))
            ax.bar(x + i * width - 0.4 + width / 2, values, width, label=name, hatch=hatch)
            lowest = min([lowest] + [v for v in values if not np.isnan(v)])
        ax.set_xticks(x, [str(c) for c in x])
        ax.set_xlabel("class")
        ax.set_ylabel("Dice")
        # Zoom to the data: differences between precisions are often in the third decimal.
        floor = max(0.0, np.floor((lowest - 0.005) * 100) / 100)
        ax.set_ylim(floor, 1.0 + (1.0 - floor) * 0.02)
        ax.set_title(f"per-class Dice (absent classes left blank; axis from {floor:.2f})")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.grid(axis="y", alpha=0.3)
        return _save(fig, path)
    finally:
        plt.close(fig)


def write_report(
    out_dir: str | os.PathLike,
    bench: BenchReport | None = None,
    validations: Sequence[ValidationReport] = (),
    title: str = "deploy-unet report",
    extra: dict[str, Any] | None = None,
    preamble: str = "",
) -> dict[str, Path]:
    """``report.json``, ``report.md`` and the PNG plots into ``out_dir``; returns {kind: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    plots: dict[str, str] = {}
    if bench is not None and bench.results:
        written["latency_png"] = plot_latency(bench, out / "latency.png")
        plots["latency"] = "latency.png"
    if validations:
        written["validation_png"] = plot_validation(validations, out / "validation.png")
        plots["per-class Dice"] = "validation.png"
    galleries = write_galleries(out / "gallery", validations)
    if galleries:
        written["gallery"] = out / "gallery"
    data = report_dict(bench, validations)
    if extra:
        data.update(extra)
    if galleries:
        data["gallery"] = [os.fspath(p.relative_to(out)) for _, p in galleries]
    written["json"] = write_json(out / "report.json", data)
    markdown = render_markdown(bench, validations, title, plots, preamble,
                               [(caption, os.fspath(p.relative_to(out))) for caption, p in galleries])
    written["markdown"] = write_markdown(out / "report.md", markdown)
    return written
