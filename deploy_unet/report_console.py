"""Rich renderings of results for the terminal (tables); file reports live in report.py."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table


def make_console(stderr: bool = False) -> Console:
    """A terminal keeps its own width; a pipe or log file gets 140 columns so wide tables stay whole."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 140)


def print_inspection(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or make_console()
    size_mb = report["file_size_bytes"] / 1e6
    opsets = ", ".join(f"{k} {v}" for k, v in report["opsets"].items())
    console.print(f"[bold]{report['file']}[/]  {size_mb:.2f} MB, {report['parameters']:,} parameters, "
                  f"{report['num_nodes']} nodes, opsets: {opsets}, producer: {report['producer']}")
    io = Table("", "name", "dtype", "shape", title="inputs and outputs")
    for kind in ("inputs", "outputs"):
        for value in report[kind]:
            io.add_row(kind[:-1], value["name"], value["dtype"], "(" + ", ".join(map(str, value["shape"])) + ")")
    console.print(io)
    ops = Table("op", "count", title="op histogram")
    for op, count in report["op_histogram"].items():
        ops.add_row(op, str(count))
    console.print(ops)
    if "padding" in report:
        console.print(f"padding to the divisor: {report['padding']}")
    console.print(f"QuantizeLinear: {report['quantize_linear']}  DequantizeLinear: {report['dequantize_linear']}  "
                  f"Cast: {report['cast']}  initializer dtypes: {report['initializer_dtypes']}")
    if report["metadata"]:
        meta = Table("key", "value", title="metadata")
        for key, value in report["metadata"].items():
            meta.add_row(key, value)
        console.print(meta)
    else:
        console.print("[yellow]no metadata[/]: not exported by deploy-unet")
