"""Accuracy-driven mixed precision: keep the fewest groups in higher precision until the gate holds.

The loop follows OpenVINO NNCF's ``quantize_with_accuracy_control`` (rank quantizer groups, revert them
one at a time, undo a step that does not help) on the groups of ``mixed.py``, measured with the same
gate ``quantize`` applies (``gate.GateEvaluator``, fp32 run once):

1. measure the fully converted model (with the user's ``--exclude``); stop if it passes;
2. rank the remaining groups on the samples it gets most wrong (the ``worst`` ones by pixels that
   disagree with fp32): ``revert`` measures each group reverted alone there (NNCF's way; one evaluation
   on those samples per group), ``local`` reads the local error each group's own precision adds from one
   layer-wise comparison (``layerwise.py``; one pass);
3. revert groups in that order, measuring the whole gate after each; a step that does not lower the
   gate's shortfall is undone; stop when the gate holds;
4. try each reverted group back in low precision, newest first, and keep it there when the gate still
   holds, so the result is minimal for its order (a group that helped only together with a later one
   is dropped again).

If the greedy pass ends without meeting the gate, all groups are reverted; if even that fails (fp16
fallback not enough, or the problem is outside the groups) the result says so and ``passed`` is False.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from deploy_unet.errors import ConfigError
from deploy_unet.precision import mixed
from deploy_unet.precision.calibration import Calibration
from deploy_unet.precision.gate import GateEvaluator, GateReport

RANKINGS = ("revert", "local")


@dataclass
class Step:
    number: int
    action: str  # "revert" (kept), "undo" (reverted, made nothing better, back to low precision), "restore"
    node: str
    op: str
    layer: str
    checks: list[str]
    shortfall: float
    passed: bool
    low_precision_convs: int


@dataclass
class Trial:
    """One measurement on the whole evaluation set (for the accuracy-vs-share plot)."""

    kept: int
    low_precision_convs: int
    conv_layers: int
    mask_agreement: float  # percent
    dice_drop: float
    rel_l2: float | None
    passed: bool


@dataclass
class FallbackResult:
    model: onnx.ModelProto
    precision: str  # the low precision: int8 or fp16
    fallback: str  # the higher precision kept layers run in
    kept: dict[str, str]  # node -> why it is in higher precision
    groups: list[mixed.Group]
    initial: GateReport
    final: GateReport
    steps: list[Step] = field(default_factory=list)
    ranking: list[tuple[str, float]] = field(default_factory=list)  # node, score (higher: revert first)
    trials: list[Trial] = field(default_factory=list)
    full_evaluations: int = 0
    subset_evaluations: int = 0
    seconds: float = 0.0
    summary: dict = field(default_factory=dict)  # conv_layers, conv_layers_low_precision
    range_kept: list[str] = field(default_factory=list)  # fp16: nodes kept fp32 for range before the search

    @property
    def passed(self) -> bool:
        return self.final.passed

    @property
    def evaluations(self) -> int:
        return self.full_evaluations + self.subset_evaluations

    def summary_line(self) -> str:
        """``N of M conv layers int8, gate mask_agreement 99.2 >= 99 (was 96.9)``."""
        s = self.summary
        was = {c.metric: c for c in self.initial.checks}
        parts = []
        for c in self.final.checks:
            before = was.get(c.metric)
            digits = 2 if c.metric == "mask_agreement" else 4
            tail = f" (was {before.value:.{digits}f})" if before is not None and before.value != c.value else ""
            parts.append(f"{c.describe()}{tail}")
        verdict = "" if self.passed else " -- gate NOT met"
        return (f"{s['conv_layers_low_precision']} of {s['conv_layers']} conv layers {self.precision}, gate "
                + ", ".join(parts) + verdict)

    def metadata(self) -> dict:
        return {
            "fallback_precision": self.fallback,
            "kept": [{"node": n, "why": why} for n, why in self.kept.items()],
            "conv_layers": self.summary.get("conv_layers"),
            "conv_layers_low_precision": self.summary.get("conv_layers_low_precision"),
            "gate": self.final.gate.to_dict(),
            "gate_before": [c.describe() for c in self.initial.checks],
            "gate_after": [c.describe() for c in self.final.checks],
            "passed": self.passed,
            "evaluations": self.evaluations,
            "seconds": round(self.seconds, 2),
        }


class _Reporter:
    """Step lines to a rich progress display (and/or a callback)."""

    def __init__(self, progress: bool, log: Callable[[str], None] | None, total: int):
        self.log, self.bar, self.task = log, None, None
        if progress:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("auto-fallback", total=total)

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text, highlight=False, markup=False)
        if self.log is not None:
            self.log(text)

    def tick(self, description: str | None = None, total: int | None = None) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=description or self.bar.tasks[0].description,
                            **({"total": total} if total else {}))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def search(
    model: onnx.ModelProto,
    calib: Calibration,
    precision: str,
    target: str,
    evaluator: GateEvaluator,
    *,
    fallback: str = "fp16",
    exclude: dict[str, str] | None = None,
    rank: str = "revert",
    worst: int = 8,
    prune: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    threads: int | None = None,
) -> FallbackResult:
    """Find the fewest groups to keep in ``fallback`` precision so ``evaluator``'s gate holds.

    ``model`` is the fp32 model (nodes named), ``exclude`` the user's own exclusions (node -> why), kept
    whatever the search finds.
    """
    if rank not in RANKINGS:
        raise ConfigError(f"--rank {rank!r} is not valid; choose one of: {', '.join(RANKINGS)}")
    start = time.perf_counter()
    exclude = dict(exclude or {})
    conv_total = sum(n.op_type in mixed.CONV_OPS for n in model.graph.node)
    first_eval = evaluator.evaluations
    with tempfile.TemporaryDirectory(prefix="deploy-unet-fallback-") as tmp:
        cache: dict[frozenset, tuple[GateReport, onnx.ModelProto, dict]] = {}
        trials: list[Trial] = []
        counter = iter(range(10**9))
        subset_evals = 0

        def measure(kept: Collection[str], indices=None, keep_model=False):
            nonlocal subset_evals
            key = frozenset(kept)
            if indices is None and key in cache:
                return cache[key]
            built, _ = mixed.build(model, calib, precision, target, key, fallback)
            path = Path(tmp) / f"trial-{next(counter)}.onnx"
            onnx.save(built, path)
            try:
                report = evaluator.evaluate(path, indices)
            finally:
                path.unlink(missing_ok=True)
            summary = mixed.precision_summary(built, precision, target, key | set(range_kept))
            if indices is not None:
                subset_evals += 1
                return report, None, summary
            trials.append(Trial(len(key), summary["conv_layers_low_precision"], conv_total,
                                100 * report.mask_agreement, report.dice_drop, report.rel_l2, report.passed))
            cache[key] = (report, built if keep_model else None, summary)
            return cache[key]

        range_kept: list[str] = []
        if precision == "fp16":
            _, range_kept = mixed.build(model, calib, precision, target, (), fallback)
        groups = [g for g in mixed.groups_for(model, precision, target)
                  if g.node not in exclude and g.node not in range_kept]
        by_node = {g.node: g for g in groups}
        reporter = _Reporter(progress, log, total=2 * len(groups) + 1)
        try:
            current = set(exclude)
            initial, _, summary = measure(current)
            reporter.tick("measured the full conversion")
            reporter.line(f"{precision} everywhere{' but --exclude' if exclude else ''}: "
                          + ", ".join(c.describe() for c in initial.checks)
                          + (" -- passes, no fallback needed" if initial.passed else ""))
            steps: list[Step] = []
            ranking: list[tuple[str, float]] = []
            needed: dict[str, str] = {}  # node -> what restoring it to low precision did (the prune pass)
            best = initial
            if not initial.passed and groups:
                ranking = _rank(rank, model, calib, precision, target, evaluator, measure, groups, current,
                                initial, worst, reporter, threads, fallback)
                reporter.line(f"ranked {len(groups)} groups by {'reverting each alone' if rank == 'revert' else 'local error'}"
                              f" on the {min(worst, initial.samples)} worst samples; first: "
                              + ", ".join(f"{n} ({by_node[n].layer})" for n, _ in ranking[:3]))
                added: list[str] = []
                for number, (node, _) in enumerate(ranking, start=1):
                    trial = current | {node}
                    report, _, summary = measure(trial)
                    better = report.shortfall < best.shortfall
                    g = by_node[node]
                    steps.append(Step(number, "revert" if better else "undo", node, g.op, g.layer,
                                      [c.describe() for c in report.checks], report.shortfall, report.passed,
                                      summary["conv_layers_low_precision"]))
                    reporter.tick(f"step {number}")
                    reporter.line(f"step {number}: {node} ({g.layer}, {g.op}) -> {fallback}: "
                                  + ", ".join(c.describe() for c in report.checks)
                                  + ("" if better else "  [undone: no better]"))
                    if better:
                        current, best = trial, report
                        added.append(node)
                        if report.passed:
                            break
                if not best.passed:
                    everything = set(exclude) | set(by_node)
                    report, _, summary = measure(everything)
                    reporter.line(f"all {len(groups)} groups in {fallback}: "
                                  + ", ".join(c.describe() for c in report.checks))
                    if report.passed:
                        current, best, added = everything, report, [n for n, _ in ranking]
                if best.passed and prune:
                    for node in reversed(list(added)):
                        trial = current - {node}
                        report, _, summary = measure(trial)
                        g = by_node[node]
                        reporter.tick(f"restore {node}")
                        if not report.passed:
                            needed[node] = (f"back in {precision} the gate fails: "
                                            + ", ".join(c.describe() for c in report.checks if not c.passed))
                        if report.passed:
                            current, best = trial, report
                            steps.append(Step(len(steps) + 1, "restore", node, g.op, g.layer,
                                              [c.describe() for c in report.checks], report.shortfall, True,
                                              summary["conv_layers_low_precision"]))
                            reporter.line(f"back to {precision}: {node} ({g.layer}): the gate still holds "
                                          f"({', '.join(c.describe() for c in report.checks)})")
            final, built, summary = measure(current, keep_model=True)
            if built is None:  # measured before without keeping the model
                built, _ = mixed.build(model, calib, precision, target, frozenset(current), fallback)
        finally:
            reporter.close()
    order = {g.node: i for i, g in enumerate(mixed.groups_for(model, precision, target))}
    kept = {}
    for node in sorted(current, key=lambda n: order.get(n, -1)):
        if node in exclude:
            kept[node] = exclude[node]
        elif node in needed:
            kept[node] = f"auto-fallback: {needed[node]}"
        else:
            step = next((s for s in steps if s.node == node and s.action == "revert"), None)
            kept[node] = (f"auto-fallback step {step.number}: {', '.join(step.checks)}" if step
                          else "auto-fallback: every group reverted")
    for node in range_kept:
        kept.setdefault(node, "fp16 range: activation beyond 65504/4 on the calibration data")
    full = evaluator.evaluations - first_eval - subset_evals
    return FallbackResult(
        model=built, precision=precision, fallback=fallback, kept=kept, groups=groups, initial=initial,
        final=final, steps=steps, ranking=ranking, trials=trials, full_evaluations=full,
        subset_evaluations=subset_evals, seconds=time.perf_counter() - start, summary=summary,
        range_kept=list(range_kept),
    )


def _rank(method, model, calib, precision, target, evaluator, measure, groups, current, initial, worst,
          reporter, threads, fallback) -> list[tuple[str, float]]:
    """Groups ordered by how much reverting each would help, on the ``worst`` samples (ties: graph order)."""
    disagreement = initial.per_sample_disagreement
    k = max(1, min(worst, len(disagreement)))
    subset = np.sort(np.argsort(-disagreement, kind="stable")[:k])
    if method == "revert":
        base, _, _ = measure(current, subset)
        base_bad = int(base.per_sample_disagreement.sum())
        scores = []
        for i, g in enumerate(groups):
            report, _, _ = measure(current | {g.node}, subset)
            gain = base_bad - int(report.per_sample_disagreement.sum())
            rel_gain = (base.rel_l2 - report.rel_l2) if base.rel_l2 is not None and report.rel_l2 is not None else 0.0
            scores.append((g.node, float(gain), rel_gain, i))
            reporter.tick(f"ranking {i + 1}/{len(groups)}")
        scores.sort(key=lambda s: (-s[1], -s[2], s[3]))
        return [(n, gain) for n, gain, _, _ in scores]
    # local: one layer-wise comparison of the fully converted model on the worst samples
    from deploy_unet.precision.layerwise import compare_layers

    built, _ = mixed.build(model, calib, precision, target, frozenset(current), fallback)
    with tempfile.TemporaryDirectory(prefix="deploy-unet-rank-") as tmp:
        fp32, cand = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "cand.onnx")
        onnx.save(model, fp32)
        onnx.save(built, cand)
        report = compare_layers(fp32, [cand], (evaluator.samples.images[i : i + 1] for i in subset),
                                threads=threads)[0]
    noise = {}
    for layer in report.layers:
        if layer.local_rel_l2 is not None:
            noise[layer.node] = max(noise.get(layer.node, 0.0), layer.local_rel_l2)
    for _ in groups:
        reporter.tick("ranking by local error")
    order = sorted(range(len(groups)), key=lambda i: (-noise.get(groups[i].node, 0.0), i))
    return [(groups[i].node, noise.get(groups[i].node, 0.0)) for i in order]
