"""Block timing vs interleaved rounds on this machine: how much a repeated p50 and a repeated speedup spread.

    PYTHONPATH=. python benchmarks/measurement.py                  # -> benchmarks/measurement.md / .json
    PYTHONPATH=. python benchmarks/measurement.py --repeats 3 --wait-quiet

The same four configurations (ONNX Runtime fp32 ``unet.onnx``, ONNX Runtime int8 ``unet.int8.ort.onnx``, the
torch runner on the shipped checkpoint, and ``unet.onnx`` once more as a control whose true speedup is 1) are
benched again and again, each time in fresh processes, under each scheme:

- ``separate``: each configuration alone in its own process, one after the other (``bench A; bench B``);
- ``block``: one process, each configuration in one block after the other (``bench`` before rounds);
- ``rounds``: one process, interleaved rounds (``deploy-unet bench`` now: the real CLI);
- ``rounds-children``: interleaved rounds, one child process per configuration driven over a pipe;

each with the libraries' default waiting (``-spin``: libgomp spins a while after each parallel region, ONNX
Runtime's workers spin) or passive waiting (``OMP_WAIT_POLICY=PASSIVE``, ONNX Runtime ``allow_spinning=0``).
The repeats go round the schemes (rep 1: every scheme, rep 2: every scheme, ...), so a slower spell of the
machine hits every scheme alike. ``validate`` (two ONNX candidates against the torch reference, 16 samples)
is timed with both waits too. Artifacts come from ``deploy-unet export`` + ``quantize`` when missing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

CHECKPOINT = ROOT / "models" / "unet_synthetic.pt"
SCHEMES = ("separate-spin", "separate", "block-spin", "block", "rounds-spin", "rounds", "rounds-children-spin",
           "rounds-children")
VALIDATE_SCHEMES = ("validate-spin", "validate")
NAMES = ("fp32", "int8", "torch", "fp32 again")  # the configurations, in bench order
WARMUP, ITERS, ROUNDS, SAMPLES = 10, 50, 10, 16


def configurations(art: Path) -> list[str]:
    return [str(art / "unet.onnx"), str(art / "unet.int8.ort.onnx"), str(CHECKPOINT), str(art / "unet.onnx")]


def make_artifacts(art: Path) -> list[str]:
    """The two ONNX files, made as a user would (the commands are recorded in the report)."""
    art.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "deploy_unet.cli"]
    commands = []
    if not (art / "unet.onnx").is_file():
        commands.append([*cli, "export", "--checkpoint", str(CHECKPOINT), "-o", str(art / "unet.onnx")])
    if not (art / "unet.int8.ort.onnx").is_file():
        commands.append([*cli, "quantize", str(art / "unet.onnx"), "--precision", "int8", "--target", "onnxruntime",
                         "--no-eval", "-o", str(art / "unet.int8.ort.onnx")])
    for cmd in commands:
        subprocess.run(cmd, check=True, capture_output=True, env=_env(passive=None))
    return [" ".join(["deploy-unet", *c[3:]]) for c in commands]


def _env(passive: bool | None) -> dict[str, str]:
    """The child's environment: PASSIVE, or no OMP_WAIT_POLICY at all (libgomp's default), or (None) as is."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if passive is not None:
        env.pop("OMP_WAIT_POLICY", None)
        if passive:
            env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def load1() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


