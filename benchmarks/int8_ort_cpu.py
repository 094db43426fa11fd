"""What ONNX Runtime's CPU provider makes of each precision's ONNX, and why the TensorRT-placement int8 file is slow there.

    PYTHONPATH=. python benchmarks/int8_ort_cpu.py            # -> benchmarks/int8_ort_cpu.md / .json

For the shipped UNet at 256x256, batch 1: export, then fp16 and int8 for both Q/DQ placements (the
pipeline's own calls), then for each file
1. ORT's profiler (1 intra-op thread): time per op type, and the op types left in ORT's optimized graph
   (which kernels really run: QLinearConv vs DequantizeLinear + FusedConv);
2. the same file with ``session.qdqisint8allowed=1`` (ORT's switch for fusing int8 Q/DQ, off on x86);
3. latency at 1 thread, at the CPUs this process may use, and at 4x that (a thread pool bigger than the
   CPUs, as in a container whose quota is below the cores it sees), with ORT's spin-waiting on and off.
All variants are interleaved round-robin in one run, so their ratios hold even on a shared machine.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from deploy_unet import shipped  # noqa: E402
from deploy_unet.export import export_onnx  # noqa: E402
from deploy_unet.fileio import write_text_atomic  # noqa: E402
from deploy_unet.machine import cpu_info, machine_info  # noqa: E402
from deploy_unet.nets.loading import load_net  # noqa: E402
from deploy_unet.precision import quantize  # noqa: E402

Q_DQ = ("QuantizeLinear", "DequantizeLinear")


def make_files(folder: Path, checkpoint: Path, size: int, calib_samples: int) -> dict[str, Path]:
    loaded = load_net(checkpoint=checkpoint)
    fp32 = folder / "unet.onnx"
    export_onnx(loaded.net, fp32, height=size, width=size, mean=loaded.mean, std=loaded.std, arch=loaded.arch,
                net_config=loaded.net_config, checkpoint_sha256=loaded.checkpoint.sha256)
    cache = folder / "calib.json"
    files = {"fp32": fp32}
    for label, precision, target in (("fp16", "fp16", "tensorrt"), ("int8 tensorrt Q/DQ", "int8", "tensorrt"),
                                     ("int8 onnxruntime Q/DQ", "int8", "onnxruntime")):
        files[label] = quantize(fp32, precision, target=target, calib_samples=calib_samples, calib_cache=cache,
                                eval_source=None, progress=False).path
    return files


def session(path: Path, threads: int, spin: bool = True, int8_allowed: bool = False, profile: str | None = None,
            optimized: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if int8_allowed:
        options.add_session_config_entry("session.qdqisint8allowed", "1")
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    if optimized:
        options.optimized_model_filepath = optimized
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def profile_file(path: Path, x: np.ndarray, folder: Path, int8_allowed: bool, runs: int) -> dict:
    """ORT's own profiler: ms per op type per run, and what the optimized graph contains."""
    tag = path.stem.replace(".", "_") + ("_int8allowed" if int8_allowed else "")
    optimized = folder / f"{tag}.optimized.onnx"
    sess = session(path, 1, int8_allowed=int8_allowed, profile=os.fspath(folder / tag), optimized=os.fspath(optimized))
    name = sess.get_inputs()[0].name
    for _ in range(runs):
        sess.run(None, {name: x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / 1e3 / runs
    graph_ops = collections.Counter(n.op_type for n in onnx.load(os.fspath(optimized)).graph.node)
    return {"ms_per_run_by_op": dict(per_op.most_common()), "optimized_graph_ops": dict(graph_ops.most_common()),
            "nodes": sum(graph_ops.values()), "qdq_left": sum(graph_ops[o] for o in Q_DQ)}


def interleaved_latency(configs: dict[str, ort.InferenceSession], x: np.ndarray, warmup: int, iters: int) -> dict:
    times: dict[str, list[float]] = {k: [] for k in configs}
    for sess in configs.values():
        for _ in range(warmup):
            sess.run(None, {sess.get_inputs()[0].name: x})
    for _ in range(iters):
        for key, sess in configs.items():
            start = time.perf_counter()
            sess.run(None, {sess.get_inputs()[0].name: x})
            times[key].append((time.perf_counter() - start) * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(shipped.checkpoint("unet")))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--profile-runs", type=int, default=10)
    p.add_argument("--iters", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default=str(HERE / "int8_ort_cpu"))
    args = p.parse_args(argv)

    cpu = cpu_info()
    usable = cpu.usable_cpus
    thread_counts = sorted({1, usable, 4 * usable})
    x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size)).astype(np.float32)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="int8-ort-") as tmp:
        folder = Path(tmp)
        files = make_files(folder, Path(args.checkpoint), args.size, args.calib_samples)
        profiles = {label: profile_file(path, x, folder, False, args.profile_runs) for label, path in files.items()}
        profiles["int8 tensorrt Q/DQ, qdqisint8allowed=1"] = profile_file(
            files["int8 tensorrt Q/DQ"], x, folder, True, args.profile_runs)
        configs = {}
        for label, path in files.items():
            for threads in thread_counts:
                for spin in (True, False):
                    configs[(label, threads, spin)] = session(path, threads, spin)
        latency = interleaved_latency(configs, x, args.warmup, args.iters)
    seconds = time.perf_counter() - started

    data = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_info(),
        "versions": {"onnxruntime": ort.__version__, "onnx": onnx.__version__},
        "command": "PYTHONPATH=. python benchmarks/int8_ort_cpu.py " + " ".join(argv or sys.argv[1:]),
        "size": args.size,
        "profiles": profiles,
        "latency_ms": [{"file": k[0], "threads": k[1], "spin": k[2], "median_ms": v} for k, v in latency.items()],
        "seconds": seconds,
    }
    out = Path(args.out)
    write_text_atomic(out.with_suffix(".json"), json.dumps(data, indent=2) + "\n")
    write_text_atomic(out.with_suffix(".md"), render(data, cpu.describe(), thread_counts, usable))
    print(f"wrote {out.with_suffix('.md')} and .json ({seconds:.0f} s)")


