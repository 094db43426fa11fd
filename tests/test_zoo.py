"""The model zoo (tests/zoo_nets.py) through the real CLI, as a user runs it: export on defaults (a square
64x64 size, all axes dynamic), fp16, int8 in both placements, validate on ONNX Runtime at another size.

Marked ``zoo``: they run with ``python -m pytest -m zoo`` in a venv with ``deploy-unet[zoo]`` (smp needs
torchvision, hence a torch build that matches it; see .ci/run) and are skipped, with that reason, in the
main suite. Weights are random (nothing is downloaded), so the int8 mask-agreement gate is lowered: random
logits have small class margins, and an argmax flips under int8 noise that a trained net's margins absorb;
the relative-L2 and cosine gates, which do not depend on margins, keep their int8 defaults.
"""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from deploy_unet.cli import cli
from deploy_unet.describe import read_model_info
from deploy_unet.errors import ConfigError
from tests.zoo_nets import EXPORT_SIZE, NUM_CLASSES, ZOO, by_name

pytestmark = pytest.mark.zoo

CI_NETS = [net for net in ZOO if net.ci]
RANDOM_WEIGHT_INT8_GATES = ("--gate", "mask_agreement=80")
CALIB = ("--calib", "synthetic:seed=1", "--calib-samples", "8", "--eval", "synthetic:seed=2", "--eval-samples", "2")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _skip_unavailable(net):
    if not net.available:
        pytest.skip(f"{net.name} needs {net.library} (pip install 'deploy-unet[zoo]')")


def _fixed_hw(net) -> bool:
    return "--dynamic" in net.export_options and net.export_options[net.export_options.index("--dynamic") + 1] in (
        "batch", "none")


@pytest.mark.parametrize("net", CI_NETS, ids=[n.name for n in CI_NETS])
def test_zoo_net_exports_quantizes_and_validates(net, tmp_path):
    _skip_unavailable(net)
    out = tmp_path / f"{net.name}.onnx"
    size = ("--height", EXPORT_SIZE, "--width", EXPORT_SIZE)

    torch.manual_seed(0)
    result = invoke("export", *net.cli_args(), *size, "-o", out)
    if net.refused_on_defaults:
        # On defaults it cannot work: one line saying why and what to do, exit 2, no file.
        assert result.exit_code == 2, result.output
        errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in result.output, result.output
        assert __import__("re").search(net.refused_on_defaults, errors[0]), errors[0]
        assert not out.exists()
        torch.manual_seed(0)
        result = invoke("export", *net.cli_args(), *net.export_options, *size, "-o", out)
    assert result.exit_code == 0, result.output
    info = read_model_info(out)
    assert info.num_classes == NUM_CLASSES and info.arch == f"custom:{net.model}"

    # Independently of the export's own check: the file against the same net (same seed, same init) at a
    # shape none of the export's checks used.
    torch.manual_seed(0)
    reference_net = net.build().eval()
    shape = (3, 3, EXPORT_SIZE, EXPORT_SIZE) if _fixed_hw(net) else (3, 3, EXPORT_SIZE + 2 * net.divisor,
                                                                     EXPORT_SIZE + 3 * net.divisor)
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        want = reference_net(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())

    # fp16, int8 for TensorRT, int8 for ONNX Runtime; each validated on ONNX Runtime at another size.
    data_size = f"{EXPORT_SIZE}x{EXPORT_SIZE}" if _fixed_hw(net) else f"{EXPORT_SIZE + 2 * net.divisor}x{EXPORT_SIZE + net.divisor}"
    for precision, target, suffix in (("fp16", (), "fp16"), ("int8", (), "int8"),
                                      ("int8", ("--target", "onnxruntime"), "int8.ort")):
        quantized = tmp_path / f"{net.name}.{suffix}.onnx"
        result = invoke("quantize", out, "--precision", precision, *target, *CALIB)
        assert result.exit_code == 0, result.output
        assert quantized.is_file()
        report = tmp_path / f"{suffix}.json"
        gates = RANDOM_WEIGHT_INT8_GATES if precision == "int8" else ()
        result = invoke("validate", quantized, "--reference", out, "--data", f"synthetic:seed=3,size={data_size}",
                        "--samples", 3, *gates, "--json", report)
        assert result.exit_code == 0, result.output
        parity = json.loads(report.read_text())["outputs"][0]
        assert parity["shape"][-2:] == [int(v) for v in data_size.split("x")]
        assert parity["rel_l2"] <= (1e-2 if precision == "fp16" else 0.15)


