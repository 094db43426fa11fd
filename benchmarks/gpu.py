"""torch on one CUDA GPU: eager fp32, eager fp16 channels_last, eager + CUDA graph, torch.compile max-autotune, for
the shipped UNet and FCN-8s at 512x512 and the 3D UNet at 128^3, batch 1 and 8. Writes benchmarks/gpu.md (and
gpu.json). A volume net runs NCDHW, laid out channels_last_3d (NDHWC) in the fp16 modes.

    python benchmarks/gpu.py                 # on a machine with an NVIDIA GPU and a CUDA build of torch
    python benchmarks/gpu.py --iters 200 --skip-compile

Per configuration: p50/p99 latency from CUDA events around the model call only (inputs already on the device, no
host transfers: those are bench's business), images/s at p50, each mode's speed as a ratio to eager fp16
channels_last in the same run, and the fraction of the GPU's dense fp16 tensor peak the model reaches
(FLOPs from torch.utils.flop_counter.FlopCounterMode, one forward pass). It refuses to run without CUDA.

Then the project's own torch runner, through bench_runner as `deploy-unet bench` runs it (pinned input, H2D,
compute, D2H of the logits; CUDA-event phases), in the matching modes: its compute phase beside the bare call of
the same mode shows what the runner adds, and its best compute p50 against the best bare mode is the "within 1.1x
of what users pick" check. No numbers are recorded in this repository until it runs on a GPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Dense fp16 tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's datasheets, by device-name fragment.
FP16_PEAK_TFLOPS = {
    "H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0,
    "A100": 312.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A10": 125.0,
    "RTX 4090": 165.0, "RTX 5090": 209.0, "RTX 3090": 71.0,
}
MODES = ("eager fp32", "eager fp16 channels_last", "eager fp16 + CUDA graph", "torch.compile max-autotune fp16")
BASELINE = "eager fp16 channels_last"
# The project's runner options for each bare mode above (the same work, through open_runner + bench_runner).
RUNNER_MODES = {
    "eager fp32": {},
    "eager fp16 channels_last": {"torch_precision": "fp16", "channels_last": True},
    "eager fp16 + CUDA graph": {"torch_precision": "fp16", "channels_last": True, "cuda_graph": True},
    "torch.compile max-autotune fp16": {"torch_precision": "fp16", "channels_last": True, "compile": "max-autotune"},
}


def fp16_peak(name: str) -> float | None:
    for fragment, peak in FP16_PEAK_TFLOPS.items():
        if fragment in name:
            return peak
    return None


def count_flops(net, x) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        net(x)
    return int(counter.get_total_flops())


def time_cuda(fn, iters: int, warmup: int) -> list[float]:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def make_callable(mode: str, net, x):
    """A zero-argument callable running ``net`` on ``x`` in the given mode (all under inference_mode)."""
    import copy

    import torch

    if mode == "eager fp32":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        return lambda: net(x)
    layout = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
    half = copy.deepcopy(net).half().to(memory_format=layout)
    xh = x.half().contiguous(memory_format=layout)
    if mode == BASELINE:
        return lambda: half(xh)
    if mode == "eager fp16 + CUDA graph":
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                half(xh)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            half(xh)
        return graph.replay
    if mode == "torch.compile max-autotune fp16":
        compiled = torch.compile(half, mode="max-autotune")
        return lambda: compiled(xh)
    raise ValueError(mode)


def run(args) -> dict:
    import numpy as np
    import torch

    from deploy_unet import shipped
    from deploy_unet.nets.loading import load_net

    gpu = torch.cuda.get_device_name(0)
    peak = fp16_peak(gpu)
    rows = []
    for arch in args.archs:
        net = load_net(checkpoint=shipped.checkpoint(arch)).net.cuda().eval()
        spatial = spatial_size(net, args)
        for batch in args.batches:
            x = torch.randn(batch, net.in_channels, *spatial, device="cuda")
            with torch.inference_mode():
                flops = count_flops(net, x)
                results = {}
                for mode in MODES:
                    if mode.startswith("torch.compile") and args.skip_compile:
                        continue
                    fn = make_callable(mode, net, x)
                    times = np.asarray(time_cuda(fn, args.iters, args.warmup))
                    p50, p99 = np.percentile(times, [50, 99])
                    results[mode] = {"p50_ms": float(p50), "p99_ms": float(p99), "images_per_s": batch * 1e3 / p50}
                    print(f"{arch} b{batch} {mode}: p50 {p50:.3f} ms", flush=True)
            base = results[BASELINE]["p50_ms"]
            for mode, r in results.items():
                r["speed_vs_fp16_eager"] = base / r["p50_ms"]
                achieved = flops / (r["p50_ms"] * 1e-3) / 1e12
                r["tflops"] = achieved
                r["fraction_of_fp16_peak"] = achieved / peak if peak else None
                rows.append({"arch": arch, "batch": batch, "size": spatial[-1], "shape": shape_label(spatial), "mode": mode,
                             "gflop_per_batch": flops / 1e9, **r})
            rows += runner_rows(args, arch, batch, spatial, results)
    return {"machine": machine(), "command": " ".join(sys.argv), "fp16_peak_tflops": peak, "rows": rows,
            "iters": args.iters, "warmup": args.warmup, "summary": summary(rows)}


def spatial_size(net, args) -> tuple[int, ...]:
    """The timed input's spatial shape: ``--size`` squared for an image net, ``--size-3d`` cubed for a volume net."""
    contract = getattr(net, "shape_contract", None)
    dims = contract.spatial_dims if contract is not None else 2
    return (args.size_3d,) * 3 if dims == 3 else (args.size,) * 2