# -- one run (in a fresh process) --------------------------------------------------------------------
def run_scheme(scheme: str, art: Path, tmp: Path) -> dict:
    """One run of ``scheme`` in fresh process(es): per configuration its p50, round medians, speedup."""
    passive = not scheme.endswith("-spin")
    configs = configurations(art)
    load_before, start = load1(), time.perf_counter()
    out = tmp / f"{scheme}.json"
    if scheme == "rounds":  # the product, exactly as a user runs it (deploy-unet sets PASSIVE itself)
        cmd = [sys.executable, "-m", "deploy_unet.cli", "bench", *configs, "--warmup", str(WARMUP), "--iters",
               str(ITERS), "--json", str(out)]
        env = _env(passive=None)
        env.pop("OMP_WAIT_POLICY", None)
        _check(subprocess.run(cmd, capture_output=True, text=True, env=env))
        results = json.loads(out.read_text())["results"]
    elif scheme.startswith("separate"):
        results = []
        for config in configs:
            _check(subprocess.run(_worker_cmd("block", [config], passive, out), capture_output=True, text=True,
                                  env=_env(passive)))
            results += json.loads(out.read_text())["results"]
    else:
        kind = "children" if "children" in scheme else ("rounds" if scheme.startswith("rounds") else "block")
        _check(subprocess.run(_worker_cmd(kind, configs, passive, out), capture_output=True, text=True,
                              env=_env(passive)))
        results = json.loads(out.read_text())["results"]
    wall = time.perf_counter() - start
    return {"scheme": scheme, "load_before": load_before, "load_after": load1(), "wall_s": wall,
            "p50_ms": [r["latency_ms"]["median"] for r in results],
            "round_medians_ms": [r["round_medians_ms"] for r in results],
            "wait_policy": (json.loads(out.read_text()).get("schedule") or {}).get("wait_policy", {}).get("summary")}


def run_validate(scheme: str, art: Path, tmp: Path) -> dict:
    out = tmp / f"{scheme}.json"
    passive = scheme == "validate"
    load_before = load1()
    proc = subprocess.run(_worker_cmd("validate", configurations(art)[:2], passive, out), capture_output=True,
                          text=True, env=_env(passive))
    _check(proc)
    data = json.loads(out.read_text())
    return {"scheme": scheme, "load_before": load_before, "load_after": load1(), **data}


def _worker_cmd(kind: str, configs: list[str], passive: bool, out: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--passive", str(int(passive)),
            "--out", str(out), *configs]