def test_segformer_traced_at_batch_1_is_refused_by_the_per_axis_check(tmp_path):
    """The issue's failure, reproduced on purpose: traced at batch 1, torch.export bakes the batch into mit_b0's
    reshapes while the ONNX input still says ``batch``; the parity check names the axis and writes nothing."""
    net = by_name("smp-segformer-mit_b0")
    _skip_unavailable(net)
    from deploy_unet.export import export_onnx

    out = tmp_path / "segformer.onnx"
    with pytest.raises(ConfigError) as err:
        export_onnx(net.build(), out, height=EXPORT_SIZE, width=EXPORT_SIZE + 32, divisor=net.divisor,
                    trace=(1, 3, EXPORT_SIZE, EXPORT_SIZE + 32))
    text = str(err.value)
    assert "the exported graph only runs at the traced batch 1" in text
    assert "Reshape" in text and "--dynamic hw" in text
    assert list(tmp_path.iterdir()) == []


# -- volumes (issue 24) ------------------------------------------------------------------------------------
from tests.zoo_nets import VOLUME_CLASSES, ZOO_3D  # noqa: E402

CI_VOLUME_NETS = [net for net in ZOO_3D if net.ci]


def _skip_unavailable_volume(net):
    if not net.available:
        pytest.skip(f"{net.name} needs monai{' and ' + ', '.join(net.requires) if net.requires else ''} "
                    "(pip install 'deploy-unet[zoo]')")


