"""The fastest CPU path: every precision of the shipped UNet on ONNX Runtime, OpenVINO and torch, side by side.

    pip install 'deploy-unet[openvino]' nncf        # nncf only for this benchmark's NNCF row
    PYTHONPATH=. python benchmarks/openvino_cpu.py    # -> benchmarks/openvino_cpu.md / .json (a few minutes)

1. Files (the pipeline's own calls): the shipped UNet exported (dynamic batch and size), fp16, int8 in both Q/DQ
   placements (tensorrt: symmetric; onnxruntime: U8S8), calibrated on ``synthetic:seed=1``; and NNCF's
   ``nncf.quantize`` of the same fp32 ONNX on the same calibration images (its defaults, ``subset_size`` = them).
2. Accuracy against PyTorch fp32 on ``synthetic:seed=2`` (held out): rel L2 of the logits and mask agreement,
   with the precision each runner reports it ran (OpenVINO's is read back from the compiled model).
3. Latency with the project's harness (``bench.bench_rounds``: all configurations of a batch and size warmed up,
   then timed in the same interleaved rounds), batch 1 and 8 at 256 and 512; ratios to ORT fp32 of that round.
4. The harness against OpenVINO's own ``benchmark_app`` (sync API, latency hint, same threads, same file and
   input shape, same inference precision), alternated block by block so the machine's load hits both.
5. The fraction of the CPU's peak: FLOPs of the net counted from the ONNX (2 x MACs of every Conv and
   ConvTranspose at that size), peak from the ISA, core count and clock.

``--only int8``: the int8 files alone on OpenVINO (tensorrt, onnxruntime and openvino placements, NNCF's file),
with ORT fp32 as the base, accuracy vs PyTorch and latency in the same interleaved rounds, plus each file's
per-round ratio to NNCF's; writes ``OUT_int8.json`` and prints a Markdown section (a few minutes).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from deploy_unet import shipped  # noqa: E402
from deploy_unet.bench import bench_rounds, round_ratios  # noqa: E402
from deploy_unet.data import load_samples  # noqa: E402
from deploy_unet.describe import read_model_info  # noqa: E402
from deploy_unet.export import export_onnx  # noqa: E402
from deploy_unet.fileio import write_text_atomic  # noqa: E402
from deploy_unet.machine import cpu_info, machine_info  # noqa: E402
from deploy_unet.nets.loading import load_net  # noqa: E402
from deploy_unet.precision import quantize  # noqa: E402
from deploy_unet.runtime import open_runner  # noqa: E402
from deploy_unet.runtime.base import backend_label, runner_precision  # noqa: E402

CALIB, EVAL = "synthetic:seed=1", "synthetic:seed=2"


def make_files(folder: Path, size: int, calib_samples: int) -> dict[str, Path]:
    loaded = load_net(checkpoint=shipped.checkpoint("unet"))
    fp32 = folder / "unet.onnx"
    export_onnx(loaded.net, fp32, height=size, width=size, mean=loaded.mean, std=loaded.std, arch=loaded.arch,
                net_config=loaded.net_config, checkpoint_sha256=loaded.checkpoint.sha256)
    cache = folder / "calib.json"
    files = {"fp32": fp32}
    for key, precision, target in (("fp16", "fp16", "tensorrt"), ("int8 tensorrt", "int8", "tensorrt"),
                                   ("int8 onnxruntime", "int8", "onnxruntime")):
        files[key] = quantize(fp32, precision, target=target, calib=CALIB, calib_samples=calib_samples,
                              calib_cache=cache, eval_source=None, progress=False).path
    files["int8 nncf"] = nncf_quantize(fp32, folder / "unet.int8.nncf.onnx", calib_samples)
    return files


def nncf_quantize(fp32: Path, out: Path, n: int) -> Path | None:
    """NNCF's post-training quantization of the same ONNX on the same calibration images (its defaults)."""
    try:
        import nncf
    except ImportError:
        return None
    info = read_model_info(fp32)
    images = load_samples(CALIB, info, n).images
    model = onnx.load(fp32)
    name = model.graph.input[0].name
    dataset = nncf.Dataset([images[i:i + 1] for i in range(len(images))], lambda x: {name: x})
    quantized = nncf.quantize(model, dataset, subset_size=len(images))
    from deploy_unet.metadata import read_props, write_props

    write_props(quantized, {**read_props(model), "precision": "int8", "quantizer": f"nncf {nncf.__version__}"})
    onnx.save(quantized, out)
    return out


