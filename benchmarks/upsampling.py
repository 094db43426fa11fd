"""Transposed convolution vs resize + conv in the UNet decoder: measured on one task and one budget.

    PYTHONPATH=. python benchmarks/upsampling.py [--work-dir build/upsampling] [--steps 600] [--threads 1]

For each ``--up-mode`` (transpose, bilinear, nearest) the same UNet (depth 4, base 16, batch norm) is
trained by ``models/train.py`` with the same data, seed, steps, batch and crop size (skipped when the
checkpoint is already in ``--work-dir``; the command is recorded either way). Then, per mode:
parameter count; held-out Dice (synthetic:seed=2, 256x256, vs ground truth) of the fp32 ONNX and of
the int8 ONNX Runtime target; the checkerboard score (``deploy_unet.metrics.checkerboard_scores``,
the share of logit-map energy on the Nyquist row/column) of every logit map, fp32 and int8; and ORT
CPU latency at 256x256 batch 1, all six files timed in one run, interleaved round-robin.
Writes benchmarks/upsampling.md, .json and upsampling.png (one logit map per mode and its spectrum).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from benchmarks.precision_cpu import latencies_ms  # the same interleaved timing as the other CPU tables
from deploy_unet import metrics
from deploy_unet.checkpoint import load_checkpoint, load_weights
from deploy_unet.data import load_samples
from deploy_unet.describe import read_model_info
from deploy_unet.export import export_onnx
from deploy_unet.nets import create_net
from deploy_unet.precision import quantize

ROOT = Path(__file__).resolve().parents[1]
MODES = ("transpose", "bilinear", "nearest")
CALIB, EVAL = "synthetic:seed=1,size=256x256", "synthetic:seed=2,size=256x256"
CLASS_NAMES = ("background", "ellipse", "polygon", "thin")
HAND_WRITTEN = "<!-- hand-written reading below: kept by re-runs -->"


def train_command(mode: str, args, out: Path) -> list[str]:
    return ["models/train.py", "--arch", "unet", "--up-mode", mode, "--steps", str(args.steps),
            "--size", str(args.size), "--batch", str(args.batch), "--out", str(out)]


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def logits_of(path: Path, images: np.ndarray, threads: int) -> np.ndarray:
    sess = session(path, threads)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: images[i:i + 4]})[0] for i in range(0, len(images), 4)])



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", type=Path, default=ROOT / "build" / "upsampling",
                   help="where the three checkpoints are (trained here when missing) and the ONNX files go")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-samples", type=int, default=64)
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--untrained-samples", type=int, default=8)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--show-class", type=int, default=1, help="class whose logit map the PNG shows")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.work_dir.mkdir(parents=True, exist_ok=True)

    rows, commands, files, shown = [], {}, {}, {}
    for mode in args.modes:
        ckpt_path = args.work_dir / f"unet_{mode}.pt"
        command = train_command(mode, args, ckpt_path)
        commands[mode] = "PYTHONPATH=. python " + " ".join(command)
        if not ckpt_path.is_file():
            print(f"training {mode}: {commands[mode]}", flush=True)
            subprocess.run([sys.executable, *command], cwd=ROOT, check=True)
        ckpt = load_checkpoint(ckpt_path)
        net = create_net(ckpt.arch, **ckpt.net_config)
        load_weights(net, ckpt)
        fp32 = args.work_dir / f"unet_{mode}.onnx"
        export_onnx(net, fp32, height=256, width=256, mean=ckpt.mean, std=ckpt.std, arch=ckpt.arch,
                    net_config=ckpt.net_config, checkpoint_sha256=ckpt.sha256)
        int8 = quantize(fp32, "int8", target="onnxruntime", calib=CALIB, calib_samples=args.calib_samples,
                        eval_source=None, output=args.work_dir / f"unet_{mode}.int8.ort.onnx",
                        threads=args.threads).path
        info = read_model_info(fp32)
        samples = load_samples(EVAL, info, args.eval_samples)
        card = ckpt_path.with_suffix(".md")  # models/train.py's model card records the wall time
        wall = re.search(r"wall time ([0-9.]+) min", card.read_text()) if card.is_file() else None
        row = {"mode": mode, "parameters": sum(t.numel() for t in net.parameters()),
               "training": ckpt.extra.get("training", {}), "train_min": float(wall.group(1)) if wall else None}
        for label, path in (("fp32", fp32), ("int8", int8)):
            logits = logits_of(path, samples.images, args.threads)
            scores = metrics.summarize(logits.argmax(1), samples.masks, info.num_classes)
            row[f"dice_{label}"] = scores["mean_dice"]
            per_map = metrics.checkerboard_scores(logits)  # (N, C)
            row[f"checkerboard_{label}"] = float(per_map.mean())
            row[f"checkerboard_{label}_per_class"] = per_map.mean(axis=0).tolist()
            if label == "fp32":
                shown[mode] = logits[0, args.show_class]
        # The same architecture untrained (torch seed 0, as training starts): does the score see the
        # artifacts a random stride-2 transposed conv makes, before training has removed them?
        torch.manual_seed(0)
        untrained = create_net(ckpt.arch, **ckpt.net_config).eval()
        with torch.no_grad():
            row["checkerboard_untrained"] = metrics.checkerboard_score(
                untrained(torch.from_numpy(samples.images[:args.untrained_samples])).numpy())
        files[f"{mode} fp32"], files[f"{mode} int8"] = fp32, int8
        rows.append(row)
        print({k: v for k, v in row.items() if k != "training"}, flush=True)

    # The floor set by class boundaries alone: ground-truth masks as one-hot maps (sharp edges, no net).
    onehot = np.eye(info.num_classes)[samples.masks].transpose(0, 3, 1, 2)
    floor = metrics.checkerboard_score(onehot)
    first = args.modes[0]
    x = load_samples(EVAL, read_model_info(files[f"{first} fp32"]), 1).images
    lat = latencies_ms(files, x, args.threads, args.warmup, args.runs)
    base = lat[f"{first} fp32"]
    for row in rows:
        for label in ("fp32", "int8"):
            row[f"latency_{label}_ms"] = lat[f"{row['mode']} {label}"]
            row[f"latency_{label}_vs_transpose_fp32"] = lat[f"{row['mode']} {label}"] / base
    plot(shown, args.show_class, ROOT / "benchmarks" / "upsampling.png")
    write_report(rows, commands, args, floor)


def plot(shown: dict[str, np.ndarray], cls: int, path: Path) -> None:
    """Per mode: one logit map, a 32x32 zoom of it, and its log power spectrum."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, len(shown), figsize=(2.3 * len(shown), 7.0), dpi=60, squeeze=False)
    for j, (mode, logit) in enumerate(shown.items()):
        score = float(metrics.checkerboard_scores(logit))
        axes[0, j].imshow(logit, cmap="RdBu_r")
        axes[0, j].set_title(f"{mode}\nlogit map, class {cls}", fontsize=8)
        y0, x0 = np.unravel_index(np.argmax(np.abs(np.diff(logit, axis=0))), (logit.shape[0] - 1, logit.shape[1]))
        y0, x0 = int(np.clip(y0 - 16, 0, logit.shape[0] - 32)), int(np.clip(x0 - 16, 0, logit.shape[1] - 32))
        axes[1, j].imshow(logit[y0:y0 + 32, x0:x0 + 32], cmap="RdBu_r", interpolation="nearest")
        axes[1, j].set_title(f"32x32 at the sharpest edge ({y0}, {x0})", fontsize=7)
        # No fftshift: DC sits in the corners and the Nyquist row/column (the checkerboard bins) cross
        # in the middle, where a transposed-conv artifact would light up.
        power = np.abs(np.fft.fft2(logit - logit.mean())) ** 2
        axes[2, j].imshow(np.log10(power + power.max() * 1e-9), cmap="magma")
        axes[2, j].set_title(f"log10 power; score {score:.2e}", fontsize=8)
        for ax in axes[:, j]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")


