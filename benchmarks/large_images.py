"""Large images: streamed predict at growing sizes, one process and a 2-worker local Dask cluster, beside the same
windows run in-process without I/O, MONAI's ``sliding_window_inference`` and whole-image predict (issue 26).

    PYTHONPATH=. python benchmarks/large_images.py [--sizes 2048,5000,10000] [--window 256] [--overlap 0.25]
                                                   [--chunk 2048] [--work-dir build/large_images]

Inputs are made on the fly (not committed): an RGB Zarr of the shipped UNet's synthetic scenes tiled to S x S.
The net: the shipped UNet exported to fp32 ONNX, run by ONNX Runtime on the CPU (every path below uses this one
file; MONAI's ``sliding_window_inference`` gets it as its predictor, so only the windowing and blending differ).
Each measurement runs in its own subprocess and reports its peak resident memory (VmHWM; for the cluster, the
client's and each worker's). Per size:

- ``stream``: ``deploy_unet.predict`` streaming the Zarr into NAME.mask.ome.zarr, one process;
- ``dask``: the same on ``--dask local:2`` (2 single-threaded workers; each worker's ONNX Runtime 1 thread);
- ``windows``: ``runtime.windows.sliding_window`` over the prepared image in memory (no reading, no writing):
  the same windows and batches, the throughput streaming is measured against (sizes up to --in-memory-max);
- ``monai``: MONAI's ``sliding_window_inference`` with the same windows, overlap, Gaussian and batch
  (sizes up to --in-memory-max: it holds the whole output and a count map);
- ``whole``: whole-image predict (pad to the divisor), sizes up to --whole-max.
The paths of one size run interleaved, --rounds times. Writes benchmarks/large_images.md and .json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HAND_WRITTEN = "<!-- hand-written reading below: kept by re-runs -->"

CHILD = r'''
import json, sys, time, functools
import numpy as np
from deploy_unet.scale.chunks import peak_rss
kind, onnx, source, out, window, overlap, chunk, sw_batch = sys.argv[1:9]
window, overlap, chunk, sw_batch = int(window), float(overlap), int(chunk), int(sw_batch)
result = {"kind": kind}
t0 = time.perf_counter()
if kind in ("stream", "dask"):
    from deploy_unet.predict import predict
    from deploy_unet.scale.stream import StreamOptions
    opts = StreamOptions(window=(window, window), overlap=overlap, chunk=(chunk, chunk), sw_batch=sw_batch,
                         dask="local:2" if kind == "dask" else None)
    report = predict(onnx, [source], out, stream_options=opts, progress=False, stream=True)
    result["class_fractions"] = report.images[0].class_fractions
else:
    from deploy_unet.io import open_image
    from deploy_unet.processing import Preprocessing, prepare_region
    from deploy_unet.runtime import open_runner, runner_info
    from deploy_unet.runtime import windows as W
    with open_runner(onnx) as runner:
        spec = Preprocessing.from_model_info(runner_info(runner), fit="pad")
        pixels = open_image(source).read_region(())
        t0 = time.perf_counter()
        image = prepare_region(pixels, spec)[None]
        del pixels
        name = runner.output_names[0]
        if kind == "windows":
            grid = W.blend_grid(image.shape[2:], window, overlap)
            logits = W.sliding_window(lambda x: runner.infer({"input": x})[name], image, grid, sw_batch=sw_batch)
        elif kind == "monai":
            import torch
            from monai.inferers import sliding_window_inference
            def predictor(x):
                return torch.from_numpy(runner.infer({"input": x.numpy()})[name])
            with torch.no_grad():
                logits = sliding_window_inference(torch.from_numpy(image), window, sw_batch, predictor,
                                                  overlap=overlap, mode="gaussian").numpy()
        else:  # whole image
            from deploy_unet.shapes import pad_to_multiple
            padded, _ = pad_to_multiple(image, runner.contract.divisor, "reflect")
            logits = runner.infer({"input": padded})[name]
        mask = logits[0].argmax(0)
        result["class_fractions"] = (np.bincount(mask.ravel(), minlength=4) / mask.size).round(6).tolist()
result["seconds"] = time.perf_counter() - t0
result["peak_rss"] = peak_rss()
if kind == "dask":
    result["worker_peak_rss"] = list(report.images[0].stream["peak_rss"].values())
print("RESULT " + json.dumps(result))
'''


def make_input(path: Path, size: int) -> None:
    """An RGB Zarr (or tiled BigTIFF, by suffix) of synthetic scenes (512-pixel tiles of the shipped UNet's
    training distribution)."""
    import zarr

    from deploy_unet.data import SyntheticSpec, synthetic_sample

    if path.exists():
        return
    tiles = []
    for k in range(8):
        image, _ = synthetic_sample(SyntheticSpec(seed=5, height=512, width=512), k)
        tiles.append((image.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8))
    if path.suffix == ".tif":
        import tifffile

        def blocks():
            for ty in range(-(-size // 512)):
                for tx in range(-(-size // 512)):
                    yield tiles[(ty * 3 + tx) % 8]

        tifffile.imwrite(path, blocks(), shape=(size, size, 3), dtype="uint8", tile=(512, 512), bigtiff=True,
                         photometric="rgb")
        return
    array = zarr.open(str(path), mode="w", shape=(size, size, 3), chunks=(1024, 1024, 3), dtype="uint8")
    k = 0
    for y in range(0, size, 512):
        row = np.concatenate([tiles[(k + i) % 8] for i in range(-(-size // 512))], axis=1)[:, :size]
        k += 3
        array[y:min(y + 512, size)] = row[:min(512, size - y)]


def run_child(kind: str, onnx: Path, source: Path, out: Path, args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, kind, str(onnx), str(source), str(out), str(args.window),
                           str(args.overlap), str(args.chunk), str(args.sw_batch)], capture_output=True, text=True,
                          env=env, timeout=args.timeout)
    if proc.returncode != 0:
        return {"kind": kind, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    result["process_seconds"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2048,5000,10000")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--sw-batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--in-memory-max", type=int, default=5000)
    parser.add_argument("--whole-max", type=int, default=2048)
    parser.add_argument("--timeout", type=int, default=3600)
    parser.add_argument("--work-dir", default="build/large_images")
    parser.add_argument("--input-format", choices=["zarr", "tif"], default="zarr")
    parser.add_argument("--append", action="store_true", help="keep the rows of benchmarks/large_images.json")
    parser.add_argument("--kinds", default=None,
                        help="only these paths, e.g. stream,windows (default: all that fit the size)")
    parser.add_argument("--json-only", default=None, metavar="FILE",
                        help="write the rows to FILE only, leaving large_images.json/.md as they are (a side study)")
    args = parser.parse_args()

    from deploy_unet.export import export_onnx
    from deploy_unet.machine import machine_info
    from deploy_unet.shipped import checkpoint

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    onnx = work / "unet.onnx"
    if not onnx.exists():
        export_onnx(checkpoint("unet"), onnx, height=args.window, width=args.window)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    load_before = os.getloadavg()
    for size in sizes:
        source = work / f"scene{size}.{args.input_format}"
        t = time.perf_counter()
        make_input(source, size)
        print(f"{size}: input made in {time.perf_counter() - t:.1f} s", flush=True)
        kinds = ["stream", "dask"] + (["windows", "monai"] if size <= args.in_memory_max else []) + (
            ["whole"] if size <= args.whole_max else [])
        if args.kinds:
            kinds = [k for k in kinds if k in args.kinds.split(",")]
        for r in range(args.rounds):
            for kind in kinds:
                result = run_child(kind, onnx, source, work / f"out-{kind}", args)
                result.update({"size": size, "round": r, "megapixels": size * size / 1e6, "input": args.input_format,
                               "load": os.getloadavg()[0]})
                if "seconds" in result:
                    result["mp_per_s"] = result["megapixels"] / result["seconds"]
                print(json.dumps({k: v for k, v in result.items() if k != "class_fractions"}), flush=True)
                rows.append(result)
    import monai
    import onnxruntime
    import zarr

    import deploy_unet

    data = {
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(None), "python": platform.python_version(), "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__, "monai": monai.__version__, "zarr": zarr.__version__,
        "deploy_unet": deploy_unet.__version__, "load_before": load_before, "load_after": os.getloadavg(),
        "settings": {"window": args.window, "overlap": args.overlap, "chunk": args.chunk, "sw_batch": args.sw_batch,
                     "blend": "gaussian", "net": "shipped UNet, fp32 ONNX, ONNX Runtime CPU"},
        "rows": rows,
    }
    if args.json_only:
        Path(args.json_only).write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {args.json_only}")
        return
    out = ROOT / "benchmarks" / "large_images.json"
    if args.append and out.exists():
        old = json.loads(out.read_text())
        data["rows"] = old["rows"] + rows
        data["appended"] = old.get("appended", []) + [{"created": data["created"], "sizes": sizes,
                                                        "load_before": load_before, "input": args.input_format}]
        data["created"], data["load_before"] = old["created"], old["load_before"]
        sizes = sorted({r["size"] for r in data["rows"]})
    out.write_text(json.dumps(data, indent=2) + "\n")
    write_markdown(data, ROOT / "benchmarks" / "large_images.md", sizes)
    print(f"wrote {out}")


def _gb(value) -> str:
    return f"{value / 2**30:.2f}" if value else "-"


def write_markdown(data: dict, path: Path, sizes) -> None:
    from deploy_unet.machine import machine_line

    kept = ""
    if path.exists() and HAND_WRITTEN in path.read_text():
        kept = path.read_text().split(HAND_WRITTEN, 1)[1]
    s = data["settings"]
    lines = [
        "# Large images: streamed predict, one process and a 2-worker Dask cluster",
        "",
        f"Measured {data['created']} by `benchmarks/large_images.py` on {machine_line(data['machine'])}; "
        f"load average {data['load_before'][0]:.2f} before, {data['load_after'][0]:.2f} after (the machine was "
        "shared with other jobs: ratios within one size are the reading, not absolute times). "
        f"Python {data['python']}, NumPy {data['numpy']}, ONNX Runtime {data['onnxruntime']}, MONAI {data['monai']}, "
        f"zarr {data['zarr']}.",
        "",
        f"Net: {s['net']}. Windows {s['window']}x{s['window']}, overlap {s['overlap']}, {s['blend']} blending, "
        f"{s['sw_batch']} windows per call; chunks {s['chunk']}x{s['chunk']}. Input: an RGB Zarr made on the fly.",
        "",
        "| size | path | wall s | MP/s | peak RSS GB (client / workers) | vs `windows` | vs MONAI | load |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for size in sizes:
        rows = [r for r in data["rows"] if r["size"] == size and "seconds" in r]
        best = {}
        for r in rows:
            if r["kind"] not in best or r["seconds"] < best[r["kind"]]["seconds"]:
                best[r["kind"]] = r
        for kind in ("stream", "dask", "windows", "monai", "whole"):
            r = best.get(kind)
            if r is None:
                continue
            peak = _gb(r.get("peak_rss"))
            if r.get("worker_peak_rss"):
                peak += " / " + ", ".join(_gb(p) for p in r["worker_peak_rss"])
            vs_w = f"{best['windows']['seconds'] / r['seconds']:.2f}x" if "windows" in best else "-"
            vs_m = f"{best['monai']['seconds'] / r['seconds']:.2f}x" if "monai" in best else "-"
            lines.append(f"| {size}^2 | {kind} | {r['seconds']:.1f} | {r['mp_per_s']:.2f} | {peak} | {vs_w} | "
                         f"{vs_m} | {r['load']:.1f} |")
        for r in data["rows"]:
            if r["size"] == size and "error" in r:
                lines.append(f"| {size}^2 | {r['kind']} | failed: {r['error'][:80]} | | | | | |")
    lines += ["", "`vs windows` and `vs MONAI`: that path's time divided into theirs (above 1: faster than them).",
              "", HAND_WRITTEN + kept if kept else HAND_WRITTEN + "\n"]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
