"""Train a reference checkpoint on the synthetic segmentation data and write its model card.

    PYTHONPATH=. python models/train.py --arch unet --steps 3000 --out models/unet_synthetic.pt
    PYTHONPATH=. python models/train.py --arch unet3d --steps 600 --batch 4 --out models/unet3d_synthetic.pt

Volumes (``unet3d``): synthetic volumes (``data.synthetic_volume``: bright blobs, dark tubes), one channel,
3 classes, trained on ``--volume-size`` crops, evaluated on ``synthetic:seed=2,size=32x64x64``.

Training data: ``synthetic:seed=0`` (fresh samples every step, never repeated); held-out evaluation:
``synthetic:seed=2`` at 256x256 (the toolkit's default evaluation source; calibration uses seed=1).
Single-threaded on purpose (shared CPU); flush-denormal keeps late training from slowing down.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from deploy_unet import metrics
from deploy_unet.checkpoint import save_checkpoint
from deploy_unet.data import (
    CLASS_NAMES_3D,
    SyntheticSpec,
    normalize,
    parse_spatial_size,
    synthetic_batch,
    synthetic_volume_batch,
)
from deploy_unet.fileio import sha256_file, write_text_atomic
from deploy_unet.nets import create_net

TRAIN_SEED, EVAL_SEED = 0, 2
PRESETS = {
    "unet": dict(depth=4, base_channels=16, up_mode="transpose", norm="batch"),
    "unetpp": dict(depth=4, base_channels=16, up_mode="transpose", norm="batch"),
    "fcn8s": dict(width_mult=0.25, fc_channels=512, norm="batch", dropout=0.1),
    "unet3d": dict(depth=3, base_channels=8, up_mode="transpose", norm="batch"),
}
VOLUME_EVAL_SIZE = (32, 64, 64)


def _spec(seed: int, size, **kw) -> SyntheticSpec:
    """2D scenes for an int size, volumes for a (D, H, W) one."""
    if isinstance(size, tuple):
        return SyntheticSpec(seed=seed, depth=size[0], height=size[1], width=size[2], **kw)
    return SyntheticSpec(seed=seed, height=size, width=size, **kw)


def _batch(spec: SyntheticSpec, start: int, n: int, num_classes: int):
    if spec.depth:
        return synthetic_volume_batch(spec, start, n, num_classes)
    return synthetic_batch(spec, start, n, num_classes)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Soft Dice over foreground classes: keeps thin structures from being drowned by background."""
    probs = logits.softmax(1)[:, 1:]
    onehot = F.one_hot(target, num_classes).movedim(-1, 1).float()[:, 1:]
    axes = (0, *range(2, logits.dim()))  # NCHW or NCDHW
    inter = (probs * onehot).sum(axes)
    denom = probs.sum(axes) + onehot.sum(axes)
    return 1 - ((2 * inter + 1) / (denom + 1)).mean()