# (label, file key, backend, runner options)
def configurations(files: dict[str, Path | None]) -> list[tuple[str, str, str, dict]]:
    ov32, ovauto = {"ov_precision": "f32"}, {"ov_precision": "auto"}
    configs = [
        ("ORT fp32", "fp32", "onnxruntime", {}),
        ("ORT fp16", "fp16", "onnxruntime", {}),
        ("ORT int8 (onnxruntime Q/DQ)", "int8 onnxruntime", "onnxruntime", {}),
        ("ORT int8 (tensorrt Q/DQ)", "int8 tensorrt", "onnxruntime", {}),
        ("ORT int8 (NNCF)", "int8 nncf", "onnxruntime", {}),
        ("OpenVINO fp32 (f32 forced)", "fp32", "openvino", ov32),
        ("OpenVINO fp32 file, default precision", "fp32", "openvino", ovauto),
        ("OpenVINO fp16 file, default precision", "fp16", "openvino", ovauto),
        ("OpenVINO int8 (tensorrt Q/DQ)", "int8 tensorrt", "openvino", ovauto),
        ("OpenVINO int8 (onnxruntime Q/DQ)", "int8 onnxruntime", "openvino", ovauto),
        ("OpenVINO int8 (NNCF)", "int8 nncf", "openvino", ovauto),
        ("torch fp32 (eager)", "checkpoint", "torch", {"device": "cpu"}),
    ]
    return [c for c in configs if files.get(c[1]) is not None]


def open_config(files, config, threads):
    label, key, backend, options = config
    return open_runner(files[key], backend, threads=threads, **options)


def accuracy(files, configs, threads: int, n: int, size: int) -> dict[str, dict]:
    info = read_model_info(files["fp32"])
    images = load_samples(f"{EVAL},size={size}x{size}", info, n).images
    with open_runner(files["checkpoint"], "torch", device="cpu", threads=threads) as ref:
        reference = np.concatenate([ref.infer({"input": images[i:i + 1]})[ref.output_names[0]] for i in range(n)])
    out = {}
    for config in configs:
        with open_config(files, config, threads) as runner:
            got = np.concatenate([runner.infer({"input": images[i:i + 1]})[runner.output_names[0]] for i in range(n)])
            extra = runner.describe_run() if runner.backend == "openvino" else {}
            out[config[0]] = {
                "precision_ran": runner_precision(runner), "backend": backend_label(runner),
                "rel_l2": float(np.linalg.norm(got - reference) / np.linalg.norm(reference)),
                "mask_agreement": float((got.argmax(1) == reference.argmax(1)).mean() * 100),
                **({"int8_convolutions": extra["int8_convolutions"], "concats_rewritten": extra["concats_rewritten"]}
                   if extra else {}),
            }
    return out


def timings(files, configs, threads, groups, warmup: int) -> list[dict]:
    rows = []
    for batch, size, iters, rounds in groups:
        runners = [open_config(files, c, threads) for c in configs]
        results = bench_rounds(runners, batch=batch, height=size, width=size, warmup=warmup, iters=iters,
                               rounds=rounds, labels=[c[0] for c in configs], keep_samples=False)
        base = results[0]
        for config, r in zip(configs, results):
            ratios = round_ratios(r, base)  # this one's round median over ORT fp32's: < 1 is faster
            rows.append({"config": config[0], "batch": batch, "size": size, "precision": r.precision,
                         "median_ms": r.latency_ms.median, "round_medians_ms": r.round_medians_ms,
                         "ratio_to_ort_fp32": float(np.median(ratios)) if ratios else 1.0,
                         "ratio_range": [min(ratios), max(ratios)] if ratios else [1.0, 1.0]})
        print(f"  batch {batch} {size}x{size}: done", flush=True)
    return rows


