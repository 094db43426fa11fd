#!/usr/bin/env python
"""CPU latency of the reference nets: torch eager vs ONNX Runtime fp32 vs ONNX Runtime int8, in one run.

For each net (UNet, FCN-8s) this exports the checkpoint to ONNX, quantizes it to int8 (the ONNX Runtime
target: QLinear kernels run fast on CPU), then benchmarks the three artifacts at each size and writes
``cpu_backends.md`` / ``cpu_backends.json`` (table + machine, versions, date, command) beside this file.

    python benchmarks/cpu_backends.py --unet models/unet.pt --fcn models/fcn8s.pt

Without a checkpoint a net is built with its reference config and random weights (latency does not
depend on the weights' values; the table says which was used).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def prepare(name: str, checkpoint: str | None, work: Path, config: dict, calib_samples: int) -> tuple[list[Path], str]:
    """(checkpoint, fp32 ONNX, int8 ONNX) for one net, and where its weights came from."""
    from deploy_unet.checkpoint import load_checkpoint, save_checkpoint
    from deploy_unet.export import export_onnx
    from deploy_unet.nets import create_net
    from deploy_unet.nets.loading import build_net
    from deploy_unet.precision import quantize

    if checkpoint:
        ckpt = load_checkpoint(checkpoint)
        net = build_net(None, {}, ckpt).net
        pt, mean, std, origin = Path(checkpoint), ckpt.mean, ckpt.std, f"{checkpoint} (sha256 {ckpt.sha256[:12]})"
    else:
        net = create_net(name, **config)
        pt, mean, std, origin = work / f"{name}.pt", None, None, f"random init {config or '(defaults)'}"
        save_checkpoint(pt, net)
    fp32 = export_onnx(net.eval(), work / f"{name}.onnx", mean=mean, std=std, verify=False).path
    int8 = quantize(fp32, "int8", target="onnxruntime", calib_samples=calib_samples, eval_source=None,
                    output=work / f"{name}.int8.ort.onnx", progress=False).path
    return [pt, Path(fp32), Path(int8)], origin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unet", help="UNet checkpoint (.pt); default: reference config, random weights")
    parser.add_argument("--fcn", help="FCN-8s checkpoint (.pt); default: reference config, random weights")
    parser.add_argument("--sizes", default="256x256,512x512")
    parser.add_argument("--batch", default="1")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--thin", action="store_true", help="thin nets and short runs: a smoke test of the script")
    parser.add_argument("--out", default=str(HERE / "cpu_backends"), help="output path without extension")
    args = parser.parse_args(argv)

    from deploy_unet.bench import bench, parse_batches, parse_sizes
    from deploy_unet.machine import cpu_info
    from deploy_unet.report import render_markdown, write_json, write_markdown

    thin = {"unet": {"base_channels": 8, "depth": 3}, "fcn8s": {"width_mult": 0.125, "fc_channels": 64}}
    nets = [(name, ckpt, thin[name] if args.thin else {}) for name, ckpt in (("unet", args.unet), ("fcn8s", args.fcn))]
    command = "python benchmarks/cpu_backends.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="deploy-unet-bench-") as tmp:
        artifacts, origins = [], {}
        for name, checkpoint, config in nets:
            paths, origins[name] = prepare(name, checkpoint, Path(tmp), config, args.calib_samples)
            artifacts += paths
        report = bench(artifacts, batches=parse_batches(args.batch), sizes=parse_sizes(args.sizes),
                       warmup=args.warmup, iters=args.iters, threads=args.threads)
    # The CPU right under the title: an int8 speedup means little without its ISA (VNNI/AMX or not).
    text = render_markdown(report, title="CPU latency: torch eager vs ONNX Runtime fp32 vs int8",
                           preamble=f"Measured on CPU {cpu_info().describe()}.")
    text += "\nWeights: " + "; ".join(f"{k}: {v}" for k, v in origins.items()) + "\n"
    text += f"\nCommand: `{command}`\n"
    write_markdown(args.out + ".md", text)
    write_json(args.out + ".json", {**report.to_dict(include_samples=False), "weights": origins, "command": command})
    print(text)
    return 0


if __name__ == "__main__":
    from deploy_unet.errors import DeployUnetError

    try:
        sys.exit(main())
    except DeployUnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
