"""The accuracy gate: fp32 vs a lower-precision file on held-out data, with ONNX Runtime on CPU.

Both models see the same preprocessed samples; predictions are the argmax over classes. With ground
truth masks the gate compares Dice against the truth (drop = fp32 Dice - new Dice); without masks the
fp32 prediction is the reference (drop = 1 - Dice(new, fp32)). Besides the Dice drop a gate may ask
for a mask agreement with fp32 (percent of pixels with the same class) and a relative L2 of the logits.
ORT's ``WeightBiasQuantization`` optimizer is disabled for the quantized file: it rewrites
fp16-remainder Q/DQ graphs (ModelOpt style) into something that computes wrong results on CPU.

``GateEvaluator`` runs the fp32 model once and then measures any number of candidates (the
auto-fallback search measures dozens), also on a subset of the samples.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import onnx

from deploy_unet import metrics
from deploy_unet.errors import ConfigError
from deploy_unet.processing import upsample_to

DISABLED_OPTIMIZERS = ["WeightBiasQuantization"]


@dataclass(frozen=True)
class GateSpec:
    """What a lower-precision file must meet against fp32: a Dice drop at most ``max_dice_drop``, and
    optionally a mask agreement of at least ``min_mask_agreement`` percent and a logit relative L2 of at
    most ``max_rel_l2``."""

    max_dice_drop: float = 0.01
    min_mask_agreement: float | None = None  # percent
    max_rel_l2: float | None = None

    def __post_init__(self):
        if self.max_dice_drop < 0:
            raise ConfigError(f"--max-dice-drop {self.max_dice_drop} must be >= 0")
        if self.min_mask_agreement is not None and not 0 <= self.min_mask_agreement <= 100:
            raise ConfigError(f"--min-mask-agreement {self.min_mask_agreement} is a percent: pass 0..100, e.g. 99")
        if self.max_rel_l2 is not None and self.max_rel_l2 < 0:
            raise ConfigError(f"--max-rel-l2 {self.max_rel_l2} must be >= 0")

    def checks(self, report: GateReport) -> list[GateCheck]:
        out = [GateCheck("dice_drop", report.dice_drop, self.max_dice_drop, "<=")]
        if self.min_mask_agreement is not None:
            out.append(GateCheck("mask_agreement", 100.0 * report.mask_agreement, self.min_mask_agreement, ">="))
        if self.max_rel_l2 is not None:
            out.append(GateCheck("rel_l2", report.rel_l2 if report.rel_l2 is not None else math.nan,
                                 self.max_rel_l2, "<="))
        return out

    def shortfall(self, report: GateReport) -> float:
        """How far ``report`` is from passing: the sum of each check's violation, each in units of its own
        scale (0 when every check holds). The search compares steps by it."""
        total = 0.0
        for c in self.checks(report):
            if c.metric == "dice_drop":
                scale = max(c.limit, 1e-3)
            elif c.metric == "mask_agreement":
                scale = max(100.0 - c.limit, 0.1)
            else:
                scale = max(c.limit, 1e-6)
            gap = (c.value - c.limit) if c.op == "<=" else (c.limit - c.value)
            total += math.inf if math.isnan(gap) else max(0.0, gap) / scale
        return total

    def to_dict(self) -> dict:
        return {"max_dice_drop": self.max_dice_drop, "min_mask_agreement": self.min_mask_agreement,
                "max_rel_l2": self.max_rel_l2}


@dataclass
class GateCheck:
    metric: str  # dice_drop | mask_agreement (percent) | rel_l2
    value: float
    limit: float
    op: str  # "<=" or ">="

    @property
    def passed(self) -> bool:
        return bool(self.value <= self.limit) if self.op == "<=" else bool(self.value >= self.limit)

    def describe(self) -> str:
        """``mask_agreement 99.20 >= 99`` when it holds, ``mask_agreement 96.90 < 99`` when it does not."""
        digits = 2 if self.metric == "mask_agreement" else 4
        op = self.op if self.passed else {"<=": ">", ">=": "<"}[self.op]
        return f"{self.metric} {self.value:.{digits}f} {op} {self.limit:g}"


@dataclass
class GateReport:
    source: str
    samples: int
    reference: str  # "ground truth" or "fp32 predictions"
    fp32: dict
    candidate: dict
    mask_agreement: float  # fraction in [0, 1]
    dice_drop: float
    max_dice_drop: float
    notes: list[str] = field(default_factory=list)
    rel_l2: float | None = None  # of the logits, when the evaluator kept the fp32 logits
    spec: GateSpec | None = None
    per_sample_disagreement: np.ndarray | None = field(default=None, repr=False)  # pixels per sample

    @property
    def gate(self) -> GateSpec:
        return self.spec or GateSpec(self.max_dice_drop)

    @property
    def checks(self) -> list[GateCheck]:
        return self.gate.checks(self)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def shortfall(self) -> float:
        return self.gate.shortfall(self)

    def to_dict(self) -> dict:
        return {
            "source": self.source, "samples": self.samples, "reference": self.reference,
            "fp32": self.fp32, "candidate": self.candidate, "mask_agreement": self.mask_agreement,
            "dice_drop": self.dice_drop, "max_dice_drop": self.max_dice_drop, "rel_l2": self.rel_l2,
            "gate": self.gate.to_dict(), "checks": [c.describe() for c in self.checks], "passed": self.passed,
        }


def emulate_fp16_storage(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """An fp32 model that rounds every fp16 tensor of ``model`` to fp16, as an fp16 engine stores it.

    ONNX Runtime's CPU provider has few fp16 kernels: its InsertCastTransformer runs each chain of fp16
    nodes in fp32 with casts only at the ends, so intermediate tensors are never rounded to fp16 and an
    fp16 file looks better on a CPU than on a GPU (a tensor at 2048 + x keeps 1 bit below the units in
    fp16, all of them here). This copy computes each node in fp32 and follows every output that is fp16
    in ``model`` with Cast(fp16) -> Cast(fp32), which ORT keeps (the pair loses precision). fp16 weights
    become fp32 holding the same, already rounded, values. Returns None when the model has no fp16
    tensor or fp16 graph IO (run as it is).
    """
    from onnx import TensorProto, helper, numpy_helper

    F16, F32 = TensorProto.FLOAT16, TensorProto.FLOAT
    graph = model.graph
    if any(v.type.tensor_type.elem_type == F16 for v in [*graph.input, *graph.output]):
        return None
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return None
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types.update({t.name: t.data_type for t in graph.initializer})
    if F16 not in types.values():
        return None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    for t in g.initializer:
        if t.data_type == F16:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
    nodes = []
    for node in g.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == F16:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float32), a.t.name))
            if node.op_type == "Cast" and a.name == "to" and a.i == F16:
                a.i = F32  # the rounding is done by the pair below
        nodes.append(node)
        for k, name in enumerate(node.output):
            if name and types.get(name) == F16:
                raw = f"{name}__fp32"
                node.output[k] = raw
                nodes += [helper.make_node("Cast", [raw], [f"{name}__fp16"], name=f"{name}__round", to=F16),
                          helper.make_node("Cast", [f"{name}__fp16"], [name], name=f"{name}__back", to=F32)]
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    return out


def _logits(path: str | os.PathLike, images: np.ndarray, batch: int, threads: int | None, emulate: bool = True,
            backend: str = "onnxruntime"):
    """Logits batches from an ONNX file on ORT CPU (overlap tiles when the net's output is smaller); a
    file with fp16 tensors runs with their rounding emulated (``emulate_fp16_storage``). ``backend="openvino"``:
    on OpenVINO's CPU device as it deploys (its default inference precision, int8 kernels), no emulation."""
    import tempfile

    if backend == "openvino":
        from deploy_unet.runtime import open_runner

        runner = open_runner(path, "openvino", threads=threads)
        if runner.info is not None and runner.info.border:
            runner.enable_tiling()
        with runner:
            name = next(iter(runner.input_spec))
            out = runner.output_names[0]
            for start in range(0, len(images), batch):
                yield np.asarray(runner.infer({name: images[start : start + batch]})[out])
        return

    from deploy_unet.runtime.onnxruntime_runner import OnnxRuntimeRunner

    emulated = emulate_fp16_storage(onnx.load(path)) if emulate else None
    if emulated is not None:
        with tempfile.TemporaryDirectory(prefix="deploy-unet-fp16emu-") as tmp:
            copy = os.path.join(tmp, os.path.basename(path))
            onnx.save(emulated, copy)
            yield from _logits(copy, images, batch, threads, emulate=False)
        return
    runner = OnnxRuntimeRunner(path, threads=threads, disabled_optimizers=DISABLED_OPTIMIZERS)
    if runner.info is not None and runner.info.border:
        runner.enable_tiling()  # a valid-convolution net: full-size masks, comparable with the ground truth
    with runner:
        name = next(iter(runner.input_spec))
        out = runner.output_names[0]
        for start in range(0, len(images), batch):
            yield np.asarray(runner.infer({name: images[start : start + batch]})[out])


def _mask(logits: np.ndarray) -> np.ndarray:
    return (logits[:, 0] > 0).astype(np.int64) if logits.shape[1] == 1 else logits.argmax(axis=1)


def predict(path: str | os.PathLike, images: np.ndarray, batch: int = 4, threads: int | None = None) -> np.ndarray:
    """Argmax masks (N, H, W) from an ONNX file on ORT CPU (overlap tiles when the net's output is smaller)."""
    return np.concatenate([_mask(x) for x in _logits(path, images, batch, threads)])


class GateEvaluator:
    """The fp32 side of the gate, computed once: masks (and the logits, when a rel L2 gate needs them)."""

    def __init__(self, fp32_path, samples, num_classes: int, spec: GateSpec | None = None,
                 threads: int | None = None, batch: int = 4, keep_logits: bool | None = None,
                 backend: str = "onnxruntime"):
        self.samples, self.num_classes, self.threads, self.batch = samples, num_classes, threads, batch
        self.backend = backend  # where candidates run (the fp32 reference always runs on ORT, exactly)
        self.spec = spec or GateSpec()
        keep = self.spec.max_rel_l2 is not None if keep_logits is None else keep_logits
        masks, logits = [], []
        for x in _logits(fp32_path, samples.images, batch, threads):
            x = upsample_to(x, *samples.images.shape[-2:])  # logits at 1/k (SegFormer): scored at the input's size
            masks.append(_mask(x))
            if keep:
                logits.append(x.astype(np.float32, copy=False))
        self.ref_masks = np.concatenate(masks)
        self.ref_logits = np.concatenate(logits) if keep else None
        self.evaluations = 0  # candidate evaluations so far (the search reports it)

    def evaluate(self, candidate_path, indices: np.ndarray | None = None) -> GateReport:
        """The gate of ``candidate_path`` on all samples, or on ``indices`` only."""
        idx = np.arange(len(self.ref_masks)) if indices is None else np.asarray(indices)
        images = self.samples.images[idx]
        ref = self.ref_masks[idx]
        preds, sum_diff, sum_ref = [], 0.0, 0.0
        for k, x in enumerate(_logits(candidate_path, images, self.batch, self.threads, backend=self.backend)):
            x = upsample_to(x, *images.shape[-2:])  # as the fp32 side's
            preds.append(_mask(x))
            if self.ref_logits is not None:
                r = self.ref_logits[idx[k * self.batch : (k + 1) * self.batch]].astype(np.float64)
                d = np.nan_to_num(x.astype(np.float64) - r, nan=np.inf)
                sum_diff += float((d * d).sum())
                sum_ref += float((r * r).sum())
        self.evaluations += 1
        new = np.concatenate(preds)
        masks = None if self.samples.masks is None else self.samples.masks[idx]
        if masks is not None:
            fp32_scores = metrics.summarize(ref, masks, self.num_classes)
            new_scores = metrics.summarize(new, masks, self.num_classes)
            reference = "ground truth"
            drop = fp32_scores["mean_dice"] - new_scores["mean_dice"]
        else:
            fp32_scores = metrics.summarize(ref, ref, self.num_classes)
            new_scores = metrics.summarize(new, ref, self.num_classes)
            reference = "fp32 predictions"
            drop = 1.0 - new_scores["mean_dice"]
        rel = None
        if self.ref_logits is not None:
            rel = math.sqrt(sum_diff / sum_ref) if sum_ref > 0 else (0.0 if sum_diff == 0 else math.inf)
        return GateReport(
            source=self.samples.source, samples=len(idx), reference=reference, fp32=fp32_scores,
            candidate=new_scores, mask_agreement=metrics.mask_agreement(ref, new), dice_drop=float(drop),
            max_dice_drop=self.spec.max_dice_drop, rel_l2=rel, spec=self.spec,
            per_sample_disagreement=(new != ref).reshape(len(idx), -1).sum(axis=1),
        )


def evaluate(
    fp32_path: str | os.PathLike,
    candidate_path: str | os.PathLike,
    samples,
    num_classes: int,
    max_dice_drop: float = 0.01,
    threads: int | None = None,
    spec: GateSpec | None = None,
    backend: str = "onnxruntime",
) -> GateReport:
    """Compare two ONNX files on ``samples`` (a ``deploy_unet.data.Samples``); the candidate on ``backend``."""
    spec = spec or GateSpec(max_dice_drop)
    return GateEvaluator(fp32_path, samples, num_classes, spec, threads, backend=backend).evaluate(candidate_path)