def count_flops(path: Path, size: int) -> float:
    """2 x multiply-adds of every Conv and ConvTranspose at batch 1 and size x size (shape inference)."""
    model = onnx.load(path)
    inp = model.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(inp, (1, 3, size, size)):
        dim.ClearField("dim_param")
        dim.dim_value = value
    model = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input)}
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    macs = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        w = weights.get(node.input[1])
        if w is None:
            continue
        if node.op_type == "Conv":  # out elements x (Cin/group x kh x kw)
            out = shapes[node.output[0]]
            macs += int(np.prod(out)) * int(np.prod(w[1:]))
        else:  # every input element spreads over Cout/group x kh x kw outputs
            inp_shape = shapes[node.input[0]]
            macs += int(np.prod(inp_shape)) * int(np.prod(w[1:]))  # w: (Cin, Cout/group, kh, kw)
    return 2.0 * macs


def cpu_peak(threads: int) -> dict:
    """Peak per precision from ISA, cores and clock: 2 FMA pipes of the vector width the ISA implies."""
    cpu = cpu_info()
    mhz = None
    try:
        mhz = float(re.search(r"cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text()).group(1))
    except (OSError, AttributeError):
        pass
    family = None
    try:
        family = int(re.search(r"cpu family\s*:\s*(\d+)", Path("/proc/cpuinfo").read_text()).group(1))
    except (OSError, AttributeError):
        pass
    lanes = 16 if "AVX512F" in cpu.isa else 8
    # AMD Zen 4 (family 25) runs AVX-512 on 256-bit pipes; Zen 5 (family 26) server parts and Intel have 512-bit.
    if cpu.vendor == "AuthenticAMD" and family == 25:
        lanes = 8
    pipes = 2
    fp32 = pipes * lanes * 2  # FLOP/cycle/core: FMA = 2
    per_core = {"fp32": fp32, "bf16": fp32 * 2 if "AVX512-BF16" in cpu.isa else fp32,
                "int8": fp32 * 4 if ("AVX512-VNNI" in cpu.isa or "AVX-VNNI" in cpu.isa) else fp32 * 2}
    if "AMX-BF16" in cpu.isa:
        per_core["bf16"] = 1024  # AMX: 16x32 bf16 tile FMA per cycle, order of magnitude
    if "AMX-INT8" in cpu.isa:
        per_core["int8"] = 2048
    ghz = (mhz or 0) / 1000
    return {"clock_ghz": ghz, "cores": threads, "vector_lanes_fp32": lanes, "fma_pipes": pipes, "cpu_family": family,
            "per_core_per_cycle": per_core,
            "peak_gflops": {k: v * ghz * threads for k, v in per_core.items()}}


def benchmark_app_vs_harness(path: Path, threads: int, precision: str, size: int, blocks: int, seconds: float) -> dict:
    """Median latency of OpenVINO's benchmark_app and of the project's harness on the same file and settings,
    alternated ``blocks`` times; the overhead is the median of the per-block ratios."""
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).with_name("benchmark_app"))
    if not Path(exe).exists():
        return {"error": "benchmark_app not found (it ships with the openvino wheel)"}
    ours, theirs = [], []
    runner = open_runner(path, "openvino", threads=threads, ov_precision=precision)
    with runner:
        x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        for _ in range(5):
            runner.infer({"input": x})
        for _ in range(blocks):
            # benchmark_app refuses -nthreads/-nstreams beside a hint; the latency hint alone runs one stream on the
            # cores OpenVINO sees, which is the harness's setting when threads == the usable CPUs (the default).
            tuning = ["-hint", "latency"] if threads == cpu_info().usable_cpus else \
                ["-hint", "none", "-nthreads", str(threads), "-nstreams", "1"]
            cmd = [exe, "-m", str(path), "-d", "CPU", *tuning, "-api", "sync",
                   "-data_shape", f"input[1,3,{size},{size}]", "-t", str(int(seconds)), "-infer_precision", precision]
            text = subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout
            match = re.search(r"Median:\s*([\d.]+)\s*ms", text)
            if not match:
                return {"error": "benchmark_app printed no median", "output_tail": text[-800:]}
            theirs.append(float(match.group(1)))
            samples, end = [], time.perf_counter() + seconds
            while time.perf_counter() < end:
                t = time.perf_counter()
                runner.infer({"input": x})
                samples.append((time.perf_counter() - t) * 1000)
            ours.append(float(np.median(samples)))
    ratios = [a / b for a, b in zip(ours, theirs)]
    return {"file": path.name, "precision": precision, "size": size, "harness_ms": ours, "benchmark_app_ms": theirs,
            "overhead": float(np.median(ratios)), "overhead_range": [min(ratios), max(ratios)],
            "command": " ".join(cmd[1:]).replace(str(path), path.name)}