def _minutes(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def write_report(rows, commands, args, floor: float) -> None:
    from deploy_unet.machine import cpu_info

    machine = cpu_info().describe()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    training = rows[0].get("training", {})
    lines = [
        "# Transposed convolution vs resize + conv: measured",
        "",
        f"Date {datetime.date.today()}; {machine}; {platform.system()} {platform.release()}; "
        f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, torch {torch.__version__}, numpy {np.__version__}.",
        f"Latency: all six files timed interleaved round-robin (median of {args.runs} after {args.warmup} warm-up, "
        f"ORT CPU intra-op threads {args.threads}, 256x256 batch 1), so the ratios hold even on a busy machine "
        f"(1-minute load average when this was written: {load:.2f}). The training minutes come from each model "
        "card: the three trainings ran one after another on a 2-core machine shared with other jobs.",
        "",
        "    PYTHONPATH=. python benchmarks/upsampling.py " + " ".join(sys.argv[1:]),
        "",
        "Training (the same for every mode: UNet depth 4, base 16, batch norm, `models/train.py` preset `unet`, "
        f"torch seed 0, single-threaded; {training.get('steps', args.steps)} steps x batch "
        f"{training.get('batch', args.batch)} at {args.size}x{args.size} of `synthetic:seed=0`):",
        "",
        *[f"    {cmd}" for cmd in commands.values()],
        "",
        f"Held-out: {args.eval_samples} scenes `{EVAL}` vs ground truth (argmax). int8 = ONNX Runtime target "
        f"(`deploy-unet quantize --precision int8 --target onnxruntime`, calibrated on {args.calib_samples} scenes "
        f"`{CALIB}`). Checkerboard score: mean over every logit map (image x class) of "
        "`deploy_unet.metrics.checkerboard_scores`: after removing the map's mean, the share of its 2D FFT energy "
        "on the Nyquist row (fy = H/2) and column (fx = W/2), i.e. in patterns of period 2 in y or x; 0 for a "
        "smooth map, 1 for a pure (-1)^(x+y) checkerboard.",
        "",
        f"For scale: the ground-truth masks of the same scenes as one-hot maps (class boundaries only, no net) "
        f"score {floor:.5f}; \"untrained\" is the same net at its initialisation (torch seed 0) on "
        f"{args.untrained_samples} of the scenes.",
        "",
        "| up mode | parameters | Dice fp32 | Dice int8 | checkerboard fp32 | checkerboard int8 | "
        "checkerboard untrained | latency fp32 ms | latency int8 ms | fp32 vs transpose fp32 | "
        "int8 vs transpose fp32 | training min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['parameters']:,} | {r['dice_fp32']:.4f} | {r['dice_int8']:.4f} | "
            f"{r['checkerboard_fp32']:.5f} | {r['checkerboard_int8']:.5f} | {r['checkerboard_untrained']:.5f} | "
            f"{r['latency_fp32_ms']:.1f} | "
            f"{r['latency_int8_ms']:.1f} | {r['latency_fp32_vs_transpose_fp32']:.2f}x | "
            f"{r['latency_int8_vs_transpose_fp32']:.2f}x | {_minutes(r['train_min'])} |"
        )
    lines += ["", "Checkerboard score per class (fp32, mean over images):", "",
              "| up mode | " + " | ".join(CLASS_NAMES) + " |", "|---|" + "---|" * len(CLASS_NAMES)]
    for r in rows:
        lines.append(f"| {r['mode']} | " + " | ".join(f"{v:.5f}" for v in r["checkerboard_fp32_per_class"]) + " |")
    lines += ["", "![logit map and spectrum per mode](upsampling.png)", ""]
    out = ROOT / "benchmarks" / "upsampling.md"
    # The reading of the numbers is written by hand below the marker; a re-run keeps it (re-check it).
    kept = out.read_text().partition(HAND_WRITTEN)[2] if out.is_file() else ""
    out.write_text("\n".join(lines) + "\n" + (HAND_WRITTEN + kept if kept else ""))
    (ROOT / "benchmarks" / "upsampling.json").write_text(
        json.dumps({"rows": rows, "train_commands": commands, "checkerboard_ground_truth_onehot": floor}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
