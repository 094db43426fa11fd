"""What ``predict`` (images) and ``predict_volume`` (volumes) share, below both: the run's report (made by
``finish_report``, written by ``PredictionReport.write``), the per-class pixel fractions of a mask, the record of
a skipped input and the progress bar.

``predict`` dispatches to ``predict_volume``; both import this module and it imports neither, so data flows down.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploy_unet.errors import InputsSkippedError
from deploy_unet.fileio import json_safe, write_text_atomic
from deploy_unet.timing import StageTimes


@dataclass
class PredictionReport:
    artifact: str
    backend: str
    precision: str
    fit: str
    output: str  # logits | mask (what came back from the runner)
    num_classes: int
    class_names: list[str]
    images: list[Any]  # predict.ImagePrediction (predict_volume.VolumePrediction for volumes)
    skipped: list[dict[str, str]]
    seconds: float  # wall time of the whole run (runner opening included)
    loop_seconds: float  # reading to writing, over all images
    stages: StageTimes
    machine: dict[str, str]
    output_dir: str | None = None
    created: str = ""

    @property
    def images_per_second(self) -> float:
        return len(self.images) / self.loop_seconds if self.loop_seconds > 0 else 0.0

    @property
    def masks(self) -> list[np.ndarray]:
        """Each image's mask (kept when ``predict`` ran without an output folder, or with ``keep_masks``)."""
        return [p.mask for p in self.images if p.mask is not None]

    def to_dict(self) -> dict[str, Any]:
        inference = sum(s.seconds for s in self.stages.finished if s.name == "inference")
        return {
            "artifact": self.artifact, "backend": self.backend, "precision": self.precision, "fit": self.fit,
            "output": self.output, "num_classes": self.num_classes, "class_names": self.class_names,
            "images": [p.to_dict() for p in self.images], "skipped": self.skipped,
            "count": len(self.images), "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 3),
            "inference_images_per_second": round(len(self.images) / inference, 3) if inference > 0 else None,
            "stage_seconds": self.stages.to_list(), "machine": self.machine, "output_dir": self.output_dir,
            "created": self.created,
        }

    def raise_for_skipped(self) -> None:
        """InputsSkippedError (exit 1) naming the skipped inputs; nothing when every image was predicted."""
        if self.skipped:
            names = ", ".join(s["source"] for s in self.skipped[:5]) + (" ..." if len(self.skipped) > 5 else "")
            where = f"; the other {len(self.images)} were written to {self.output_dir}" if self.output_dir else ""
            raise InputsSkippedError(f"{len(self.skipped)} of {len(self.skipped) + len(self.images)} inputs could "
                                     f"not be read and were skipped ({names}){where}")

    def write(self, out_dir: str | os.PathLike) -> None:
        """``predictions.json`` in ``out_dir`` (written atomically)."""
        write_text_atomic(Path(out_dir) / "predictions.json", json.dumps(json_safe(self.to_dict()), indent=2) + "\n")


def finish_report(report_class: type[PredictionReport], runner, artifact: str | os.PathLike, *, times: StageTimes,
                  spent: dict[str, float], loop_seconds: float, threads: int | None,
                  out_dir: Path | None, **fields: Any) -> PredictionReport:
    """The run's report: the loop's seconds per stage (``spent``) added to ``times``, the machine, the runner's
    backend and precision, the output folder and the time; ``fields``: what the stage knows (fit, output,
    classes, entries, skipped, ...). ``seconds`` is 0 until the caller sets the whole run's."""
    from deploy_unet.machine import machine_info
    from deploy_unet.runtime.base import backend_label, runner_precision

    for name, seconds in spent.items():
        times.add(name, seconds)
    with times.stage("machine info"):
        machine = machine_info(threads)
    return report_class(
        artifact=os.fspath(artifact), backend=backend_label(runner), precision=runner_precision(runner),
        seconds=0.0, loop_seconds=loop_seconds, stages=times, machine=machine,
        output_dir=os.fspath(out_dir) if out_dir is not None else None,
        created=datetime.datetime.now().astimezone().isoformat(timespec="seconds"), **fields,
    )


def class_fractions(mask: np.ndarray, num_classes: int, class_names: Sequence[str]) -> dict[str, float]:
    counts = np.bincount(np.asarray(mask, dtype=np.int64).ravel(), minlength=num_classes)
    total = max(int(counts.sum()), 1)
    from deploy_unet.visualize import class_label

    return {class_label(i, class_names): round(float(c) / total, 6) for i, c in enumerate(counts)}


def skip_input(skipped: list[dict[str, str]], warn: Callable[[str], None], source: str, reason: str) -> None:
    """Record an input that could not be predicted (the report's ``skipped``) and name it in one warning."""
    skipped.append({"source": source, "error": reason})
    warn(f"skipped {source}: {reason}")


@contextlib.contextmanager
def progress_bar(enabled: bool, description: str, total: int):
    """A transient rich progress bar over ``total`` inputs; yields ``tick(n)`` (a no-op when not ``enabled``)."""
    if not enabled:
        yield lambda _n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
