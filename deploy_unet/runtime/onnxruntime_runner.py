"""ONNX Runtime runner (CPU by default; CUDA / TensorRT execution providers when installed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from deploy_unet.errors import ArtifactError, MissingDependencyError
from deploy_unet.metadata import ModelInfo, load_onnx, read_props
from deploy_unet.runtime import wait_policy
from deploy_unet.runtime.base import (
    MASK_OUTPUT,
    Runner,
    TensorSpec,
    argmax_mask,
    check_output_kind,
    contract_options,
)

_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
}


def _graph_spatial_dims(model) -> int | None:
    """A file without deploy-unet metadata: its first input's rank minus N and C (5-D input: 3), else None."""
    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        rank = len(value.type.tensor_type.shape.dim)
        return rank - 2 if rank in (4, 5) else None
    return None


def _described(model, path, why: list[str] | None = None) -> ModelInfo | None:
    """A file exported elsewhere: what describe.py reads and finds (None where it cannot tell; an NHWC input
    is refused in one line)."""
    from deploy_unet.describe import LayoutError, read_model_info

    try:
        return read_model_info(model, source=os.fspath(path))
    except LayoutError:
        raise
    except ArtifactError as exc:
        if why is not None:
            why.append(str(exc))
        return None


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike,
        providers: list[str] | None = None,
        threads: int | None = None,
        pad: bool = False,
        pad_mode: str = "reflect",
        divisor: int | None = None,
        disabled_optimizers: list[str] | None = None,
        output: str = "logits",
        spinning: bool | None = None,
    ):
        self.path = Path(path)
        self.output = check_output_kind(output)
        model = load_onnx(self.path, load_weights=False)
        props = read_props(model)
        self.undescribed: list[str] = []  # why a file without deploy-unet metadata could not be described
        self.info = ModelInfo.from_props(props, source=str(path)) if "divisor" in props else \
            _described(model, path, self.undescribed)
        super().__init__(
            pad=pad,
            pad_mode=pad_mode,
            spatial_dims=self.info.spatial_dims if self.info else _graph_spatial_dims(model),
            **contract_options(self.info, divisor),
        )
        self.providers = providers or ["CPUExecutionProvider"]
        self.threads = threads
        self.disabled_optimizers = disabled_optimizers or []
        # Idle workers spinning steal the cores of the backend timed or validated next (runtime/wait_policy.py);
        # None: follow the process's policy.
        self.spinning = spinning
        self.session = None

    def _activate(self) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise MissingDependencyError(
                f"ONNX Runtime execution provider(s) {', '.join(missing)} are not available "
                f"(available: {', '.join(available)}); install onnxruntime-gpu for CUDA/TensorRT providers"
            )
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        spin = wait_policy.ort_spinning() if self.spinning is None else self.spinning
        for key in wait_policy.ORT_SPIN_KEYS:
            options.add_session_config_entry(key, "1" if spin else "0")
        kwargs = {"disabled_optimizers": self.disabled_optimizers} if self.disabled_optimizers else {}
        try:
            self.session = ort.InferenceSession(
                os.fspath(self.path), sess_options=options, providers=self.providers, **kwargs
            )
        except Exception as exc:
            raise ArtifactError(f"ONNX Runtime cannot load {self.path}: {exc}".splitlines()[0]) from None

    def _deactivate(self) -> None:
        self.session = None

    @property
    def input_spec(self) -> dict[str, TensorSpec]:
        session = self._session()
        return {
            i.name: TensorSpec(i.name, _ORT_DTYPES.get(i.type, i.type), tuple(i.shape)) for i in session.get_inputs()
        }

    @property
    def output_names(self) -> list[str]:
        if self.output == MASK_OUTPUT:
            return [MASK_OUTPUT]
        return self._model_output_names()

    def _model_output_names(self) -> list[str]:
        return [o.name for o in self._session().get_outputs()]

    def _session(self):
        if self.session is None:
            raise RuntimeError("OnnxRuntimeRunner is not active; use it as a context manager")
        return self.session

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self._model_output_names()
        outputs = self.session.run(names, feeds)
        if self.output == MASK_OUTPUT:  # on the host: ORT's CPU output is already here
            return {MASK_OUTPUT: argmax_mask(outputs[0])}
        return dict(zip(names, outputs))