def shape_label(spatial) -> str:
    return "x".join(map(str, spatial))


def row_shape(r: dict) -> str:
    return r.get("shape") or f"{r['size']}x{r['size']}"


def runner_rows(args, arch: str, batch: int, spatial: tuple[int, ...], bare: dict) -> list[dict]:
    """deploy-unet's torch runner in each mode, timed by bench_runner (what `deploy-unet bench` does)."""
    from deploy_unet import shipped
    from deploy_unet.bench import bench_runner
    from deploy_unet.runtime import open_runner

    rows = []
    for mode, options in RUNNER_MODES.items():
        if mode not in bare:
            continue
        with open_runner(shipped.checkpoint(arch), device="cuda", **options) as runner:
            r = bench_runner(runner, batch=batch, height=spatial[-2], width=spatial[-1],
                             depth=spatial[0] if len(spatial) == 3 else 0, warmup=args.warmup,
                             iters=args.iters, keep_samples=False)
        compute = r.phases_ms["compute"]
        rows.append({"arch": arch, "batch": batch, "size": spatial[-1], "shape": shape_label(spatial),
                     "mode": f"runner: {runner.mode}",
                     "bare_mode": mode, "compute_p50_ms": compute.median, "compute_p99_ms": compute.p99,
                     "end_to_end_p50_ms": r.latency_ms.median, "h2d_p50_ms": r.phases_ms["h2d"].median,
                     "d2h_p50_ms": r.phases_ms["d2h"].median,
                     "compute_vs_bare": compute.median / bare[mode]["p50_ms"]})
        print(f"{arch} b{batch} runner {runner.mode}: compute p50 {compute.median:.3f} ms, "
              f"end to end {r.latency_ms.median:.3f} ms", flush=True)
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Per net and batch: the project's best runner compute p50 over the best bare mode's p50."""
    out = []
    for key in sorted({(r["arch"], r["batch"]) for r in rows}):
        bare = [r for r in rows if (r["arch"], r["batch"]) == key and "p50_ms" in r]
        ours = [r for r in rows if (r["arch"], r["batch"]) == key and "compute_p50_ms" in r]
        if bare and ours:
            best_bare = min(bare, key=lambda r: r["p50_ms"])
            best_ours = min(ours, key=lambda r: r["compute_p50_ms"])
            out.append({"arch": key[0], "batch": key[1], "best_bare": best_bare["mode"],
                        "best_bare_p50_ms": best_bare["p50_ms"], "best_runner": best_ours["mode"],
                        "best_runner_compute_p50_ms": best_ours["compute_p50_ms"],
                        "ratio": best_ours["compute_p50_ms"] / best_bare["p50_ms"]})
    return out


def machine() -> dict:
    import torch

    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        driver = "unknown"
    return {
        "gpu": torch.cuda.get_device_name(0),
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "driver": driver or "unknown",
        "cuda": str(torch.version.cuda),
        "cudnn": str(torch.backends.cudnn.version()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def markdown(data: dict) -> str:
    m = data["machine"]
    lines = [
        "# torch on one GPU: eager, fp16 channels_last, CUDA graph, torch.compile",
        "",
        f"GPU {m['gpu']} (compute capability {m['compute_capability']}), driver {m['driver']}, CUDA {m['cuda']}, "
        f"cuDNN {m['cudnn']}, torch {m['torch']}, Python {m['python']}; {m['date']}.",
        f"Command: `{data['command']}` ({data['warmup']} warmup, {data['iters']} timed calls per row; CUDA events "
        "around the model call, inputs on the device). fp16 peak used: "
        + (f"{data['fp16_peak_tflops']:g} TFLOP/s dense." if data["fp16_peak_tflops"] else "unknown for this GPU."),
        "",
        "| net | batch | mode | p50 ms | p99 ms | images/s | speed vs eager fp16 | TFLOP/s | of fp16 peak |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in (r for r in data["rows"] if "p50_ms" in r):
        frac = f"{100 * r['fraction_of_fp16_peak']:.1f}%" if r["fraction_of_fp16_peak"] is not None else "-"
        lines.append(f"| {r['arch']} {row_shape(r)} | {r['batch']} | {r['mode']} | {r['p50_ms']:.3f} | "
                     f"{r['p99_ms']:.3f} | {r['images_per_s']:.0f} | {r['speed_vs_fp16_eager']:.2f}x | "
                     f"{r['tflops']:.1f} | {frac} |")
    lines += ["", "eager fp32 runs with TF32 off (true fp32), as deploy-unet's torch runner does. A volume counts as "
              "one image in images/s.", "",
              "## deploy-unet's torch runner (bench_runner: pinned H2D, compute, D2H of fp32 logits)", "",
              "| net | batch | runner mode | compute p50 ms | compute p99 ms | vs the bare call | H2D p50 ms | "
              "D2H p50 ms | end to end p50 ms |",
              "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in (r for r in data["rows"] if "compute_p50_ms" in r):
        lines.append(f"| {r['arch']} {row_shape(r)} | {r['batch']} | {r['mode']} | {r['compute_p50_ms']:.3f} | "
                     f"{r['compute_p99_ms']:.3f} | {r['compute_vs_bare']:.2f}x | {r['h2d_p50_ms']:.3f} | "
                     f"{r['d2h_p50_ms']:.3f} | {r['end_to_end_p50_ms']:.3f} |")
    lines += ["", "## The project's best against the best of the bare modes (compute p50)", "",
              "| net | batch | best bare mode | p50 ms | best runner mode | compute p50 ms | ratio |",
              "| --- | ---: | --- | ---: | --- | ---: | ---: |"]
    for s in data["summary"]:
        lines.append(f"| {s['arch']} | {s['batch']} | {s['best_bare']} | {s['best_bare_p50_ms']:.3f} | "
                     f"{s['best_runner']} | {s['best_runner_compute_p50_ms']:.3f} | {s['ratio']:.2f}x |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=["unet", "fcn8s", "unet3d"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--size", type=int, default=512, help="Side of an image net's square input.")
    parser.add_argument("--size-3d", type=int, default=128, help="Side of a volume net's cubic input.")
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--skip-compile", action="store_true", help="Leave out torch.compile (minutes of autotuning).")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu.md")
    args = parser.parse_args(argv)
    import torch

    if torch.version.cuda is None or not torch.cuda.is_available():
        print(f"error: benchmarks/gpu.py needs a CUDA GPU and a CUDA build of torch (this is torch {torch.__version__}"
              f"{', CPU-only' if torch.version.cuda is None else ', no device visible'}); run it on a GPU machine",
              file=sys.stderr)
        return 2
    data = run(args)
    args.out.write_text(markdown(data))
    args.out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