@pytest.mark.parametrize("net", CI_VOLUME_NETS, ids=[n.name for n in CI_VOLUME_NETS])
def test_volume_zoo_net_exports_quantizes_and_validates(net, tmp_path):
    """A MONAI 3D net as a user exports it: --model, --size DxHxW, no --divisor (its settings give the
    per-axis contract); ONNX with dynamic N, D, H, W; fp16 and int8 in both placements; validate at another
    volume size."""
    _skip_unavailable_volume(net)
    out = tmp_path / f"{net.name}.onnx"
    torch.manual_seed(0)
    result = invoke("export", *net.cli_args(), "-o", out)
    assert result.exit_code == 0, result.output
    info = read_model_info(out)
    assert info.spatial_dims == 3 and info.axis_divisors == net.divisors and info.num_classes == VOLUME_CLASSES
    dims = [d.dim_param for d in __import__("onnx").load(out).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "depth", "height", "width"]

    # the file against the same net at a volume size none of the export's checks used
    torch.manual_seed(0)
    reference_net = net.build().eval()
    other = tuple(s + 2 * d for s, d in zip(net.size, net.divisors))
    x = np.random.default_rng(5).standard_normal((2, 1, *other)).astype(np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        want = reference_net(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape == (2, VOLUME_CLASSES, *other)
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())

    data = "x".join(map(str, other))
    calib = ("--calib", f"synthetic:seed=1,size={data}", "--calib-samples", "8", "--eval",
             f"synthetic:seed=2,size={data}", "--eval-samples", "2", "--max-dice-drop", "1")
    for precision, target, suffix in (("fp16", (), "fp16"), ("int8", (), "int8"),
                                      ("int8", ("--target", "onnxruntime"), "int8.ort")):
        quantized = tmp_path / f"{net.name}.{suffix}.onnx"
        result = invoke("quantize", out, "--precision", precision, *target, *calib)
        assert result.exit_code == 0, result.output
        report = tmp_path / f"{suffix}.json"
        gates = RANDOM_WEIGHT_INT8_GATES if precision == "int8" else ()
        if suffix == "int8.ort":
            # Random weights through instance norm with every activation quantized (ORT's placement): the
            # anisotropic DynUNet measured rel L2 0.17 (minmax, 16 calibration volumes); the trained shipped
            # 3D net meets the default 0.15 (tests/test_volumes_precision.py).
            gates = (*gates, "--gate", "rel_l2=0.25", "--gate", "cosine=0.97")
        result = invoke("validate", quantized, "--reference", out, "--data", f"synthetic:seed=3,size={data}",
                        "--samples", 2, *gates, "--json", report)
        assert result.exit_code == 0, result.output
        parity = json.loads(report.read_text())["outputs"][0]
        assert parity["shape"][2:] == list(other) and len(parity["volume_agreement"]) == 2
        assert parity["rel_l2"] <= {"fp16": 1e-2, "int8": 0.15, "int8.ort": 0.25}[suffix]


def test_swinunetr_at_a_size_not_divisible_by_32_is_refused_naming_the_axis(tmp_path):
    """SwinUNETR checks divisibility by patch_size**5 in eager mode only (skipped while tracing): export
    states it from the net's settings and refuses a bad size in one line naming the axis, writing nothing."""
    net = next(n for n in ZOO_3D if n.name == "monai-swinunetr-3d")
    _skip_unavailable_volume(net)
    out = tmp_path / "swin.onnx"
    result = invoke("export", *net.cli_args(net.refused_size), "-o", out)
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output
    assert __import__("re").search(net.refused_match, errors[0]), errors[0]
    assert "nearest valid: 64 or 32" in errors[0] and not out.exists()


def test_smp_unet_from_plain_torch_onnx_export_goes_everywhere_after_describe(tmp_path):
    """Issue 27's "done when": an smp Unet exported by the user's own plain torch.onnx.export (TorchScript
    exporter, input 'images', dynamic N/H/W, no deploy-unet metadata) is described once, then quantize int8
    (both placements), validate against the original file, predict (masks at each image's size) and
    triton-repo run with no further options."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    import warnings

    from tests.test_foreign_onnx import through_everything

    torch.manual_seed(0)
    net = smp.Unet(encoder_name="resnet18", encoder_weights=None, classes=3).eval()
    foreign = tmp_path / "smp_unet.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.randn(1, 3, 64, 64), str(foreign), input_names=["images"], output_names=["masks"],
                          dynamic_axes={"images": {0: "n", 2: "h", 3: "w"}, "masks": {0: "n", 2: "h", 3: "w"}},
                          opset_version=17, dynamo=False)
    described = tmp_path / "unet.onnx"
    result = invoke("describe", foreign, "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "-o", described)
    assert result.exit_code == 0, result.output
    info = read_model_info(described)
    # smp's own "divisible by 32" check is Python (check_input_shape): the tracer drops it, and its decoder
    # resizes to each skip's size, so the graph itself runs at any size, which the probe finds (divisor 1).
    assert (info.divisor, info.in_channels, info.num_classes, info.input_names) == (1, 3, 3, ["images"])
    assert "divisor 1 (runs at any size)" in result.output
    through_everything(described, foreign, tmp_path)


def test_transformers_segformer_quarter_logits_export_and_predict_at_image_size(tmp_path):
    """A real Hugging Face SegformerForSemanticSegmentation (small random config, nothing downloaded): its
    SemanticSegmenterOutput is exported at 'logits' with a note, the 1/4-resolution logits are recorded
    (output_stride 4), and every command after it upsamples them where masks are made."""
    transformers = pytest.importorskip("transformers")

    from tests.test_foreign_onnx import through_everything

    config = transformers.SegformerConfig(num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                                          hidden_sizes=[8, 16], num_attention_heads=[1, 1], patch_sizes=[7, 3],
                                          strides=[4, 2], decoder_hidden_size=16, num_labels=3)
    torch.manual_seed(0)
    net = transformers.SegformerForSemanticSegmentation(config).eval()
    from deploy_unet.export import export_onnx

    out = tmp_path / "segformer.onnx"
    result = export_onnx(net, out, height=64, width=64, divisor=8)
    assert any("exporting 'logits'" in n and "1/4" in n for n in result.notes), result.notes
    info = read_model_info(out)
    assert (info.output_stride, info.extra["output_selected"], info.num_classes) == (4, "logits", 3)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 48, 72)
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = net(pixel_values=x).logits.numpy()
    assert got.shape == (1, 3, 12, 18)
    np.testing.assert_allclose(got, want, atol=1e-4)
    through_everything(out, out, tmp_path)
