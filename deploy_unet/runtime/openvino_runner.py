"""OpenVINO runner: an ``.onnx`` file (fp32, fp16, Q/DQ int8 of either placement) or an OpenVINO IR
(``.xml`` + ``.bin`` with its ``.openvino.json`` manifest, written by ``deploy-unet convert-openvino``).

What it computes in is read back from the compiled model, not assumed. OpenVINO's CPU plugin runs f32 models
in bf16 when nothing else is asked and the CPU has AVX512-BF16 (oneDNN's ``avx512_core_bf16``, which every AMX
CPU has too): ``Config::readProperties`` in ``src/plugins/intel_cpu/src/config.cpp`` sets
``inferencePrecision = bf16`` when ``INFERENCE_PRECISION_HINT`` is not set explicitly and
``EXECUTION_MODE_HINT`` is ``PERFORMANCE`` (the default). A hint the CPU cannot honour (``f16`` without
AVX512-FP16 / AVX2-VNNI-2) is dropped silently, so the hint is read back after compiling and that is what is
recorded. ``runner_precision`` then reports the looser of the file's precision and the one that ran
(fp32 < fp16 < bf16 < int8), so validate applies the gates of what really ran (``validate.DEFAULT_GATES``
has a bf16 row).

``precision``: ``auto`` (OpenVINO's default, recorded and gated: the fast path on bf16 CPUs), ``f32``
(exact; ``INFERENCE_PRECISION_HINT=f32``), ``bf16``, ``f16`` (where the CPU has it, else refused).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from deploy_unet.errors import ArtifactError, ConfigError, MissingDependencyError
from deploy_unet.metadata import ModelInfo, load_onnx, read_props
from deploy_unet.runtime.base import (
    MASK_OUTPUT,
    Runner,
    TensorSpec,
    argmax_mask,
    check_output_kind,
    contract_options,
)

OV_PRECISIONS = ("auto", "f32", "bf16", "f16")
# OpenVINO element type name -> the project's precision name
_OV_TO_PRECISION = {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "dynamic": "fp32", "undefined": "fp32"}
# Looser to the right: the gate of the loosest precision in play applies.
PRECISION_ORDER = ("fp32", "fp16", "bf16", "int8")
MANIFEST_SUFFIX = ".openvino.json"
MANIFEST_FORMAT = "deploy-unet-openvino-ir/1"
VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")
_OV_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "i64": "int64", "i32": "int32",
              "u8": "uint8", "i8": "int8", "f64": "float64"}


def import_openvino():
    try:
        import openvino
    except ImportError as exc:
        raise MissingDependencyError(
            f"the openvino backend needs OpenVINO ({exc}); install the extra: pip install 'deploy-unet[openvino]'"
        ) from None
    return openvino


def looser(a: str, b: str) -> str:
    """The looser of two precisions (``PRECISION_ORDER``); unknown names count as fp32."""
    rank = {p: i for i, p in enumerate(PRECISION_ORDER)}
    return a if rank.get(a, 0) >= rank.get(b, 0) else b


def manifest_path(xml: str | os.PathLike) -> Path:
    """``model.xml`` -> ``model.openvino.json``."""
    xml = Path(xml)
    return xml.with_name(xml.name[: -len(xml.suffix)] + MANIFEST_SUFFIX)


def read_manifest(xml: str | os.PathLike) -> dict | None:
    """The manifest beside an IR, checked against its ``.bin``; None when there is none."""
    from deploy_unet.fileio import sha256_file

    path = manifest_path(xml)
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is not a readable OpenVINO manifest ({exc}); convert again with "
                            "`deploy-unet convert-openvino`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ArtifactError(f"{path} is not a deploy-unet OpenVINO manifest (format {MANIFEST_FORMAT!r} expected); "
                            "convert again with `deploy-unet convert-openvino`")
    binary = Path(xml).with_suffix(".bin")
    want = manifest.get("bin_sha256")
    if want and binary.is_file() and sha256_file(binary) != want:
        raise ArtifactError(f"{binary} does not match its manifest {path.name} (sha256 differs): the IR was changed "
                            "after conversion; convert the ONNX again")
    return manifest


def check_device(core, device: str) -> str:
    """``CPU`` / ``GPU`` / ``GPU.1`` / ``NPU`` / ``AUTO[:...]``: a device OpenVINO sees here, else one line."""
    device = (device or "CPU").upper() if ":" not in (device or "") else device
    base = device.split(":")[0].split(".")[0].upper()
    available = list(core.available_devices)
    if base in VIRTUAL_DEVICES:
        return device
    if device not in available and base not in {d.split(".")[0] for d in available}:
        raise ConfigError(f"OpenVINO device {device!r} is not available here (available: {', '.join(available)}); "
                          "pass --ov-device with one of them, or AUTO")
    return device


class OpenVinoRunner(Runner):
    backend = "openvino"

    def __init__(
        self,
        path: str | os.PathLike,
        device: str = "CPU",
        precision: str = "auto",
        threads: int | None = None,
        pad: bool = False,
        pad_mode: str = "reflect",
        divisor: int | None = None,
        output: str = "logits",
    ):
        self.path = Path(path)
        self.output = check_output_kind(output)
        if precision not in OV_PRECISIONS:
            raise ConfigError(f"--ov-precision {precision!r} is not valid; choose one of: {', '.join(OV_PRECISIONS)}")
        self.ov_precision = precision
        self.device = device or "CPU"
        self.threads = threads
        self.manifest = None
        if self.path.suffix.lower() == ".xml":
            if not self.path.with_suffix(".bin").is_file():
                raise ArtifactError(f"OpenVINO IR {self.path} has no {self.path.with_suffix('.bin').name} beside it; "
                                    "copy both files, or convert again with `deploy-unet convert-openvino`")
            self.manifest = read_manifest(self.path)
            props = (self.manifest or {}).get("metadata") or {}
        else:
            props = read_props(load_onnx(self.path, load_weights=False))
        self.info = ModelInfo.from_props(props, source=str(path)) if "divisor" in props else None
        super().__init__(pad=pad, pad_mode=pad_mode, **contract_options(self.info, divisor))
        self.compiled = None
        self.request = None
        self.inference_precision = ""  # read back from the compiled model: f32 | bf16 | f16
        self.execution_devices: list[str] = []
        self.int8_convolutions = (0, 0)  # (convolutions running in u8/i8, convolutions) in the runtime model
        self.concats_rewritten = 0  # openvino/graph.py: shared-scale Q/DQ Concats folded (the file is unchanged)

    # -- what runs -------------------------------------------------------------------------------
    @property
    def file_precision(self) -> str:
        """The precision the artifact itself records (fp16 when an IR's weights were compressed to fp16)."""
        precision = getattr(self.info, "precision", None) or "fp32"
        if (self.manifest or {}).get("compress_to_fp16"):
            precision = looser(precision, "fp16")
        return precision

    @property
    def precision(self) -> str:
        """What this runner really computes in (for the gates): the looser of the file's precision and the
        inference precision OpenVINO reports; before activation, what was asked."""
        ran = _OV_TO_PRECISION.get(self.inference_precision or "", None)
        if ran is None:
            ran = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(self.ov_precision, "fp32")
        return looser(self.file_precision, ran)

    @property
    def mode(self) -> str:
        """For tables (``backend_label``): ``openvino bf16``, ``openvino int8+bf16``."""
        ran = _OV_TO_PRECISION.get(self.inference_precision or self.ov_precision, "fp32")
        file = self.file_precision
        if file == "int8":
            return f"int8+{ran}"
        return looser(file, ran)

    def _activate(self) -> None:
        ov = import_openvino()
        from deploy_unet.machine import cpu_info

        core = ov.Core()
        device = check_device(core, self.device)
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
        if device.split(".")[0] in ("CPU",):
            config["INFERENCE_NUM_THREADS"] = int(self.threads or cpu_info().usable_cpus)
        if self.ov_precision != "auto":
            config["INFERENCE_PRECISION_HINT"] = self.ov_precision
        model = self._read_model(core)
        try:
            self.compiled = core.compile_model(model, device, config)
        except Exception as exc:
            raise ArtifactError(f"OpenVINO cannot compile {self.path.name} for {device}: {exc}".splitlines()[0]) from None
        self.inference_precision = _read_precision(self.compiled)
        if self.ov_precision not in ("auto", self.inference_precision) and self.inference_precision:
            asked = self.ov_precision
            self.compiled = None
            raise ConfigError(f"--ov-precision {asked} is not supported by OpenVINO's {device} here (it compiled "
                              f"{self.inference_precision}); choose f32 or auto")
        try:
            self.execution_devices = list(self.compiled.get_property("EXECUTION_DEVICES"))
        except Exception:
            self.execution_devices = [device]
        self.int8_convolutions = _int8_convolutions(self.compiled)
        self.request = self.compiled.create_infer_request()

    def _read_model(self, core):
        """The IR as is; an ONNX with the lossless Concat/DequantizeLinear rewrite (``openvino/graph.py``) applied
        in memory when it has shared-scale Q/DQ Concats (the TensorRT placement's skip connections)."""
        path = self.path
        try:
            if path.suffix.lower() == ".onnx":
                import tempfile

                from deploy_unet.openvino.graph import fold_concat_dequantize

                model = load_onnx(path)
                self.concats_rewritten = fold_concat_dequantize(model)
                if self.concats_rewritten:
                    with tempfile.TemporaryDirectory(prefix="deploy-unet-ov-") as tmp:
                        rewritten = Path(tmp) / path.name
                        onnx_save(model, rewritten)
                        return core.read_model(os.fspath(rewritten))
            self.concats_rewritten = int((self.manifest or {}).get("concats_rewritten", 0))  # done at conversion
            return core.read_model(os.fspath(path))
        except ArtifactError:
            raise
        except Exception as exc:
            raise ArtifactError(f"OpenVINO cannot read {path}: {exc}".splitlines()[0]) from None

    def _deactivate(self) -> None:
        self.request = None
        self.compiled = None

    def describe_run(self) -> dict:
        """What ran, for reports and JSON."""
        return {"device": self.device, "execution_devices": self.execution_devices,
                "ov_precision": self.ov_precision, "inference_precision": self.inference_precision,
                "precision": self.precision, "int8_convolutions": list(self.int8_convolutions),
                "concats_rewritten": self.concats_rewritten}

    # -- protocol --------------------------------------------------------------------------------
    @property
    def input_spec(self) -> dict[str, TensorSpec]:
        compiled = self._compiled()
        specs = {}
        for port in compiled.inputs:
            shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
            dtype = _OV_DTYPES.get(port.get_element_type().get_type_name(), port.get_element_type().get_type_name())
            specs[port.get_any_name()] = TensorSpec(port.get_any_name(), dtype, shape)
        return specs

    @property
    def output_names(self) -> list[str]:
        if self.output == MASK_OUTPUT:
            return [MASK_OUTPUT]
        return self._model_output_names()

    def _model_output_names(self) -> list[str]:
        return [port.get_any_name() for port in self._compiled().outputs]

    def _compiled(self):
        if self.compiled is None:
            raise RuntimeError("OpenVinoRunner is not active; use it as a context manager")
        return self.compiled

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.request.infer(feeds)
        outputs = {port.get_any_name(): np.asarray(value) for port, value in results.items()}
        if self.output == MASK_OUTPUT:
            return {MASK_OUTPUT: argmax_mask(next(iter(outputs.values())))}
        return outputs


def onnx_save(model, path) -> None:
    import onnx

    onnx.save(model, os.fspath(path))


def _read_precision(compiled) -> str:
    try:
        return compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    except Exception:
        return ""  # a device without the property (AUTO on some versions): the ask stands


def _int8_convolutions(compiled) -> tuple[int, int]:
    """How many of the runtime model's convolutions run on u8/i8 inputs (0, 0 when it cannot be read)."""
    try:
        runtime = compiled.get_runtime_model()
    except Exception:
        return (0, 0)
    total = low = 0
    for op in runtime.get_ordered_ops():
        info = op.get_rt_info()
        layer = _rt_text(info, "layerType")
        if layer not in ("Convolution", "Deconvolution"):
            continue
        total += 1
        precision = _rt_text(info, "runtimePrecision").lower()
        if precision in ("u8", "i8"):
            low += 1
    return (low, total)


def _rt_text(info, key: str) -> str:
    try:
        return str(info[key].astype(str)) if key in info else ""
    except Exception:
        return ""
