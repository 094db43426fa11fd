"""fp32 / fp16 / int8 (both placements) of the reference checkpoints on ONNX Runtime CPU.

    PYTHONPATH=. python benchmarks/precision_cpu.py [--modelopt-path DIR] [--threads 1]

Per variant: held-out Dice/IoU (synthetic:seed=2, 256x256, vs ground truth), mask agreement with fp32,
file size, and ORT CPU latency at 256x256 batch 1 (median; all variants timed in the same run, one
after the other). With ``--modelopt-path`` (a folder where nvidia-modelopt and its onnx deps are
installed) NVIDIA ModelOpt's int8 ONNX PTQ runs on the same calibration samples for comparison, and
its Q/DQ placement is checked against the rules in deploy_unet/precision/int8.py.
Writes benchmarks/precision_cpu.md (and .json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from deploy_unet import shipped
from deploy_unet.checkpoint import load_checkpoint
from deploy_unet.data import load_samples
from deploy_unet.describe import read_model_info
from deploy_unet.export import export_onnx
from deploy_unet.machine import cpu_info, machine_info
from deploy_unet.nets.loading import build_net
from deploy_unet.precision import gate, quantize

ROOT = Path(__file__).resolve().parents[1]
CALIB, EVAL = "synthetic:seed=1,size=256x256", "synthetic:seed=2,size=256x256"


def latencies_ms(paths: dict[str, Path], x: np.ndarray, threads: int, warmup: int = 5, runs: int = 30) -> dict:
    """Median latency per file; runs are interleaved round-robin so load changes hit every variant alike."""
    sessions = {}
    for label, path in paths.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.disable_specified_optimizers", "WeightBiasQuantization")
        sessions[label] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = next(iter(sessions.values())).get_inputs()[0].name
    times: dict[str, list[float]] = {label: [] for label in sessions}
    for i in range(warmup + runs):
        for label, sess in sessions.items():
            t = time.perf_counter()
            sess.run(None, {name: x})
            if i >= warmup:
                times[label].append((time.perf_counter() - t) * 1e3)
    return {label: statistics.median(v) for label, v in times.items()}


def placement(path: Path) -> dict:
    """How a Q/DQ graph places quantization (the TensorRT rules of deploy_unet.precision.int8)."""
    m = onnx.load(path)
    g = m.graph
    prod = {o: n for n in g.node for o in n.output}
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    convs = [n for n in g.node if n.op_type in ("Conv", "ConvTranspose")]

    def dq(name):
        p = prod.get(name)
        return p if p is not None and p.op_type == "DequantizeLinear" else None

    q_in = sum(1 for n in convs if dq(n.input[0]))
    q_w = sum(1 for n in convs if dq(n.input[1]))
    ct_axis_ok = all(
        next((a.i for a in dq(n.input[1]).attribute if a.name == "axis"), 1) == 1
        for n in convs if n.op_type == "ConvTranspose" and dq(n.input[1])
    )
    concat_shared = True
    for n in g.node:
        if n.op_type == "Concat":
            scales = set()
            for i in n.input:
                d = dq(i)
                scales.add(float(inits[d.input[1]]) if d is not None and d.input[1] in inits else None)
            concat_shared &= len(scales) == 1 and None not in scales
    logits_q = prod[g.output[0].name].op_type == "DequantizeLinear"
    return {"conv_inputs_q": f"{q_in}/{len(convs)}", "conv_weights_q": f"{q_w}/{len(convs)}",
            "convtranspose_axis1": ct_axis_ok, "concat_shared_scale": concat_shared, "logits_qdq": logits_q,
            "opset": max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))}


def modelopt_int8(fp32: Path, out: Path, images: np.ndarray, modelopt_path: str) -> Path:
    """ModelOpt in a subprocess: importing it patches onnxruntime.quantization's calibrators in-process."""
    data = out.with_suffix(".calib.npy")
    np.save(data, images)
    code = (
        "import numpy as np; from modelopt.onnx.quantization import quantize as q; "
        f"q({str(fp32)!r}, quantize_mode='int8', calibration_data=np.load({str(data)!r}), "
        f"calibration_method='max', calibration_eps=['cpu'], output_path={str(out)!r}, high_precision_dtype='fp32')"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([modelopt_path, os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--eval-samples", type=int, default=32)
    p.add_argument("--modelopt-path", default=None)
    p.add_argument("--models", nargs="*", default=["unet_synthetic.pt", "fcn8s_synthetic.pt"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows, placements = [], {}
    x = None
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        tmp = Path(tmp)
        for ckpt_name in args.models:
            ckpt = load_checkpoint(ckpt_name if Path(ckpt_name).is_file() else shipped.models_dir() / ckpt_name)
            net = build_net(None, {}, ckpt).net
            fp32 = tmp / f"{ckpt.arch}.onnx"
            export_onnx(net, fp32, height=256, width=256, mean=ckpt.mean, std=ckpt.std, arch=ckpt.arch,
                        net_config=ckpt.net_config, checkpoint_sha256=ckpt.sha256)
            info = read_model_info(fp32)
            samples = load_samples(EVAL, info, args.eval_samples)
            x = samples.images[:1]
            cache = tmp / f"{ckpt.arch}.calib.json"
            variants = {"fp32": fp32}
            for label, prec, target in (("fp16", "fp16", "tensorrt"), ("int8 tensorrt", "int8", "tensorrt"),
                                        ("int8 onnxruntime", "int8", "onnxruntime")):
                res = quantize(fp32, prec, target=target, calib=CALIB, calib_samples=args.calib_samples,
                               calib_cache=cache if prec == "int8" else None, eval_source=None,
                               output=tmp / f"{ckpt.arch}.{label.replace(' ', '_')}.onnx")
                variants[label] = res.path
            if args.modelopt_path:
                calib_images = load_samples(CALIB, info, args.calib_samples).images
                variants["int8 ModelOpt"] = modelopt_int8(fp32, tmp / f"{ckpt.arch}.mo.onnx", calib_images,
                                                          args.modelopt_path)
            lat = latencies_ms(variants, x, args.threads)
            for label, path in variants.items():
                report = gate.evaluate(fp32, path, samples, info.num_classes, threads=args.threads)
                rows.append({
                    "model": ckpt_name, "variant": label, "dice": report.candidate["mean_dice"],
                    "iou": report.candidate["mean_iou"], "dice_drop": report.dice_drop,
                    "agreement": report.mask_agreement, "size_mb": path.stat().st_size / 1e6,
                    "latency_ms": lat[label], "latency_vs_fp32": lat[label] / lat["fp32"],
                })
                if label.startswith("int8"):
                    placements[f"{ckpt_name} {label}"] = placement(path)
                print(rows[-1], flush=True)
    write_report(rows, placements, args)


def write_report(rows, placements, args) -> None:
    cpu = cpu_info().describe()
    lines = [
        "# Precision on CPU: fp32 / fp16 / int8 (ONNX Runtime)",
        "",
        f"Date {datetime.date.today()}; CPU {cpu}; {platform.system()} {platform.release()}; "
        f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, torch {torch.__version__}, numpy {np.__version__}.",
        f"ORT CPU, intra-op threads {args.threads}; latency = median of 30 runs after 5 warm-up, 256x256, batch 1, "
        "all variants of a model timed in the same run, interleaved round-robin. Accuracy: "
        f"{args.eval_samples} held-out scenes `{EVAL}` vs ground truth; calibration {args.calib_samples} scenes `{CALIB}`.",
        "",
        "    " + "PYTHONPATH=. python benchmarks/precision_cpu.py " + " ".join(sys.argv[1:]),
        "",
        "| model | variant | Dice | IoU | Dice drop | mask agreement | size MB | latency ms | vs fp32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['dice']:.4f} | {r['iou']:.4f} | {r['dice_drop']:+.4f} | "
            f"{r['agreement']:.4f} | {r['size_mb']:.2f} | {r['latency_ms']:.1f} | {r['latency_vs_fp32']:.2f}x |"
        )
    lines += ["", "Q/DQ placement of the int8 files (rules: deploy_unet/precision/int8.py):", "",
              "| file | Conv inputs Q/DQ | Conv weights Q/DQ | ConvTranspose axis 1 | Concat one scale | logits Q/DQ | opset |",
              "|---|---|---|---|---|---|---|"]
    for k, v in placements.items():
        lines.append(f"| {k} | {v['conv_inputs_q']} | {v['conv_weights_q']} | {v['convtranspose_axis1']} | "
                     f"{v['concat_shared_scale']} | {v['logits_qdq']} | {v['opset']} |")
    out = ROOT / "benchmarks" / "precision_cpu.md"
    out.write_text("\n".join(lines) + "\n")
    (ROOT / "benchmarks" / "precision_cpu.json").write_text(json.dumps({"rows": rows, "placement": placements, "machine": machine_info(args.threads)}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
