"""Wall time of the main job on defaults, per stage, on this machine.

    PYTHONPATH=. python benchmarks/pipeline_cpu.py                      # -> benchmarks/pipeline_cpu.md / .json
    PYTHONPATH=. python benchmarks/pipeline_cpu.py --before old/report.json --before-wall 44.2 --before-label d78b766

Runs ``deploy-unet pipeline`` exactly as a user would (a fresh output folder, a child process, so its wall
time and peak memory include imports), then reads the per-stage table the pipeline itself records in
``report.json``. ``--before`` adds the step times of an earlier run's report.json as a comparison column.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from deploy_unet.fileio import write_text_atomic  # noqa: E402
from deploy_unet.machine import cpu_info, machine_info  # noqa: E402


def run_pipeline(extra: list[str]) -> tuple[float, float, dict, str]:
    with tempfile.TemporaryDirectory(prefix="pipeline-cpu-") as tmp:
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "deploy_unet.cli", "pipeline", "-o", str(out), *extra]
        env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if proc.returncode != 0:
            sys.exit(f"pipeline exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        report = json.loads((out / "report.json").read_text())
    return wall, peak_mb, report, proc.stdout


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", help="report.json of an earlier run, for a before/after column")
    p.add_argument("--before-wall", type=float, help="that run's wall time in seconds (/usr/bin/time)")
    p.add_argument("--before-label", default="before")
    p.add_argument("--out", default=str(HERE / "pipeline_cpu"))
    p.add_argument("pipeline_args", nargs="*", help="extra arguments for deploy-unet pipeline (after --)")
    args = p.parse_args(argv)

    wall, peak_mb, report, stdout = run_pipeline(args.pipeline_args)
    pipeline = report["pipeline"]
    before = json.loads(Path(args.before).read_text())["pipeline"]["step_seconds"] if args.before else None
    data = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_info(pipeline.get("threads")),
        "command": "deploy-unet pipeline " + " ".join(args.pipeline_args),
        "wall_seconds": wall,
        "peak_rss_mb": peak_mb,
        "stage_seconds": pipeline["stage_seconds"],
        "threads": pipeline.get("threads"),
        "threads_from": pipeline.get("threads_from"),
        "notes": pipeline["notes"],
        "gates_passed": all(v["passed"] for v in report["validation"]),
        "before": {"label": args.before_label, "step_seconds": before, "wall_seconds": args.before_wall}
        if before else None,
    }
    out = Path(args.out)
    write_text_atomic(out.with_suffix(".json"), json.dumps(data, indent=2) + "\n")
    write_text_atomic(out.with_suffix(".md"), render(data, cpu_info().describe()))
    print(f"wrote {out.with_suffix('.md')}: wall {wall:.1f} s")


# The old pipeline named its steps by their log line; map them onto today's step names.
OLD_STEP_NAMES = {"export to ONNX": "export", "precision": "precision", "TensorRT engines": "TensorRT engines",
                  "validate": "validate", "benchmark": "bench", "report": "report"}


def render(data: dict, cpu_line: str) -> str:
    m = data["machine"]
    lines = [
        "# The main job on a CPU: wall time per stage",
        "",
        f"Date {data['date']}; CPU {cpu_line}; {m.get('platform')}; Python {m.get('python')}, "
        f"torch {m.get('torch')}, onnxruntime {m.get('onnxruntime', '?')}; "
        f"threads {data['threads']} ({data['threads_from']}).",
        "",
        "    PYTHONPATH=. python benchmarks/pipeline_cpu.py",
        "",
        f"`{data['command'].strip()}` in a fresh folder, as a child process: **{data['wall_seconds']:.1f} s wall**, "
        f"peak RSS {data['peak_rss_mb']:.0f} MB, all gates {'passed' if data['gates_passed'] else 'NOT passed'}.",
        "",
    ]
    before = data.get("before")
    old = {}
    if before:
        for name, sec in (before["step_seconds"] or {}).items():
            key = next((v for k, v in OLD_STEP_NAMES.items() if name.startswith(k)), name)
            old[key] = sec
    header = "| stage | seconds |" + (f" {before['label']} |" if before else "")
    lines += [header, "|---|---|" + ("---|" if before else "")]
    for s in data["stage_seconds"]:
        name = ("&emsp;" + s["stage"]) if s["group"] else f"**{s['stage']}**"
        cell = f" {old[s['stage']]:.1f} |" if before and not s["group"] and s["stage"] in old else (" |" if before else "")
        lines.append(f"| {name} | {s['seconds']:.2f} |{cell}")
    total = sum(s["seconds"] for s in data["stage_seconds"] if not s["group"])
    lines.append(f"| total of the steps | {total:.1f} |" + (f" {sum(old.values()):.1f} |" if before else ""))
    if before and before.get("wall_seconds"):
        lines.append(f"| wall (process) | {data['wall_seconds']:.1f} | {before['wall_seconds']:.1f} |")
    lines += ["", "Notes the pipeline printed:", ""] + [f"- {n}" for n in data["notes"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