INT8_CONFIGS = [
    ("ORT fp32", "fp32", "onnxruntime", {}),
    ("OpenVINO int8 (tensorrt Q/DQ)", "int8 tensorrt", "openvino", {"ov_precision": "auto"}),
    ("OpenVINO int8 (onnxruntime Q/DQ)", "int8 onnxruntime", "openvino", {"ov_precision": "auto"}),
    ("OpenVINO int8 (openvino Q/DQ)", "int8 openvino", "openvino", {"ov_precision": "auto"}),
    ("OpenVINO int8 (NNCF)", "int8 nncf", "openvino", {"ov_precision": "auto"}),
]


def make_int8_files(folder: Path, size: int, calib_samples: int) -> dict[str, Path | None]:
    """fp32 export, the three project placements from one calibration (shared cache), NNCF's file."""
    loaded = load_net(checkpoint=shipped.checkpoint("unet"))
    fp32 = folder / "unet.onnx"
    export_onnx(loaded.net, fp32, height=size, width=size, mean=loaded.mean, std=loaded.std, arch=loaded.arch,
                net_config=loaded.net_config, checkpoint_sha256=loaded.checkpoint.sha256)
    files: dict[str, Path | None] = {"fp32": fp32}
    for target in ("tensorrt", "onnxruntime", "openvino"):
        files[f"int8 {target}"] = quantize(fp32, "int8", target=target, calib=CALIB, calib_samples=calib_samples,
                                           calib_cache=folder / "calib.json", eval_source=None, progress=False).path
    files["int8 nncf"] = nncf_quantize(fp32, folder / "unet.int8.nncf.onnx", calib_samples)
    return files


def main_int8(args, threads: int) -> None:
    load_before = os.getloadavg()
    started = time.perf_counter()
    groups = [(1, 256, 20, 5)] if args.quick else [(1, 256, 30, 10), (8, 256, 6, 5), (1, 512, 10, 5), (8, 512, 3, 3)]
    with tempfile.TemporaryDirectory() as tmp:
        files = make_int8_files(Path(tmp), 256, args.calib_samples)
        files["checkpoint"] = shipped.checkpoint("unet")
        configs = [c for c in INT8_CONFIGS if files.get(c[1]) is not None]
        print(f"{len(configs)} configurations; accuracy on {args.eval_samples} held-out samples", flush=True)
        acc = accuracy(files, configs, threads, args.eval_samples, 256)
        print("timing", flush=True)
        rows = timings(files, configs, threads, groups, warmup=2)
    vs_nncf = []
    by = {(x["config"], x["batch"], x["size"]): x for x in rows}
    for label, *_ in configs[1:]:
        for b, s, _i, _r in groups:
            mine, nncf_row = by.get((label, b, s)), by.get(("OpenVINO int8 (NNCF)", b, s))
            if mine and nncf_row and len(mine["round_medians_ms"]) > 1:
                ratios = [x / y for x, y in zip(mine["round_medians_ms"], nncf_row["round_medians_ms"])]
                vs_nncf.append({"config": label, "batch": b, "size": s, "median": float(np.median(ratios)),
                                "range": [min(ratios), max(ratios)],
                                "rounds_faster": sum(r < 1 for r in ratios), "rounds": len(ratios)})
    import nncf
    import openvino

    record = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(threads), "threads": threads, "load_average_before": load_before,
        "load_average_after": os.getloadavg(), "seconds": time.perf_counter() - started,
        "versions": {"openvino": openvino.__version__.split("-")[0], "nncf": nncf.__version__,
                     "onnxruntime": __import__("onnxruntime").__version__},
        "groups": [{"batch": b, "size": s, "iters": i, "rounds": r} for b, s, i, r in groups],
        "accuracy": acc, "latency": rows, "vs_nncf": vs_nncf,
    }
    write_text_atomic(args.out + "_int8.json", json.dumps(record, indent=2) + "\n")
    print(render_int8(record))
    print(f"wrote {args.out}_int8.json in {record['seconds']:.0f} s", flush=True)


