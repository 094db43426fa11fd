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


def _floats(value: str | None, option: str) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers", param_hint=option) from None


def _net_options(**given) -> dict:
    """Only the net options the user actually passed; the registry rejects ones the arch lacks."""
    return {k: v for k, v in given.items() if v is not None}


@cli.command()
@click.option("--arch", type=click.Choice(["unet", "fcn8s", "fcn16s", "fcn32s"]), default=None,
              help="Reference net (default: the checkpoint's arch, else unet).")
@click.option("--model", "model_spec", metavar="PKG.MODULE:CALLABLE", default=None,
              help="Your own nn.Module factory instead of --arch; needs --divisor.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="state_dict (bare, or under 'state_dict'/'model'); a deploy-unet checkpoint also sets arch and options.")
@click.option("--strict/--no-strict", default=True, show_default=True, help="Missing or unexpected checkpoint keys are an error.")
@click.option("--divisor", type=int, default=None, help="Spatial multiple the net needs (only with --model).")
@click.option("--in-channels", type=int, default=None)
@click.option("--num-classes", type=int, default=None)
@click.option("--depth", type=int, default=None, help="UNet: number of poolings (1..6); divisor = 2**depth.")
@click.option("--base-channels", type=int, default=None, help="UNet: channels of the first block.")
@click.option("--up-mode", type=click.Choice(["transpose", "bilinear", "nearest"]), default=None, help="UNet upsampling.")
@click.option("--norm", type=click.Choice(["batch", "none"]), default=None)
@click.option("--width-mult", type=float, default=None, help="FCN: backbone width multiplier.")
@click.option("--fc-channels", type=int, default=None, help="FCN: channels of fc6/fc7 (before --width-mult).")
@click.option("--height", type=int, default=256, show_default=True)
@click.option("--width", type=int, default=256, show_default=True)
@click.option("--batch", type=int, default=1, show_default=True)
@click.option("--dynamic", type=click.Choice(["all", "batch", "hw", "none"]), default="all", show_default=True,
              help="Which axes stay dynamic.")
@click.option("--opset", type=int, default=18, show_default=True)
@click.option("--mean", default=None, help="Input normalization mean per channel, e.g. 0.485,0.456,0.406.")
@click.option("--std", default=None, help="Input normalization std per channel.")
@click.option("--tolerance", type=float, default=1e-4, show_default=True,
              help="Parity gate: max abs error vs PyTorch <= tolerance * max(1, max|logit|).")
@click.option("--simplify/--no-simplify", default=True, show_default=True, help="Run onnxslim.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Output file (default: ARCH.onnx).")
@handle_errors
def export(arch, model_spec, checkpoint, strict, divisor, in_channels, num_classes, depth, base_channels, up_mode,
           norm, width_mult, fc_channels, height, width, batch, dynamic, opset, mean, std, tolerance, simplify, output):
    """Export a net to a dynamic, checked, simplified, self-describing ONNX file."""
    from rich.console import Console

    from deploy_unet.export import export_onnx
    from deploy_unet.nets.loading import load_net

    console = Console(stderr=True)
    options = _net_options(num_classes=num_classes, depth=depth, base_channels=base_channels, up_mode=up_mode,
                           norm=norm, width_mult=width_mult, fc_channels=fc_channels)
    loaded = load_net(arch=arch, options=options, model=model_spec, checkpoint=checkpoint, strict=strict,
                      divisor=divisor, in_channels=in_channels,
                      mean=_floats(mean, "--mean"), std=_floats(std, "--std"))
    if checkpoint is None:
        console.print("[yellow]note:[/] no --checkpoint: the weights are random (fine for testing the toolchain)")
    output = output or f"{loaded.arch.replace(':', '_').replace('.', '_')}.onnx"
    with console.status("exporting") as status:
        result = export_onnx(
            loaded.net, output, height=height, width=width, batch=batch, dynamic=dynamic, opset=opset,
            mean=loaded.mean, std=loaded.std, arch=loaded.arch, net_config=loaded.net_config,
            divisor=loaded.divisor, in_channels=loaded.in_channels,
            checkpoint_sha256=loaded.checkpoint.sha256 if loaded.checkpoint else None,
            simplify=simplify, tolerance=tolerance, log=lambda msg: status.update(msg),
        )
    parity = ", ".join(f"{shape}: {err:.2e}" for shape, err in result.parity.items())
    click.echo(f"wrote {result.path} ({result.info.arch}, divisor {result.info.divisor}, dynamic {dynamic}) "
               f"in {result.seconds:.1f}s")
    click.echo(f"ONNX Runtime vs PyTorch max abs error: {parity}")


@cli.command("inspect")
@click.argument("file", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@handle_errors
def inspect_command(file, as_json):
    """Show an ONNX file's IO, metadata, opsets, op histogram, Q/DQ and Cast counts, size."""
    import json

    from deploy_unet.inspection import inspect_onnx

    report = inspect_onnx(file)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    from deploy_unet.report_console import print_inspection

    print_inspection(report)


# --- quantize (precision) ---------------------------------------------------------------------------


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--precision", type=click.Choice(["fp16", "int8"]), required=True)
@click.option("--target", type=click.Choice(["tensorrt", "onnxruntime"]), default="tensorrt", show_default=True,
              help="int8 Q/DQ placement: TensorRT fusion-friendly, or ORT CPU (every activation quantized).")
@click.option("--calib", default="synthetic:seed=1", show_default=True,
              help="Calibration data: synthetic[:seed=S,size=HxW], an image folder, or .npy/.npz.")
@click.option("--calib-samples", type=int, default=64, show_default=True)
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax", show_default=True,
              help="Activation range estimator (int8).")
@click.option("--calib-cache", type=click.Path(dir_okay=False), default=None,
              help="JSON of tensor ranges: reused when it matches this model and calibration, else written.")
@click.option("--eval", "eval_source", default="synthetic:seed=2", show_default=True,
              help="Held-out data for the accuracy gate (must differ from --calib).")
@click.option("--eval-samples", type=int, default=32, show_default=True)
@click.option("--no-eval", is_flag=True, help="Skip the accuracy gate.")
@click.option("--max-dice-drop", type=float, default=0.01, show_default=True,
              help="Gate: exit 1 when fp32 Dice - new Dice exceeds this.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Output file (default: MODEL.fp16.onnx, MODEL.int8.onnx, MODEL.int8.ort.onnx).")
@handle_errors
def quantize(model, precision, target, calib, calib_samples, method, calib_cache, eval_source, eval_samples,
             no_eval, max_dice_drop, output):
    """Make an fp16 or int8 (explicit Q/DQ) ONNX from an fp32 export, calibrated and accuracy-gated."""
    from deploy_unet.precision import check_gate
    from deploy_unet.precision import quantize as run_quantize

    result = run_quantize(
        model, precision, target=target, calib=calib, calib_samples=calib_samples, method=method,
        calib_cache=calib_cache, eval_source=None if no_eval else eval_source, eval_samples=eval_samples,
        max_dice_drop=max_dice_drop, output=output,
    )
    how = "cached ranges" if result.from_cache else "calibrated"
    where = f", target {result.target}" if precision == "int8" else ""
    click.echo(f"wrote {result.path} ({precision}{where}, {result.size_bytes / 1e6:.2f} MB; {how}: "
               f"{result.method} on {result.calib_samples} samples of {result.calib_source})")
    if result.kept_fp32:
        click.echo(f"kept in fp32 (activations beyond the fp16 range): {', '.join(result.kept_fp32)}")
    gate = result.gate
    if gate is not None:
        click.echo(f"accuracy on {gate.samples} samples of {gate.source} (vs {gate.reference}): "
                   f"Dice fp32 {gate.fp32['mean_dice']:.4f} -> {gate.candidate['mean_dice']:.4f} "
                   f"(drop {gate.dice_drop:+.4f}, limit {gate.max_dice_drop}), "
                   f"IoU {gate.fp32['mean_iou']:.4f} -> {gate.candidate['mean_iou']:.4f}, "
                   f"mask agreement {gate.mask_agreement:.4f}")
    check_gate(result)


# --- validate, bench, pipeline (runners) ------------------------------------------------------------


# --- build-engine, doctor (TensorRT) ----------------------------------------------------------------


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
