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


NOTES = [
    "## Reading it",
    "",
    "- **One request at a time pays the round trip.** At 1 client every served mode reaches 0.25-0.68x of "
    "in-process: the request's path (gRPC encoding of 0.8 MB in and up to 1 MB out, Triton, PyTriton's "
    "python-backend proxy and its shared-memory copies) runs on the same two cores as the inference and costs "
    "about 20 ms beside a 33 ms inference. A 1-thread instance is slowest there (one request uses one core).",
    "- **Instances, not intra-op threads, use a small CPU under load.** In-process, concurrent callers run several "
    "inferences at once on one ONNX Runtime session; one Triton instance runs one batch at a time, so with 1 "
    "instance x 2 threads the server leaves cores idle that the in-process callers fill (0.47-0.77x at 8 clients). "
    "Two instances of 1 thread each run two batches at once: 0.80-0.90x at 8 clients, the only mode that meets the "
    "0.8x goal. `serve` therefore defaults to one instance per usable CPU, 1 thread each, for CPU runners (one "
    "instance on a GPU); the price is latency at a single client (p50 72-163 ms against 55-59 ms), so a "
    "latency-bound single client should pass `--instances 1`.",
    "- **Dynamic batching buys little on ONNX Runtime CPU**: with one instance, batches of about 4 (`avg batch`) "
    "gave no more images/s than no batching, so per image ORT's CPU kernels gain nothing from a larger batch of "
    "this net here, and waiting for one adds latency. A GPU is where batching pays; the repository keeps it on.",
    "- **Mask vs logits**: the mask is 64 KB against 1 MB of logits per image, which matters on a network; here the "
    "client is on the same machine and compute dominates, so the two are close.",
    "- **Noise**: the client, the server and the baseline threads share the two cores (the load column counts "
    "them); rows vary by tens of percent, which is why every served point is divided by a baseline measured right "
    "before it.",
]


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
def served(onnx: Path, output: str, threads: int, batching: bool, queue_delay_us: int, max_batch: int,
           instances: int = 1):
    from deploy_unet.serving.server import free_port, wait_until_ready

    ports = [free_port() for _ in range(3)]
    cmd = [sys.executable, "-m", "deploy_unet.cli", "serve", str(onnx), "--model-name", MODEL, "--threads", str(threads),
           "--output", output, "--max-batch", str(max_batch), "--max-queue-delay-us", str(queue_delay_us),
           "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]),
           "--instances", str(instances)]
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

    outputs = sorted({r["output"] for r in rows})
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    fig, axes = plt.subplots(1, len(outputs), figsize=(5.5 * len(outputs), 4.2), sharey=True, squeeze=False)
    for ax, output in zip(axes[0], outputs, strict=True):
        for i, mode in enumerate(modes):
            pts = [r for r in rows if r["output"] == output and r["mode"] == mode]
            cs = [r["concurrency"] for r in pts]
            ax.plot(cs, [r["served"]["images_per_s"] for r in pts], f"C{i}-o", label=f"served: {mode}")
            ax.plot(cs, [r["in_process"]["images_per_s"] for r in pts], f"C{i}:", alpha=0.6,
                    label="in-process, measured beside it")
        ax.set_xscale("log", base=2)
        ax.set_title(f"output: {output}")
        ax.set_xlabel("client concurrency")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("images / s (256x256)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("shipped UNet on ONNX Runtime CPU: served by Triton vs the same runner in-process", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def render(data: dict) -> str:
    from deploy_unet.machine import machine_line

    v = data["versions"]
    lines = [
        "# Serving: Triton (deploy-unet serve) vs the same runner in-process",
        "",
        f"Date {data['date']}; {machine_line(data['machine'])}; nvidia-pytriton {v['pytriton']} (Triton server "
        f"{v['triton_server']}), tritonclient {v['tritonclient']}, numpy {v['numpy']}. 1-minute load average at start "
        f"{data['load_start']:.2f}; each row records the load at its served point (this benchmark's own client, "
        "server and baseline threads are part of it)." + (f" {data['note']}" if data.get("note") else ""),
        "",
        f"    {data['command']}",
        "",
        f"The shipped UNet (`models/unet_synthetic.pt`, exported at 256x256) on ONNX Runtime CPU, served by `deploy-unet "
        f"serve` (max batch {data['max_batch']}, queue delay {data['queue_delay_us']} us when batching) and driven by "
        "tritonclient gRPC clients on the same machine, each sending one 1x3x256x256 float32 image per request back to "
        f"back; throughput counts the requests finished in {data['seconds']:.0f} s after {data['warmup']:.1f} s of "
        f"warm-up. **In-process**: the same runner ({data['threads']} intra-op threads, same output) called from as many "
        "threads, measured right before each served point while the server sits idle. `ratio` = served / in-process "
        "images per second; `avg batch` = Triton's inference count / execution count (requests per model run).",
        "",
        "| output | served mode | clients | served img/s | p50 ms | p99 ms | avg batch | in-process img/s | p50 ms | "
        "p99 ms | ratio | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        s, b = r["served"], r["in_process"]
        lines.append(f"| {r['output']} | {r['mode']} | {r['concurrency']} | {s['images_per_s']:.1f} | {s['p50_ms']:.0f} | "
                     f"{s['p99_ms']:.0f} | {s['avg_batch']:.2f} | {b['images_per_s']:.1f} | {b['p50_ms']:.0f} | "
                     f"{b['p99_ms']:.0f} | **{r['ratio']:.2f}x** | {s['load']:.1f} |")
    lines += ["", "![served and in-process throughput against concurrency](serving.png)", "",
              "## At 8 clients (the goal: served >= 0.8x in-process)", ""]
    for r in data["rows"]:
        if r["concurrency"] == 8:
            lines.append(f"- {r['output']}, {r['mode']}: **{r['ratio']:.2f}x** ({r['served']['images_per_s']:.1f} vs "
                         f"{r['in_process']['images_per_s']:.1f} images/s){'' if r['ratio'] >= 0.8 else ' (below 0.8)'}")
    lines += ["", *data.get("notes", [])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", help="the exported UNet (default: export models/unet_synthetic.pt into a temp dir)")
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per point")
    parser.add_argument("--warmup", type=float, default=1.5, help="untimed seconds per point")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads [default: the usable CPUs]")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--queue-delay-us", type=int, default=2000)
    parser.add_argument("--outputs", default="logits,mask")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="MIN",
                        help="first wait up to MIN minutes for a 1-minute load average below 1.5")
    parser.add_argument("--out", default=str(HERE / "serving"), help="output path without extension")
    parser.add_argument("--render", metavar="JSON", help="only re-render the .md and .png from a recorded .json")
    args = parser.parse_args(argv)
    if args.render:
        data = json.loads(Path(args.render).read_text())
        data["notes"] = NOTES
        out = Path(args.out)
        plot(data["rows"], out.with_suffix(".png"))
        out.with_suffix(".md").write_text(render(data))
        return 0

    import pytriton
    import tritonclient

    from deploy_unet.machine import cpu_info, machine_info

    threads = args.threads or cpu_info().usable_cpus
    load_start = wait_quiet(args.wait_quiet) if args.wait_quiet else loadavg()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    modes = [  # (label, dynamic batching, instances, intra-op threads per instance)
        (f"1 instance x {threads} threads, dynamic batching", True, 1, threads),
        (f"1 instance x {threads} threads, no batching", False, 1, threads),
        (f"{threads} instances x 1 thread, dynamic batching (serve's CPU default)", True, threads, 1),
    ][: 3 if threads > 1 else 2]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as work:
        onnx = Path(args.onnx) if args.onnx else export_unet(Path(work))
        for output in args.outputs.split(","):
            for label, batching, instances, per_instance in modes:
                with served(onnx, output, per_instance, batching, args.queue_delay_us, args.max_batch,
                            instances) as urls:
                    for c in concurrencies:
                        # The baseline right before its served point (the server idle meanwhile), so both see
                        # the same machine: on a shared one, load drifts over minutes.
                        base = in_process(onnx, output, threads, c, args.seconds, args.warmup)
                        row = served_point(urls, output, c, args.seconds, args.warmup)
                        rows.append({"output": output, "mode": label, "concurrency": c, "instances": instances,
                                     "threads": per_instance, "served": row, "in_process": base,
                                     "ratio": row["images_per_s"] / base["images_per_s"]})
                        print(output, label, c, f"served {row['images_per_s']:.1f}/s in-process "
                              f"{base['images_per_s']:.1f}/s ratio {rows[-1]['ratio']:.2f} load {row['load']:.2f}",
                              flush=True)
    import importlib.metadata as md

    data = {
        "date": date.today().isoformat(), "machine": machine_info(threads), "threads": threads,
        "versions": {"pytriton": md.version("nvidia-pytriton"), "tritonclient": md.version("tritonclient"),
                     "numpy": np.__version__, "triton_server": "2.51.0 (bundled with nvidia-pytriton 0.7.0)"
                     if pytriton and tritonclient else ""},
        "load_start": load_start, "seconds": args.seconds, "warmup": args.warmup, "max_batch": args.max_batch,
        "queue_delay_us": args.queue_delay_us,
        "command": "PYTHONPATH=. python benchmarks/serving.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "rows": rows, "notes": NOTES,
    }
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    plot(rows, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(render(data))
    print(f"wrote {out.with_suffix('.md')}, .json, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