def render_int8(r: dict) -> str:
    m = r["machine"]
    groups = [(g["batch"], g["size"]) for g in r["groups"]]
    lines = ["## int8 placements on OpenVINO against NNCF (`--only int8`)", "",
             f"Measured {r['date']} on **{m['cpu']}** ({m['cpus']}), {r['threads']} threads; openvino "
             f"{r['versions']['openvino']}, nncf {r['versions']['nncf']}, onnxruntime {r['versions']['onnxruntime']}, "
             f"torch {m.get('torch')}. Load average {'/'.join(f'{x:.1f}' for x in r['load_average_before'])} before, "
             f"{'/'.join(f'{x:.1f}' for x in r['load_average_after'])} after; {r['seconds']:.0f} s. Rounds: "
             + ", ".join(f"b{g['batch']} {g['size']}: {g['rounds']} x {g['iters']}" for g in r["groups"]) + ".", "",
             "| configuration | ran in | rel L2 vs PyTorch | masks % | int8 convs | "
             + " | ".join(f"b{b} {s} / ORT fp32" for b, s in groups) + " |",
             "|---|---|---|---|---|" + "---|" * len(groups)]
    by = {(x["config"], x["batch"], x["size"]): x for x in r["latency"]}
    for label, a in r["accuracy"].items():
        convs = "/".join(map(str, a["int8_convolutions"])) if "int8_convolutions" in a else "-"
        cells = []
        for b, s in groups:
            x = by.get((label, b, s))
            cells.append("-" if x is None else f"{x['ratio_to_ort_fp32']:.2f} ({x['median_ms']:.1f} ms)")
        lines.append(f"| {label} | {a['backend']} | {a['rel_l2']:.4f} | {a['mask_agreement']:.3f} | {convs} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Per-round ratio to NNCF's file in the same rounds (median, min-max, rounds this file was faster):", "",
              "| configuration | " + " | ".join(f"b{b} {s}" for b, s in groups) + " |", "|---|" + "---|" * len(groups)]
    vs = {(x["config"], x["batch"], x["size"]): x for x in r["vs_nncf"]}
    for label in r["accuracy"]:
        if label == "ORT fp32" or "NNCF" in label:
            continue
        cells = []
        for b, s in groups:
            x = vs.get((label, b, s))
            cells.append("-" if x is None else
                         f"{x['median']:.2f} ({x['range'][0]:.2f}-{x['range'][1]:.2f}; {x['rounds_faster']}/{x['rounds']})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def main_harness(args, threads: int) -> None:
    """The harness against benchmark_app alone, with more blocks: the part of the full run a loaded machine spoils
    most (writes OUT_harness.json; the markdown section is written by hand from it)."""
    import openvino

    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = make_files(Path(tmp), 256, args.calib_samples)
        from deploy_unet.openvino.convert import convert_openvino

        xml = convert_openvino(files["int8 tensorrt"], Path(tmp) / "unet.int8.xml").xml
        for path, precision in ((files["fp32"], "f32"), (files["fp32"], "bf16"), (xml, "bf16")):
            if precision == "bf16" and "AVX512-BF16" not in cpu_info().isa and "AMX-BF16" not in cpu_info().isa:
                continue
            rows.append(benchmark_app_vs_harness(path, threads, precision, 256, blocks=args.blocks, seconds=4))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "command"}), flush=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine_info(threads),
              "threads": threads, "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "versions": {"openvino": openvino.__version__.split("-")[0]}, "benchmark_app": rows}
    Path(args.out + "_harness.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}_harness.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--eval-samples", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="batch 1 at 256 only, few iterations (a smoke run)")
    parser.add_argument("--out", default=str(HERE / "openvino_cpu"))
    parser.add_argument("--only", choices=["int8", "harness"], default=None,
                        help="int8: the int8 placements and NNCF's file on OpenVINO only (writes OUT_int8.json); "
                             "harness: the harness against benchmark_app only (writes OUT_harness.json)")
    parser.add_argument("--blocks", type=int, default=7, help="--only harness: alternated blocks per file")
    args = parser.parse_args()
    threads = args.threads or cpu_info().usable_cpus
    if args.only == "int8":
        main_int8(args, threads)
        return
    if args.only == "harness":
        main_harness(args, threads)
        return
    load_before = os.getloadavg()
    started = time.perf_counter()
    groups = [(1, 256, 20, 5)] if args.quick else [(1, 256, 30, 10), (8, 256, 6, 3), (1, 512, 10, 5), (8, 512, 3, 3)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files: dict[str, Path | None] = make_files(folder, 256, args.calib_samples)
        files["checkpoint"] = shipped.checkpoint("unet")
        configs = configurations(files)
        print(f"{len(configs)} configurations; accuracy on {args.eval_samples} held-out samples", flush=True)
        acc = accuracy(files, configs, threads, args.eval_samples, 256)
        print("timing", flush=True)
        rows = timings(files, configs, threads, groups, warmup=2)
        flops = {size: count_flops(files["fp32"], size) for size in sorted({g[1] for g in groups})}
        app = []
        for key, precision in (("fp32", "f32"), ("fp32", "bf16"), ("int8 tensorrt", "bf16")):
            if precision == "bf16" and "AVX512-BF16" not in cpu_info().isa and "AMX-BF16" not in cpu_info().isa:
                continue
            path = files[key]
            if key == "int8 tensorrt":  # benchmark_app reads the file as is: give it the IR the runner would run
                from deploy_unet.openvino.convert import convert_openvino

                path = convert_openvino(files[key], folder / "unet.int8.xml").xml
            app.append(benchmark_app_vs_harness(path, threads, precision, 256, blocks=3 if not args.quick else 1,
                                                seconds=4))
        sizes = {k: (v.stat().st_size if v else None) for k, v in files.items() if k != "checkpoint"}
    import openvino

    try:
        import nncf

        nncf_version = nncf.__version__
    except ImportError:
        nncf_version = None
    peak = cpu_peak(threads)
    for row in rows:
        family = "int8" if "int8" in row["precision"] else ("bf16" if row["precision"] == "bf16" else "fp32")
        achieved = flops[row["size"]] * row["batch"] / (row["median_ms"] / 1000) / 1e9
        row["gflops"] = achieved
        row["peak_fraction"] = achieved / peak["peak_gflops"][family] if peak["peak_gflops"][family] else None
        row["peak_family"] = family
    record = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(threads), "threads": threads, "load_average_before": load_before,
        "load_average_after": os.getloadavg(), "seconds": time.perf_counter() - started,
        "versions": {"openvino": openvino.__version__.split("-")[0], "nncf": nncf_version,
                     "onnxruntime": __import__("onnxruntime").__version__},
        "groups": [{"batch": b, "size": s, "iters": i, "rounds": r} for b, s, i, r in groups],
        "file_bytes": sizes, "accuracy": acc, "latency": rows, "flops_per_image": flops, "cpu_peak": peak,
        "benchmark_app": app,
    }
    write_text_atomic(args.out + ".json", json.dumps(record, indent=2) + "\n")
    write_text_atomic(args.out + ".md", render(record))
    print(f"wrote {args.out}.md and .json in {record['seconds']:.0f} s", flush=True)