def render(data: dict, cpu_line: str, thread_counts: list[int], usable: int) -> str:
    lines = [
        "# ONNX Runtime CPU and the int8 placements: which kernels run, and how the thread count hurts",
        "",
        f"Date {data['date']}; CPU {cpu_line}; onnxruntime {data['versions']['onnxruntime']}, "
        f"onnx {data['versions']['onnx']}, torch {data['machine'].get('torch', '?')}. Shipped UNet "
        f"(`models/unet_synthetic.pt`), {data['size']}x{data['size']}, batch 1. Whole run {data['seconds']:.0f} s.",
        "",
        f"    {data['command'].strip()}",
        "",
        "## 1. What ORT's optimizer leaves, and where one run's time goes (1 thread, ORT profiler)",
        "",
        "| file | nodes after ORT optimization | Q/DQ left | ms per run (sum of kernels) | top kernels (ms per run) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, prof in data["profiles"].items():
        ops = prof["ms_per_run_by_op"]
        top = ", ".join(f"{op} {ms:.1f}" for op, ms in list(ops.items())[:4])
        lines.append(f"| {label} | {prof['nodes']} | {prof['qdq_left']} | {sum(ops.values()):.1f} | {top} |")
    lines += ["", "Op types in ORT's optimized graphs:", ""]
    for label, prof in data["profiles"].items():
        lines.append(f"- {label}: " + ", ".join(f"{op} {n}" for op, n in prof["optimized_graph_ops"].items()))
    lat = {(r["file"], r["threads"], r["spin"]): r["median_ms"] for r in data["latency_ms"]}
    files = list(dict.fromkeys(r["file"] for r in data["latency_ms"]))
    cols = [(t, s) for t in thread_counts for s in (True, False)]
    lines += [
        "",
        f"## 2. Median latency (ms) by intra-op threads; this process may use {usable} CPU(s)",
        "",
        "`spin`: ORT's default, idle pool threads spin-wait between ops; `block`: "
        "`session.intra_op.allow_spinning=0`. All cells interleaved in one run; the ratio row is each int8/fp16 "
        "file over fp32 in the same column.",
        "",
        "| file | " + " | ".join(f"{t} thr {'spin' if s else 'block'}" for t, s in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for f in files:
        lines.append(f"| {f} | " + " | ".join(f"{lat[(f, t, s)]:.1f}" for t, s in cols) + " |")
    for f in files[1:]:
        lines.append(f"| {f} / fp32 | " + " | ".join(f"{lat[(f, t, s)] / lat[('fp32', t, s)]:.2f}x" for t, s in cols)
                     + " |")
    lines += ["", "## What this shows", ""] + findings(data, lat, usable, max(thread_counts))
    return "\n".join(lines) + "\n"


def findings(data: dict, lat: dict, usable: int, most: int) -> list[str]:
    """The conclusions, with this run's numbers in them (the prose is fixed, the numbers are measured)."""
    prof = data["profiles"]
    trt, trt8, ort_q = prof["int8 tensorrt Q/DQ"], prof["int8 tensorrt Q/DQ, qdqisint8allowed=1"], prof["int8 onnxruntime Q/DQ"]
    fp16 = prof["fp16"]

    def ratio(f: str, threads: int, spin: bool = True) -> str:
        return f"{lat[(f, threads, spin)] / lat[('fp32', threads, spin)]:.2f}x"

    def ops(p: dict, op: str) -> int:
        return p["optimized_graph_ops"].get(op, 0)

    return [
        f"- **The TensorRT placement runs no int8 kernel on ONNX Runtime's x86 CPU provider.** After ORT's "
        f"optimizer it still holds {trt['qdq_left']} Q/DQ nodes of {trt['nodes']} and {ops(trt, 'QLinearConv')} "
        f"QLinearConv: each convolution is DequantizeLinear (weights and activations, every run) + fp32 "
        f"`FusedConv` (Conv+ReLU) whose weights, no longer constant, are not pre-packed. ORT's QDQ fusions take "
        "symmetric int8 activations only where `QDQIsInt8Allowed()` holds, which is Arm builds "
        "(`session.qdqisint8allowed`); x86 fuses uint8 activations (U8S8). It costs "
        f"{ratio('int8 tensorrt Q/DQ', usable)} of fp32 at {usable} thread(s) here.",
        f"- Forcing `session.qdqisint8allowed=1` on x86 leaves {trt8['qdq_left']} Q/DQ and "
        f"{ops(trt8, 'QLinearConv')} QLinearConv (it fuses the concats, {ops(trt8, 'QLinearConcat')} QLinearConcat): "
        "the Conv -> ReLU -> Q chains that TensorRT fuses do not match ORT's Conv pattern, so it does not help.",
        f"- **The ONNX Runtime placement** (uint8 activations, ReLU folded into Q) becomes "
        f"{ops(ort_q, 'QLinearConv')} QLinearConv with {ort_q['qdq_left']} Q/DQ left: "
        f"{ratio('int8 onnxruntime Q/DQ', usable)} of fp32. It is the int8 file for a CPU; the TensorRT placement "
        "is the one TensorRT compiles.",
        f"- **fp16 on ORT CPU is fp32 with extra layout work**: this ORT build took no fp16 convolution kernel; "
        "its cast-insertion pass runs the convolutions in fp32 (weights converted once), so the optimized fp16 "
        f"graph has {ops(fp16, 'Cast')} Cast, {ops(fp16, 'Conv')} fp32 Conv and {ops(fp16, 'ReorderInput')} ReorderInput "
        f"(fp32 has {ops(prof['fp32'], 'ReorderInput')}), {ratio('fp16', usable)} of fp32.",
        f"- **Thread pools larger than the CPUs**: with {most} threads on {usable} usable CPU(s), spin-waiting on, "
        f"fp32 takes {lat[('fp32', most, True)] / lat[('fp32', usable, True)]:.2f}x its time at {usable} thread(s) "
        f"and the TensorRT placement {lat[('int8 tensorrt Q/DQ', most, True)] / lat[('int8 tensorrt Q/DQ', usable, True)]:.2f}x. "
        "This is why the pipeline now sets threads to the CPUs this process may use.",
        "- **Intel vs AMD**: this file was recorded on the CPU named at the top. The kernel choice above does not "
        "depend on the CPU (the x86 rule is compiled in), so on an Intel Xeon with AVX-512 VNNI/AMX the TensorRT "
        "placement takes the same dequantize + fp32 path, while fp32 (AVX-512 NCHWc convolutions) and the "
        "ONNX Runtime placement (VNNI/AMX U8S8 GEMM) get faster: the gap widens there. The 487 ms (19x fp32) a "
        "user measured on such a Xeon was not reproduced here: the dequantize + fp32 path explains a factor of "
        "1.2-1.8, not 19; an oversubscribed thread pool is the mechanism measured above, but it was not observed "
        "on that machine. The pipeline's per-stage table now records where such time goes.",
    ]


if __name__ == "__main__":
    main()
