"""The main job in one call: checkpoint -> ONNX fp32/fp16/int8 -> (TensorRT engines) -> validate -> bench -> report.

Each step calls the stage's own library function; this module only orders them, names the files and
collects what they return into one report folder. Gates are evaluated for every artifact first and
raised at the very end, so one failing artifact does not hide the others' numbers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy_unet.errors import ArtifactError, GateFailedError
from deploy_unet.shipped import checkpoint as default_checkpoint
from deploy_unet.timing import StageTimes

# Calibration and evaluation use different synthetic seeds: a quantizer is never judged on its own data.
CALIB_SOURCE = "synthetic:seed=1"
EVAL_SOURCE = "synthetic:seed=2"
# --auto-fallback picks its layers on a third seed, so the validation on EVAL_SOURCE stays held out.
FALLBACK_SOURCE = "synthetic:seed=3"
# Why the TensorRT-placement int8 ONNX is not timed on ONNX Runtime CPU by default (benchmarks/int8_ort_cpu.md).
TENSORRT_QDQ_ON_CPU = ("TensorRT Q/DQ placement: ONNX Runtime's x86 CPU provider fuses no symmetric-int8 Q/DQ, so it "
                       "runs dequantize + fp32 convolutions, slower than fp32; TensorRT compiles this file")


@dataclass
class PipelineConfig:
    output_dir: Path = Path("deploy-out")
    arch: str | None = None  # picks the shipped checkpoint (default unet); with --checkpoint it must agree
    checkpoint: Path | None = None
    height: int | None = None  # None: the checkpoint card's training size, else 256
    width: int | None = None
    depth: int | None = None  # volume nets (unet3d): None: the checkpoint's recommended depth, else 32
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    # None: tensorrt and onnxruntime, and openvino where the openvino extra imports and openvino != "off"
    int8_targets: tuple[str, ...] | None = None
    calib_samples: int = 32
    eval_samples: int = 16
    bench_iters: int = 30
    bench_rounds: int | None = None  # None: bench's default (10, or bench_iters if fewer)
    bench_warmup: int = 3
    bench_batch: int = 1
    engines: str = "auto"  # auto | off
    engine_lib: str | None = None  # tensorrt | tensorrt-rtx; None: whichever is installed, TensorRT first
    threads: int | None = None
    bench_tensorrt_qdq: bool = False  # also time the TensorRT-placement int8 ONNX on ONNX Runtime CPU
    auto_fallback: bool = False  # int8: keep the fewest layers in higher precision until the int8 gates hold
    fallback_precision: str | None = None  # fp16 (tensorrt placement default) | fp32
    openvino: str = "auto"  # auto: also validate and time every ONNX on OpenVINO when it imports | off


@dataclass
class Artifact:
    label: str
    path: Path
    precision: str
    backend: str | None = None
    note: str = ""
    target: str = ""  # int8 Q/DQ placement: tensorrt | onnxruntime | openvino
    runnable: bool = True  # False: built, but this GPU cannot run it (validate and bench skip it)
    kept_higher: dict[str, str] = field(default_factory=dict)  # node -> why (auto-fallback)
    fallback: Any = None  # precision.fallback.FallbackResult


@dataclass
class PipelineResult:
    output_dir: Path
    artifacts: list[Artifact] = field(default_factory=list)
    report_files: dict[str, Path] = field(default_factory=dict)
    stages: StageTimes = field(default_factory=StageTimes)
    notes: list[str] = field(default_factory=list)
    failed_gates: list[str] = field(default_factory=list)
    validations: list = field(default_factory=list)  # validate.ValidationReport per candidate
    bench: Any = None  # bench.BenchReport


def run_pipeline(config: PipelineConfig, log: Callable[[str], None] = print) -> PipelineResult:
    import torch

    saved = torch.get_num_threads()
    try:
        return _run_pipeline(config, log)
    finally:
        torch.set_num_threads(saved)  # export and checkpoint loading run torch outside any runner


def _run_pipeline(config: PipelineConfig, log: Callable[[str], None]) -> PipelineResult:
    import torch

    from deploy_unet.bench import bench, resolve_rounds
    from deploy_unet.export import export_onnx
    from deploy_unet.nets.loading import load_net
    from deploy_unet.precision import quantize
    from deploy_unet.report import GALLERY_SAMPLES, write_report
    from deploy_unet.runtime import wait_policy
    from deploy_unet.validate import validate_artifacts_many

    out = Path(config.output_dir)
    result = PipelineResult(out)
    times = result.stages
    checkpoint = Path(config.checkpoint) if config.checkpoint else default_checkpoint(config.arch or "unet")
    config = resolve_int8_targets(config)  # refused (no openvino, or --no-openvino) before any work
    rounds = resolve_rounds(config.bench_rounds, config.bench_iters)  # refused before any work
    steps = 5 + (config.engines != "off")
    step = iter(range(1, steps + 1))

    def timed(name: str, label: str):
        log(f"[{next(step)}/{steps}] {label}")
        return times.stage(name)

    loaded = load_net(arch=config.arch, checkpoint=checkpoint)
    threads, threads_from = _threads(config)
    log(f"      {threads} CPU thread(s) for torch and ONNX Runtime ({threads_from})")
    log(f"      {wait_policy.current().describe()}")  # validate and bench alternate backends in this process
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)  # after the checkpoint is accepted: a refused one leaves no folder
    stem = loaded.arch
    height, width = _size(config, loaded)
    depth = _depth(config, loaded)  # None for 2D nets
    size_text = "x".join(map(str, ((depth,) if depth else ()) + (height, width)))
    reference = Artifact("PyTorch (reference)", checkpoint, "fp32", "torch")

    with timed("export", "export to ONNX"):
        fp32 = out / f"{stem}.onnx"
        exported = export_onnx(loaded.net, fp32, height=height, width=width, mean=loaded.mean, std=loaded.std,
                               arch=loaded.arch, net_config=loaded.net_config,
                               checkpoint_sha256=loaded.checkpoint.sha256, class_names=loaded.checkpoint.class_names,
                               **({"depth": depth} if depth else {}))
        times.extend(exported.stages, "export")
        onnx_artifacts = [Artifact("ONNX fp32", fp32, "fp32")]

    with timed("precision", "precision: " + ", ".join(_precision_labels(config))):
        cache = out / f"{stem}.calib.json"  # one calibration pass shared by fp16 and both int8 targets
        for precision, target in _quantize_jobs(config):
            search = config.auto_fallback and precision == "int8"
            q = quantize(fp32, precision, target=target, calib=CALIB_SOURCE, calib_samples=config.calib_samples,
                         calib_cache=cache, progress=False, threads=threads,
                         **(_fallback_options(config, target) if search else {"eval_source": None}))
            label = f"ONNX {precision}" + (f" ({target} Q/DQ)" if precision == "int8" else "")
            for stage in q.stages.stages:
                times.add(f"{q.path.name}: {stage.name}", stage.seconds, "precision")
            note = f"{len(q.kept_fp32)} node(s) kept fp32 (fp16 range)" if q.kept_fp32 else ""
            if q.fallback is not None:
                note = (f"{len(q.kept_higher)} layer(s) kept in {q.fallback.fallback} (auto-fallback: "
                        f"{q.fallback.summary['conv_layers_low_precision']} of {q.fallback.summary['conv_layers']} "
                        "conv layers int8)")
                log(f"      {q.path.name}: {q.fallback.summary_line()}")
            onnx_artifacts.append(_openvino_placement(q, note) if target == "openvino" else
                                  Artifact(label, q.path, precision, note=note, target=target,
                                           kept_higher=dict(q.kept_higher), fallback=q.fallback))
    made_for_openvino = [a for a in onnx_artifacts if a.target == "openvino"]  # validated and timed on OpenVINO only
    onnx_artifacts = [a for a in onnx_artifacts if a not in made_for_openvino]

    engines: list[Artifact] = []
    if config.engines != "off":
        with timed("TensorRT engines", "TensorRT engines"):
            engines, note = _build_engines(onnx_artifacts, out, log, config.engine_lib)
            result.notes.append(note)
            log(f"      {note}")

    ov_artifacts, ov_note = _openvino_artifacts(config, onnx_artifacts)
    ov_artifacts += made_for_openvino
    if ov_note:
        result.notes.append(ov_note)
        log(f"      {ov_note}")
    if made_for_openvino:
        result.notes.append(OPENVINO_PLACEMENT_NOTE)
        log(f"      {OPENVINO_PLACEMENT_NOTE}")
    candidates = onnx_artifacts + ov_artifacts + [e for e in engines if e.runnable]
    with timed("validate", f"validate every artifact against PyTorch ({config.eval_samples} held-out samples)"):
        # One pass over the samples: the PyTorch reference runs once per sample, not once per candidate.
        validations = validate_artifacts_many(
            [(a.path, a.backend) for a in candidates], checkpoint, data=EVAL_SOURCE, samples=config.eval_samples,
            progress=False, threads=threads, gallery=GALLERY_SAMPLES,
        )
        times.add("reference (PyTorch) inference", validations[0].reference_seconds, "validate")
        for artifact, report in zip(candidates, validations):
            on = " (openvino)" if artifact.backend == "openvino" else ""
            times.add(f"{artifact.path.name} inference{on}", report.candidate_seconds, "validate")
            result.failed_gates += [f"{artifact.path.name}: {g.describe()}" for g in report.failed_gates]

    timed_artifacts, untimed = _bench_selection(config, candidates)
    for artifact in untimed:
        note = (f"not benchmarked: {artifact.path.name} ({TENSORRT_QDQ_ON_CPU}; validated above; "
                "--bench-tensorrt-qdq times it anyway)")
        result.notes.append(note)
        log(f"      {note}")
    with timed("bench", f"benchmark (batch {config.bench_batch}, {size_text}, {config.bench_iters} iterations "
                        f"in {rounds} interleaved rounds)"):
        bench_report = bench([reference.path] + [(a.path, a.backend) if a.backend else a.path for a in timed_artifacts],
                             batches=(config.bench_batch,),
                             sizes=(((depth,) if depth else ()) + (height, width),), warmup=config.bench_warmup,
                             iters=config.bench_iters,
                             rounds=rounds, threads=threads, progress=False)
        for r in bench_report.results:
            times.add(f"{Path(r.artifact).name}" + (" (openvino)" if r.backend == "openvino" else ""), r.wall_seconds,
                      "bench")
        fastest = fastest_cpu_path(bench_report, validations, candidates)
        if fastest:
            result.notes.append(fastest)
            log(f"      {fastest}")

    with timed("report", "report"):
        result.artifacts = [reference] + onnx_artifacts + ov_artifacts + engines
        result.validations, result.bench = validations, bench_report
        extra = {
            "pipeline": {
                "checkpoint": os.fspath(checkpoint),
                "checkpoint_sha256": loaded.checkpoint.sha256,
                "size": ([depth] if depth else []) + [height, width],
                "calibration_source": CALIB_SOURCE,
                "evaluation_source": EVAL_SOURCE,
                "threads": threads,
                "threads_from": threads_from,
                "artifacts": [_artifact_entry(a, a in untimed) for a in result.artifacts],
                "auto_fallback": {a.path.name: a.fallback.metadata() for a in result.artifacts if a.fallback},
                "notes": result.notes,
                # written inside the report step, so the report's own time is not in these numbers
                "step_seconds": {s.name: round(s.seconds, 3) for s in times.finished if not s.group},
                "stage_seconds": times.to_list(),
            }
        }
        preamble = _preamble(result, checkpoint, height, width, depth)
        result.report_files = write_report(out, bench=bench_report, validations=validations,
                                           title=f"deploy-unet pipeline: {stem}", extra=extra, preamble=preamble)
    return result


def _fallback_options(config: PipelineConfig, target: str) -> dict[str, Any]:
    """quantize() options for --auto-fallback: the int8 validation gates (validate.DEFAULT_GATES), as the
    quantize gate measures them, on data of its own (FALLBACK_SOURCE): mask agreement as is; rel L2 at
    most sqrt(2 (1 - cosine)), which also keeps the cosine gate (cosine = 1 - rel_l2**2 / 2 for an error
    orthogonal to the logits); the Dice drop at most the mIoU-drop gate."""
    import math

    from deploy_unet.validate import DEFAULT_GATES

    gates = DEFAULT_GATES["int8"]
    return {
        "eval_source": FALLBACK_SOURCE, "eval_samples": config.eval_samples, "auto_fallback": True,
        "min_mask_agreement": gates["mask_agreement"],
        "max_rel_l2": min(gates["rel_l2"], math.sqrt(2 * (1 - gates["cosine"]))),
        "max_dice_drop": gates["miou_drop"],
        # fp32 is the only higher precision of the onnxruntime placement (ORT CPU has no fast fp16 conv)
        "fallback_precision": config.fallback_precision if target == "tensorrt" else None,
        # the openvino placement is gated where it deploys, as `quantize --gate-backend openvino` does
        "gate_backend": "openvino" if target == "openvino" else "onnxruntime",
    }


def raise_for_gates(result: PipelineResult) -> None:
    if result.failed_gates:
        raise GateFailedError(f"{len(result.failed_gates)} gate(s) failed: " + "; ".join(result.failed_gates))


def _threads(config: PipelineConfig) -> tuple[int, str]:
    """An explicit thread count for every stage: libraries default to the cores they see, which in a
    container can be many more than its CPU quota lets run, and then each parallel op waits on throttled
    threads (the slowdown grows with the number of ops, so a Q/DQ-heavy graph suffers most)."""
    if config.threads:
        return config.threads, "--threads"
    from deploy_unet.machine import cpu_info

    cpu = cpu_info()
    return cpu.usable_cpus, f"the CPUs this process may use: {cpu.cpus_text}"


def _bench_selection(config: PipelineConfig, candidates: list[Artifact]) -> tuple[list[Artifact], list[Artifact]]:
    """Which candidates to time. The TensorRT-placement int8 ONNX is the file TensorRT compiles, so it is
    always validated, but ONNX Runtime's CPU provider cannot run it as int8 (see TENSORRT_QDQ_ON_CPU):
    timing it there measures a configuration nobody deploys, so it is left out unless asked for."""
    untimed = [a for a in candidates
               if a.precision == "int8" and a.target == "tensorrt" and a.path.suffix == ".onnx"
               and a.backend is None and not config.bench_tensorrt_qdq]  # OpenVINO runs it in int8: timed
    return [a for a in candidates if a not in untimed], untimed


def resolve_int8_targets(config: PipelineConfig) -> PipelineConfig:
    """The config with its int8 placements named: by default tensorrt and onnxruntime, and openvino (NNCF's Q/DQ
    pattern, ``quantize --target openvino``) when the openvino extra imports and the OpenVINO rows are on. An
    explicit openvino target without the extra, or with ``openvino="off"``, is one usage error."""
    from dataclasses import replace

    from deploy_unet.errors import ConfigError

    available = config.openvino != "off" and _openvino_version() is not None
    if config.int8_targets is None:
        return replace(config, int8_targets=("tensorrt", "onnxruntime") + (("openvino",) if available else ()))
    if "openvino" in config.int8_targets and "int8" in config.precisions and not available:
        if config.openvino == "off":
            raise ConfigError("--int8-targets openvino is validated and timed on OpenVINO, which --no-openvino "
                              "turns off; drop --no-openvino or the openvino target")
        raise ConfigError("--int8-targets openvino needs the openvino extra, which is not installed: "
                          "pip install 'deploy-unet[openvino]' (or drop the openvino target)")
    return config


def _openvino_version() -> str | None:
    try:
        import openvino
    except ImportError:
        return None
    return openvino.__version__.split("-")[0]


# Why the openvino-placement int8 ONNX has OpenVINO rows only (benchmarks/openvino_cpu.md).
OPENVINO_PLACEMENT_NOTE = (
    "the openvino-placement int8 ONNX (NNCF's Q/DQ pattern) is validated and timed on OpenVINO only, where it "
    "deploys (the pipeline makes it only where OpenVINO runs); ONNX Runtime's x86 CPU provider does not fuse its "
    "signed Q/DQ (NNCF's file of this pattern ran at 0.98-1.33x ORT fp32's latency, benchmarks/openvino_cpu.md)")


def _openvino_placement(q, note: str) -> Artifact:
    """The ``quantize --target openvino`` result as one artifact run on OpenVINO (its gate and timing)."""
    note = "; ".join(filter(None, ["made for OpenVINO (NNCF's Q/DQ pattern): validated and timed on OpenVINO",
                                   note.replace("(auto-fallback:", "(auto-fallback gated on OpenVINO:")]))
    return Artifact("OpenVINO int8 (openvino Q/DQ)", q.path, "int8", backend="openvino", note=note, target="openvino",
                    kept_higher=dict(q.kept_higher), fallback=q.fallback)


def _openvino_artifacts(config: PipelineConfig, onnx_artifacts: list[Artifact]) -> tuple[list[Artifact], str]:
    """The OpenVINO path of every ONNX made (same files, backend openvino, its default precision: what it ran is
    read back and gated), when the openvino extra imports; else a note saying how to get the rows."""
    if config.openvino == "off":
        return [], ""
    try:
        import openvino
    except ImportError:
        return [], "OpenVINO rows skipped: openvino is not installed (pip install 'deploy-unet[openvino]')"
    rows = [Artifact("OpenVINO" + a.label[len("ONNX"):], a.path, a.precision, backend="openvino", target=a.target,
                     note="OpenVINO on the same file (CPU, its default inference precision, recorded)")
            for a in onnx_artifacts]
    return rows, f"OpenVINO {openvino.__version__.split('-')[0]}: every ONNX also validated and timed on its CPU device"


def fastest_cpu_path(bench_report, validations, candidates: list[Artifact]) -> str:
    """One line: the fastest CPU path that passed its gates, against ONNX Runtime fp32 and against ONNX Runtime's
    fastest, from this run's rounds: ranked by the median of the per-round speedups over ORT fp32; each speedup
    given as that median and its min-max over the rounds ("not separable" where the min-max includes 1)."""
    import numpy as np

    from deploy_unet.bench import round_ratios

    passed = {(os.path.abspath(v.candidate), v.candidate_backend.split()[0]) for v in validations if v.passed}
    cpu = [r for r in bench_report.results if r.backend in ("onnxruntime", "openvino")
           and (os.path.abspath(r.artifact), r.backend) in passed]
    base = next((r for r in cpu if r.backend == "onnxruntime" and r.precision == "fp32"), None)
    if base is None:
        return ""

    def speedup(r) -> float:  # base's round median over r's, round by round
        ratios = round_ratios(base, r)
        return float(np.median(ratios)) if ratios else base.latency_ms.median / r.latency_ms.median

    def name(r) -> str:
        return f"{Path(r.artifact).name} on {r.backend} ({r.precision})"

    def vs(fast, slow) -> str:
        ratios = round_ratios(slow, fast)
        if not ratios:
            return f"{slow.latency_ms.median / fast.latency_ms.median:.2f}x"
        low, high = min(ratios), max(ratios)
        text = f"{float(np.median(ratios)):.2f}x (rounds {low:.2f}-{high:.2f}x)"
        return text + (", not separable on this run" if low <= 1.0 <= high else "")

    best = max(cpu, key=speedup)
    line = (f"fastest CPU path on this machine (gates passed): {name(best)}, {best.latency_ms.median:.2f} ms; "
            f"{vs(best, base)} faster than ONNX Runtime fp32" if best is not base else
            f"fastest CPU path on this machine (gates passed): {name(best)}, {best.latency_ms.median:.2f} ms")
    ort_best = max((r for r in cpu if r.backend == "onnxruntime"), key=speedup)
    if best.backend != "onnxruntime" and ort_best is not base:
        line += f"; {vs(best, ort_best)} faster than ONNX Runtime's fastest, {name(ort_best)}"
    return line


def _size(config: PipelineConfig, loaded) -> tuple[int, int]:
    shape = (loaded.checkpoint.extra or {}).get("recommended_export_shape") if loaded.checkpoint else None
    default = tuple(shape[-2:]) if shape else (256, 256)
    return config.height or default[0], config.width or default[1]


def _depth(config: PipelineConfig, loaded) -> int | None:
    """The depth of a volume net's inputs (NCDHW): --size DxHxW, else the checkpoint's recommended export
    shape, else 32; None for a 2D net (given a depth anyway: one usage line)."""
    from deploy_unet.errors import ConfigError

    volume = getattr(getattr(loaded.net, "shape_contract", None), "spatial_dims", 2) == 3
    if not volume:
        if config.depth:
            raise ConfigError(f"--size with a depth is for volume nets; {loaded.arch} takes 2D images: give HxW")
        return None
    shape = (loaded.checkpoint.extra or {}).get("recommended_export_shape") if loaded.checkpoint else None
    return config.depth or (int(shape[-3]) if shape and len(shape) == 5 else 32)


def _quantize_jobs(config: PipelineConfig) -> list[tuple[str, str]]:
    jobs = []
    if "fp16" in config.precisions:
        jobs.append(("fp16", "tensorrt"))
    if "int8" in config.precisions:
        jobs += [("int8", target) for target in config.int8_targets]
    return jobs


def _precision_labels(config: PipelineConfig) -> list[str]:
    return [p if p == "fp16" else f"{p} ({t})" for p, t in _quantize_jobs(config)] or ["none"]


def _build_engines(
    onnx_artifacts: list[Artifact], out: Path, log: Callable[[str], None], engine_lib: str | None = None
) -> tuple[list[Artifact], str]:
    """One strongly typed engine per ONNX precision where an engine library and a GPU exist; else say why not.

    An engine this GPU cannot run (TensorRT-RTX on compute capability 9.0) is still built and listed, marked
    "built but not runnable on this GPU": the other artifacts are validated and timed as usual.
    """
    from deploy_unet.engine.device import (
        cuda_devices,
        library_installed,
        no_device_reason,
        resolve_engine_library,
    )

    library = resolve_engine_library(engine_lib)
    devices = cuda_devices()
    if not devices.devices:
        return [], f"{library.title} engines skipped: {no_device_reason(devices)}"
    if not library_installed(library.name):
        return [], (f"{library.title} engines skipped: {library.title} is not installed "
                    f"(pip install 'deploy-unet[{library.name}]')")
    from deploy_unet.engine.build import build_engine, plan_build
    from deploy_unet.engine.manifest import check_library_gpu

    engines = []
    for artifact in onnx_artifacts:
        if artifact.label.endswith("(onnxruntime Q/DQ)"):
            continue  # ORT's QDQ placement is for ORT; TensorRT gets the tensorrt-target file
        suffix = ".rtx.engine" if library.name == "tensorrt-rtx" else ".engine"
        plan = plan_build(artifact.path, artifact.path.with_suffix(suffix), timing_cache=out / ("timing.cache" if suffix == ".engine" else "rtx.timing.cache"),
                          engine_lib=library.name)
        for warning in plan.warnings:
            log(f"      warning ({artifact.path.name}): {warning}")
        built = build_engine(plan, log=log)
        engine = Artifact(f"{library.title} {artifact.precision}", Path(built.engine_path), artifact.precision)
        try:
            check_library_gpu(built.manifest, built.manifest.gpu)
        except ArtifactError:
            engine.runnable = False
            engine.note = f"built but not runnable on this GPU (cc {built.manifest.gpu['compute_capability']})"
        engines.append(engine)
    gpu = devices.devices[0]
    note = f"built {len(engines)} {library.title} engine(s) on {gpu.name}"
    idle = [e for e in engines if not e.runnable]
    if idle:
        note += (f"; {len(idle)} not runnable here: {library.title} runs on compute capability "
                 f"{' '.join(library.runs_on or ())}, this GPU is {gpu.compute_capability} (not validated or timed)")
    return engines, note


def _artifact_entry(artifact: Artifact, untimed: bool = False) -> dict[str, Any]:
    size = artifact.path.stat().st_size if artifact.path.exists() else None
    return {"label": artifact.label, "file": os.fspath(artifact.path), "precision": artifact.precision,
            "size_bytes": size, "note": artifact.note, "runnable": artifact.runnable, "benchmarked": not untimed,
            "backend": artifact.backend, "target": artifact.target}  # backend None: the file's own (ORT, TensorRT)


def _preamble(result: PipelineResult, checkpoint: Path, height: int, width: int, depth: int | None = None) -> str:
    inputs = f"volumes {depth}x{height}x{width} (DxHxW)" if depth else f"{height}x{width}"
    lines = [f"Reference: `{checkpoint}`; inputs {inputs}; validation on `{EVAL_SOURCE}`, "
             f"calibration on `{CALIB_SOURCE}`.", "", "| artifact | file | size (MB) | note |", "| --- | --- | --- | --- |"]
    for a in result.artifacts:
        size = a.path.stat().st_size / 1e6 if a.path.exists() else float("nan")
        lines.append(f"| {a.label} | `{a.path.name}` | {size:.2f} | {a.note} |")
    lines += [""] + [f"- {note}" for note in result.notes]
    searched = [a for a in result.artifacts if a.fallback is not None]
    if searched:
        lines += ["", "## Layers kept in higher precision (auto-fallback)", "",
                  f"Each int8 file was searched on `{FALLBACK_SOURCE}` (not the validation data) for the fewest "
                  "layers to keep out of int8 until the int8 gates hold.", ""]
        for a in searched:
            f = a.fallback
            lines += [f"**{a.path.name}**: {f.summary_line()}; {f.evaluations} evaluations in {f.seconds:.1f} s.", ""]
            if f.kept:
                lines += ["| layer (node) | kept in | why |", "| --- | --- | --- |"]
                lines += [f"| `{node}` | {f.fallback} | {why} |" for node, why in f.kept.items()]
            else:
                lines.append("No layer needed: plain int8 meets the gate.")
            lines.append("")
    lines += ["", "## Where the time went", "", "| stage | seconds | share |", "| --- | --- | --- |"]
    lines += [f"| {name} | {sec} | {share} |" for name, sec, share in result.stages.rows(indent="&emsp;")]
    lines += ["", f"Total {result.stages.total:.1f} s, the report step's own time not included; "
              "indented rows are parts of the step above them.", ""]
    return "\n".join(lines)
