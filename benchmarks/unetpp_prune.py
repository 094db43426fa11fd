"""UNet++ per pruning level L (and --heads mean / last) beside UNet at the same width, on ONNX Runtime CPU.

    PYTHONPATH=. python benchmarks/unetpp_prune.py [--threads 1]

Exports models/unetpp_synthetic.pt as ``--heads mean``, ``--heads last`` and ``--prune L`` for L = 1..depth-1
(``--prune depth`` is the same graph as ``--heads last``), and models/unet_synthetic.pt (same depth 4, base
16); each in fp32 and int8 with both Q/DQ placements (tensorrt, onnxruntime) from one shared calibration per
graph. Per file: held-out Dice/IoU (synthetic:seed=2, 256x256, vs ground truth), mask agreement with
the file's own fp32, nodes, parameters, size, and ORT CPU latency at 256x256 batch 1 (median; every
file timed in the same run, interleaved round-robin). Writes benchmarks/unetpp_prune.md (and .json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from benchmarks.precision_cpu import latencies_ms, placement
from deploy_unet import metrics, shipped
from deploy_unet.data import load_samples
from deploy_unet.describe import read_model_info
from deploy_unet.export import export_onnx
from deploy_unet.inspection import inspect_onnx
from deploy_unet.nets.loading import load_net
from deploy_unet.precision import quantize
from deploy_unet.precision.gate import predict

ROOT = Path(__file__).resolve().parents[1]
CALIB, EVAL = "synthetic:seed=1,size=256x256", "synthetic:seed=2,size=256x256"
PRECISIONS = (("fp32", None), ("int8 tensorrt", "tensorrt"), ("int8 onnxruntime", "onnxruntime"))


def graphs(depth: int) -> list[tuple[str, str, dict]]:
    """(label, which checkpoint, output options) of every graph compared."""
    rows = [("UNet", "unet", {})]
    rows += [("UNet++ --heads mean", "unetpp", {"heads": "mean"}),
             (f"UNet++ --heads last (= L{depth})", "unetpp", {"heads": "last"})]
    rows += [(f"UNet++ --prune {L}", "unetpp", {"heads": "last", "prune": L})
             for L in reversed(range(1, depth))]
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--eval-samples", type=int, default=32)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--unetpp", type=Path, default=shipped.checkpoint("unetpp"))
    p.add_argument("--unet", type=Path, default=shipped.checkpoint("unet"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    depth = load_net(checkpoint=args.unetpp).net.depth
    rows, files, placements = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-unetpp-") as tmp:
        tmp = Path(tmp)
        for g, (label, ckpt_name, options) in enumerate(graphs(depth)):
            loaded = load_net(checkpoint=args.unet if ckpt_name == "unet" else args.unetpp, options=options)
            fp32 = tmp / f"g{g}.onnx"
            export_onnx(loaded.net, fp32, height=256, width=256, mean=loaded.mean, std=loaded.std,
                        arch=loaded.arch, net_config=loaded.net_config, checkpoint_sha256=loaded.checkpoint.sha256)
            info = read_model_info(fp32)
            samples = load_samples(EVAL, info, args.eval_samples)
            reference = predict(fp32, samples.images, threads=args.threads)
            for prec, target in PRECISIONS:
                path = fp32
                if target:
                    path = quantize(fp32, "int8", target=target, calib=CALIB, calib_samples=args.calib_samples,
                                    calib_cache=tmp / f"g{g}.calib.json", eval_source=None, progress=False,
                                    output=tmp / f"g{g}.{target}.onnx", threads=args.threads).path
                    placements[f"{label} {prec}"] = placement(path)
                pred = reference if path == fp32 else predict(path, samples.images, threads=args.threads)
                scores = metrics.summarize(pred, samples.masks, info.num_classes)
                report = inspect_onnx(path)
                key = f"{label} | {prec}"
                files[key] = path
                rows.append({
                    "graph": label, "precision": prec, "dice": scores["mean_dice"], "iou": scores["mean_iou"],
                    "dice_thin": scores["dice_per_class"][-1], "agreement": float((pred == reference).mean()),
                    "nodes": report["num_nodes"], "parameters": report["parameters"],
                    "size_mb": path.stat().st_size / 1e6, "divisor": info.divisor,
                    "output_mode": info.extra.get("output_mode", ""),
                })
                print(rows[-1], flush=True)
        x = samples.images[:1]
        print(f"timing {len(files)} files, interleaved", flush=True)
        lat = latencies_ms(files, x, args.threads, runs=args.runs)
    base = lat["UNet | fp32"]
    for r in rows:
        r["latency_ms"] = lat[f"{r['graph']} | {r['precision']}"]
        r["latency_vs_unet_fp32"] = r["latency_ms"] / base
    write_report(rows, placements, args)


def write_report(rows, placements, args) -> None:
    from deploy_unet.machine import cpu_info

    cpu = cpu_info().describe()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# UNet++ pruning levels vs UNet on CPU (ONNX Runtime): Dice and latency, fp32 and int8",
        "",
        f"Date {datetime.date.today()}; {cpu}, {platform.system()} {platform.release()}; "
        f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, torch {torch.__version__}, numpy {np.__version__}.",
        f"ORT CPU, intra-op threads {args.threads}; latency = median of {args.runs} runs after 5 warm-up, 256x256, "
        f"batch 1, all files timed in the same run, interleaved round-robin, so the ratios hold even if the machine "
        f"is busy (1-minute load average when the report was written: {load:.2f}).",
        f"Accuracy: {args.eval_samples} held-out scenes `{EVAL}` vs ground truth; agreement = pixels whose "
        f"argmax equals the same graph's fp32. Calibration: {args.calib_samples} scenes `{CALIB}`, one pass per "
        f"graph shared by both int8 placements. Checkpoints: {args.unet.name} and "
        f"{args.unetpp.name} (both depth 4, base 16).",
        "",
        "    PYTHONPATH=. python benchmarks/unetpp_prune.py " + " ".join(sys.argv[1:]),
        "",
        "| graph | precision | Dice | IoU | Dice thin | agreement vs fp32 | nodes | parameters | size MB "
        "| divisor | latency ms | vs UNet fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['graph']} | {r['precision']} | {r['dice']:.4f} | {r['iou']:.4f} | {r['dice_thin']:.4f} | "
            f"{r['agreement']:.4f} | {r['nodes']} | {r['parameters']:,} | {r['size_mb']:.2f} | {r['divisor']} | "
            f"{r['latency_ms']:.1f} | {r['latency_vs_unet_fp32']:.2f}x |"
        )
    lines += ["", "Q/DQ placement of the int8 files (rules: deploy_unet/precision/int8.py; UNet++'s Concats have "
              "up to depth+1 = 5 inputs):", "",
              "| file | Conv inputs Q/DQ | Conv weights Q/DQ | ConvTranspose axis 1 | Concat one scale | logits Q/DQ | opset |",
              "|---|---|---|---|---|---|---|"]
    for k, v in placements.items():
        lines.append(f"| {k} | {v['conv_inputs_q']} | {v['conv_weights_q']} | {v['convtranspose_axis1']} | "
                     f"{v['concat_shared_scale']} | {v['logits_qdq']} | {v['opset']} |")
    out = ROOT / "benchmarks" / "unetpp_prune.md"
    out.write_text("\n".join(lines) + "\n")
    (ROOT / "benchmarks" / "unetpp_prune.json").write_text(json.dumps({"rows": rows, "placement": placements},
                                                                       indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