def render(r: dict) -> str:
    m = r["machine"]
    lines = ["# The fastest CPU path: ONNX Runtime, OpenVINO and torch per precision", "",
             f"Measured {r['date']} by `benchmarks/openvino_cpu.py` on **{m['cpu']}** ({m['cpus']}; ISA {m['cpu_isa']}), "
             f"{r['threads']} threads everywhere; openvino {r['versions']['openvino']}, onnxruntime "
             f"{r['versions']['onnxruntime']}, nncf {r['versions']['nncf']}, torch {m.get('torch')}. Load average "
             f"{'/'.join(f'{x:.1f}' for x in r['load_average_before'])} before, "
             f"{'/'.join(f'{x:.1f}' for x in r['load_average_after'])} after (a shared machine: compare the ratios, "
             f"measured in the same interleaved rounds, not the milliseconds); {r['seconds']:.0f} s in all.", "",
             "## Accuracy vs PyTorch fp32 (held-out `synthetic:seed=2`, 256x256)", "",
             "| configuration | ran in | rel L2 | mask agreement % | int8 convs | Concats folded |", "|---|---|---|---|---|---|"]
    for label, a in r["accuracy"].items():
        convs = "/".join(map(str, a["int8_convolutions"])) if "int8_convolutions" in a else "-"
        lines.append(f"| {label} | {a['backend']} ({a['precision_ran']}) | {a['rel_l2']:.4f} | {a['mask_agreement']:.3f} "
                     f"| {convs} | {a.get('concats_rewritten', '-')} |")
    lines += ["", "## Latency: ratio to ONNX Runtime fp32 in the same rounds (median of per-round ratios; lower is faster)", ""]
    groups = [(g["batch"], g["size"]) for g in r["groups"]]
    head = "| configuration | " + " | ".join(f"b{b} {s}" for b, s in groups) + " |"
    lines += [head, "|---|" + "---|" * len(groups)]
    by = {(x["config"], x["batch"], x["size"]): x for x in r["latency"]}
    for label in r["accuracy"]:
        cells = []
        for b, s in groups:
            x = by.get((label, b, s))
            cells.append("-" if x is None else f"{x['ratio_to_ort_fp32']:.2f} ({x['median_ms']:.1f} ms)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Per-round ranges of every ratio are in `openvino_cpu.json` (`ratio_range`).", "",
              "## Fraction of the CPU's peak", "",
              "FLOPs per image (2 x MACs of every Conv/ConvTranspose): "
              + ", ".join(f"{s}x{s}: {f / 1e9:.2f} GFLOP" for s, f in r["flops_per_image"].items())
              + f". Peak: {r['cpu_peak']['cores']} cores x {r['cpu_peak']['clock_ghz']:.2f} GHz x "
              f"{r['cpu_peak']['fma_pipes']} FMA pipes x {r['cpu_peak']['vector_lanes_fp32']} fp32 lanes x 2 = "
              + ", ".join(f"{k} {v:.0f} G(FL)OP/s" for k, v in r["cpu_peak"]["peak_gflops"].items()) + ".", "",
              "| configuration | batch | size | GFLOP/s | of its precision's peak |", "|---|---|---|---|---|"]
    for x in r["latency"]:
        if x["config"].startswith(("ORT fp32", "OpenVINO")) and "NNCF" not in x["config"]:
            lines.append(f"| {x['config']} | {x['batch']} | {x['size']} | {x['gflops']:.0f} | "
                         f"{100 * x['peak_fraction']:.0f}% ({x['peak_family']}) |")
    lines += ["", "## The harness against OpenVINO's benchmark_app (same file, settings and shape; alternated)", "",
              "| file | precision | harness ms | benchmark_app ms | overhead (median, range) |", "|---|---|---|---|---|"]
    for a in r["benchmark_app"]:
        if "error" in a:
            lines.append(f"| - | - | - | - | {a['error']} |")
            continue
        lines.append(f"| {a['file']} | {a['precision']} | {'/'.join(f'{v:.2f}' for v in a['harness_ms'])} | "
                     f"{'/'.join(f'{v:.2f}' for v in a['benchmark_app_ms'])} | {a['overhead']:.3f}x "
                     f"({a['overhead_range'][0]:.3f}-{a['overhead_range'][1]:.3f}) |")
    if r["benchmark_app"] and "command" in r["benchmark_app"][0]:
        lines += ["", f"benchmark_app settings: `benchmark_app {r['benchmark_app'][0]['command']}`."]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
