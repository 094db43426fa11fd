"""The ``deploy-unet`` command line: a thin layer that parses, calls one library function, prints.

Heavy modules (torch, onnxruntime, TensorRT) are imported inside commands so ``--help`` stays fast
and works without any of them.
"""

from __future__ import annotations

import functools
import sys

import click

from deploy_unet import __version__
from deploy_unet.errors import DeployUnetError


def handle_errors(func):
    """Turn user errors into one ``error:`` line and their exit code; real bugs keep their traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except DeployUnetError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="deploy-unet")
def cli() -> None:
    """Take UNet/FCN segmentation nets from PyTorch to ONNX and TensorRT, and prove nothing was lost."""


# --- export and inspect (foundation) ----------------------------------------------------------------


# --- quantize (precision) ---------------------------------------------------------------------------


# --- validate, bench, pipeline (runners) ------------------------------------------------------------
_BACKEND_HELP = "torch | onnxruntime | onnxruntime-cuda | onnxruntime-trt | tensorrt (default: from the file type)"


@cli.command("validate")
@click.argument("candidate", type=click.Path(dir_okay=False))
@click.option("--reference", "-r", required=True, type=click.Path(dir_okay=False),
              help="Artifact to compare against, usually the PyTorch checkpoint (.pt).")
@click.option("--data", default=None, help="synthetic[:seed=S,size=HxW] (default), an image folder, or .npy/.npz.")
@click.option("--samples", "-n", default=8, show_default=True, help="Number of images.")
@click.option("--backend", default=None, help=f"Candidate backend: {_BACKEND_HELP}.")
@click.option("--ref-backend", default=None, help="Reference backend (same choices).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Weights for --backend/--ref-backend torch on an .onnx file (its metadata names the net).")
@click.option("--device", default="auto", show_default=True, help="Torch device: auto | cpu | cuda.")
@click.option("--pad", is_flag=True, help="Pad inputs to the net's divisor and crop outputs back.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="Which default gates apply (default: the candidate's metadata).")
@click.option("--gate", "gate_specs", multiple=True, metavar="METRIC=VALUE",
              help="Override a gate, e.g. --gate rel_l2=1e-3 --gate mask_agreement=99.5.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the full report.")
@handle_errors
def validate_command(candidate, reference, data, samples, backend, ref_backend, checkpoint, device, pad, precision,
                     gate_specs, json_path):
    """Compare CANDIDATE's outputs with a reference on the same images; exit 1 when a gate fails."""
    from rich.console import Console

    from deploy_unet.report import gate_table, validation_table, write_json
    from deploy_unet.validate import parse_gates, validate_artifacts

    report = validate_artifacts(
        candidate, reference, data=data, samples=samples, backend=backend, ref_backend=ref_backend,
        checkpoint=checkpoint, pad=pad, gates=parse_gates(gate_specs), precision=precision, device=device,
    )
    console = Console()
    console.print(validation_table(report))
    console.print(gate_table(report))
    if json_path:
        write_json(json_path, report.to_dict())
        console.print(f"wrote {json_path}")
    report.raise_for_gates()
    console.print(f"[green]passed[/green] all {report.precision} gates")


@cli.command("bench")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--backend", default=None, help=f"Backend for every artifact: {_BACKEND_HELP}.")
@click.option("--batch", "batch_text", default="1", show_default=True, help="Batch sizes, e.g. 1,4,8.")
@click.option("--size", "size_text", default="256x256", show_default=True, help="HxW sizes, e.g. 256x256,512x512.")
@click.option("--warmup", default=10, show_default=True, help="Untimed runs before timing.")
@click.option("--iters", default=None, type=int, help="Timed runs per configuration [default: 50].")
@click.option("--duration", default=None, type=float, help="Instead of --iters: seconds of timed runs.")
@click.option("--threads", default=None, type=int, help="Intra-op threads (torch and ONNX Runtime).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Weights for --backend torch on .onnx files.")
@click.option("--device", default="auto", show_default=True, help="Torch device: auto | cpu | cuda.")
@click.option("--pad", is_flag=True, help="Allow sizes off the net's divisor (pad and crop back).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write results as JSON.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False), default=None,
              help="Write the table as Markdown.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a latency distribution plot (PNG).")
@handle_errors
def bench_command(artifacts, backend, batch_text, size_text, warmup, iters, duration, threads, checkpoint, device, pad,
                  json_path, markdown_path, plot_path):
    """Measure latency, throughput and peak memory of each ARTIFACT per batch and size."""
    from rich.console import Console

    from deploy_unet.bench import bench, parse_batches, parse_sizes
    from deploy_unet.errors import ConfigError
    from deploy_unet.report import bench_table, plot_latency, render_markdown, write_json, write_markdown

    if iters is not None and duration is not None:
        raise ConfigError("--iters and --duration both given; pass one of them")
    report = bench(
        artifacts, backend=backend, batches=parse_batches(batch_text), sizes=parse_sizes(size_text), warmup=warmup,
        iters=iters if duration is None else None, duration=duration, threads=threads, pad=pad,
        runner_options={"checkpoint": checkpoint, "device": device},
    )
    console = Console()
    console.print(bench_table(report))
    for path, write in ((json_path, lambda p: write_json(p, report.to_dict())),
                        (markdown_path, lambda p: write_markdown(p, render_markdown(report, title="deploy-unet bench"))),
                        (plot_path, lambda p: plot_latency(report, p))):
        if path:
            write(path)
            console.print(f"wrote {path}")



# --- build-engine, doctor (TensorRT) ----------------------------------------------------------------


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
