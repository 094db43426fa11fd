"""The model zoo (tests/zoo_nets.py) from PyTorch to fp32/fp16/int8 ONNX on CPU, per net, the way a user runs it.

    . .venv-zoo/bin/activate      # torch + torchvision first, then pip install -e ".[zoo,dev]" (see .ci/run)
    PYTHONPATH=. python benchmarks/zoo.py [--size 256] [--nets a,b] [--threads 2] [--wait-quiet]

Per net: ``export_onnx`` on defaults (all axes dynamic, the export size square on purpose) or, where defaults
cannot work, the one error line and the options it names; the export's wall time and its parity (max abs
error vs PyTorch) at every shape it checked (the traced sample, one shape per dynamic axis changed on its
own, the export shape); fp16 and int8 in both placements (tensorrt, onnxruntime) calibrated on
synthetic:seed=1, each validated against the fp32 ONNX on ONNX Runtime at another size (rel L2, mask
agreement); ORT CPU latency of fp32 vs the ORT-placement int8 at the export size, batch 1, interleaved
round-robin in one run so the ratio holds on a busy machine. Weights are random (nothing is downloaded).
Writes benchmarks/zoo.md and benchmarks/zoo.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.precision_cpu import latencies_ms  # noqa: E402
from deploy_unet.errors import DeployUnetError  # noqa: E402
from deploy_unet.export import export_onnx  # noqa: E402
from deploy_unet.precision import quantize  # noqa: E402
from deploy_unet.validate import validate_artifacts  # noqa: E402
from tests.zoo_nets import ZOO, ZooNet  # noqa: E402

VARIANTS = (("fp16", "fp16", "tensorrt"), ("int8 tensorrt", "int8", "tensorrt"), ("int8 onnxruntime", "int8", "onnxruntime"))


def dynamic_of(net: ZooNet) -> str:
    opts = list(net.export_options)
    return opts[opts.index("--dynamic") + 1] if "--dynamic" in opts else "all"


def run_net(net: ZooNet, size: int, folder: Path, args) -> dict:
    if "img_size" in net.args:  # a net built for one size (UNETR's positional embedding): build it for this one
        net = dataclasses.replace(net, args={**net.args, "img_size": size})
    row: dict = {"name": net.name, "model": net.model, "args": {k: repr(v) for k, v in net.args.items()},
                 "divisor": net.divisor, "covers": list(net.covers), "note": net.note}
    if not net.available:
        row["error"] = f"not installed ({net.library})"
        return row
    out = folder / f"{net.name}.onnx"
    torch.manual_seed(0)
    model = net.build()
    params = sum(p.numel() for p in model.parameters())
    row["parameters"] = params
    if net.refused_on_defaults:
        start = time.perf_counter()
        try:
            export_onnx(model, out, height=size, width=size, divisor=net.divisor, arch=f"custom:{net.model}")
            row["defaults"] = "exported (expected a refusal: the table's note is stale)"
        except DeployUnetError as exc:
            row["defaults"] = f"error: {exc}"
            row["defaults_seconds"] = time.perf_counter() - start
    dynamic = dynamic_of(net)
    start = time.perf_counter()
    try:
        result = export_onnx(model, out, height=size, width=size, divisor=net.divisor, dynamic=dynamic,
                             arch=f"custom:{net.model}")
    except Exception as exc:  # record why, go on with the next net
        row["error"] = f"export: {exc}"
        row["traceback"] = traceback.format_exc(limit=3)
        return row
    row["dynamic"] = dynamic
    row["export_seconds"] = time.perf_counter() - start
    row["export_stages"] = result.stages.as_dict()
    row["trace_shape"] = "x".join(map(str, result.trace_shape))
    row["parity"] = result.parity
    other = f"{size}x{size}" if dynamic in ("batch", "none") else f"{size + 2 * net.divisor}x{size + net.divisor}"
    row["validated_at"] = other
    files = {"fp32": out}
    for label, precision, target in VARIANTS:
        start = time.perf_counter()
        try:
            q = quantize(out, precision, target=target, calib=f"synthetic:seed=1,size={size}x{size}",
                         calib_samples=args.calib_samples, eval_source=None, progress=False, threads=args.threads)
            report = validate_artifacts(str(q.path), out, data=f"synthetic:seed=3,size={other}",
                                        samples=args.eval_samples, progress=False, threads=args.threads)
            parity = report.outputs[0]
            row[label] = {"rel_l2": parity.rel_l2, "mask_agreement": parity.mask_agreement,
                          "seconds": time.perf_counter() - start, "kept_fp32": len(q.kept_fp32)}
            files[label] = q.path
        except Exception as exc:
            row[label] = {"error": str(exc).splitlines()[0]}
    if "int8 onnxruntime" in files:
        x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        lat = latencies_ms({"fp32": files["fp32"], "int8 onnxruntime": files["int8 onnxruntime"]}, x,
                           args.threads, warmup=3, runs=args.runs)
        row["latency_ms"] = lat
    return row


def wait_quiet(limit_s: float = 900, threshold: float = 1.5) -> float:
    start = time.time()
    while time.time() - start < limit_s and os.getloadavg()[0] >= threshold:
        time.sleep(60)
    return os.getloadavg()[0]


def fmt(value, spec=".2e") -> str:
    return "—" if value is None else format(value, spec)


def write_report(rows: list[dict], args, load_start: float, seconds: float) -> None:
    from deploy_unet.machine import machine_info, machine_line

    versions = {}
    for name in ("monai", "segmentation_models_pytorch", "timm", "torchvision", "onnx", "onnxslim", "onnxscript"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:
            versions[name] = "not installed"
    machine = machine_line(machine_info(args.threads))
    today = datetime.date.today().isoformat()
    load_end = os.getloadavg()[0]
    lines = [
        "# Model zoo on CPU: export on defaults, parity per dynamic axis, fp16/int8 accuracy, ORT latency",
        "",
        f"Date {today}; {machine}; " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        f"1-minute load average: {load_start:.2f} at the start, {load_end:.2f} at the end (a shared 2-core machine: "
        "wall times are this machine's at that load; the latency ratio is from one interleaved run).",
        f"Export size {args.size}x{args.size} (square on purpose), weights random (`encoder_weights=None`), "
        f"{NUM_CLASSES} classes; calibration {args.calib_samples} scenes `synthetic:seed=1`; validation "
        f"{args.eval_samples} scenes `synthetic:seed=3` at another size vs the fp32 ONNX on ONNX Runtime CPU; "
        f"latency: ORT CPU, {args.threads} intra-op threads, batch 1, median of {args.runs} interleaved runs. "
        f"Whole run {seconds / 60:.1f} min.",
        "",
        f"    PYTHONPATH=. python benchmarks/zoo.py --size {args.size} --threads {args.threads}",
        "",
        "Mask agreement of random-weight nets is a floor, not a forecast: their class margins are small, so an argmax"
        " flips under noise a trained net absorbs; rel L2 does not depend on margins.",
        "",
        "| net | covers | export | export s | parity (max abs err) per shape | fp16 rel L2 / masks % | int8 TRT rel L2 / masks % "
        "| int8 ORT rel L2 / masks % | ORT ms fp32 → int8 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | {'; '.join(r['covers'])} | **fails**: {r['error']} | | | | | | |")
            continue
        export = "defaults" if r["dynamic"] == "all" else f"`--dynamic {r['dynamic']}` (defaults refused)"
        parity = ", ".join(f"{k}: {v:.1e}" for k, v in r["parity"].items())
        cells = []
        for label, _, _ in VARIANTS:
            v = r.get(label, {})
            cells.append(v["error"] if "error" in v else f"{v['rel_l2']:.2e} / {v['mask_agreement']:.1f}")
        lat = r.get("latency_ms", {})
        latency = (f"{lat['fp32']:.1f} → {lat['int8 onnxruntime']:.1f} ({lat['int8 onnxruntime'] / lat['fp32']:.2f}x)"
                   if lat else "—")
        lines.append(f"| {r['name']} | {'; '.join(r['covers'])} | {export} | {r['export_seconds']:.1f} | {parity} | "
                     + " | ".join(cells) + f" | {latency} |")
    lines += ["", "## What needed a fix, and what cannot work on defaults", ""]
    for r in rows:
        if r.get("defaults") or r.get("note"):
            lines.append(f"- **{r['name']}**: {r.get('note', '')}")
            if r.get("defaults"):
                lines.append(f"  - on defaults: `{r['defaults']}`")
    lines += [
        "- **every net**: traced at batch 1 or at a square size, torch.export bakes the batch (0/1 specialization) or "
        "assumes H == W (one symbol for equal sizes) in some graphs (smp Segformer: a Reshape fails at batch 2, "
        "`Input shape:{2,32,16,24}, requested shape:{2,16,384}`); export now traces a sample with every dynamic axis "
        ">= 2 and the dynamic axes distinct (`trace_shape` in zoo.json), and checks each axis on its own.",
        "- **monai-swinunetr, int8 onnxruntime**: `quant_pre_process`'s symbolic shape inference (`auto_merge`) gave two "
        "window-padded sizes that agree only at the calibration shape one dim_param; ONNX Runtime's allocator trusts "
        "value_info and failed at 288x320 (`Shape mismatch attempting to re-use buffer. {1,160,144,12} != "
        "{1,160,147,12}`, the message of microsoft/onnxruntime#2756); the ORT-placement file now carries no "
        "value_info (ORT infers shapes itself).",
        "- **monai-segresnet, int8 onnxruntime**: the exporter shares one bias constant among all GroupNorms "
        "(InstanceNormalization); `quantize_static` duplicates shared biases under `<name><n>` checked against "
        "initializers only, which hit an activation's name (`val_25` -> `val_253`) and broke SSA "
        "(https://github.com/microsoft/onnxruntime/issues/24705); each node now gets its own bias first "
        "(`precision.int8.unshare_biases`).",
        "",
        "Per net, the export's stage times and the traced sample are in `zoo.json`.",
    ]
    (ROOT / "benchmarks" / "zoo.md").write_text("\n".join(lines) + "\n")
    payload = {"date": today, "machine": machine_info(args.threads), "versions": versions, "size": args.size,
               "load_start": load_start, "load_end": load_end, "rows": rows}
    (ROOT / "benchmarks" / "zoo.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")


NUM_CLASSES = 4


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--nets", default="", help="comma-separated names (default: every net of tests/zoo_nets.py); "
                   "their rows replace those of an existing zoo.json")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--eval-samples", type=int, default=8)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--wait-quiet", action="store_true", help="wait up to 15 min for a 1-minute load below 1.5")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load = wait_quiet() if args.wait_quiet else os.getloadavg()[0]
    wanted = [n for n in args.nets.split(",") if n]
    nets = [n for n in ZOO if not wanted or n.name in wanted]
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="deploy-unet-zoo-") as tmp:
        for net in nets:
            print(f"{net.name} ...", flush=True)
            rows.append(run_net(net, args.size, Path(tmp), args))
            print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("traceback",)}, default=str)[:600],
                  flush=True)
    previous = ROOT / "benchmarks" / "zoo.json"
    if wanted and previous.is_file():  # a partial re-run replaces its nets' rows and keeps the others
        old = {r["name"]: r for r in json.loads(previous.read_text())["rows"]}
        old.update({r["name"]: r for r in rows})
        rows = [old[n.name] for n in ZOO if n.name in old]
    write_report(rows, args, load, time.perf_counter() - start)
    print(f"wrote {ROOT / 'benchmarks' / 'zoo.md'}")


if __name__ == "__main__":
    main()
