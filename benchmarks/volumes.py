"""Whole-volume prediction on a CT-sized scan: deploy-unet's paths beside MONAI's own, in one run.

    PYTHONPATH=. python benchmarks/volumes.py [--size 256x256x160] [--window 96] [--rounds 2] [--threads 2]

One synthetic CT scan (HU, a body with organs of different densities, 0.8 x 0.8 x 2.5 mm, an oblique affine) is
written once as ``scan.nii.gz`` (not committed). Per net (MONAI's ``UNet`` as the spleen CT bundle configures it,
and the shipped 3D UNet when ``models/unet3d_synthetic.pt`` exists), the whole volume is predicted from file to
file by each configuration, in interleaved rounds (each configuration once per round, in turn):

- ``monai``: the reference: the scan read (``deploy_unet.io``, nibabel), the same intensity window, MONAI's
  ``sliding_window_inference`` with the PyTorch net (``sw_batch`` 4, overlap 0.5, Gaussian), argmax, the mask
  written as NIfTI;
- ``torch windows``: the same PyTorch net through deploy-unet's ``runtime/windows`` (``predict_volume``);
- ``ort fp32``: ``deploy_unet.predict`` on the exported ONNX (ONNX Runtime CPU), from file to file;
- ``ort int8``: the same on ``quantize --precision int8 --target onnxruntime`` when the project's quantizer
  takes the 5-D net (else the reason is recorded).

Times per stage (read, preprocess, model, windows + blend, postprocess, write; the model time is measured
inside every runner call, MONAI's too), the median over rounds and the ratio to MONAI's whole-volume time per
round, the peak RSS of each run (each configuration and round in a fresh process), and the mask agreement with
MONAI's. Writes benchmarks/volumes.json and .md (the CPU, versions, load average and date beside them).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy_unet.io import base as io  # noqa: E402
from deploy_unet.machine import machine_info  # noqa: E402
from deploy_unet.runtime.base import Runner, TensorSpec  # noqa: E402
from deploy_unet.shapes import ShapeContract  # noqa: E402
from deploy_unet.volume_processing import Intensity, logits_to_mask, to_channels_first  # noqa: E402

STAGES = ("open", "read", "preprocess", "model", "windows + blend", "postprocess", "write")
CT_WINDOW = "ct:-57,164"  # MONAI's spleen CT bundle: ScaleIntensityRanged(a_min=-57, a_max=164, 0..1, clip)
HAND_WRITTEN = "<!-- hand-written reading below: kept by re-runs -->"


def synthetic_ct(shape, seed=0) -> np.ndarray:
    """int16 HU: air around an elliptic body (fat shell, soft tissue), a liver-like and a spleen-like organ, a
    bright spine and kidney-like blobs, noise (20 HU)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    x, y, z = grids
    vol = np.full(shape, -1000.0, np.float32)
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 < 1
    vol[body] = -90.0  # fat
    vol[(x / 0.78) ** 2 + (y / 0.58) ** 2 < 1] = 40.0  # soft tissue
    vol[((x + 0.35) / 0.35) ** 2 + ((y + 0.1) / 0.3) ** 2 + (z / 0.7) ** 2 < 1] = 60.0  # liver
    vol[((x - 0.45) / 0.15) ** 2 + ((y + 0.2) / 0.12) ** 2 + ((z - 0.1) / 0.3) ** 2 < 1] = 110.0  # spleen
    vol[((x) / 0.08) ** 2 + ((y - 0.4) / 0.08) ** 2 < 1] = 700.0  # spine
    for cx in (-0.25, 0.25):
        vol[((x - cx) / 0.1) ** 2 + ((y - 0.25) / 0.08) ** 2 + ((z + 0.2) / 0.2) ** 2 < 1] = 150.0  # kidneys
    vol += rng.normal(0, 20, shape).astype(np.float32)
    return vol.astype(np.int16)


def scan_affine() -> np.ndarray:
    a = np.diag([0.8, 0.8, 2.5, 1.0])
    c, s = np.cos(0.05), np.sin(0.05)
    a[:3, :3] = np.array([[-c, -s, 0], [s, -c, 0], [0, 0, 1]]) @ a[:3, :3]
    a[:3, 3] = [102.0, 98.5, -210.0]
    return a


