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


# --- build-engine, doctor (TensorRT) ----------------------------------------------------------------


@cli.command("build-engine")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Engine file [default: MODEL with .engine].")
@click.option("--min-shape", metavar="BxCxHxW", help="Smallest input shape [default: 1xCxDxD, D = divisor].")
@click.option("--opt-shape", metavar="BxCxHxW", help="Shape TensorRT tunes for [default: the export shape].")
@click.option("--max-shape", metavar="BxCxHxW", help="Largest input shape [default: 2x the export H and W].")
@click.option("--timing-cache", type=click.Path(dir_okay=False), help="Timing cache to load and update (safe to share).")
@click.option("--workspace", type=int, metavar="MiB", help="Workspace memory pool limit [default: TensorRT's].")
@click.option("--opt-level", type=click.IntRange(0, 5), default=3, show_default=True, help="Builder optimization level.")
@click.option(
    "--hardware-compat",
    type=click.Choice(["none", "ampere+", "same-cc"]),
    default="none",
    show_default=True,
    help="Run on other GPUs: any Ampere+ GPU, or any GPU of the same compute capability.",
)
@click.option("--version-compatible", is_flag=True, help="Engine also runs on later TensorRT of the same major.")
@click.option("--refit", is_flag=True, help="Allow refitting weights without a rebuild.")
@click.option("--plan-only", "--dry-run", "plan_only", is_flag=True, help="Print the build plan as JSON; build nothing.")
@click.option("--verbose", is_flag=True, help="Echo TensorRT warnings and errors while building.")
@handle_errors
def build_engine_command(model, output, min_shape, opt_shape, max_shape, timing_cache, workspace, opt_level,
                         hardware_compat, version_compatible, refit, plan_only, verbose):
    """Build a strongly typed TensorRT engine (and FILE.engine.json manifest) from a deploy-unet ONNX.

    Precision comes from the ONNX itself (fp32, fp16 casts, INT8 Q/DQ): quantize first, then build.
    """
    import json

    from deploy_unet.engine.build import build_engine, plan_build

    plan = plan_build(
        model, output, min_shape=min_shape, opt_shape=opt_shape, max_shape=max_shape, timing_cache=timing_cache,
        workspace_mib=workspace, opt_level=opt_level, hardware_compat=hardware_compat,
        version_compatible=version_compatible, refit=refit,
    )
    for warning in plan.warnings:
        click.echo(f"warning: {warning}", err=True)
    if plan_only:
        click.echo(json.dumps(plan.to_dict(), indent=2))
        return
    from rich.console import Console

    console = Console(stderr=True)
    with console.status(f"building {plan.precision} engine from {model} (this takes minutes)"):
        result = build_engine(plan, log=lambda message: console.log(message), verbose=verbose)
    click.echo(f"wrote {result.engine_path} ({result.seconds:.1f} s) and {result.manifest_path}")


@cli.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def doctor_command(as_json):
    """Report installed packages, CUDA devices, and which backends can run here (and how to fix the rest)."""
    import json

    from deploy_unet.doctor import format_report, run_doctor

    report = run_doctor()
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
