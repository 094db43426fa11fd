"""The main job in one call: checkpoint -> ONNX fp32/fp16/int8 -> (TensorRT engines) -> validate -> bench -> report.

Each step calls the stage's own library function; this module only orders them, names the files and
collects what they return into one report folder. Gates are evaluated for every artifact first and
raised at the very end, so one failing artifact does not hide the others' numbers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy_unet.errors import ArtifactError, GateFailedError

REPO_MODELS = Path(__file__).resolve().parent.parent / "models"
REFERENCE_CHECKPOINTS = {"unet": "unet_synthetic.pt", "unetpp": "unetpp_synthetic.pt", "fcn8s": "fcn8s_synthetic.pt"}
# Calibration and evaluation use different synthetic seeds: a quantizer is never judged on its own data.
CALIB_SOURCE = "synthetic:seed=1"
EVAL_SOURCE = "synthetic:seed=2"


@dataclass
class PipelineConfig:
    output_dir: Path = Path("deploy-out")
    arch: str = "unet"
    checkpoint: Path | None = None
    height: int | None = None  # None: the checkpoint card's training size, else 256
    width: int | None = None
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    int8_targets: tuple[str, ...] = ("tensorrt", "onnxruntime")
    calib_samples: int = 32
    eval_samples: int = 16
    bench_iters: int = 20
    bench_warmup: int = 3
    bench_batch: int = 1
    engines: str = "auto"  # auto | off
    threads: int | None = None


@dataclass
class Artifact:
    label: str
    path: Path
    precision: str
    backend: str | None = None
    note: str = ""


@dataclass
class PipelineResult:
    output_dir: Path
    artifacts: list[Artifact] = field(default_factory=list)
    report_files: dict[str, Path] = field(default_factory=dict)
    step_seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failed_gates: list[str] = field(default_factory=list)
    validations: list = field(default_factory=list)  # validate.ValidationReport per candidate
    bench: Any = None  # bench.BenchReport


def default_checkpoint(arch: str) -> Path:
    name = REFERENCE_CHECKPOINTS.get(arch)
    path = REPO_MODELS / name if name else None
    if path is None or not path.is_file():
        shipped = ", ".join(sorted(REFERENCE_CHECKPOINTS))
        raise ArtifactError(
            f"no shipped reference checkpoint for --arch {arch} (shipped: {shipped}, in {REPO_MODELS}); "
            "pass --checkpoint FILE"
        )
    return path


def run_pipeline(config: PipelineConfig, log: Callable[[str], None] = print) -> PipelineResult:
    from deploy_unet.bench import bench
    from deploy_unet.export import export_onnx
    from deploy_unet.nets.loading import load_net
    from deploy_unet.precision import quantize
    from deploy_unet.report import write_report
    from deploy_unet.validate import validate_artifacts

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = PipelineResult(out)
    checkpoint = Path(config.checkpoint) if config.checkpoint else default_checkpoint(config.arch)
    steps = 5 + (config.engines != "off")
    step = iter(range(1, steps + 1))

    def timed(name: str):
        log(f"[{next(step)}/{steps}] {name}")
        return _Timer(result.step_seconds, name)

    loaded = load_net(checkpoint=checkpoint)
    stem = loaded.arch
    height, width = _size(config, loaded)
    reference = Artifact("PyTorch (reference)", checkpoint, "fp32", "torch")

    with timed("export to ONNX"):
        fp32 = out / f"{stem}.onnx"
        export_onnx(loaded.net, fp32, height=height, width=width, mean=loaded.mean, std=loaded.std,
                    arch=loaded.arch, net_config=loaded.net_config, checkpoint_sha256=loaded.checkpoint.sha256)
        onnx_artifacts = [Artifact("ONNX fp32", fp32, "fp32")]

    with timed("precision: " + ", ".join(_precision_labels(config))):
        cache = out / f"{stem}.calib.json"  # one calibration pass shared by fp16 and both int8 targets
        for precision, target in _quantize_jobs(config):
            q = quantize(fp32, precision, target=target, calib=CALIB_SOURCE, calib_samples=config.calib_samples,
                         calib_cache=cache, eval_source=None, progress=False, threads=config.threads)
            label = f"ONNX {precision}" + (f" ({target} Q/DQ)" if precision == "int8" else "")
            note = f"{len(q.kept_fp32)} node(s) kept fp32 (fp16 range)" if q.kept_fp32 else ""
            onnx_artifacts.append(Artifact(label, q.path, precision, note=note))

    engines: list[Artifact] = []
    if config.engines != "off":
        with timed("TensorRT engines"):
            engines, note = _build_engines(onnx_artifacts, out, log)
            result.notes.append(note)
            log(f"      {note}")

    candidates = onnx_artifacts + engines
    validations = []
    with timed(f"validate every artifact against PyTorch ({config.eval_samples} held-out samples)"):
        for artifact in candidates:
            report = validate_artifacts(artifact.path, checkpoint, data=EVAL_SOURCE, samples=config.eval_samples,
                                        backend=artifact.backend, progress=False)
            validations.append(report)
            result.failed_gates += [f"{artifact.path.name}: {g.describe()}" for g in report.failed_gates]

    with timed(f"benchmark (batch {config.bench_batch}, {height}x{width}, {config.bench_iters} iterations)"):
        bench_report = bench([reference.path] + [a.path for a in candidates], batches=(config.bench_batch,),
                             sizes=((height, width),), warmup=config.bench_warmup, iters=config.bench_iters,
                             threads=config.threads, progress=False)

    with timed("report"):
        result.artifacts = [reference] + candidates
        result.validations, result.bench = validations, bench_report
        extra = {
            "pipeline": {
                "checkpoint": os.fspath(checkpoint),
                "checkpoint_sha256": loaded.checkpoint.sha256,
                "size": [height, width],
                "calibration_source": CALIB_SOURCE,
                "evaluation_source": EVAL_SOURCE,
                "artifacts": [_artifact_entry(a) for a in result.artifacts],
                "notes": result.notes,
                "step_seconds": result.step_seconds,
            }
        }
        preamble = _preamble(result, checkpoint, height, width)
        result.report_files = write_report(out, bench=bench_report, validations=validations,
                                           title=f"deploy-unet pipeline: {stem}", extra=extra, preamble=preamble)
    return result


def raise_for_gates(result: PipelineResult) -> None:
    if result.failed_gates:
        raise GateFailedError(f"{len(result.failed_gates)} gate(s) failed: " + "; ".join(result.failed_gates))


class _Timer:
    def __init__(self, store: dict[str, float], name: str):
        self.store, self.name = store, name

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.store[self.name] = round(time.perf_counter() - self.start, 2)


def _size(config: PipelineConfig, loaded) -> tuple[int, int]:
    shape = (loaded.checkpoint.extra or {}).get("recommended_export_shape") if loaded.checkpoint else None
    default = tuple(shape[-2:]) if shape else (256, 256)
    return config.height or default[0], config.width or default[1]


def _quantize_jobs(config: PipelineConfig) -> list[tuple[str, str]]:
    jobs = []
    if "fp16" in config.precisions:
        jobs.append(("fp16", "tensorrt"))
    if "int8" in config.precisions:
        jobs += [("int8", target) for target in config.int8_targets]
    return jobs


def _precision_labels(config: PipelineConfig) -> list[str]:
    return [p if p == "fp16" else f"{p} ({t})" for p, t in _quantize_jobs(config)] or ["none"]


def _build_engines(onnx_artifacts: list[Artifact], out: Path, log: Callable[[str], None]) -> tuple[list[Artifact], str]:
    """One strongly typed engine per ONNX precision where TensorRT and a GPU exist; else say why not."""
    from deploy_unet.engine.device import cuda_devices, no_device_reason, tensorrt_installed

    devices = cuda_devices()
    if not devices.devices:
        return [], f"TensorRT engines skipped: {no_device_reason(devices)}"
    if not tensorrt_installed():
        return [], "TensorRT engines skipped: TensorRT is not installed (pip install 'deploy-unet[tensorrt]')"
    from deploy_unet.engine.build import build_engine, plan_build

    engines = []
    for artifact in onnx_artifacts:
        if artifact.label.endswith("(onnxruntime Q/DQ)"):
            continue  # ORT's QDQ placement is for ORT; TensorRT gets the tensorrt-target file
        plan = plan_build(artifact.path, timing_cache=out / "timing.cache")
        built = build_engine(plan, log=log)
        engines.append(Artifact(f"TensorRT {artifact.precision}", Path(built.engine_path), artifact.precision))
    return engines, f"built {len(engines)} TensorRT engine(s) on {devices.devices[0].name}"


def _artifact_entry(artifact: Artifact) -> dict[str, Any]:
    size = artifact.path.stat().st_size if artifact.path.exists() else None
    return {"label": artifact.label, "file": os.fspath(artifact.path), "precision": artifact.precision,
            "size_bytes": size, "note": artifact.note}


def _preamble(result: PipelineResult, checkpoint: Path, height: int, width: int) -> str:
    lines = [f"Reference: `{checkpoint}`; inputs {height}x{width}; validation on `{EVAL_SOURCE}`, "
             f"calibration on `{CALIB_SOURCE}`.", "", "| artifact | file | size (MB) | note |", "| --- | --- | --- | --- |"]
    for a in result.artifacts:
        size = a.path.stat().st_size / 1e6 if a.path.exists() else float("nan")
        lines.append(f"| {a.label} | `{a.path.name}` | {size:.2f} | {a.note} |")
    lines += [""] + [f"- {note}" for note in result.notes]
    steps = ", ".join(f"{name.split(' (')[0]} {sec:.1f}s" for name, sec in result.step_seconds.items())
    lines += [f"- step times: {steps}", ""]
    return "\n".join(lines)