def _check(proc: subprocess.CompletedProcess) -> None:
    if proc.returncode != 0:
        sys.exit(f"{' '.join(map(str, proc.args))} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


# -- the worker: what runs inside one fresh process --------------------------------------------------
def worker(kind: str, configs: list[str], passive: bool, out: Path) -> None:
    from deploy_unet.fileio import write_text_atomic

    options = {"checkpoint": None, "spinning": not passive}
    if kind == "validate":
        from deploy_unet.machine import cpu_info
        from deploy_unet.validate import validate_artifacts_many

        start = time.perf_counter()
        reports = validate_artifacts_many([(c, None) for c in configs], CHECKPOINT, samples=SAMPLES, progress=False,
                                          threads=cpu_info().usable_cpus, candidate_options={"spinning": not passive})
        data = {"wall_s": time.perf_counter() - start, "reference_s": reports[0].reference_seconds,
                "candidate_s": [r.candidate_seconds for r in reports], "passed": all(r.passed for r in reports)}
        write_text_atomic(out, json.dumps(data))
        return
    from deploy_unet.bench import BenchReport, add_ratios, bench
    from deploy_unet.machine import machine_info
    from deploy_unet.runtime import wait_policy

    if kind == "children":
        results = bench_in_children(configs, options)
        report = BenchReport(results, machine_info(), "", {"wait_policy": wait_policy.current().to_dict()})
    else:
        report = bench(configs, warmup=WARMUP, iters=ITERS, rounds=ROUNDS if kind == "rounds" else 1,
                       runner_options=options, progress=False)
    report.results = add_ratios(report.results)
    write_text_atomic(out, json.dumps(report.to_dict(include_samples=False), default=str))


def bench_in_children(configs: list[str], options: dict) -> list:
    """Rounds with one child process per configuration: each child opens its runner and times its turns
    when told to; the parent only sends commands, so no two configurations share a process."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # a fresh interpreter: libgomp reads OMP_WAIT_POLICY from this environment
    children = []
    for config in configs:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child_main, args=(child, config, options), daemon=True)
        proc.start()
        children.append((proc, parent))
    try:
        for _, conn in children:
            _reply(conn)  # opened
        for _, conn in children:  # warmup one after another: first calls are timed
            conn.send(("warm", WARMUP))
            _reply(conn)
        per_round = ITERS // ROUNDS
        for _ in range(ROUNDS):
            for _, conn in children:
                conn.send(("turn", per_round))
                _reply(conn)
        results = []
        for _, conn in children:
            conn.send(("result", None))
            results.append(_reply(conn))
        return results
    finally:
        for proc, conn in children:
            conn.close()
            proc.join(timeout=30)


def _reply(conn):
    kind, value = conn.recv()
    if kind == "error":
        raise RuntimeError(value)
    return value


def _child_main(conn, config: str, options: dict) -> None:
    import traceback

    try:
        from deploy_unet.bench import ConfigTimer
        from deploy_unet.runtime import open_runner

        runner = open_runner(config, None, **options)
        runner.activate()
        timer = ConfigTimer(runner, batch=1, height=256, width=256, artifact=config)
        conn.send(("ok", None))
        while True:
            command, arg = conn.recv()
            if command == "warm":
                timer.warm(arg)
            elif command == "turn":
                timer.turn(arg, lead_in=1)  # as bench_rounds does
            else:
                conn.send(("ok", timer.result(keep_samples=False)))
                return
            conn.send(("ok", None))
    except Exception:
        conn.send(("error", traceback.format_exc()))


# -- analysis ----------------------------------------------------------------------------------------
def _stats(values: list[float]) -> dict:
    med = statistics.median(values)
    return {"median": med, "min": min(values), "max": max(values), "spread": (max(values) - min(values)) / med}


def _pair(run: dict, a: int, b: int) -> dict:
    """Config b against config a in one run: speedup (median per-round ratio, or the p50 ratio) and verdicts."""
    ra, rb = run["round_medians_ms"][a], run["round_medians_ms"][b]
    if len(ra) > 1 and len(ra) == len(rb):
        ratios = [x / y for x, y in zip(ra, rb)]
        return {"speedup": statistics.median(ratios),
                "within": (max(ratios) - min(ratios)) / statistics.median(ratios),
                "overlap": min(ra) <= max(rb) and min(rb) <= max(ra),  # what the reports print
                "ratio_straddles_1": min(ratios) <= 1 <= max(ratios)}  # the paired alternative
    return {"speedup": run["p50_ms"][a] / run["p50_ms"][b], "within": None, "overlap": None, "ratio_straddles_1": None}


def summarize(runs: list[dict]) -> dict:
    by = {}
    for scheme in SCHEMES:
        mine = [r for r in runs if r["scheme"] == scheme]
        if not mine:
            continue
        pairs = {"int8": [_pair(r, 0, 1) for r in mine], "control": [_pair(r, 0, 3) for r in mine]}
        by[scheme] = {
            "runs": len(mine),
            "p50": {name: _stats([r["p50_ms"][i] for r in mine]) for i, name in enumerate(NAMES)},
            "speedup_int8": _stats([p["speedup"] for p in pairs["int8"]]),
            "within_run": (statistics.median(p["within"] for p in pairs["int8"])
                           if pairs["int8"][0]["within"] is not None else None),
            "control": _stats([p["speedup"] for p in pairs["control"]]),
            "verdicts": {k: {"overlap": sum(bool(p["overlap"]) for p in v),
                             "ratio_straddles_1": sum(bool(p["ratio_straddles_1"]) for p in v),
                             "judged": sum(p["overlap"] is not None for p in v)} for k, v in pairs.items()},
            "load": _stats([r["load_before"] for r in mine]),
            "wall_s": statistics.median(r["wall_s"] for r in mine),
        }
    return by


# -- the report --------------------------------------------------------------------------------------
def render(data: dict) -> str:
    from deploy_unet.machine import machine_line

    s, v = data["summary"], data["validate"]
    loads = [r["load_before"] for r in data["runs"] + data["validate_runs"]]

    def rng(st: dict, d: int = 1) -> str:
        return f"{st['median']:.{d}f} ({st['min']:.{d}f}-{st['max']:.{d}f})"

    lines = [
        "# Block timing vs interleaved rounds on a shared CPU",
        "",
        f"Date {data['date']}; {machine_line(data['machine'])}.",
        f"1-minute load average before the runs: {min(loads):.2f}-{max(loads):.2f} (other jobs shared this machine: "
        "this is the noisy case the rounds are for; a quiet machine narrows every column).",
        "",
        "    PYTHONPATH=. python benchmarks/measurement.py" + (" " + " ".join(data["argv"]) if data["argv"] else ""),
        "",
        f"Artifacts: {', '.join(f'`{c}`' for c in data['artifact_commands']) or 'present already'} "
        "(the shipped `models/unet_synthetic.pt`, 256x256, batch 1). Each run benches fp32 `unet.onnx`, int8 "
        "`unet.int8.ort.onnx`, the torch runner and `unet.onnx` again (the control: its true speedup is 1.00), "
        f"{WARMUP} warmup and {ITERS} timed iterations each, in fresh process(es); {data['repeats']} runs per scheme, "
        "the repeats going round the schemes. `rounds` is the CLI as shipped: "
        "`deploy-unet bench unet.onnx unet.int8.ort.onnx models/unet_synthetic.pt unet.onnx` "
        f"({ROUNDS} rounds of {ITERS // ROUNDS}). `-spin`: the libraries' default waiting (what bench did before); "
        "without: passive waiting.",
        "",
        "## The spread of a repeated p50 and of a repeated speedup",
        "",
        "Median over the runs (min-max); spread = (max - min) / median over the runs; *in a run*: the width of one "
        "run's own per-round speedup range, (max - min) / median, the median over the runs. " + _headline(s),
        "",
        "| scheme | fp32 p50 ms | spread | int8 vs fp32 speedup | spread | in a run | torch p50 ms | fp32 again vs fp32 "
        "| spread | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scheme, x in s.items():
        lines.append(f"| {scheme} | {rng(x['p50']['fp32'])} | {x['p50']['fp32']['spread']:.0%} | "
                     f"{rng(x['speedup_int8'], 2)} | {x['speedup_int8']['spread']:.0%} | "
                     f"{'-' if x.get('within_run') is None else format(x['within_run'], '.0%')} | {rng(x['p50']['torch'], 0)} | "
                     f"{rng(x['control'], 2)} | {x['control']['spread']:.0%} | {x['load']['median']:.2f} |")
    ref = s.get("separate")
    if ref:
        lines += ["", "## Cross-talk: latency beside the other configurations",
                  "", "Median p50 of each configuration over its median p50 alone in its own process with passive "
                  "waiting (`separate`); 1.00 = no cost from sharing the machine with the others.", "",
                  "| scheme | fp32 | int8 | torch |", "|---|---|---|---|"]
        for scheme, x in s.items():
            cells = [f"{x['p50'][n]['median'] / ref['p50'][n]['median']:.2f}" for n in NAMES[:3]]
            lines.append(f"| {scheme} | " + " | ".join(cells) + " |")
    lines += ["", "## Can a run tell two configurations apart?", "",
              "Runs in which each criterion calls the pair not separable (of the runs timed in rounds). *paired* "
              "(what the reports print): the min-max of the per-round speedup includes 1.00, i.e. some rounds "
              "found one faster and others the other. *ranges overlap* (the unpaired alternative): the min-max of "
              "the two configurations' per-round medians overlap. int8 is truly faster than fp32; `unet.onnx` "
              "against itself is truly equal, so a run should never call that pair separable.", "",
              "| scheme | int8 vs fp32: paired | ranges overlap | fp32 again vs fp32: paired | ranges overlap |",
              "|---|---|---|---|---|"]
    for scheme, x in s.items():
        vi, vc = x["verdicts"]["int8"], x["verdicts"]["control"]
        if vi["judged"]:
            lines.append(f"| {scheme} | {vi['ratio_straddles_1']}/{vi['judged']} | {vi['overlap']}/{vi['judged']} | "
                         f"{vc['ratio_straddles_1']}/{vc['judged']} | {vc['overlap']}/{vc['judged']} |")
    if v:
        lines += ["", "## validate: wall time, default vs passive waiting", "",
                  f"`validate_artifacts_many([unet.onnx, unet.int8.ort.onnx], models/unet_synthetic.pt, samples={SAMPLES})` "
                  "(what `pipeline` and `validate` run: the torch reference and the ONNX Runtime candidates alternate "
                  "sample by sample in one process), in a fresh process per run; seconds, median (min-max).", "",
                  "| waiting | wall s | torch reference s | fp32 candidate s | int8 candidate s | load |",
                  "|---|---|---|---|---|---|"]
        for scheme, x in v.items():
            lines.append(f"| {'libraries default (before)' if scheme.endswith('spin') else 'passive (now)'} | "
                         f"{rng(x['wall_s'])} | {rng(x['reference_s'])} | {rng(x['fp32_s'], 2)} | {rng(x['int8_s'], 2)} "
                         f"| {x['load']['median']:.2f} |")
    lines += ["", "## Every run", "", "| # | scheme | load before | fp32 | int8 | torch | fp32 again | wall s |",
              "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(data["runs"]):
        lines.append(f"| {i + 1} | {r['scheme']} | {r['load_before']:.2f} | "
                     + " | ".join(f"{p:.1f}" for p in r["p50_ms"]) + f" | {r['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def _headline(s: dict) -> str:
    """The spread of the two repeated speedups, scheme by scheme."""
    if not s:
        return ""
    control = ", ".join(f"{k} {s[k]['control']['spread']:.0%}" for k in SCHEMES if k in s)
    int8 = ", ".join(f"{k} {s[k]['speedup_int8']['spread']:.0%}" for k in SCHEMES if k in s)
    return (f"Spread of the repeated speedup of `unet.onnx` over itself (truly 1.00): {control}. "
            f"Of int8 over fp32: {int8}.")


def summarize_validate(runs: list[dict]) -> dict:
    out = {}
    for scheme in VALIDATE_SCHEMES:
        mine = [r for r in runs if r["scheme"] == scheme]
        if mine:
            out[scheme] = {"wall_s": _stats([r["wall_s"] for r in mine]),
                           "reference_s": _stats([r["reference_s"] for r in mine]),
                           "fp32_s": _stats([r["candidate_s"][0] for r in mine]),
                           "int8_s": _stats([r["candidate_s"][1] for r in mine]),
                           "load": _stats([r["load_before"] for r in mine]),
                           "passed": all(r["passed"] for r in mine)}
    return out


def wait_quiet(limit_s: float = 900, below: float = 1.5) -> None:
    deadline = time.time() + limit_s
    while load1() >= below and time.time() < deadline:
        print(f"load {load1():.2f} >= {below}: waiting a minute", flush=True)
        time.sleep(60)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="runs per scheme")
    p.add_argument("--schemes", default=",".join(SCHEMES + VALIDATE_SCHEMES))
    p.add_argument("--artifacts", default=None, help="folder with unet.onnx and unet.int8.ort.onnx (made if missing)")
    p.add_argument("--wait-quiet", action="store_true", help="first wait (up to 15 min) for a 1-minute load < 1.5")
    p.add_argument("--out", default=str(HERE / "measurement"))
    p.add_argument("--render-only", action="store_true", help="rewrite the .md from the recorded .json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--passive", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("configs", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.configs, bool(args.passive), Path(args.out))
        return

    from deploy_unet.fileio import write_text_atomic
    from deploy_unet.machine import machine_info

    if args.render_only:
        out = Path(args.out)
        data = json.loads(out.with_suffix(".json").read_text())
        data["summary"], data["validate"] = summarize(data["runs"]), summarize_validate(data["validate_runs"])
        write_text_atomic(out.with_suffix(".md"), render(data))
        return
    if args.wait_quiet:
        wait_quiet()
    schemes = [s for s in args.schemes.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="measurement-") as tmp:
        art = Path(args.artifacts) if args.artifacts else Path(tmp) / "artifacts"
        made = make_artifacts(art)
        runs, validate_runs = [], []
        for rep in range(args.repeats):
            for scheme in schemes:
                run = (run_validate if scheme.startswith("validate") else run_scheme)(scheme, art, Path(tmp))
                (validate_runs if scheme.startswith("validate") else runs).append(run)
                print(f"[{rep + 1}/{args.repeats}] {scheme}: load {run['load_before']:.2f}, "
                      f"{run.get('p50_ms') or round(run['wall_s'], 1)}", flush=True)
    data = {"date": datetime.date.today().isoformat(), "machine": machine_info(), "argv": argv,
            "repeats": args.repeats, "artifact_commands": made, "runs": runs, "validate_runs": validate_runs,
            "summary": summarize(runs), "validate": summarize_validate(validate_runs)}
    out = Path(args.out)
    write_text_atomic(out.with_suffix(".json"), json.dumps(data, indent=2) + "\n")
    write_text_atomic(out.with_suffix(".md"), render(data))
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