class ModuleRunner(Runner):
    """A PyTorch module as a deploy-unet runner (any net: MONAI's too), for the ``torch windows`` path."""

    backend = "torch"

    def __init__(self, net, divisor: int, in_channels: int):
        super().__init__(divisor, in_channels, contract=ShapeContract(divisor, spatial_dims=3))
        self.net = net

    @property
    def input_spec(self):
        return {"input": TensorSpec("input", "float32", ("batch", self.in_channels, "depth", "height", "width"))}

    @property
    def output_names(self):
        return ["logits"]

    def _activate(self):
        pass

    def _deactivate(self):
        pass

    def _infer(self, feeds):
        with torch.no_grad():
            return {"logits": self.net(torch.from_numpy(feeds["input"])).numpy()}


def monai_unet():
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(16, 32, 64, 128, 256),
                strides=(2, 2, 2, 2), num_res_units=2, norm="batch").eval(), 16, ["background", "spleen"]


def shipped_unet3d():
    """The shipped 3D UNet, or None when this checkout has none yet."""
    path = ROOT / "models" / "unet3d_synthetic.pt"
    if not path.exists():
        return None
    from deploy_unet.nets.loading import load_net

    loaded = load_net(checkpoint=path)
    return loaded.net.eval(), int(loaded.divisor), list(getattr(loaded.checkpoint, "class_names", None) or [])


def export(net, divisor, window, class_names, intensity, path: Path) -> Path:
    import onnx

    from deploy_unet.metadata import ModelInfo, write_props
    from deploy_unet.volume_processing import volume_props

    if path.exists():
        return path
    d = torch.export.Dim.AUTO
    sample = torch.zeros(2, 1, window + divisor, window, window + 2 * divisor)
    program = torch.onnx.export(net, (sample,), dynamo=True, input_names=["input"], output_names=["logits"],
                                dynamic_shapes={"x": {0: d, 2: d, 3: d, 4: d}})
    with torch.no_grad():
        classes = int(net(torch.zeros(1, 1, window, window, window)).shape[1])
    info = ModelInfo(arch=type(net).__name__, divisor=divisor, in_channels=1, num_classes=classes,
                     export_shape=[1, 1, window, window, window], spatial_dims=3, class_names=class_names,
                     extra={**volume_props(intensity=intensity), "exporter": "torch.onnx.export(dynamo=True)"})
    model = program.model_proto
    write_props(model, info.to_props())
    onnx.save(model, str(path))
    return path


def monai_path(net, scan: Path, out: Path, window, overlap, sw_batch, intensity):
    from monai.inferers import sliding_window_inference

    t = {}
    t0 = time.perf_counter()
    image = io.read(scan)
    t1 = time.perf_counter()
    x = Intensity.parse(intensity).apply(to_channels_first(image.array, image.channels, 1, str(scan)))
    t2 = time.perf_counter()
    model = [0.0]

    def predictor(batch):
        s = time.perf_counter()
        y = net(batch)
        model[0] += time.perf_counter() - s
        return y

    with torch.no_grad():
        logits = sliding_window_inference(torch.from_numpy(x[None]), (window,) * 3, sw_batch, predictor,
                                          overlap=overlap, mode="gaussian")[0].numpy()
    t3 = time.perf_counter()
    mask = logits_to_mask(logits)
    t4 = time.perf_counter()
    io.write_like(io.output_path(out, image), mask, image)
    t5 = time.perf_counter()
    t.update({"open": 0.0, "read": t1 - t0, "preprocess": t2 - t1, "model": model[0], "windows + blend": t3 - t2 - model[0],
              "postprocess": t4 - t3, "write": t5 - t4})
    return t, mask


