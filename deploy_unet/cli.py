"""The ``deploy-unet`` command line: a thin layer that parses, calls one library function, prints.

Heavy modules (torch, onnxruntime, TensorRT) are imported inside commands so ``--help`` stays fast
and works without any of them.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback

import click

from deploy_unet import __version__
from deploy_unet.errors import DeployUnetError
from deploy_unet.report_console import make_console
from deploy_unet.shipped import REFERENCE_CHECKPOINTS


def debug_enabled() -> bool:
    """``deploy-unet --debug COMMAND`` (or DEPLOY_UNET_DEBUG=1): tracebacks, and failing ONNX files kept."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    flag = bool(root is not None and (root.obj or {}).get("debug"))
    return flag or os.environ.get("DEPLOY_UNET_DEBUG", "") not in ("", "0")


def handle_errors(func):
    """Turn user errors into one ``error:`` line and their exit code; real bugs keep their traceback.

    With ``--debug`` the line is preceded by the full traceback, the underlying tool's error included.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except DeployUnetError as exc:
            if debug_enabled():
                traceback.print_exception(exc, file=sys.stderr)
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="deploy-unet")
@click.option("--debug", is_flag=True,
              help="On an error, print the full traceback and keep a failing stage's ONNX as NAME.failed-<stage>.onnx "
                   "(also DEPLOY_UNET_DEBUG=1).")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Take UNet/FCN segmentation nets from PyTorch to ONNX and TensorRT, and prove nothing was lost."""
    ctx.obj = {**(ctx.obj or {}), "debug": debug}
    from deploy_unet.runtime.wait_policy import configure_at_start

    configure_at_start()  # before any command imports torch: libgomp reads OMP_WAIT_POLICY once, at load


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
@click.option("--arch", type=click.Choice(["unet", "unetpp", "fcn8s", "fcn16s", "fcn32s", "unet3d"]), default=None,
              help="Reference net (default: the checkpoint's arch, else unet); must agree with a deploy-unet checkpoint.")
@click.option("--model", "model_spec", metavar="PKG.MODULE:CALLABLE", default=None,
              help="Your own nn.Module class or factory instead of --arch (e.g. segmentation_models_pytorch:Unet); "
                   "needs --divisor unless the net has a .divisor.")
@click.option("--model-arg", "model_arg_items", multiple=True, metavar="KEY=VALUE",
              help="Keyword argument for the --model callable (repeatable; Python/JSON literals, else a string), "
                   "e.g. --model-arg encoder_name=resnet18 --model-arg encoder_weights=None --model-arg classes=4.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="state_dict (bare, or under 'state_dict'/'model'); a deploy-unet checkpoint also sets arch and "
                   "options, which the options you pass override field by field.")
@click.option("--strict/--no-strict", default=True, show_default=True,
              help="Missing or unexpected checkpoint keys, or an option the weights no longer fit, are an error; "
                   "--no-strict loads the tensors that fit.")
@click.option("--divisor", "divisor_text", default=None, metavar="N|D,H,W",
              help="Spatial multiple the net needs (only with --model): one int, or one per axis for volumes "
                   "(e.g. 4,32,32 for a net that pools depth fewer times).")
@click.option("--in-channels", type=int, default=None)
@click.option("--num-classes", type=int, default=None)
@click.option("--depth", type=int, default=None, help="UNet: number of poolings (1..6); divisor = 2**depth.")
@click.option("--base-channels", type=int, default=None, help="UNet: channels of the first block.")
@click.option("--up-mode", type=click.Choice(["transpose", "bilinear", "nearest", "trilinear"]), default=None,
              help="UNet upsampling (unet3d: transpose, trilinear, nearest).")
@click.option("--norm", type=click.Choice(["batch", "none", "instance", "group"]), default=None,
              help="Normalization (instance/group: unet3d).")
@click.option("--padding", type=click.Choice(["same", "valid"]), default=None,
              help="UNet convs: same (padded, output = input size) or valid (the paper's; smaller output, use --tile).")
@click.option("--heads", type=click.Choice(["mean", "last"]), default=None,
              help="UNet++ output: mean of the deep-supervision heads' logits (default), or the last head.")
@click.option("--prune", type=int, default=None, metavar="L",
              help="UNet++: export only the sub-network of head L (nodes X(i,j) with i+j <= L; divisor 2**L).")
@click.option("--width-mult", type=float, default=None, help="FCN: backbone width multiplier.")
@click.option("--fc-channels", type=int, default=None, help="FCN: channels of fc6/fc7 (before --width-mult).")
@click.option("--height", type=int, default=256, show_default=True)
@click.option("--width", type=int, default=256, show_default=True)
@click.option("--size", "size_text", default=None, metavar="HxW|DxHxW",
              help="Export size, instead of --height/--width; DxHxW for a volume net (e.g. 32x64x64).")
@click.option("--spatial-dims", type=click.IntRange(2, 3), default=None,
              help="3 for a --model volume net that does not say (NCDHW input) [default: what the net states, "
                   "else 2, or 3 with --size DxHxW].")
@click.option("--batch", type=int, default=1, show_default=True)
@click.option("--dynamic", type=click.Choice(["all", "batch", "hw", "none"]), default="all", show_default=True,
              help="Which axes stay dynamic (hw: the spatial axes, D, H, W for volumes).")
@click.option("--opset", type=int, default=18, show_default=True)
@click.option("--mean", default=None, help="Input normalization mean per channel, e.g. 0.485,0.456,0.406.")
@click.option("--std", default=None, help="Input normalization std per channel.")
@click.option("--tolerance", type=float, default=1e-4, show_default=True,
              help="Parity gate: max abs error vs PyTorch <= tolerance * max(1, max|logit|).")
@click.option("--simplify/--no-simplify", default=True, show_default=True, help="Run onnxslim.")
@click.option("--pad-in-graph", is_flag=True,
              help="The graph reflect-pads H, W up to the divisor and crops the logits back: any size works.")
@click.option("--class-names", default=None, metavar="A,B,C",
              help="One name per class id, stored in the metadata (predict's legends) [default: the checkpoint's].")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Output file (default: ARCH.onnx).")
@click.option("--exporter", type=click.Choice(["auto", "dynamo", "torchscript"]), default="auto", show_default=True,
              help="torch.export-based (dynamo), the TorchScript tracer, or auto: dynamo, falling back to TorchScript "
                   "where torch.export cannot take the net (data-dependent branch, unsupported construct or op).")
@click.option("--output-key", default=None, metavar="NAME",
              help="A net returning a dict / dataclass / ModelOutput: the logits' key [default: logits, else out].")
@click.option("--output-index", type=int, default=None, metavar="I",
              help="A net returning a tuple / list (deep supervision, aux heads): the logits' index [default: 0].")
@click.option("--upsample-in-graph", is_flag=True,
              help="Logits below the input's resolution (SegFormer's 1/4): upsample them in the graph (bilinear, "
                   "align_corners=False), so the file returns full-size logits.")
@click.option("--intensity", "volume_intensity", default=None, metavar="SPEC",
              help="Volume nets: how predict prepares a scan's values, stored in the metadata: none | zscore | "
                   "ct:LO,HI | ct:LO,HI,MEAN,STD.")
