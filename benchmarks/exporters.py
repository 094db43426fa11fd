"""Which zoo nets each exporter takes (issue 27 item 1): every net of tests/zoo_nets.py (CI ones; SwinUNETR is
too slow on 2 cores) exported at 64x64, all axes dynamic, with --exporter dynamo and --exporter torchscript, each
file then proved by export's per-axis parity check. Writes benchmarks/exporters.{json,md}.

Run in the zoo venv (see docs/own-net.md, "Installing the zoo"): python benchmarks/exporters.py
"""

from __future__ import annotations

import datetime
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import torch
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy_unet.cli import cli  # noqa: E402
from deploy_unet.machine import machine_info  # noqa: E402
from tests.zoo_nets import EXPORT_SIZE, ZOO  # noqa: E402

EXPORTERS = ("dynamo", "torchscript")


def run(net, exporter: str, folder: Path) -> dict:
    out = folder / f"{net.name}.{exporter}.onnx"
    torch.manual_seed(0)
    start = time.perf_counter()
    result = CliRunner().invoke(cli, ["export", *net.cli_args(), "--height", str(EXPORT_SIZE), "--width",
                                      str(EXPORT_SIZE), "--exporter", exporter, "-o", str(out)])
    seconds = time.perf_counter() - start
    errors = [ln[len("error: "):] for ln in result.output.splitlines() if ln.startswith("error: ")]
    parity = re.search(r"max abs error: (.*)", result.output)
    worst = max((float(v) for v in re.findall(r": ([0-9.e+-]+)", parity.group(1))), default=None) if parity else None
    return {"net": net.name, "exporter": exporter, "ok": result.exit_code == 0, "exit_code": result.exit_code,
            "seconds": round(seconds, 1), "max_abs_error": worst, "error": errors[0][:300] if errors else ""}


def main() -> None:
    nets = [n for n in ZOO if n.ci and n.available]
    rows = []
    with tempfile.TemporaryDirectory(prefix="exporters-") as tmp:
        for net in nets:
            for exporter in EXPORTERS:
                row = run(net, exporter, Path(tmp))
                print(json.dumps(row), flush=True)
                rows.append(row)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "size": f"{EXPORT_SIZE}x{EXPORT_SIZE}", "loadavg": os.getloadavg(),
            "machine": machine_info()}
    (ROOT / "benchmarks" / "exporters.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["# Which exporter takes which zoo net", "",
             f"`python benchmarks/exporters.py` ({meta['date']}, torch {meta['torch']}, export {meta['size']}, all "
             f"axes dynamic, random weights; CPU {meta['machine'].get('cpu', '?')}, "
             f"load average {', '.join(f'{v:.1f}' for v in meta['loadavg'])}). Each file is proved by export's "
             "per-axis parity check (the worst max abs error over the checked shapes is shown).", "",
             "| net | torch.export (dynamo) | TorchScript |", "| --- | --- | --- |"]
    by_net: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_net.setdefault(row["net"], {})[row["exporter"]] = row

    def cell(row: dict) -> str:
        if row["ok"]:
            return f"works ({row['seconds']} s, parity {row['max_abs_error']:.1e})"
        return f"refused: {row['error'][:160]}"

    for name, by in by_net.items():
        lines.append(f"| {name} | {cell(by['dynamo'])} | {cell(by['torchscript'])} |")
    (ROOT / "benchmarks" / "exporters.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
