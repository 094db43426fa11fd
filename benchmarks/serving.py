#!/usr/bin/env python
"""Served vs in-process: `deploy-unet serve` on the bundled Triton server against the same runner in-process.

For the shipped UNet (``models/unet_synthetic.pt`` exported to ONNX at 256x256) on ONNX Runtime CPU, with
its own load client (tritonclient gRPC; perf_analyzer's pip package here is a placeholder without the
binary), this measures throughput and p50/p99 latency against client concurrency (1, 2, 4, 8, 16), for
dynamic batching on and off and for logits vs mask output. Each served number is divided by the same
runner (same ONNX, same intra-op threads, same output) called from the same number of threads in this
process, measured in the same run. Every request is one 3x256x256 float32 image (the model's normalized
NCHW input, 786 KB); the answer is 1 MB of logits or a 64 KB uint8 mask.

    PYTHONPATH=. python benchmarks/serving.py                 # -> benchmarks/serving.md, .json, .png
    PYTHONPATH=. python benchmarks/serving.py --wait-quiet 15  # first wait (<= 15 min) for a 1-min load < 1.5

The server runs as a child process (``python -m deploy_unet.cli serve``) on free 127.0.0.1 ports and is
stopped with SIGTERM after each configuration; the client shares the machine with it, as a sidecar would.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHIPPED = ROOT / "models" / "unet_synthetic.pt"
TOKEN = "benchmark-token"
MODEL = "unet"


def loadavg() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def wait_quiet(minutes: float, below: float = 1.5) -> float:
    deadline = time.monotonic() + 60 * minutes
    while loadavg() >= below and time.monotonic() < deadline:
        print(f"load {loadavg():.2f} >= {below}; waiting (until {minutes:.0f} min have passed)", flush=True)
        time.sleep(60)
    return loadavg()


def export_unet(work: Path) -> Path:
    out = work / "unet.onnx"
    subprocess.run([sys.executable, "-m", "deploy_unet.cli", "export", "--checkpoint", str(SHIPPED), "-o", str(out)],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return out


def percentiles(latencies_ms: list[float]) -> tuple[float, float]:
    a = np.asarray(latencies_ms)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def drive(call, concurrency: int, seconds: float, warmup: float) -> dict:
    """``concurrency`` threads call ``call(thread_index)`` back to back for ``warmup + seconds``; the calls that
    finish inside the last ``seconds`` count (throughput = their number / ``seconds``; their latencies)."""
    barrier = threading.Barrier(concurrency + 1)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[BaseException] = []
    window: dict[str, float] = {}

    def worker(i):
        barrier.wait()
        while True:
            t0 = time.perf_counter()
            if t0 >= window["end"]:
                return
            try:
                call(i)
            except BaseException as exc:  # noqa: BLE001  (reported below, the benchmark fails)
                errors.append(exc)
                return
            t1 = time.perf_counter()
            if window["start"] <= t1 <= window["end"]:
                latencies[i].append((t1 - t0) * 1e3)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    now = time.perf_counter()
    window.update(start=now + warmup, end=now + warmup + seconds)
    barrier.wait()
    for t in threads:
        t.join(timeout=warmup + seconds + 120)
    if errors:
        raise RuntimeError(f"{len(errors)} calls failed: {errors[0]!r}")
    flat = [v for per in latencies for v in per]
    if not flat:
        raise RuntimeError(f"no call finished inside the {seconds:.0f} s window at concurrency {concurrency}; "
                           "pass a longer --seconds")
    p50, p99 = percentiles(flat)
    return {"requests": len(flat), "images_per_s": len(flat) / seconds, "p50_ms": p50, "p99_ms": p99,
            "load": loadavg()}


def inputs(n: int = 8) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((1, 3, 256, 256)).astype(np.float32) for _ in range(n)]


def in_process(onnx: Path, output: str, threads: int, concurrency: int, seconds: float, warmup: float) -> dict:
    from deploy_unet.runtime import open_runner

    xs = inputs()
    with open_runner(onnx, threads=threads, output=output) as runner:
        return drive(lambda i: runner.infer({"input": xs[i % len(xs)]}), concurrency, seconds, warmup)


@contextlib.contextmanager
def served(onnx: Path, output: str, threads: int, batching: bool, queue_delay_us: int, max_batch: int):
    from deploy_unet.serving.server import free_port, wait_until_ready

    ports = [free_port() for _ in range(3)]
    cmd = [sys.executable, "-m", "deploy_unet.cli", "serve", str(onnx), "--model-name", MODEL, "--threads", str(threads),
           "--output", output, "--max-batch", str(max_batch), "--max-queue-delay-us", str(queue_delay_us),
           "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])]
    if not batching:
        cmd.append("--no-dynamic-batching")
    env = {**os.environ, "DEPLOY_UNET_TRITON_ACCESS_TOKEN": TOKEN}
    log = tempfile.NamedTemporaryFile("w+", prefix="serve-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL)
    try:
        wait_until_ready(f"127.0.0.1:{ports[0]}", MODEL, timeout_s=120)
        yield f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        Path(log.name).unlink(missing_ok=True)


def served_point(urls, output: str, concurrency: int, seconds: float, warmup: float) -> dict:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    http_url, grpc_url = urls
    out_name = "mask" if output == "mask" else "logits"
    xs = inputs()
    clients = [grpcclient.InferenceServerClient(grpc_url) for _ in range(concurrency)]
    prepared = []
    for i in range(concurrency):
        inp = grpcclient.InferInput("input", [1, 3, 256, 256], "FP32")
        inp.set_data_from_numpy(xs[i % len(xs)])
        prepared.append(inp)
    stats_client = httpclient.InferenceServerClient(http_url)

    def counts():
        s = stats_client.get_inference_statistics(MODEL, headers={"triton-access-token": TOKEN})["model_stats"][0]
        return int(s["inference_count"]), int(s["execution_count"])

    def call(i):
        result = clients[i].infer(MODEL, [prepared[i]], outputs=[grpcclient.InferRequestedOutput(out_name)])
        result.as_numpy(out_name)

    try:
        before = counts()
        row = drive(call, concurrency, seconds, warmup)
        after = counts()
    finally:
        for c in clients:
            c.close()
        stats_client.close()
    inferences, executions = after[0] - before[0], after[1] - before[1]
    row["avg_batch"] = inferences / executions if executions else float("nan")
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, output in zip(axes, ("logits", "mask"), strict=True):
        for label, style in (("in-process", "k--"), ("served, dynamic batching", "C0-o"), ("served, no batching", "C1-s")):
            pts = [r for r in rows if r["output"] == output and r["mode"] == label]
            ax.plot([r["concurrency"] for r in pts], [r["images_per_s"] for r in pts], style, label=label)
        ax.set_xscale("log", base=2)
        ax.set_title(f"output: {output}")
        ax.set_xlabel("client concurrency")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("images / s (256x256)")
    axes[0].legend()
    fig.suptitle("UNet (shipped) on ONNX Runtime CPU: deploy-unet serve (Triton) vs the same runner in-process")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def render(data: dict) -> str:
    m = data["machine"]
    from deploy_unet.machine import machine_line

    lines = [
        "# Serving: Triton (deploy-unet serve) vs the same runner in-process",
        "",
        f"Date {data['date']}; {machine_line(m)}; nvidia-pytriton {data['versions']['pytriton']} (Triton server "
        f"{data['versions']['triton_server']}), tritonclient {data['versions']['tritonclient']}, numpy "
        f"{data['versions']['numpy']}. 1-minute load average at start {data['load_start']:.2f} (the machine is shared; "
        "each row records its own).",
        "",
        f"    {data['command']}",
        "",
        f"The shipped UNet (`models/unet_synthetic.pt`, exported at 256x256) on ONNX Runtime CPU with "
        f"{data['threads']} intra-op threads, served by `deploy-unet serve` (max batch {data['max_batch']}, queue delay "
        f"{data['queue_delay_us']} us when batching) and driven by tritonclient gRPC clients on the same machine, each "
        f"sending one 1x3x256x256 float32 image per request back to back for {data['seconds']:.0f} s (after "
        f"{data['warmup']:.0f} s of warm-up). In-process: the same runner called from as many threads. "
        "`served / in-process` is the throughput ratio at the same concurrency and output; `avg batch` is Triton's "
        "inference count over its execution count (requests per model run).",
        "",
        "| output | mode | concurrency | images/s | p50 ms | p99 ms | avg batch | served / in-process | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = {(r["output"], r["concurrency"]): r for r in data["rows"] if r["mode"] == "in-process"}
    for r in data["rows"]:
        ratio = r["images_per_s"] / base[(r["output"], r["concurrency"])]["images_per_s"] if r["mode"] != "in-process" \
            else None
        lines.append(
            f"| {r['output']} | {r['mode']} | {r['concurrency']} | {r['images_per_s']:.1f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['avg_batch']:.2f} | {'' if ratio is None else f'{ratio:.2f}x'} | {r['load']:.2f} |"
            if "avg_batch" in r else
            f"| {r['output']} | {r['mode']} | {r['concurrency']} | {r['images_per_s']:.1f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | | | {r['load']:.2f} |")
    lines += ["", "![throughput against concurrency](serving.png)", "", "## At concurrency 8 (the goal: served >= 0.8x)", ""]
    for r in data["rows"]:
        if r["mode"] != "in-process" and r["concurrency"] == 8:
            ratio = r["images_per_s"] / base[(r["output"], 8)]["images_per_s"]
            lines.append(f"- {r['output']}, {r['mode']}: **{ratio:.2f}x** ({r['images_per_s']:.1f} vs "
                         f"{base[(r['output'], 8)]['images_per_s']:.1f} images/s){'' if ratio >= 0.8 else ' (below the goal)'}")
    lines += ["", *data.get("notes", [])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", help="the exported UNet (default: export models/unet_synthetic.pt into a temp dir)")
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per point")
    parser.add_argument("--warmup", type=float, default=1.5, help="untimed seconds per point")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads [default: the usable CPUs]")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--queue-delay-us", type=int, default=2000)
    parser.add_argument("--outputs", default="logits,mask")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="MIN",
                        help="first wait up to MIN minutes for a 1-minute load average below 1.5")
    parser.add_argument("--out", default=str(HERE / "serving"), help="output path without extension")
    args = parser.parse_args(argv)

    import pytriton
    import tritonclient

    from deploy_unet.machine import cpu_info, machine_info

    threads = args.threads or cpu_info().usable_cpus
    load_start = wait_quiet(args.wait_quiet) if args.wait_quiet else loadavg()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as work:
        onnx = Path(args.onnx) if args.onnx else export_unet(Path(work))
        for output in args.outputs.split(","):
            for c in concurrencies:
                row = in_process(onnx, output, threads, c, args.seconds, args.warmup)
                rows.append({"output": output, "mode": "in-process", "concurrency": c, **row})
                print(rows[-1], flush=True)
            for batching, label in ((True, "served, dynamic batching"), (False, "served, no batching")):
                with served(onnx, output, threads, batching, args.queue_delay_us, args.max_batch) as urls:
                    for c in concurrencies:
                        row = served_point(urls, output, c, args.seconds, args.warmup)
                        rows.append({"output": output, "mode": label, "concurrency": c, **row})
                        print(rows[-1], flush=True)
    order = {"in-process": 0, "served, dynamic batching": 1, "served, no batching": 2}
    rows.sort(key=lambda r: (r["output"], r["concurrency"], order[r["mode"]]))
    import importlib.metadata as md

    data = {
        "date": date.today().isoformat(), "machine": machine_info(threads), "threads": threads,
        "versions": {"pytriton": md.version("nvidia-pytriton"), "tritonclient": md.version("tritonclient"),
                     "numpy": np.__version__, "triton_server": "2.51.0 (bundled with nvidia-pytriton 0.7.0)"
                     if pytriton and tritonclient else ""},
        "load_start": load_start, "seconds": args.seconds, "warmup": args.warmup, "max_batch": args.max_batch,
        "queue_delay_us": args.queue_delay_us,
        "command": "PYTHONPATH=. python benchmarks/serving.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "rows": rows,
    }
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    plot(rows, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(render(data))
    print(f"wrote {out.with_suffix('.md')}, .json, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
