"""``deploy-unet convert-openvino``: an ONNX file -> OpenVINO IR (``model.xml`` + ``model.bin``) and its
manifest ``model.openvino.json``, so a deployment loads the IR without converting.

The manifest, in the spirit of the engine manifest: OpenVINO's version, the target device, the precision hints
(weights compressed to fp16 or not; the inference precision OpenVINO picks on this machine), the source ONNX's
name and sha256, the IR's own sha256s, and the ONNX's deploy-unet metadata carried over verbatim, so validate,
bench, predict and serve read the IR exactly as they read the ONNX (shape contract, normalization, classes).
All three files are written to a temporary folder beside the output and moved in place, manifest last: a
failed conversion leaves nothing, and the runner refuses a ``.bin`` whose sha256 the manifest does not match.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from deploy_unet.errors import ArtifactError, ConfigError
from deploy_unet.fileio import sha256_file
from deploy_unet.metadata import load_onnx, read_props
from deploy_unet.runtime.openvino_runner import MANIFEST_FORMAT, check_device, import_openvino, manifest_path


@dataclass
class ConvertResult:
    xml: Path
    bin: Path
    manifest_path: Path
    manifest: dict


def convert_openvino(model: str | os.PathLike, output: str | os.PathLike | None = None, *,
                     compress_fp16: bool = False, device: str = "CPU") -> ConvertResult:
    """Convert ``model`` (.onnx) to IR at ``output`` (default: MODEL with .xml) with its manifest."""
    from deploy_unet.openvino.graph import fold_concat_dequantize

    src = Path(model)
    if src.suffix.lower() != ".onnx":
        raise ConfigError(f"convert-openvino takes an .onnx file, not {src.name}; export one with `deploy-unet export`")
    xml = Path(output) if output else src.with_suffix(".xml")
    if xml.suffix.lower() != ".xml":
        raise ConfigError(f"-o {xml} must end in .xml (OpenVINO writes NAME.xml and NAME.bin)")
    ov = import_openvino()
    device = check_device(ov.Core(), device)
    onnx_model = load_onnx(src)
    props = read_props(onnx_model)
    rewritten = fold_concat_dequantize(onnx_model)
    xml.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{xml.stem}.", dir=xml.parent) as tmp:
        tmp = Path(tmp)
        import onnx

        staged_onnx = tmp / src.name
        onnx.save(onnx_model, os.fspath(staged_onnx))
        try:
            converted = ov.convert_model(os.fspath(staged_onnx))
            staged_xml = tmp / xml.name
            ov.save_model(converted, os.fspath(staged_xml), compress_to_fp16=compress_fp16)
        except Exception as exc:
            raise ArtifactError(f"OpenVINO cannot convert {src.name}: {exc}".splitlines()[0]) from None
        staged_bin = staged_xml.with_suffix(".bin")
        manifest = {
            "format": MANIFEST_FORMAT,
            "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "openvino_version": ov.__version__.split("-")[0],
            "device": device,
            "compress_to_fp16": bool(compress_fp16),
            "precision_hints": {
                "weights": "f16" if compress_fp16 else "as in the ONNX",
                "inference_precision": "auto (read back when compiled: bf16 on CPUs with AVX512-BF16/AMX)",
                "inference_precision_here": _default_precision(ov, device),
            },
            "source_onnx": src.name,
            "source_onnx_sha256": sha256_file(src),
            "concats_rewritten": rewritten,
            "xml_sha256": sha256_file(staged_xml),
            "bin_sha256": sha256_file(staged_bin),
            "metadata": props,
        }
        staged_manifest = tmp / manifest_path(xml).name
        staged_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
        final_bin, final_manifest = xml.with_suffix(".bin"), manifest_path(xml)
        if final_manifest.exists():
            final_manifest.unlink()  # no moment where an old manifest vouches for a new .bin
        for staged, final in ((staged_bin, final_bin), (staged_xml, xml), (staged_manifest, final_manifest)):
            os.replace(staged, final)
    return ConvertResult(xml, xml.with_suffix(".bin"), manifest_path(xml), manifest)


def _default_precision(ov, device: str) -> str | None:
    try:
        return ov.Core().get_property(device.split(":")[0], "INFERENCE_PRECISION_HINT").get_type_name()
    except Exception:
        return None


__all__ = ["ConvertResult", "convert_openvino"]