@click.option("--spacing", "volume_spacing", default=None, metavar="S|SxSxS",
              help="Volume nets: the voxel spacing the net was trained at (predict --resample), stored in the metadata.")
@handle_errors
def export(arch, model_spec, model_arg_items, checkpoint, strict, divisor_text, in_channels, num_classes, depth,
           base_channels, up_mode, norm, padding, heads, prune, width_mult, fc_channels, height, width, size_text,
           spatial_dims, batch, dynamic, opset, mean, std, tolerance, simplify, pad_in_graph, class_names, output,
           exporter, output_key, output_index, upsample_in_graph, volume_intensity=None, volume_spacing=None):
    """Export a net to a dynamic, checked, simplified, self-describing ONNX file."""
    from rich.console import Console

    from deploy_unet.export import export_onnx
    from deploy_unet.nets.loading import load_net, parse_model_args

    console = Console(stderr=True)
    divisor, divisors = _divisor_option(divisor_text)
    volume_depth = None
    if size_text is not None:
        from deploy_unet.data import parse_spatial_size

        dims = parse_spatial_size(size_text)
        height, width = dims[-2:]
        volume_depth = dims[0] if len(dims) == 3 else None
    if prune is not None and heads == "mean":
        raise click.BadParameter("--prune L outputs head L alone; drop --heads mean", param_hint="--heads")
    if prune is not None:
        heads = "last"  # a pruned UNet++ is read at its last head (overrides a checkpoint's heads=mean)
    options = _net_options(num_classes=num_classes, depth=depth, base_channels=base_channels, up_mode=up_mode,
                           norm=norm, padding=padding, heads=heads, prune=prune, width_mult=width_mult,
                           fc_channels=fc_channels)
    loaded = load_net(arch=arch, options=options, model=model_spec, checkpoint=checkpoint, strict=strict,
                      divisor=divisor if divisors is None or model_spec else None, in_channels=in_channels,
                      mean=_floats(mean, "--mean"), std=_floats(std, "--std"),
                      model_args=parse_model_args(model_arg_items))
    for warning in loaded.warnings:
        click.echo(f"warning: {warning}", err=True)
    if checkpoint is None:
        console.print("[yellow]note:[/] no --checkpoint: the weights are random (fine for testing the toolchain)")
    output = output or f"{loaded.arch.replace(':', '_').replace('.', '_')}{f'.prune{prune}' if prune else ''}.onnx"
    with console.status("exporting") as status:
        result = export_onnx(
            loaded.net, output, height=height, width=width, batch=batch, dynamic=dynamic, opset=opset,
            mean=loaded.mean, std=loaded.std, arch=loaded.arch, net_config=loaded.net_config,
            divisor=loaded.divisor, in_channels=loaded.in_channels,
            checkpoint_sha256=loaded.checkpoint.sha256 if loaded.checkpoint else None,
            simplify=simplify, tolerance=tolerance, pad_in_graph=pad_in_graph,
            class_names=(class_names.split(",") if class_names is not None
                         else loaded.checkpoint.class_names if loaded.checkpoint else None),
            log=lambda msg: status.update(msg), keep_failed=debug_enabled(),
            metadata_extra=_volume_props(volume_intensity, volume_spacing),
            **_volume_export_args(loaded.net, volume_depth, spatial_dims, divisors, checkpoint is not None),
            exporter=exporter, output_key=output_key, output_index=output_index, upsample_in_graph=upsample_in_graph,
        )
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    parity = ", ".join(f"{shape}: {err:.2e}" for shape, err in result.parity.items())
    in_graph = ", pads to it in the graph" if pad_in_graph else ""
    rule = (f"divisors {'x'.join(map(str, result.info.axis_divisors))} (DxHxW)" if result.info.divisors
            else f"divisor {result.info.divisor}") + (", volumes NCDHW" if result.info.spatial_dims == 3 else "")
    how = f", {result.info.extra.get('exporter', '')}" if exporter != "auto" or result.notes else ""
    click.echo(f"wrote {result.path} ({result.info.arch}, {rule}{in_graph}, dynamic {dynamic}{how}) "
               f"in {result.seconds:.1f}s")
    click.echo(f"ONNX Runtime vs PyTorch max abs error: {parity}")
    click.echo("time: " + ", ".join(f"{name} {sec:.1f}s" for name, sec in result.stages.as_dict().items()))


def _volume_props(intensity, spacing) -> dict[str, str]:
    from deploy_unet.volume_processing import volume_props

    return volume_props(intensity, spacing)


def _divisor_option(text: str | None) -> tuple[int | None, tuple[int, ...] | None]:
    """``--divisor 16`` -> (16, None); ``--divisor 4,32,32`` -> (32, (4, 32, 32)): one per axis, their lcm."""
    if text is None:
        return None, None
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an int or D,H,W ints", param_hint="--divisor") from None
    if len(values) == 1:
        return values[0], None
    if len(values) not in (2, 3) or min(values) < 1:
        raise click.BadParameter(f"{text!r}: give one divisor, or one per spatial axis (D,H,W)",
                                 param_hint="--divisor")
    from deploy_unet.shapes import lcm_divisor

    return lcm_divisor(values), values


def _volume_export_args(net, depth, spatial_dims, divisors, from_checkpoint: bool) -> dict:
    """export_onnx's volume arguments: the depth of --size DxHxW, --spatial-dims, per-axis --divisor; a
    volume net needs --size DxHxW (one usage line otherwise)."""
    args: dict = {}
    if divisors is not None:
        args["divisors"] = divisors
    if spatial_dims is not None:
        args["spatial_dims"] = spatial_dims
    is_volume = (getattr(getattr(net, "shape_contract", None), "spatial_dims", 2) == 3 or spatial_dims == 3
                 or (divisors is not None and len(divisors) == 3))
    if depth is None and is_volume:
        raise click.BadParameter("a volume net (NCDHW) needs --size DxHxW, e.g. --size 32x64x64",
                                 param_hint="--size")
    if depth is not None:
        args["depth"] = depth
    return args


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


# --- describe: ONNX files exported elsewhere (describe.py) ------------------------------------------