def project_path(artifact, scan: Path, out: Path, window, overlap, sw_batch, threads, runner=None, info=None):
    """deploy_unet.predict from file to file (an ONNX artifact), or predict_volumes with an open runner."""
    from deploy_unet.predict import predict
    from deploy_unet.predict_volume import SlidingWindow, predict_volumes
    from deploy_unet.scale.stream import StreamOptions
    from deploy_unet.timing import StageTimes

    options = StreamOptions(window=(window,) * 3, overlap=overlap, sw_batch=sw_batch)
    if runner is None:
        report = predict(artifact, [scan], out, stream_options=options, threads=threads, progress=False,
                         overlays=False, keep_masks=True)
    else:
        report = predict_volumes(runner, info, [scan], out, artifact=artifact, sw=SlidingWindow.from_options(options),
                                 times=StageTimes(), overlays=False, keep_masks=True, threads=threads, progress=False)
    times = report.stages.as_dict()
    times["open"] = times.get("open runner", 0.0)
    return {s: times.get(s, 0.0) for s in STAGES}, report.images[0].mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256x256x160", help="the scan's voxels, i x j x k")
    parser.add_argument("--window", type=int, default=96)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--sw-batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nets", default="monai-unet,unet3d")
    parser.add_argument("--work-dir", default="build/volumes")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "volumes"))
    for hidden in ("--child", "--artifact", "--scan", "--intensity"):
        parser.add_argument(hidden, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    shape = tuple(int(v) for v in args.size.lower().split("x"))
    scan = work / "scan.nii.gz"
    import nibabel as nib

    nib.save(nib.Nifti1Image(synthetic_ct(shape), scan_affine()), str(scan))
    load_start = os.getloadavg()
    results = {"command": " ".join(["python", "benchmarks/volumes.py", *sys.argv[1:]]),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine_info(args.threads), "size": list(shape), "window": args.window,
               "overlap": args.overlap, "sw_batch": args.sw_batch, "rounds": args.rounds, "threads": args.threads,
               "versions": {"torch": torch.__version__, "monai": __import__("monai").__version__,
                            "onnxruntime": __import__("onnxruntime").__version__, "nibabel": nib.__version__},
               "nets": {}}
    makers = {"monai-unet": monai_unet, "unet3d": shipped_unet3d}
    for name in args.nets.split(","):
        made = makers[name]()
        if made is None:
            results["nets"][name] = {"skipped": "models/unet3d_synthetic.pt is not in this checkout"}
            print(f"{name}: skipped (no checkpoint)", flush=True)
            continue
        net, divisor, class_names = made
        intensity = CT_WINDOW if name == "monai-unet" else "ct:-200,300"  # the shipped net saw values in 0..1
        onnx_path = export(net, divisor, args.window, class_names, intensity, work / f"{name}.onnx")
        configs = {"monai": None, "torch windows": None, "ort fp32": onnx_path}
        notes = {}
        try:
            from deploy_unet.precision import quantize

            int8 = work / f"{name}.int8.ort.onnx"
            if not int8.exists():
                calib = work / "calib.npy"
                quantize(onnx_path, "int8", target="onnxruntime", calib=str(calib) if calib.exists() else "synthetic",
                         calib_samples=8, eval_source=None, output=int8, progress=False)
            configs["ort int8"] = int8
        except Exception as exc:  # the 5-D quantizer is the volumes core's part: record why it is missing
            notes["ort int8"] = f"not measured: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            print(f"{name}: int8 {notes['ort int8']}", flush=True)
        rows = {c: {"rounds": [], "peak_rss_mib": [], "agreement": []} for c in configs}
        reference = None
        for r in range(args.rounds):
            for config, artifact in configs.items():
                stages, peak_mib, mask = run_child(args, name, config, artifact or onnx_path, scan, work, intensity)
                if config == "monai":
                    reference = mask
                rows[config]["rounds"].append({**{k: round(v, 3) for k, v in stages.items()}})
                rows[config]["peak_rss_mib"].append(round(peak_mib, 1))
                rows[config]["agreement"].append(float((mask == reference).mean()))
                print(f"{name} round {r + 1}/{args.rounds} {config}: {stages['total']:.1f}s "
                      f"(model {stages['model']:.1f}s), peak RSS {peak_mib:.0f} MiB, "
                      f"agreement {rows[config]['agreement'][-1]:.5f}", flush=True)
        for row in rows.values():
            row["ratio_to_monai"] = [round(a["total"] / m["total"], 3)
                                     for a, m in zip(row["rounds"], rows["monai"]["rounds"])]
            row["median"] = {k: round(statistics.median(rd[k] for rd in row["rounds"]), 3)
                             for k in (*STAGES, "total")}
        results["nets"][name] = {"configs": rows, "notes": notes, "intensity": intensity,
                                 "windows": _window_count(shape, args.window, args.overlap)}
    results["loadavg"] = {"start": [round(v, 2) for v in load_start], "end": [round(v, 2) for v in os.getloadavg()]}
    Path(args.out + ".json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, Path(args.out + ".md"))
    print(f"wrote {args.out}.json and .md")


def run_child(args, name, config, artifact, scan, work, intensity):
    """One configuration, one round, in a fresh process (its peak RSS is its own: ``wait4``'s ru_maxrss)."""
    import subprocess

    result = work / "child.json"
    mask_path = work / "child_mask.npy"
    command = [sys.executable, __file__, "--child", config, "--nets", name, "--artifact", str(artifact),
               "--scan", str(scan), "--intensity", intensity, "--window", str(args.window), "--overlap",
               str(args.overlap), "--sw-batch", str(args.sw_batch), "--threads", str(args.threads),
               "--work-dir", str(work)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{name} {config} failed (exit {proc.returncode}): {' '.join(command)}")
    stages = json.loads(result.read_text())
    return stages, usage.ru_maxrss / 1024, np.load(mask_path)


def child(args) -> None:
    """The child side of ``run_child``: build the net (seeded, so the same weights), predict, report."""
    torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    out = work / "out" / args.nets / args.child.replace(" ", "_")
    started = time.perf_counter()
    net, divisor, _ = {"monai-unet": monai_unet, "unet3d": shipped_unet3d}[args.nets]()
    built = time.perf_counter() - started
    if args.child == "monai":
        stages, mask = monai_path(net, Path(args.scan), out, args.window, args.overlap, args.sw_batch, args.intensity)
        stages["open"] = built
    elif args.child == "torch windows":
        from deploy_unet.describe import read_model_info

        runner = ModuleRunner(net, divisor, 1)
        runner.info = read_model_info(args.artifact)
        with runner:
            stages, mask = project_path(args.artifact, Path(args.scan), out, args.window, args.overlap,
                                        args.sw_batch, args.threads, runner=runner, info=runner.info)
        stages["open"] = built
    else:
        stages, mask = project_path(args.artifact, Path(args.scan), out, args.window, args.overlap, args.sw_batch,
                                    args.threads)
    stages["total"] = sum(stages[s] for s in STAGES)
    np.save(work / "child_mask.npy", mask)
    (work / "child.json").write_text(json.dumps(stages))


def _window_count(shape, window, overlap) -> int:
    from deploy_unet.runtime.windows import blend_grid

    return blend_grid(shape, window, overlap).count


def write_markdown(results: dict, path: Path) -> None:
    kept = ""
    if path.exists() and HAND_WRITTEN in path.read_text():
        kept = path.read_text().split(HAND_WRITTEN, 1)[1]
    m = results["machine"]
    size = "x".join(map(str, results["size"]))
    lines = [
        "# Volumes: whole-volume predict beside MONAI's sliding_window_inference",
        "",
        f"`{results['command']}` on {results['date']}: {m.get('cpu_model', m.get('cpu', '?'))}, "
        f"{results['threads']} threads, load average {results['loadavg']['start']} at the start and "
        f"{results['loadavg']['end']} at the end (the machine was shared with four other jobs). Versions: "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + ".",
        "",
        f"One synthetic CT scan of {size} voxels (int16 HU, `scan.nii.gz`), windows {results['window']}^3, overlap "
        f"{results['overlap']}, Gaussian blending, {results['sw_batch']} windows per call, "
        f"{results['rounds']} interleaved rounds; seconds are medians over the rounds, the ratio is per round "
        "(configuration / MONAI, whole volume from file to file) "
        "(each configuration and round runs in a fresh process: its peak RSS, imports included, from `wait4`; its "
        "seconds from opening the net (building the PyTorch module / the ONNX Runtime session) to the written mask), "
        "agreement is the share of voxels whose class equals MONAI's.",
        "",
    ]
    for name, net in results["nets"].items():
        if "skipped" in net:
            lines += [f"## {name}", "", f"Skipped: {net['skipped']}.", ""]
            continue
        lines += [f"## {name} ({net['windows']} windows, intensity `{net['intensity']}`)", "",
                  "| config | open | read | preprocess | model | windows + blend | postprocess | write | total s | "
                  "vs MONAI | peak RSS MiB | agreement |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for config, row in net["configs"].items():
            med = row["median"]
            ratios = row["ratio_to_monai"]
            lines.append(
                f"| {config} | " + " | ".join(f"{med[s]:.2f}" for s in STAGES) + f" | {med['total']:.1f} | "
                + (f"{min(ratios):.2f}-{max(ratios):.2f}x" if config != "monai" else "1") + " | "
                + f"{max(row['peak_rss_mib']):.0f} | {100 * min(row['agreement']):.3f}% |")
        for config, note in net.get("notes", {}).items():
            lines.append(f"\n{config}: {note}")
        lines.append("")
    lines += [HAND_WRITTEN, kept.strip("\n"), ""] if kept else [HAND_WRITTEN, "", ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
