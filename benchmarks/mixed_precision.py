"""Mixed precision by auto-fallback on trained nets: plain int8 vs the fewest layers kept in higher precision.

    PYTHONPATH=. python benchmarks/mixed_precision.py              # trains what is missing, then measures
    PYTHONPATH=. python benchmarks/mixed_precision.py --train-only

Needs MONAI (``pip install monai``: pure torch; check that it keeps your torch build).

Nets (all trained briefly here on the synthetic scenes with models/train.py's loop, single-threaded; the
checkpoints go to benchmarks/scratch/, git-ignored): the reference UNet without BatchNorm, MONAI's UNet
(residual units, InstanceNorm, PReLU) and AttentionUnet (attention gates: Sigmoid, Mul), and the shipped
reference UNet (BatchNorm) as the control that needs no fallback.

Per net and int8 placement: the gate (mask agreement >= 99 % and Dice drop vs ground truth <= 0.005 on
`synthetic:seed=2`, the search's data) of plain int8 and of auto-fallback, the layers kept, the
search's evaluations and wall time; the same files re-checked on unseen scenes (`synthetic:seed=4`);
ONNX Runtime CPU latency of fp32 / plain int8 / auto-fallback int8 (ONNX Runtime placement, interleaved
round-robin in one run, batch 1). Writes benchmarks/mixed_precision.{md,json} and mixed_precision.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "models"))

from benchmarks.precision_cpu import latencies_ms  # noqa: E402  # the same interleaved timing as the other CPU tables
from deploy_unet.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from deploy_unet.data import load_samples  # noqa: E402
from deploy_unet.describe import read_model_info  # noqa: E402
from deploy_unet.export import export_onnx  # noqa: E402
from deploy_unet.machine import machine_info  # noqa: E402
from deploy_unet.nets.loading import build_net  # noqa: E402
from deploy_unet.precision import gate, quantize  # noqa: E402

SCRATCH = ROOT / "benchmarks" / "scratch" / "mixed_precision"
SIZE = 128
CALIB, EVAL, CHECK = (f"synthetic:seed={s},size={SIZE}x{SIZE}" for s in (1, 2, 4))
GATE = dict(min_mask_agreement=99.0, max_dice_drop=0.005)
TRAIN = dict(steps=800, batch=8, size=48, lr=3e-3)
NETS = {
    "unet-nobn": {"kind": "reference", "arch": "unet",
                  "options": dict(depth=3, base_channels=16, up_mode="transpose", norm="none")},
    "fcn8s-nobn": {"kind": "reference", "arch": "fcn8s", "train": {"size": 64},
                   "options": dict(width_mult=0.25, fc_channels=512, norm="none", dropout=0.1)},
    "monai-unet": {"kind": "monai", "class": "UNet", "divisor": 8,
                   "kwargs": dict(spatial_dims=2, in_channels=3, out_channels=4, channels=(16, 32, 64, 128),
                                  strides=(2, 2, 2), num_res_units=1)},
    "monai-attentionunet": {"kind": "monai", "class": "AttentionUnet", "divisor": 8,
                            "kwargs": dict(spatial_dims=2, in_channels=3, out_channels=4, channels=(8, 16, 32, 64),
                                           strides=(2, 2, 2))},
    "monai-flexunet-effb0": {"kind": "monai", "class": "FlexibleUNet", "divisor": 32, "train": {"size": 64},
                             "kwargs": dict(in_channels=3, out_channels=4, backbone="efficientnet-b0",
                                            pretrained=False, spatial_dims=2, decoder_channels=(64, 32, 16, 16, 8))},
    "unet-hotpixels": {"kind": "reference", "arch": "unet", "hot_pixels": True,
                       "options": dict(depth=3, base_channels=16, up_mode="transpose", norm="batch")},
    "unet-shipped": {"kind": "shipped", "path": ROOT / "models" / "unet_synthetic.pt"},
}
# Hot pixels (specular highlights, sensor defects, metal in CT): this share of pixels, in all channels, at this
# many times the scenes' full brightness. In training, calibration and evaluation data alike.
HOT_SHARE, HOT_VALUE = 0.002, 50.0


def hot_pixels(images: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng([7, seed])
    out = images.copy()
    n, _, h, w = out.shape
    hot = rng.random((n, h, w)) < HOT_SHARE
    out[np.broadcast_to(hot[:, None], out.shape)] = HOT_VALUE
    return out


def hot_source(seed: int, n: int) -> str:
    """``synthetic:seed=S,size=SIZE`` scenes with hot pixels, as an .npz source (images, masks) in SCRATCH."""
    from deploy_unet.data import SyntheticSpec, synthetic_batch

    path = SCRATCH / f"hot_seed{seed}_{SIZE}px_{n}.npz"
    if not path.is_file():
        images, masks = synthetic_batch(SyntheticSpec(seed=seed, height=SIZE, width=SIZE), 0, n, 4)
        np.savez(path, images=hot_pixels(images, 10**6 + seed), masks=masks)
    return str(path)


def make_net(spec: dict):
    if spec["kind"] == "reference":
        from deploy_unet.nets import create_net

        return create_net(spec["arch"], in_channels=3, num_classes=4, **spec["options"])
    import monai.networks.nets as monai_nets

    return getattr(monai_nets, spec["class"])(**spec["kwargs"])


def train(name: str, spec: dict) -> Path:
    """The checkpoint of ``name``, trained now if missing (models/train.py's loop, seed 0, one thread)."""
    if spec["kind"] == "shipped":
        return spec["path"]
    from train import evaluate, fit, training_normalization

    path = SCRATCH / f"{name}.pt"
    if path.is_file():
        return path
    torch.manual_seed(0)
    net = make_net(spec)
    cfg = {**TRAIN, **spec.get("train", {})}
    mean, std = training_normalization(cfg["size"], 4)
    print(f"training {name} ({sum(p.numel() for p in net.parameters()):,} parameters)", flush=True)
    transform = (lambda images, step: hot_pixels(images, step)) if spec.get("hot_pixels") else None
    seconds = fit(net, mean, std, **cfg, num_classes=4, transform=transform,
                  log=lambda m: print(f"  {name}: {m}", flush=True))
    heldout = evaluate(net, mean, std, 4, 32, 256)  # clean scenes
    save_checkpoint(path, net, mean=mean, std=std, extra={
        "training": {**cfg, "seconds": round(seconds, 1), "data": f"synthetic:seed=0,size={cfg['size']}",
                     "heldout_mean_dice": heldout["mean_dice"]},
        "bench_net": name})
    print(f"  {name}: held-out Dice {heldout['mean_dice']:.4f} after {seconds / 60:.1f} min", flush=True)
    return path


def export(name: str, spec: dict, ckpt_path: Path, out: Path) -> tuple[Path, dict]:
    ckpt = load_checkpoint(ckpt_path)
    if spec["kind"] == "monai":
        net = make_net(spec)
        net.load_state_dict(ckpt.state_dict)
        kwargs = dict(arch=f"monai.{spec['class']}", divisor=spec["divisor"], in_channels=3)
    else:
        net = build_net(None, {}, ckpt).net
        kwargs = dict(arch=ckpt.arch, net_config=ckpt.net_config, checkpoint_sha256=ckpt.sha256)
    path = out / f"{name}.onnx"
    export_onnx(net.eval(), path, height=SIZE, width=SIZE, mean=ckpt.mean, std=ckpt.std, **kwargs)
    return path, (ckpt.extra or {}).get("training", {})


def check(fp32: Path, candidate: Path, samples, num_classes: int) -> dict:
    spec = gate.GateSpec(GATE["max_dice_drop"], GATE["min_mask_agreement"])
    r = gate.evaluate(fp32, candidate, samples, num_classes, spec=spec)
    return {"mask_agreement": 100 * r.mask_agreement, "dice_drop": r.dice_drop, "passed": r.passed}


def measure(name: str, spec: dict, ckpt: Path, out: Path, args) -> dict:
    fp32, training = export(name, spec, ckpt, out)
    info = read_model_info(fp32)
    calib, evaluation, unseen_source = CALIB, EVAL, CHECK
    if spec.get("hot_pixels"):
        calib, evaluation, unseen_source = (hot_source(s, n) for s, n in
                                            ((1, args.calib_samples), (2, args.eval_samples), (4, args.eval_samples)))
    unseen = load_samples(unseen_source, info, args.eval_samples)
    cache = out / f"{name}.calib.json"  # one calibration per run, shared by both placements and searches
    cache.unlink(missing_ok=True)
    common = dict(calib=calib, calib_samples=args.calib_samples, calib_cache=cache, eval_source=evaluation,
                  eval_samples=args.eval_samples, progress=False, threads=args.threads, **GATE)
    row = {"net": name, "kind": spec["kind"], "training": training, "placements": {}}
    files = {"fp32": fp32}
    for target in ("tensorrt", "onnxruntime"):
        suffix = "int8" if target == "tensorrt" else "int8.ort"
        plain = quantize(fp32, "int8", target=target, output=out / f"{name}.{suffix}.onnx", **common)
        entry = {"plain": _gate(plain.gate), "plain_unseen": check(fp32, plain.path, unseen, info.num_classes)}
        for rank in ("revert", "local") if target == "tensorrt" else ("revert",):
            lines: list[str] = []
            auto = quantize(fp32, "int8", target=target, output=out / f"{name}.{suffix}.auto-{rank}.onnx",
                            auto_fallback=True, rank=rank, log=lines.append, **common)
            f = auto.fallback
            entry[f"auto_{rank}"] = {
                **_gate(auto.gate), "kept": f.kept, "summary": f.summary, "line": f.summary_line(),
                "kept_layers": {g.node: f"{g.layer} ({g.op})" for g in f.groups if g.node in f.kept},
                "evaluations": f.evaluations, "full_evaluations": f.full_evaluations,
                "subset_evaluations": f.subset_evaluations, "seconds": round(f.seconds, 1),
                "groups": len(f.groups), "steps": lines,
                "unseen": check(fp32, auto.path, unseen, info.num_classes),
                "trials": [t.__dict__ for t in f.trials],
            }
            if rank == "revert":
                entry["_result"] = f
                files[f"int8 {target} auto"] = auto.path
        files[f"int8 {target}"] = plain.path
        row["placements"][target] = entry
    row["sweep"] = sweep(fp32, info, calib, evaluation, cache, args, out / f"{name}.sweep.onnx")
    x = load_samples(evaluation, info, 1).images
    lat_files = {k: v for k, v in files.items() if k in ("fp32", "int8 onnxruntime", "int8 onnxruntime auto")}
    row["latency_ms"] = latencies_ms(lat_files, x, args.threads, runs=40)
    return row


def sweep(fp32: Path, info, calib: str, evaluation: str, cache: Path, args, scratch: Path) -> list[dict]:
    """Accuracy against the share of int8 conv layers (tensorrt placement, fp16 fallback): groups reverted k at
    a time in order of the local error each adds (one layer-wise pass over 4 evaluation scenes), k = 0 .. all."""
    import onnx

    from deploy_unet.precision import calibration, mixed
    from deploy_unet.precision.layerwise import compare_layers

    model = mixed.name_nodes(onnx.load(fp32))
    calib_result, _ = calibration.calibrate(model, info, calib, args.calib_samples, cache=cache, progress=False)
    samples = load_samples(evaluation, info, args.eval_samples)
    evaluator = gate.GateEvaluator(fp32, samples, info.num_classes,
                                   gate.GateSpec(GATE["max_dice_drop"], GATE["min_mask_agreement"]), args.threads)
    groups = mixed.groups_for(model, "int8", "tensorrt")
    plain, _ = mixed.build(model, calib_result, "int8", "tensorrt")
    onnx.save(plain, scratch)
    (layers,) = compare_layers(fp32, [scratch], (samples.images[i : i + 1] for i in range(4)), threads=args.threads)
    noise = {x.node: x.local_rel_l2 or 0.0 for x in layers.layers}
    order = sorted(groups, key=lambda g: -noise.get(g.node, 0.0))
    ks = sorted({0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, len(order)} & set(range(len(order) + 1)))
    points = []
    for k in ks:
        kept = {g.node for g in order[:k]}
        built, _ = mixed.build(model, calib_result, "int8", "tensorrt", kept, "fp16")
        onnx.save(built, scratch)
        r = evaluator.evaluate(scratch)
        summary = mixed.precision_summary(built, "int8", "tensorrt", kept)
        points.append({"kept": k, "share_int8": summary["conv_layers_low_precision"] / summary["conv_layers"],
                       "mask_agreement": 100 * r.mask_agreement, "dice_drop": r.dice_drop})
    scratch.unlink(missing_ok=True)
    return points


def plot(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), dpi=110)
    for k, r in enumerate(rows):
        xs = [p["share_int8"] for p in r["sweep"]]
        a = r["placements"]["tensorrt"]["auto_revert"]
        share = a["summary"]["conv_layers_low_precision"] / a["summary"]["conv_layers"]
        for ax, key, value in ((axes[0], "mask_agreement", a["mask_agreement"]), (axes[1], "dice_drop", a["dice_drop"])):
            ax.plot(xs, [p[key] for p in r["sweep"]], "o-", color=f"C{k}", ms=3, lw=1.2, label=r["net"])
            ax.plot([share], [value], "*", color=f"C{k}", ms=13, mec="black")
    axes[0].axhline(GATE["min_mask_agreement"], color="gray", ls="--", lw=1)
    axes[1].axhline(GATE["max_dice_drop"], color="gray", ls="--", lw=1)
    axes[0].set_ylabel("mask agreement with fp32 (%)")
    axes[1].set_ylabel("Dice drop vs ground truth")
    axes[1].set_yscale("symlog", linthresh=1e-3)
    for ax in axes:
        ax.set_xlabel("share of conv layers in int8 (the rest fp16)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle("Layers reverted to fp16 in order of local error (lines); the auto-fallback result (stars); gate (dashed)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _gate(r) -> dict:
    return {"mask_agreement": 100 * r.mask_agreement, "dice_drop": r.dice_drop, "passed": r.passed,
            "checks": [c.describe() for c in r.checks]}


def render(rows: list[dict], meta: dict) -> str:
    m = meta["machine"]
    lines = [
        "# Mixed precision by auto-fallback (CPU)", "",
        f"Date {meta['date']}; {m['cpu']} ({m['cpus']}; {m['cpu_isa']}), {m['platform']}; load average "
        f"(1/5/15 min) before {meta['load_before']}, after {meta['load_after']}; "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + f"; whole run {meta['seconds'] / 60:.1f} min.",
        f"Gate: mask agreement with fp32 >= {GATE['min_mask_agreement']:g} % and Dice drop vs ground truth <= "
        f"{GATE['max_dice_drop']:g}, on {meta['eval_samples']} scenes `{EVAL}` (the data the search measures); "
        f"calibration {meta['calib_samples']} scenes `{CALIB}` (minmax); re-checked on {meta['eval_samples']} unseen "
        f"scenes `{CHECK}`. Latency: ONNX Runtime CPU, {meta['threads']} thread(s), batch 1, {SIZE}x{SIZE}, median "
        "of 40 runs after 5 warm-up, the three files interleaved round-robin in one run.", "",
        f"    {meta['command']}", "",
        "Nets, trained for this benchmark on `synthetic:seed=0` crops "
        f"({TRAIN['steps']} steps x batch {TRAIN['batch']}, {TRAIN['size']}x{TRAIN['size']} crops (64x64 for the "
        "EfficientNet, divisor 32), one thread); the shipped "
        "reference UNet (BatchNorm, 1600 steps) is the control:", "",
        "| net | what | conv layers | training | held-out Dice (fp32, 256x256, clean scenes) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["training"]
        conv = r["placements"]["tensorrt"]["auto_revert"]["summary"]["conv_layers"]
        took = f"{t['seconds'] / 60:.1f} min" if "seconds" in t else "its model card"
        lines.append(f"| {r['net']} | {DESCRIPTION[r['net']]} | {conv} | {t.get('steps', '?')} steps, {took} | "
                     f"{t.get('heldout_mean_dice', float('nan')):.4f} |")
    lines += ["", "## Findings", ""] + findings(rows) + ["", "## Plain int8 vs auto-fallback", "",
              "| net | placement | file | mask agreement % | Dice drop | gate | conv layers int8 | kept in higher precision | "
              "evaluations (all / worst-8) | search s | unseen: agreement % / Dice drop |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for target, e in r["placements"].items():
            p = e["plain"]
            lines.append(f"| {r['net']} | {target} | plain int8 | {p['mask_agreement']:.2f} | {p['dice_drop']:+.4f} | "
                         f"{'pass' if p['passed'] else 'FAIL'} | all | - | - | - | "
                         f"{e['plain_unseen']['mask_agreement']:.2f} / {e['plain_unseen']['dice_drop']:+.4f} |")
            for rank in ("revert", "local"):
                a = e.get(f"auto_{rank}")
                if a is None:
                    continue
                kept = ", ".join(f"`{k}` {a['kept_layers'].get(k, '')}" for k in a["kept"]) or "none"
                fb = "fp16" if target == "tensorrt" else "fp32"
                lines.append(
                    f"| {r['net']} | {target} | auto-fallback ({rank}) | {a['mask_agreement']:.2f} | {a['dice_drop']:+.4f} | "
                    f"{'pass' if a['passed'] else 'FAIL'} | {a['summary']['conv_layers_low_precision']} of "
                    f"{a['summary']['conv_layers']} | {kept} ({fb}) | {a['full_evaluations']} / {a['subset_evaluations']} | "
                    f"{a['seconds']:.1f} | {a['unseen']['mask_agreement']:.2f} / {a['unseen']['dice_drop']:+.4f} |")
    lines += ["", "## ONNX Runtime CPU latency (onnxruntime placement)", "",
              "| net | fp32 ms | plain int8 ms | auto-fallback int8 ms | plain vs fp32 | auto vs fp32 |", "|---|---|---|---|---|---|"]
    for r in rows:
        lat = r["latency_ms"]
        f32, plain, auto = lat["fp32"], lat["int8 onnxruntime"], lat["int8 onnxruntime auto"]
        lines.append(f"| {r['net']} | {f32:.2f} | {plain:.2f} | {auto:.2f} | {plain / f32:.2f}x | {auto / f32:.2f}x |")
    lines += ["", "## Accuracy against the share of int8 layers", "",
              "![accuracy vs share of int8 conv layers](mixed_precision.png)", "",
              "TensorRT placement, groups reverted to fp16 k at a time in order of the local error each adds "
              "(`validate --per-layer` on 4 evaluation scenes), measured on the gate's scenes; stars: the "
              "auto-fallback result (`--rank revert`).", "",
              "| net | " + " | ".join(f"k={k}" for k in (0, 1, 2, 4, 8)) + " | all |", "|---|" + "---|" * 6]
    for r in rows:
        pts = {p["kept"]: p for p in r["sweep"]}
        cells = [f"{pts[k]['mask_agreement']:.2f}" if k in pts else "-" for k in (0, 1, 2, 4, 8)]
        lines.append(f"| {r['net']} | " + " | ".join(cells) + f" | {r['sweep'][-1]['mask_agreement']:.2f} |")
    lines += ["", "(mask agreement %, k groups reverted)", "", "## Search steps (tensorrt placement, --rank revert)", ""]
    for r in rows:
        lines += [f"**{r['net']}**", "", "```"] + r["placements"]["tensorrt"]["auto_revert"]["steps"] + ["```", ""]
    return "\n".join(lines) + "\n"


def findings(rows: list[dict]) -> list[str]:
    """What the tables say, computed from them (so a re-recording keeps the text true)."""
    out = []
    for target in ("tensorrt", "onnxruntime"):
        failing = [r for r in rows if not r["placements"][target]["plain"]["passed"]]
        out.append(f"- {target} placement: plain int8 fails the gate on {len(failing)} of {len(rows)} nets"
                   + (f" ({', '.join(r['net'] for r in failing)})" if failing else "") + ".")
        for r in failing:
            e = r["placements"][target]
            a = e["auto_revert"]
            out.append(
                f"  - {r['net']}: plain {e['plain']['mask_agreement']:.2f} % / Dice drop {e['plain']['dice_drop']:+.4f}; "
                f"auto-fallback keeps {len(a['kept'])} of {a['groups']} groups "
                f"({', '.join(a['kept_layers'].get(k, k) for k in a['kept'])}) in "
                f"{'fp16' if target == 'tensorrt' else 'fp32'}: {a['mask_agreement']:.2f} % / {a['dice_drop']:+.4f}, "
                f"{'passes' if a['passed'] else 'FAILS'}; on unseen scenes {a['unseen']['mask_agreement']:.2f} % / "
                f"{a['unseen']['dice_drop']:+.4f} ({'passes' if a['unseen']['passed'] else 'fails'}); "
                f"{a['full_evaluations']} full + {a['subset_evaluations']} worst-8 evaluations, {a['seconds']:.1f} s.")
            local = e.get("auto_local")
            if local is not None:
                first = next((p["kept"] for p in r["sweep"]
                              if p["mask_agreement"] >= GATE["min_mask_agreement"] and p["dice_drop"] <= GATE["max_dice_drop"]),
                             None)
                out.append(
                    f"  - reverting in order of local error alone first meets the gate at k = {first} groups; "
                    f"`--rank local` (that order, with the greedy undo and the prune pass) ends at {len(local['kept'])} "
                    f"({local['full_evaluations']} evaluations, {local['seconds']:.1f} s). Local SQNR / rel L2 are "
                    "energy ratios: where a few large values hold most of a tensor's energy (here the hot pixels), "
                    "a layer whose int8 keeps them and flattens everything else (an input step of "
                    f"{HOT_VALUE:g}/127 of the scene's full brightness) scores well; reverting each group alone "
                    "measures the gate itself, which is why `--rank revert` is the default.")
    out.append("- When plain int8 passes, `--auto-fallback` costs one evaluation and changes nothing (the same "
               "graph as the plain file; only its metadata differs).")
    out.append("- Latency: for a net that needed no fallback the two int8 files are the same graph, so their "
               "difference in the latency table is this machine's noise within one interleaved run.")
    return out


DESCRIPTION = {
    "unet-nobn": "reference UNet, `--norm none`, depth 3, 16 channels, ConvTranspose up",
    "fcn8s-nobn": "reference FCN-8s, `--norm none`, width 0.25, fc 512 (x0.25): coarse logits fused and upsampled x8 "
                  "by a ConvTranspose",
    "monai-unet": "MONAI `UNet` (16..128 ch, 1 residual unit, InstanceNorm, PReLU)",
    "monai-attentionunet": "MONAI `AttentionUnet` (8..64 ch, attention gates)",
    "monai-flexunet-effb0": "MONAI `FlexibleUNet`, EfficientNet-B0 encoder (depthwise convs, SiLU as x*sigmoid, "
                            "squeeze-excitation), no pretrained weights",
    "unet-hotpixels": f"reference UNet (BatchNorm, depth 3, 16 channels) trained and evaluated on scenes with hot pixels "
                      f"({100 * HOT_SHARE:g} % of pixels at {HOT_VALUE:g}x full brightness: highlights, sensor defects)",
    "unet-shipped": "shipped `models/unet_synthetic.pt` (BatchNorm, depth 4)",
}


def versions() -> dict:
    import monai
    import onnx

    return {"python": sys.version.split()[0], "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": ort.__version__, "numpy": np.__version__, "monai": monai.__version__}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", nargs="*", default=list(NETS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--eval-samples", type=int, default=16)
    p.add_argument("--train-only", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    SCRATCH.mkdir(parents=True, exist_ok=True)
    ckpts = {name: train(name, NETS[name]) for name in args.nets}
    if args.train_only:
        return
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    start = time.time()
    rows = []
    out = SCRATCH / "onnx"
    out.mkdir(exist_ok=True)
    for name in args.nets:
        print(f"measuring {name}", flush=True)
        rows.append(measure(name, NETS[name], ckpts[name], out, args))
    for r in rows:
        for entry in r["placements"].values():
            entry.pop("_result", None)
    plot(ROOT / "benchmarks" / "mixed_precision.png", rows)
    meta = {
        "date": datetime.date.today().isoformat(), "machine": machine_info(args.threads),
        "load_before": " ".join(load_before), "load_after": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "threads": args.threads, "calib_samples": args.calib_samples, "eval_samples": args.eval_samples,
        "command": "PYTHONPATH=. python benchmarks/mixed_precision.py " + " ".join(sys.argv[1:]),
        "seconds": round(time.time() - start, 1), "versions": versions(),
    }
    (ROOT / "benchmarks" / "mixed_precision.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (ROOT / "benchmarks" / "mixed_precision.md").write_text(render(rows, meta))
    print(f"wrote benchmarks/mixed_precision.md in {meta['seconds']:.0f} s")


if __name__ == "__main__":
    main()