def _given_options(func):
    """--mean --std --scale --class-names --divisor: what a file exported elsewhere cannot say about itself.

    Used by every command that reads a model's metadata; a file with deploy-unet metadata ignores them (its
    metadata wins: restate it with `deploy-unet describe`). Place below @handle_errors."""
    options = [
        click.option("--mean", "given_mean", default=None, metavar="M[,M...]",
                     help="ONNX without deploy-unet metadata: input normalization mean per channel (or `describe` "
                          "it once).", ),
        click.option("--std", "given_std", default=None, metavar="S[,S...]",
                     help="ONNX without deploy-unet metadata: input normalization std per channel."),
        click.option("--scale", "given_scale", type=float, default=None,
                     help="ONNX without deploy-unet metadata: pixel range the net takes before mean/std "
                          "(1: [0, 1], the default; 255: 0..255)."),
        click.option("--class-names", "given_class_names", default=None, metavar="A,B,C",
                     help="ONNX without deploy-unet metadata: one name per class id."),
        click.option("--divisor", "given_divisor", type=int, default=None,
                     help="ONNX without deploy-unet metadata: the size multiple it needs [default: found by "
                          "running it in ONNX Runtime]."),
    ]

    @functools.wraps(func)
    def wrapper(*args, given_mean=None, given_std=None, given_scale=None, given_class_names=None,
                given_divisor=None, **kwargs):
        from deploy_unet.describe import given, parse_given

        stated = parse_given(_floats(given_mean, "--mean"), _floats(given_std, "--std"), given_scale,
                             given_class_names.split(",") if given_class_names is not None else None, given_divisor)
        with given(stated, note=lambda line: click.echo(f"note: {line}", err=True)):
            return func(*args, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


@cli.command("describe")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="The described copy [default: MODEL.described.onnx].")
@click.option("--arch", default=None, help="A name for the net in reports [default: the file's stem].")
@handle_errors
@_given_options
def describe_command(model, output, arch):
    """Write MODEL (an ONNX exported elsewhere) with full deploy-unet metadata, so no command needs options.

    Read from the graph: names, channels, classes, layout (an NHWC input gets a Transpose in front: the copy
    takes NCHW). Found by running it in ONNX Runtime: divisor, output stride. Stated with the options: mean,
    std, value scale, class names; what is not stated is assumed, and said so.
    """
    from deploy_unet.describe import current_given, describe_file

    output = output or (model[: -len(".onnx")] if model.endswith(".onnx") else model) + ".described.onnx"
    result = describe_file(model, output, current_given(), arch=arch)
    info = result.info
    click.echo(f"wrote {result.path} ({info.in_channels} channels NCHW, {info.num_classes} classes, divisor "
               f"{info.divisor}, output stride {info.output_stride}, mean {info.mean or 'none'}, std "
               f"{info.std or 'none'}, scale {info.value_scale:g})")
    for line in result.found:
        click.echo(f"found: {line}")
    if result.assumed:
        click.echo("assumed: " + "; ".join(result.assumed))




@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--precision", type=click.Choice(["fp16", "int8"]), required=True)
@click.option("--target", type=click.Choice(["tensorrt", "onnxruntime", "openvino"]), default="tensorrt",
              show_default=True,
              help="int8 Q/DQ placement: TensorRT fusion-friendly; ORT CPU (every activation quantized); or OpenVINO "
                   "(NNCF's pattern: uint8 after ReLU, no requantize after MaxPool/Concat; file NAME.int8.ov.onnx).")
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
@click.option("--min-mask-agreement", type=float, default=None, metavar="PCT",
              help="Gate: also at least PCT percent of pixels with the fp32 model's class, e.g. 99.")
@click.option("--max-rel-l2", type=float, default=None, help="Gate: also a logit relative L2 vs fp32 of at most this.")
@click.option("--auto-fallback", is_flag=True,
              help="If the gate fails, keep the fewest layers in higher precision (ranked by the error each "
                   "adds, re-measured step by step) until it holds.")
@click.option("--fallback-precision", type=click.Choice(["fp16", "fp32"]), default=None,
              help="Precision of layers kept out of int8 [default: fp16 for --target tensorrt, fp32 otherwise].")
@click.option("--exclude", multiple=True, metavar="NODE_OR_REGEX",
              help="Keep these layers in higher precision: a node name or module path (up.1.block.0), or a regex "
                   "matching either whole; repeatable.")
@click.option("--exclude-op-type", multiple=True, metavar="OP",
              help="Keep every node of this op type in higher precision, e.g. ConvTranspose; repeatable.")
@click.option("--rank", type=click.Choice(["revert", "local"]), default="revert", show_default=True,
              help="Auto-fallback order: revert each group alone on the worst samples (NNCF's way), or the local "
                   "error each adds from one layer-wise pass (cheaper).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Output file (default: MODEL.fp16.onnx, MODEL.int8.onnx, MODEL.int8.ort.onnx).")
@click.option("--gate-backend", type=click.Choice(["onnxruntime", "openvino"]), default="onnxruntime",
              show_default=True, help="Where the accuracy gate (and --auto-fallback's search) runs the candidates: "
                                      "openvino measures them as OpenVINO's CPU device runs them.")
@handle_errors
@_given_options
def quantize(model, precision, target, calib, calib_samples, method, calib_cache, eval_source, eval_samples,
             no_eval, max_dice_drop, min_mask_agreement, max_rel_l2, auto_fallback, fallback_precision, exclude,
             exclude_op_type, rank, output, gate_backend):
    """Make an fp16 or int8 (explicit Q/DQ) ONNX from an fp32 export, calibrated and accuracy-gated."""
    from deploy_unet.precision import check_gate
    from deploy_unet.precision import quantize as run_quantize

    result = run_quantize(
        model, precision, target=target, calib=calib, calib_samples=calib_samples, method=method,
        calib_cache=calib_cache, eval_source=None if no_eval else eval_source, eval_samples=eval_samples,
        max_dice_drop=max_dice_drop, output=output, keep_failed=debug_enabled(),
        min_mask_agreement=min_mask_agreement, max_rel_l2=max_rel_l2, auto_fallback=auto_fallback,
        fallback_precision=fallback_precision, exclude=exclude, exclude_op_types=exclude_op_type, rank=rank,
        gate_backend=gate_backend,
    )
    how = "cached ranges" if result.from_cache else "calibrated"
    where = f", target {result.target}" if precision == "int8" else ""
    click.echo(f"wrote {result.path} ({precision}{where}, {result.size_bytes / 1e6:.2f} MB; {how}: "
               f"{result.method} on {result.calib_samples} samples of {result.calib_source})")
    if result.kept_fp32:
        click.echo(f"kept in fp32 (activations beyond the fp16 range; in volumes also the whole-volume norms): "
                   f"{', '.join(result.kept_fp32)}")
    if result.kept_higher:
        higher = "fp32" if precision == "fp16" else (fallback_precision or ("fp16" if target == "tensorrt" else "fp32"))
        click.echo(f"kept in {higher} ({len(result.kept_higher)}): "
                   + "; ".join(f"{node} [{why}]" for node, why in result.kept_higher.items()))
    gate = result.gate
    if gate is not None:
        click.echo(f"accuracy on {gate.samples} samples of {gate.source} (vs {gate.reference}): "
                   f"Dice fp32 {gate.fp32['mean_dice']:.4f} -> {gate.candidate['mean_dice']:.4f} "
                   f"(drop {gate.dice_drop:+.4f}, limit {gate.max_dice_drop}), "
                   f"IoU {gate.fp32['mean_iou']:.4f} -> {gate.candidate['mean_iou']:.4f}, "
                   f"mask agreement {gate.mask_agreement:.4f}"
                   + (f", rel L2 {gate.rel_l2:.4g}" if gate.rel_l2 is not None else ""))
    if result.fallback is not None:
        searched = result.fallback
        click.echo(f"auto-fallback: {searched.evaluations} evaluations ({searched.full_evaluations} on all "
                   f"{searched.final.samples} samples) in {searched.seconds:.1f} s")
        click.echo(searched.summary_line())
    check_gate(result)


# --- validate, bench, pipeline (runners) ------------------------------------------------------------
_BACKEND_HELP = ("torch | onnxruntime | onnxruntime-cuda | onnxruntime-trt | tensorrt | openvino "
                 "(default: from the file type)")