def segmentation_loss(net, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """CE + Dice; a deeply supervised net (UNet++) gets it averaged over all its heads."""
    outputs = net.forward_heads(x) if hasattr(net, "forward_heads") else [net(x)]
    return sum(F.cross_entropy(o, y) + dice_loss(o, y, num_classes) for o in outputs) / len(outputs)


def evaluate(net, mean, std, num_classes: int, n: int, size: int) -> dict:
    """Held-out metrics of ``net(x)``; for a deeply supervised net also per head (``heads``: 1..depth)."""
    spec = _spec(EVAL_SEED, size)
    net.eval()
    preds: dict[str, list] = {}
    targets = []
    with torch.no_grad():
        for start in range(0, n, 8):
            images, masks = _batch(spec, start, min(8, n - start), num_classes)
            x = torch.from_numpy(normalize(images, mean, std))
            outputs = {"net": net(x)}
            if hasattr(net, "forward_heads"):
                outputs.update({str(j): o for j, o in enumerate(net.forward_heads(x), start=1)})
            for key, logits in outputs.items():
                preds.setdefault(key, []).append(logits.argmax(1).numpy())
            targets.append(masks)
    net.train()
    target = np.concatenate(targets)
    summaries = {k: metrics.summarize(np.concatenate(v), target, num_classes) for k, v in preds.items()}
    result = summaries.pop("net")
    if summaries:
        result["heads"] = summaries
    return result


def training_normalization(size: int, num_classes: int) -> tuple[list[float], list[float]]:
    """Mean/std from training data statistics, rounded (they go in the checkpoint and ONNX metadata)."""
    spec = _spec(TRAIN_SEED, size)
    probe, _ = _batch(spec, 10**7, 16 if spec.depth else 64, num_classes)
    axes = (0, *range(2, probe.ndim))
    mean = [round(float(v), 3) for v in probe.mean(axis=axes)]
    std = [round(float(v), 3) for v in probe.std(axis=axes)]
    return mean, std


def fit(net, mean, std, *, steps: int, batch: int = 8, size: int = 96, lr: float = 3e-3, num_classes: int = 4,
        noise: float | None = None, transform=None, log=print) -> float:
    """Train ``net`` (any segmentation nn.Module) on fresh synthetic scenes; returns the wall seconds.

    The loop ``main`` runs for the reference nets, reusable for other nets (benchmarks/mixed_precision.py
    trains MONAI nets with it). ``noise``: the scenes' pixel noise (default: the generator's, 0.06);
    ``transform(images, step)``: applied to each batch of [0, 1] images before normalization."""
    spec = _spec(TRAIN_SEED, size, **({"noise": noise} if noise is not None else {}))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    net.train()
    t0 = time.time()
    log_every = max(1, steps // 30)
    for step in range(steps):
        images, masks = _batch(spec, step * batch, batch, num_classes)
        if transform is not None:
            images = transform(images, step)
        x = torch.from_numpy(normalize(images, mean, std))
        y = torch.from_numpy(masks)
        loss = segmentation_loss(net, x, y, num_classes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            log(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - t0:7.1f}s")
    return time.time() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=sorted(PRESETS), required=True)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=96, help="training crop size (px)")
    p.add_argument("--volume-size", default="24x48x48", help="unet3d: training crop DxHxW (voxels)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--num-classes", type=int, default=None, help="default: 4 (2D scenes), 3 (volumes)")
    p.add_argument("--seed", type=int, default=0, help="torch init seed")
    p.add_argument("--eval-samples", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--up-mode", choices=("transpose", "bilinear", "nearest"), default=None,
                   help="unet only: override the preset's upsampling (benchmarks/upsampling.py)")
    p.add_argument("--norm", choices=("batch", "none"), default=None,
                   help="override the preset's normalization (benchmarks/mixed_precision.py trains a net without BatchNorm)")
    p.add_argument("--depth", type=int, default=None, help="unet/unetpp: override the preset's depth")
    p.add_argument("--base-channels", type=int, default=None, help="unet/unetpp: override the preset's width")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    preset = dict(PRESETS[args.arch])
    if args.up_mode is not None:
        if "up_mode" not in preset:
            p.error(f"--up-mode applies to unet, not {args.arch}")
        preset["up_mode"] = args.up_mode
    for name in ("norm", "depth", "base_channels"):
        if getattr(args, name) is not None:
            if name != "norm" and name not in preset:
                p.error(f"--{name.replace('_', '-')} applies to unet/unetpp, not {args.arch}")
            preset[name] = getattr(args, name)
    volumes = args.arch == "unet3d"
    if args.num_classes is None:
        args.num_classes = 3 if volumes else 4
    train_size = parse_spatial_size(args.volume_size) if volumes else args.size
    eval_size = VOLUME_EVAL_SIZE if volumes else 256
    net = create_net(args.arch, in_channels=1 if volumes else 3, num_classes=args.num_classes, **preset)
    n_params = sum(p.numel() for p in net.parameters())

    mean, std = training_normalization(train_size, args.num_classes)
    train_s = fit(net, mean, std, steps=args.steps, batch=args.batch, size=train_size, lr=args.lr,
                  num_classes=args.num_classes, log=lambda msg: print(msg, flush=True))

    result = evaluate(net, mean, std, args.num_classes, args.eval_samples, eval_size)
    print(json.dumps(result), flush=True)
    save_checkpoint(
        args.out, net, mean=mean, std=std,
        extra={"training": {"steps": args.steps, "batch": args.batch, "size": _size_text(train_size), "lr": args.lr,
                            "data": f"synthetic:seed={TRAIN_SEED},size={_size_text(train_size)}",
                            "heldout": f"synthetic:seed={EVAL_SEED},size={_size_text(eval_size)}",
                            "heldout_mean_dice": result["mean_dice"], "heldout_mean_iou": result["mean_iou"],
                            **({"heldout_mean_dice_per_head": {k: v["mean_dice"] for k, v in result["heads"].items()}}
                               if "heads" in result else {})},
               "recommended_export_shape": [1, 1, *VOLUME_EVAL_SIZE] if volumes else [1, 3, 256, 256]},
    )
    write_card(args, net, n_params, mean, std, result, train_s, argv if argv is not None else sys.argv[1:])


def _size_text(size) -> str:
    return "x".join(map(str, size)) if isinstance(size, tuple) else f"{size}x{size}"


def write_card(args, net, n_params, mean, std, result, train_s, argv) -> None:
    if args.arch == "unet3d":
        return write_volume_card(args, net, n_params, mean, std, result, train_s, argv)
    out: Path = args.out
    size_mb = out.stat().st_size / 1e6
    per_class = "\n".join(
        f"| {i} {name} | {d if d is None else f'{d:.4f}'} | {u if u is None else f'{u:.4f}'} |"
        for i, (name, d, u) in enumerate(zip(
            ("background", "ellipse", "polygon", "thin")[: args.num_classes],
            result["dice_per_class"], result["iou_per_class"], strict=True))
    )
    command = "PYTHONPATH=. python models/train.py " + " ".join(argv)
    heads = head_section(net, result)
    loss_note = f", averaged over the {net.depth} deep-supervision heads" if "heads" in result else ""
    card = f"""# {out.name}: reference {args.arch} on deploy-unet synthetic scenes

Checkpoint `{out.name}` ({size_mb:.2f} MB, {n_params:,} parameters), sha256 `{sha256_file(out)}`.
Self-describing (`deploy_unet.checkpoint.save_checkpoint`): arch `{net.arch}`, net config
`{json.dumps(net.config)}`, input normalization mean `{mean}`, std `{std}` (images in [0, 1]).

    deploy-unet export --checkpoint models/{out.name}     # recommended export size: 256x256 (divisor {net.divisor})

## Task
4 classes: 0 background, 1 ellipse, 2 convex polygon, 3 thin structure (polyline 1.4-3.2 px wide) on
textured, noisy backgrounds; each class has its shape and a colour/texture cue (see `deploy_unet/data.py`).

## Training
- data: `synthetic:seed={TRAIN_SEED},size={args.size}x{args.size}`, a fresh batch every step
  ({args.steps} steps x batch {args.batch} = {args.steps * args.batch:,} scenes, none repeated)
- loss: cross-entropy + soft Dice (foreground classes){loss_note}; AdamW, one-cycle lr max {args.lr}, weight decay 1e-4
- torch init seed {args.seed}; `torch.set_num_threads({args.threads})`, `torch.set_flush_denormal(True)`
- wall time {train_s / 60:.1f} min on {platform.processor() or platform.machine()} ({platform.system()}),
  torch {torch.__version__}

## Held-out accuracy
`synthetic:seed={EVAL_SEED},size=256x256`, {args.eval_samples} scenes (never seen in training; calibration
uses seed=1): **mean Dice {result['mean_dice']:.4f}**, mean IoU {result['mean_iou']:.4f}
(PyTorch fp32, argmax).

| class | Dice | IoU |
|---|---|---|
{per_class}
{heads}
## Reproduce
    {command}

CPU training is deterministic for a fixed thread count and torch build; other builds give slightly
different weights and scores.
"""
    write_text_atomic(out.with_suffix(".md"), card)


def head_section(net, result: dict) -> str:
    """Per-head table of a deeply supervised net: what each ``--prune L`` export keeps."""
    if "heads" not in result:
        return ""
    rows = "\n".join(
        f"| {j} | `--prune {j}` | {r['mean_dice']:.4f} | {r['mean_iou']:.4f} | "
        + " | ".join(f"{d:.4f}" if d is not None else "-" for d in r["dice_per_class"]) + " |"
        for j, r in result["heads"].items()
    )
    classes = ("background", "ellipse", "polygon", "thin")[: net.num_classes]
    return f"""
Per deep-supervision head (head L reads X(0,L); `deploy-unet export --prune L` keeps only the nodes it
needs). The table above is the default export, `--heads {net.heads}` ({net.output_mode}).

| head L | export | mean Dice | mean IoU | {" | ".join(f"Dice {c}" for c in classes)} |
|---|---|---|---|{"---|" * len(classes)}
{rows}
"""


def write_volume_card(args, net, n_params, mean, std, result, train_s, argv) -> None:
    out: Path = args.out
    size_mb = out.stat().st_size / 1e6
    names = CLASS_NAMES_3D[: args.num_classes]
    per_class = "\n".join(
        f"| {i} {name} | {d if d is None else f'{d:.4f}'} | {u if u is None else f'{u:.4f}'} |"
        for i, (name, d, u) in enumerate(zip(names, result["dice_per_class"], result["iou_per_class"], strict=True))
    )
    command = "PYTHONPATH=. python models/train.py " + " ".join(argv)
    eval_size = _size_text(VOLUME_EVAL_SIZE)
    card = f"""# {out.name}: reference 3D UNet on deploy-unet synthetic volumes

Checkpoint `{out.name}` ({size_mb:.2f} MB, {n_params:,} parameters), sha256 `{sha256_file(out)}`.
Self-describing (`deploy_unet.checkpoint.save_checkpoint`): arch `{net.arch}`, net config
`{json.dumps(net.config)}`, input normalization mean `{mean}`, std `{std}` (volumes in [0, 1]).
Input NCDHW, one channel; shape contract: {net.shape_contract.rule_text()}.

    deploy-unet export --checkpoint models/{out.name} --size {eval_size}
    deploy-unet pipeline --arch unet3d

## Task
{args.num_classes} classes: {", ".join(f"{i} {n}" for i, n in enumerate(names))}. Bright ellipsoids (radii 3-9 voxels,
radially shaded) and dark tube segments (radius 1.5-3 voxels, length 12-40) on a smooth noisy background
(see `deploy_unet/data.py`, `synthetic_volume`).

## Training
- data: `synthetic:seed={TRAIN_SEED},size={args.volume_size}`, a fresh batch every step
  ({args.steps} steps x batch {args.batch} = {args.steps * args.batch:,} volumes, none repeated)
- loss: cross-entropy + soft Dice (foreground classes); AdamW, one-cycle lr max {args.lr}, weight decay 1e-4
- torch init seed {args.seed}; `torch.set_num_threads({args.threads})`, `torch.set_flush_denormal(True)`
- wall time {train_s / 60:.1f} min on {platform.processor() or platform.machine()} ({platform.system()}),
  torch {torch.__version__}

## Held-out accuracy
`synthetic:seed={EVAL_SEED},size={eval_size}`, {args.eval_samples} volumes (never seen in training; calibration
uses seed=1): **mean Dice {result['mean_dice']:.4f}**, mean IoU {result['mean_iou']:.4f}
(PyTorch fp32, argmax).

| class | Dice | IoU |
|---|---|---|
{per_class}

## Reproduce
    {command}

CPU training is deterministic for a fixed thread count and torch build; other builds give slightly
different weights and scores.
"""
    write_text_atomic(out.with_suffix(".md"), card)


if __name__ == "__main__":
    main()