def _ov_options(func):
    """--ov-device / --ov-precision: the openvino backend's device and inference precision."""
    options = [
        click.option("--ov-device", default=None, metavar="CPU|GPU|NPU|AUTO",
                     help="openvino backend: the OpenVINO device [default: CPU]."),
        click.option("--ov-precision", type=click.Choice(["auto", "f32", "bf16", "f16"]), default=None,
                     help="openvino backend: inference precision [default: auto = OpenVINO's own, bf16 on CPUs with "
                          "AVX512-BF16/AMX; recorded and gated as bf16]; f32 keeps full precision."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _ov(ov_device, ov_precision) -> dict:
    return {"ov_device": ov_device, "ov_precision": ov_precision}


def _speed_options(func):
    """The runner speed options bench and validate share (torch's; --cuda-graph also the engine's)."""
    options = [
        click.option("--torch-precision", type=click.Choice(["fp32", "fp16"]), default=None,
                     help="torch backend: compute in fp16 (weights and activations) instead of fp32."),
        click.option("--channels-last", is_flag=True, help="torch backend: NHWC memory format."),
        click.option("--cuda-graph", is_flag=True,
                     help="torch on CUDA and tensorrt: capture one CUDA graph per input shape and replay it."),
        click.option("--compile", "compile_mode",
                     type=click.Choice(["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]),
                     default=None, help="torch backend: torch.compile with this mode (the first call per shape compiles)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _speed(torch_precision, channels_last, cuda_graph, compile_mode) -> dict:
    return {"torch_precision": torch_precision, "channels_last": channels_last or None,
            "cuda_graph": cuda_graph or None, "compile": compile_mode}


def _tile_size(text: str | None) -> tuple[int, int] | None:
    """``--tile-size 92`` or ``92x124`` -> (H, W); validity is the net's contract's to check."""
    if text is None:
        return None
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise click.BadParameter(f"{text!r} is not N or HxW with positive integers, e.g. 92 or 92x124",
                                 param_hint="--tile-size")
    return (parts[0], parts[-1])


@cli.command("validate")
@click.argument("candidates", nargs=-1, required=True, type=click.Path(dir_okay=False))
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
@click.option("--tile", is_flag=True,
              help="Overlap-tile inference: any image size, full-size output (for --padding valid nets).")
@click.option("--tile-size", default=None, metavar="N|HxW",
              help="Tile input size, a valid one [default: the export size in the metadata].")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8"]), default=None,
              help="Which default gates apply (default: the candidate's metadata, or what the runner ran).")
@click.option("--gate", "gate_specs", multiple=True, metavar="METRIC=VALUE",
              help="Override a gate, e.g. --gate rel_l2=1e-3 --gate mask_agreement=99.5.")
@click.option("--allow-tf32", is_flag=True,
              help="Let torch on CUDA run fp32 convolutions/matmuls in TF32 (faster, ~1e-4 rel error); loosens the "
                   "fp32 gates to rel_l2 1e-3, cosine 0.9999. Default: true fp32.")
@_speed_options
@_ov_options
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the full report.")
@click.option("--gallery", "gallery_dir", type=click.Path(file_okay=False), default=None,
              help="Write pictures of the samples of lowest mask agreement (image | reference | candidate | "
                   "disagreement) to DIR, and the worst checkerboard map when its score exceeds the reference's.")
@click.option("--per-layer", is_flag=True,
              help="Also compare every intermediate tensor with the fp32 ONNX --reference (ONNX Runtime CPU): SQNR, "
                   "rel L2, the local error each layer's own precision adds; a table of the worst, JSON of all, a PNG.")
@click.option("--layers-json", type=click.Path(dir_okay=False), default=None,
              help="--per-layer JSON [default: CANDIDATE with .layers.json].")
@click.option("--layers-plot", type=click.Path(dir_okay=False), default=None,
              help="--per-layer PNG of error along depth [default: CANDIDATE with .layers.png].")
@click.option("--top", type=click.IntRange(1), default=10, show_default=True, help="--per-layer: rows in the table.")
@handle_errors
@_given_options
def validate_command(candidates, reference, data, samples, backend, ref_backend, checkpoint, device, pad, tile,
                     tile_size, precision, gate_specs, allow_tf32, torch_precision, channels_last, cuda_graph,
                     compile_mode, ov_device, ov_precision, json_path, gallery_dir, per_layer, layers_json,
                     layers_plot, top):
    """Compare each CANDIDATE's outputs with a reference on the same images; exit 1 when a gate fails."""
    from deploy_unet.report import GALLERY_SAMPLES, gate_table, validation_table, write_galleries, write_json
    from deploy_unet.validate import parse_gates, validate_artifacts, validate_artifacts_many

    options = dict(data=data, samples=samples, ref_backend=ref_backend, checkpoint=checkpoint, pad=pad,
                   gates=parse_gates(gate_specs), device=device, allow_tf32=allow_tf32,
                   candidate_options={**_speed(torch_precision, channels_last, cuda_graph, compile_mode),
                                      **_ov(ov_device, ov_precision)},
                   tile=tile, tile_size=_tile_size(tile_size), gallery=GALLERY_SAMPLES if gallery_dir else 0)
    if per_layer:
        _check_per_layer(candidates, reference, tile)
    if len(candidates) == 1:
        reports = [validate_artifacts(candidates[0], reference, backend=backend, precision=precision, **options)]
    else:
        reports = validate_artifacts_many([(c, backend) for c in candidates], reference,
                                          precisions=[precision] * len(candidates), **options)
    console = make_console()
    console.print(validation_table(reports))
    for report in reports:
        console.print(gate_table(report))
    if gallery_dir:
        for _, path in write_galleries(gallery_dir, reports):
            console.print(f"wrote {path}")
    if json_path:
        write_json(json_path, reports[0].to_dict() if len(reports) == 1 else [r.to_dict() for r in reports])
        console.print(f"wrote {json_path}")
    if per_layer:
        _per_layer(console, candidates, reference, data, samples, layers_json, layers_plot, top)
    for report in reports:
        report.raise_for_gates()
    console.print(f"[green]passed[/green] all {', '.join(sorted({r.precision for r in reports}))} gates")


def _check_per_layer(candidates, reference, tile) -> None:
    from deploy_unet.errors import ConfigError

    if not str(reference).endswith(".onnx") or not all(str(c).endswith(".onnx") for c in candidates):
        raise ConfigError("--per-layer compares ONNX files tensor by tensor: pass the fp16/int8 .onnx candidates "
                          "and --reference the fp32 .onnx they were made from")
    if tile:
        raise ConfigError("--per-layer runs whole images, not tiles; drop --tile (use a valid --data size)")


def _per_layer(console, candidates, reference, data, samples, layers_json, layers_plot, top) -> None:
    """The layer-wise comparison of every candidate with the fp32 ONNX reference: table, JSON, PNG."""
    from pathlib import Path

    from deploy_unet.precision.layerwise import per_layer_artifacts
    from deploy_unet.report import layer_table

    stem = Path(candidates[0])
    stem = stem.with_name(stem.name[: -len(".onnx")])
    json_out = layers_json or f"{stem}.layers.json"
    plot_out = layers_plot or f"{stem}.layers.png"
    with console.status("per-layer comparison"):
        reports = per_layer_artifacts(candidates, reference, data=data or "synthetic", samples=samples,
                                      json_path=json_out, plot_path=plot_out)
    for report in reports:
        console.print(layer_table(report, top))
    console.print(f"wrote {json_out} and {plot_out}")


@cli.command("bench")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--backend", default=None,
              help=f"Backend for every artifact: {_BACKEND_HELP}; several, comma-separated (onnxruntime,openvino), "
                   "time each artifact on each in the same interleaved rounds.")
@click.option("--batch", "batch_text", default="1", show_default=True, help="Batch sizes, e.g. 1,4,8.")
@click.option("--size", "size_text", default="256x256", show_default=True, help="HxW sizes, e.g. 256x256,512x512 (DxHxW for volumes, e.g. 32x64x64).")
@click.option("--warmup", default=10, show_default=True, help="Untimed runs before timing.")
@click.option("--iters", default=None, type=int, help="Timed runs per configuration [default: 50].")
@click.option("--duration", default=None, type=float, help="Instead of --iters: seconds of timed runs.")
@click.option("--rounds", default=None, type=int,
              help="Interleaved rounds: each configuration gets one turn of --iters/N (or --duration/N) per round "
                   "[default: 10, or --iters if fewer]; 1 times each in one block.")
@click.option("--threads", default=None, type=int, help="Intra-op threads (torch and ONNX Runtime).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Weights for --backend torch on .onnx files.")
@click.option("--device", default="auto", show_default=True, help="Torch device: auto | cpu | cuda.")
@click.option("--pad", is_flag=True, help="Allow sizes off the net's divisor (pad and crop back).")
@click.option("--output", "output_kind", type=click.Choice(["logits", "mask"]), default="logits", show_default=True,
              help="What comes back to the host: the logits, or the argmax mask computed on the device (uint8).")
@click.option("--allow-tf32", is_flag=True, help="Let torch on CUDA use TF32 for fp32 convolutions/matmuls.")
@click.option("--tile", is_flag=True,
              help="Overlap-tile inference: any image size, full-size output (for --padding valid nets).")
@click.option("--tile-size", default=None, metavar="N|HxW",
              help="Tile input size, a valid one [default: the export size in the metadata].")
@_speed_options
@_ov_options
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write results as JSON.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False), default=None,
              help="Write the table as Markdown.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a latency distribution plot (PNG).")
@handle_errors
@_given_options
def bench_command(artifacts, backend, batch_text, size_text, warmup, iters, duration, rounds, threads, checkpoint, device, pad,
                  output_kind, allow_tf32, tile, tile_size, torch_precision, channels_last, cuda_graph, compile_mode,
                  ov_device, ov_precision, json_path, markdown_path, plot_path):
    """Measure latency, throughput and peak memory of each ARTIFACT per batch and size."""

    from deploy_unet.bench import bench, parse_batches, parse_sizes
    from deploy_unet.errors import ConfigError
    from deploy_unet.report import bench_table, plot_latency, render_markdown, write_json, write_markdown

    if iters is not None and duration is not None:
        raise ConfigError("--iters and --duration both given; pass one of them")
    report = bench(
        artifacts, backend=backend, batches=parse_batches(batch_text), sizes=parse_sizes(size_text), warmup=warmup,
        iters=iters if duration is None else None, duration=duration, rounds=rounds, threads=threads, pad=pad,
        runner_options={"checkpoint": checkpoint, "device": device, "output": output_kind, "allow_tf32": allow_tf32,
                        **_speed(torch_precision, channels_last, cuda_graph, compile_mode),
                        **_ov(ov_device, ov_precision)},
        tile=tile, tile_size=_tile_size(tile_size),
    )
    console = make_console()
    console.print(bench_table(report))
    for path, write in ((json_path, lambda p: write_json(p, report.to_dict())),
                        (markdown_path, lambda p: write_markdown(p, render_markdown(report, title="deploy-unet bench"))),
                        (plot_path, lambda p: plot_latency(report, p))):
        if path:
            write(path)
            console.print(f"wrote {path}")



def _stream_options(command):
    """predict's options for large images (issue 26): streaming, windows, chunks, the mask format, Dask."""
    options = [
        click.option("--stream/--no-stream", "stream", default=None,
                     help="Stream every image chunk by chunk (or none) [default: tiled/OME/GeoTIFF and Zarr inputs, "
                          "and images over --stream-limit]."),
        click.option("--stream-limit", default=64.0, show_default=True, metavar="MEGAPIXELS",
                     help="Images larger than this are streamed instead of run whole."),
        click.option("--window", "window_text", default=None, metavar="N|HxW|DxHxW",
                     help="Sliding-window size, a valid input size [default: the export size, else 512]."),
        click.option("--overlap", default=0.5, show_default=True, help="Window overlap (MONAI's), in [0, 1)."),
        click.option("--blend", type=click.Choice(["gaussian", "constant", "crop"]), default="gaussian",
                     show_default=True, help="Window blending (MONAI's modes) or crop-to-centre (needs --halo)."),
        click.option("--halo", default=None, type=int, help="--blend crop: context pixels kept off each window edge."),
        click.option("--sw-batch", default=4, show_default=True, help="Windows per runner call."),
        click.option("--mirror", "mirror_text", default=None, metavar="AXES",
                     help="Mirroring test-time augmentation over these axes (0 = rows, 1 = columns; volumes: "
                          "0,1,2), e.g. 0,1."),
        click.option("--chunk", "chunk_text", default="2048", show_default=True, metavar="N|HxW",
                     help="Output chunk (task and storage chunk) of a streamed image."),
        click.option("--mask-format", type=click.Choice(["ome-zarr", "tiff"]), default="ome-zarr", show_default=True,
                     help="A streamed mask as NAME.mask.ome.zarr or a tiled BigTIFF NAME.mask.tif."),
        click.option("--dask", default=None, metavar="tcp://HOST:PORT|local:N",
                     help="Run the chunks on a Dask scheduler, or a local cluster of N workers."),
        click.option("--resume", is_flag=True, help="Compute only the chunks missing from an unfinished streamed mask."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _stream_kwargs(stream, stream_limit, window_text, overlap, blend, halo, sw_batch, mirror_text, chunk_text,
                   mask_format, dask, resume) -> dict:
    from deploy_unet.data import parse_size
    from deploy_unet.scale.stream import StreamOptions

    def size(text):
        from deploy_unet.volume_processing import parse_window

        return None if text is None else parse_window(text) or tuple(parse_size(text))

    try:
        mirror = tuple(int(a) for a in mirror_text.split(",")) if mirror_text else ()
    except ValueError:
        raise click.BadParameter(f"{mirror_text!r}: give axes as 0, 1 or 0,1", param_hint="--mirror") from None
    if any(a not in (0, 1, 2) for a in mirror):
        raise click.BadParameter(f"{mirror_text!r}: images have axes 0 (rows) and 1 (columns), volumes also 2",
                                 param_hint="--mirror")
    options = StreamOptions(window=size(window_text), overlap=overlap, blend=blend, halo=halo, sw_batch=sw_batch,
                            mirror_axes=mirror, chunk=size(chunk_text), limit_pixels=int(stream_limit * 1e6),
                            mask_format=mask_format, resume=resume, dask=dask)
    return {"stream": stream, "stream_options": options,
            "note": lambda message: click.echo(f"note: {message}", err=True)}


def _volume_options(command):
    """predict's options for volumes (issue 24): intensity and spacing overrides, resampling."""
    from deploy_unet.volume_processing import INTENSITY_HELP

    options = [
        click.option("--intensity", default=None, metavar="SPEC",
                     help=f"Volumes: intensity handling, {INTENSITY_HELP} [default: the net's metadata, else none]."),
        click.option("--resample", is_flag=True,
                     help="Volumes: resample to the net's voxel spacing (metadata or --spacing), masks back by nearest."),
        click.option("--spacing", "spacing_text", default=None, metavar="S|SxSxS",
                     help="Volumes: the net's voxel spacing for --resample [default: the metadata's]."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@cli.command("predict")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output-dir", type=click.Path(file_okay=False), required=True,
              help="Folder for NAME.mask.png, NAME.overlay.png (NAME.probs.npy) and predictions.json.")
@click.option("--backend", default=None, help=f"{_BACKEND_HELP}.")
@click.option("--device", default="auto", show_default=True, help="Torch device: auto | cpu | cuda.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Weights for --backend torch on an .onnx file (its metadata names the net).")
@click.option("--batch", default=1, show_default=True, help="Images per run; images of one size run together.")
@click.option("--resize", "resize_text", default=None, metavar="HxW",
              help="Resize every image to this valid size and the masks back (nearest) [default: pad to the "
                   "divisor and crop back].")
@click.option("--tile", is_flag=True, help="Overlap-tile inference, any image size (for --padding valid nets).")
@click.option("--tile-size", default=None, metavar="N|HxW",
              help="Tile input size, a valid one [default: the export size in the metadata].")
@click.option("--output", "output_kind", type=click.Choice(["logits", "mask"]), default="logits", show_default=True,
              help="What the runner returns: the logits, or only the argmax mask (computed on the GPU by the CUDA "
                   "runners).")
@click.option("--save-probs", is_flag=True, help="Also write NAME.probs.npy: (C, H, W) float16 class probabilities.")
@click.option("--overlays/--no-overlays", default=True, show_default=True, help="Write NAME.overlay.png.")
@click.option("--threads", default=None, type=int, help="Intra-op threads (torch and ONNX Runtime).")
@click.option("--allow-tf32", is_flag=True, help="Let torch on CUDA use TF32 for fp32 convolutions/matmuls.")
@_speed_options
@_ov_options
@_stream_options
@_volume_options
@handle_errors
@_given_options
def predict_command(artifact, inputs, output_dir, backend, device, checkpoint, batch, resize_text, tile, tile_size,
                    output_kind, save_probs, overlays, threads, allow_tf32, torch_precision, channels_last,
                    cuda_graph, compile_mode, ov_device, ov_precision, **large):
    """Run ARTIFACT (.pt, .onnx, .engine, OpenVINO .xml) on INPUTS (image files, folders, .npy) and write a mask per image.

    Volumes (.nii/.nii.gz, .nrrd, .mha/.mhd, a DICOM series folder; .npy with a 3D net) run by sliding window
    and their masks keep the input's format and geometry (scan.nii.gz -> scan.mask.nii.gz).

    Masks come out at each image's own size: indexed PNGs (pixel = class id, with a palette), overlays with a
    legend, and predictions.json (sizes, class fractions, times, machine). Unreadable images are named and
    skipped; the run then exits 1 after writing the others.
    """
    from pathlib import Path

    from deploy_unet.data import parse_size
    from deploy_unet.predict import predict

    console = make_console()
    report = predict(
        artifact, inputs, output_dir, backend=backend, device=device, checkpoint=checkpoint, batch=batch,
        resize=parse_size(resize_text) if resize_text else None, tile=tile, tile_size=_tile_size(tile_size),
        output=output_kind, save_probs=save_probs, overlays=overlays, threads=threads,
        runner_options={"allow_tf32": allow_tf32 or None,
                        **_speed(torch_precision, channels_last, cuda_graph, compile_mode),
                        **_ov(ov_device, ov_precision)},
        warn=lambda message: click.echo(f"warning: {message}", err=True),
        intensity=large.pop("intensity"), resample=large.pop("resample"), spacing=large.pop("spacing_text"),
        **_stream_kwargs(**large),
    )
    data = report.to_dict()
    rate = data["inference_images_per_second"]
    console.print(f"predicted {len(report.images)} image(s) with {report.backend} ({report.precision}, fit "
                  f"{report.fit}): {report.images_per_second:.1f} images/s over {report.loop_seconds:.2f} s of reading "
                  "to writing" + (f", {rate:.1f} images/s in inference alone" if rate else "")
                  + f"; {report.seconds:.2f} s in all")
    console.print("time: " + ", ".join(f"{name} {sec:.2f}s" for name, sec in report.stages.as_dict().items()))
    console.print(f"wrote {Path(output_dir)}/ ({', '.join([*_written_patterns(report.images), 'predictions.json'])})")
    for item in (p for p in report.images if getattr(p, "stream", None)):
        console.print(f"streamed {item.source}: {item.files['mask']} ({item.stream['chunks']} chunks, "
                      f"{item.stream['workers']} worker(s), {item.stream['seconds']:.1f} s)")
    report.raise_for_skipped()


def _written_patterns(images) -> list[str]:
    """The kinds of file predict wrote, as NAME.mask.png, NAME.mask.tif, ...: what it really wrote (a streamed
    image's mask is TIFF or OME-Zarr, a volume's keeps its input's format), not what it usually writes."""
    patterns: dict[str, None] = {}
    for item in images:
        name = getattr(item, "name", "")
        for path in getattr(item, "files", {}).values():
            file = os.path.basename(path)
            patterns["NAME" + file[len(name):] if name and file.startswith(name + ".") else file] = None
    return list(patterns)


@cli.command()
@click.option("--arch", type=click.Choice(sorted(REFERENCE_CHECKPOINTS)), default=None,
              help="Which shipped reference checkpoint to use [default: unet]; with --checkpoint it must agree "
                   "with the arch the checkpoint records.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="A deploy-unet checkpoint (carries arch, config, normalization); default: the shipped reference.")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False), default="deploy-out", show_default=True)
@click.option("--height", type=int, default=None, help="Export/bench height (default: the checkpoint's recommended size).")
@click.option("--width", type=int, default=None)
@click.option("--size", "size_text", default=None, metavar="HxW|DxHxW",
              help="Export/bench size instead of --height/--width; DxHxW for a volume net (--arch unet3d) "
                   "[default: the checkpoint's recommended size].")
@click.option("--precisions", default="fp32,fp16,int8", show_default=True, help="Which ONNX precisions to make.")
@click.option("--int8-targets", default=None,
              help="Q/DQ placements to make for int8 (tensorrt: fusable by TensorRT; onnxruntime: fast on ORT CPU; "
                   "openvino: NNCF's pattern, validated and timed on OpenVINO) [default: tensorrt,onnxruntime, "
                   "and openvino when the openvino extra is installed and --openvino is on].")
@click.option("--calib-samples", type=int, default=32, show_default=True)
@click.option("--eval-samples", type=int, default=16, show_default=True, help="Held-out samples for validation.")
@click.option("--iters", type=int, default=30, show_default=True, help="Timed benchmark iterations per artifact.")
@click.option("--rounds", type=int, default=None,
              help="Benchmark rounds the iterations are interleaved in [default: 10, or --iters if fewer].")
@click.option("--engines/--no-engines", default=True, show_default=True,
              help="Build TensorRT engines when TensorRT and a GPU are present.")
@click.option("--threads", type=int, default=None, help="CPU threads for ONNX Runtime and torch.")
@click.option("--bench-tensorrt-qdq", is_flag=True, default=False,
              help="Also time the TensorRT-placement int8 ONNX on ONNX Runtime CPU (validated either way; "
                   "ORT's CPU provider runs it as dequantize + fp32 conv, so it is skipped by default).")
@click.option("--engine-lib", type=click.Choice(["auto", "tensorrt", "tensorrt-rtx"]), default="auto", show_default=True,
              help="Engine library: TensorRT, or TensorRT-RTX (RTX/A100-class GPUs, cc 8.0 8.6 8.9 12.x; not H100/H200); "
                   "auto: whichever is installed, TensorRT first.")
@click.option("--auto-fallback", is_flag=True,
              help="Make each int8 file meet the int8 gates by keeping the fewest layers in higher precision "
                   "(searched on synthetic:seed=3, validated on seed=2 as usual).")
@click.option("--fallback-precision", type=click.Choice(["fp16", "fp32"]), default=None,
              help="With --auto-fallback: precision of the kept layers [default: fp16 for tensorrt, fp32 for onnxruntime].")
@click.option("--openvino/--no-openvino", default=True, show_default=True,
              help="Also validate and time every ONNX on OpenVINO (CPU) when the openvino extra is installed.")
@handle_errors
def pipeline(arch, checkpoint, output_dir, height, width, size_text, precisions, int8_targets, calib_samples,
             eval_samples, iters, rounds, engines, threads, bench_tensorrt_qdq, engine_lib, auto_fallback,
             fallback_precision, openvino):
    """The main job: export, fp16/int8, engines, validate all against PyTorch, benchmark, report."""
    from pathlib import Path

    from deploy_unet.pipeline import PipelineConfig, raise_for_gates, run_pipeline
    from deploy_unet.report import stage_table, summary_table

    console = make_console()
    depth = None
    if size_text is not None:
        from deploy_unet.data import parse_spatial_size

        dims = parse_spatial_size(size_text)
        (height, width), depth = dims[-2:], (dims[0] if len(dims) == 3 else None)
    config = PipelineConfig(
        output_dir=Path(output_dir), arch=arch, checkpoint=Path(checkpoint) if checkpoint else None,
        height=height, width=width, depth=depth, precisions=_choices(precisions, ("fp32", "fp16", "int8"), "--precisions"),
        int8_targets=_choices(int8_targets, ("tensorrt", "onnxruntime", "openvino"), "--int8-targets")
        if int8_targets is not None else None,
        calib_samples=calib_samples, eval_samples=eval_samples, bench_iters=iters, bench_rounds=rounds,
        engines="auto" if engines else "off", threads=threads, bench_tensorrt_qdq=bench_tensorrt_qdq,
        engine_lib=None if engine_lib == "auto" else engine_lib, auto_fallback=auto_fallback,
        fallback_precision=fallback_precision, openvino="auto" if openvino else "off",
    )
    with console.status("working") as status:
        result = run_pipeline(config, log=lambda msg: (console.print(msg), status.update(msg.strip())))
    console.print(summary_table(result.validations, result.bench))
    console.print(stage_table(result.stages))
    for kind, path in result.report_files.items():
        console.print(f"{kind}: {path}")
    raise_for_gates(result)


def _choices(value: str, valid: tuple[str, ...], option: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [v for v in items if v not in valid]
    if bad or not items:
        raise click.BadParameter(f"{value!r}: choose from {', '.join(valid)} (comma-separated)", param_hint=option)
    return items


# --- build-engine, doctor (TensorRT) ----------------------------------------------------------------


@cli.command("build-engine")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Engine file [default: MODEL with .engine].")
@click.option("--min-shape", metavar="BxCxHxW", help="Smallest input shape [default: 1xCxDxD, D = divisor]; "
                                                     "volumes: BxCxDxHxW, one divisor step per axis.")
@click.option("--opt-shape", metavar="BxCxHxW", help="Shape TensorRT tunes for [default: the export shape].")
@click.option("--max-shape", metavar="BxCxHxW", help="Largest input shape [default: 2x the export H and W "
                                                     "(and D, for volumes)].")
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
@click.option("--engine-lib", type=click.Choice(["auto", "tensorrt", "tensorrt-rtx"]), default="auto", show_default=True,
              help="Engine library: TensorRT, or TensorRT-RTX (RTX/A100-class GPUs, cc 8.0 8.6 8.9 12.x; not H100/H200); "
                   "auto: whichever is installed, TensorRT first.")
@click.option("--verbose", is_flag=True, help="Echo TensorRT warnings and errors while building.")
@click.option("--layer-info", "layer_info", type=click.Path(dir_okay=False), default=None,
              help="Write the builder's layer table (each fused layer, its tensors' types) to FILE.")
@handle_errors
@_given_options
def build_engine_command(model, output, min_shape, opt_shape, max_shape, timing_cache, workspace, opt_level,
                         hardware_compat, version_compatible, refit, plan_only, engine_lib, verbose, layer_info):
    """Build a strongly typed TensorRT or TensorRT-RTX engine (and FILE.engine.json manifest) from a deploy-unet ONNX.

    Precision comes from the ONNX itself (fp32, fp16 casts, INT8 Q/DQ): quantize first, then build.
    """
    import json

    from deploy_unet.engine.build import build_engine, plan_build

    plan = plan_build(
        model, output, min_shape=min_shape, opt_shape=opt_shape, max_shape=max_shape, timing_cache=timing_cache,
        workspace_mib=workspace, opt_level=opt_level, hardware_compat=hardware_compat,
        version_compatible=version_compatible, refit=refit, engine_lib=engine_lib,
    )
    for warning in plan.warnings:
        click.echo(f"warning: {warning}", err=True)
    if plan_only:
        click.echo(json.dumps(plan.to_dict(), indent=2))
        return
    from rich.console import Console

    console = Console(stderr=True)
    with console.status(f"building {plan.precision} engine from {model} (this takes minutes)"):
        result = build_engine(plan, log=lambda message: console.log(message), verbose=verbose,
                              layer_info_path=layer_info)
    click.echo(f"wrote {result.engine_path} ({result.seconds:.1f} s) and {result.manifest_path}")


@cli.command("convert-openvino")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="IR file NAME.xml (NAME.bin and NAME.openvino.json beside it) [default: MODEL with .xml].")
@click.option("--compress-fp16", is_flag=True,
              help="Store float weights as fp16 (half the .bin; computed in the inference precision as usual).")
@click.option("--ov-device", default="CPU", show_default=True, metavar="CPU|GPU|NPU|AUTO",
              help="The device it is meant for (checked to exist here, recorded in the manifest).")
@handle_errors
def convert_openvino_command(model, output, compress_fp16, ov_device):
    """Convert an ONNX file to OpenVINO IR (.xml + .bin) with a manifest, so a deployment loads it without converting.

    Every command reads the IR like the ONNX (its deploy-unet metadata is carried over in the manifest):
    `deploy-unet validate model.xml -r models/unet_synthetic.pt`.
    """
    from deploy_unet.openvino.convert import convert_openvino

    result = convert_openvino(model, output, compress_fp16=compress_fp16, device=ov_device)
    m = result.manifest
    click.echo(f"wrote {result.xml}, {result.bin.name} and {result.manifest_path.name} (OpenVINO {m['openvino_version']}"
               f", weights {m['precision_hints']['weights']}, {m['concats_rewritten']} Q/DQ Concat(s) folded)")


@cli.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def doctor_command(as_json):
    """Report installed packages, CUDA devices, and which backends can run here (and how to fix the rest)."""
    import json

    from deploy_unet.doctor import format_report, run_doctor

    report = run_doctor()
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))


# --- serving: Triton model repositories and `serve` (deploy_unet/serving/) ------------------------------


@cli.command("triton-repo")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output_dir", type=click.Path(file_okay=False), default="model_repository",
              show_default=True, help="The repository folder (new, or replaced with --force).")
@click.option("--name", "names", multiple=True, help="Model name per artifact, in order [default: each file's stem].")
@click.option("--accelerator", type=click.Choice(["none", "tensorrt"]), default="none", show_default=True,
              help="ONNX files: ONNX Runtime's TensorRT execution provider (precision from the graph, engine and "
                   "timing caches on).")
@click.option("--backend", "repo_backend", type=click.Choice(["auto", "openvino"]), default="auto", show_default=True,
              help="auto: ONNX Runtime for .onnx, TensorRT for engines; openvino: Triton's OpenVINO backend (each ONNX "
                   "converted to IR with convert-openvino, instances on the CPU).")
@click.option("--ov-device", default="CPU", show_default=True, help="--backend openvino: the TARGET_DEVICE.")
@click.option("--kind", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True,
              help="instance_group kind of each model.")
@click.option("--instances", type=int, default=1, show_default=True, help="Instances per model.")
@click.option("--max-batch", type=int, default=None,
              help="max_batch_size [default: an engine's profile max batch; 8 for ONNX with a dynamic batch].")
@click.option("--max-queue-delay-us", type=int, default=100, show_default=True,
              help="Dynamic batching: how long a request may wait for others of its shape.")
@click.option("--no-dynamic-batching", is_flag=True, help="Leave dynamic_batching out (each request runs alone).")
@click.option("--ensemble", is_flag=True,
              help="Also write NAME_preprocess, NAME_postprocess (python backend) and NAME_ensemble: image in, mask out.")
@click.option("--no-warmup", is_flag=True, help="Leave model_warmup out.")
@click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
@handle_errors
@_given_options
def triton_repo_command(artifacts, output_dir, names, accelerator, repo_backend, ov_device, kind, instances, max_batch,
                        max_queue_delay_us,
                        no_dynamic_batching, ensemble, no_warmup, force):
    """Write a Triton Inference Server model repository for ONNX files and TensorRT engines."""
    from deploy_unet.serving.repository import RepositoryOptions, write_repository

    options = RepositoryOptions(accelerator=accelerator, backend=repo_backend, ov_device=ov_device, instances=instances,
                                kind=kind, max_batch=max_batch,
                                dynamic_batching=not no_dynamic_batching, max_queue_delay_us=max_queue_delay_us,
                                ensemble=ensemble, warmup=not no_warmup)
    repo = write_repository(list(artifacts), output_dir, options, names=list(names) or None, force=force)
    for model in repo.models:
        click.echo(f"  {model.name}: {model.platform}, max_batch_size {model.max_batch_size}"
                   + (f"; {model.hw_rule}" if model.hw_rule else ""))
    checked = "parsed with Triton's model_config schema" if repo.parsed_with_triton_schema else \
        "not parsed (install tritonclient to check configs against Triton's schema)"
    click.echo(f"wrote {repo.path}/ ({len(repo.models)} models, README.md); configs {checked}")


def _hw(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    from deploy_unet.data import parse_size

    return parse_size(text)


@cli.command("serve")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--backend", default=None, help=f"Runner: {_BACKEND_HELP}.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Weights for --backend torch on an .onnx file.")
@click.option("--device", default="auto", show_default=True, help="Torch device: auto | cpu | cuda.")
@click.option("--threads", type=int, default=None, help="CPU threads per instance [default: the CPUs / instances].")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--http-port", type=int, default=8000, show_default=True)
@click.option("--grpc-port", type=int, default=8001, show_default=True)
@click.option("--metrics-port", type=int, default=8002, show_default=True)
@click.option("--model-name", default=None, help="Triton model name [default: the artifact's stem].")
@click.option("--max-batch", type=int, default=None,
              help="max_batch_size [default: an engine's profile max batch, else 8].")
@click.option("--max-queue-delay-us", type=int, default=100, show_default=True,
              help="Dynamic batching: how long a request may wait for others of its shape.")
@click.option("--no-dynamic-batching", is_flag=True, help="Run each request alone (no dynamic batcher).")
@click.option("--instances", type=int, default=None,
              help="Model instances, one runner each, run in parallel [default: one per usable CPU with 1 thread each "
                   "for a CPU runner, else 1].")
@click.option("--input", "input_kind", type=click.Choice(["tensor", "image"]), default="tensor", show_default=True,
              help="tensor: the model's normalized float32 NCHW (contract enforced); image: uint8 N x H x W x C "
                   "of any size, preprocessed from the metadata and cropped back.")
@click.option("--output", "output_kind", type=click.Choice(["logits", "mask"]), default="logits", show_default=True,
              help="logits, or the argmax mask (uint8, computed where the runner runs).")
@click.option("--max-size", default=None, metavar="HxW",
              help="Largest request H x W [default: an engine's profile max, else 2048x2048].")
@click.option("--exit-timeout", type=int, default=5, show_default=True,
              help="Seconds Triton waits for in-flight requests and open connections at shutdown.")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="Keep tritonserver's log here [default: in the run's workspace, removed at exit].")
@_ov_options
@handle_errors
@_given_options
def serve_command(artifact, backend, checkpoint, device, threads, host, http_port, grpc_port, metrics_port,
                  model_name, max_batch, max_queue_delay_us, no_dynamic_batching, instances, input_kind,
                  output_kind, max_size, exit_timeout, log_file, ov_device, ov_precision):
    """Serve ARTIFACT (.pt, .onnx, .engine) with the project's runner on a real Triton server (PyTriton)."""
    from deploy_unet.serving.server import ServeOptions, serve_until_signal

    options = ServeOptions(
        artifact=artifact, backend=backend, device=device, checkpoint=checkpoint, threads=threads, host=host,
        http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, model_name=model_name,
        max_batch=max_batch, max_queue_delay_us=max_queue_delay_us, dynamic_batching=not no_dynamic_batching,
        instances=instances, input_kind=input_kind, output=output_kind, max_size=_hw(max_size),
        exit_timeout_s=exit_timeout, log_file=log_file, ov_device=ov_device, ov_precision=ov_precision,
    )

    def ready(service):
        stages = service.model.stages.as_dict()
        click.echo("start-up: " + ", ".join(f"{name} {sec:.1f}s" for name, sec in stages.items()), err=True)
        click.echo(service.ready_line(), err=True)

    signum = serve_until_signal(options, on_ready=ready, log=lambda message: click.echo(message, err=True))
    click.echo(f"stopped ({'signal ' + str(signum) if signum else 'server exited'}); Triton and its workspace are gone",
               err=True)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
