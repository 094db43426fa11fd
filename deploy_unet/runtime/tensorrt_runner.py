"""TensorRT runner: an engine from ``deploy-unet build-engine`` behind the Runner protocol.

Order matters here, because TensorRT fails badly when used wrongly:
1. the manifest beside the engine is read in ``__init__`` (it also gives divisor and channels for the
   base class's shape-contract checks), so a missing or foreign engine is refused without a GPU;
2. ``activate`` checks for a CUDA device, refuses a GPU the engine's library cannot run on (TensorRT-RTX:
   the compute capabilities in its manifest), imports the library the manifest names (TensorRT or
   TensorRT-RTX), and refuses an engine built for another version or GPU (unless built version-/hardware-
   compatible), all before deserializing.

Device memory comes from torch CUDA tensors (``data_ptr()``) and runs on a torch CUDA stream, so the
runner needs TensorRT plus a CUDA build of torch; pycuda is not used. Results come back into pinned host
memory (torch's caching host allocator, reused once the caller drops them); ``output="mask"`` returns the
argmax over classes computed on the device.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from deploy_unet.engine.device import import_engine_library, require_cuda_device
from deploy_unet.engine.manifest import check_compatible, check_library_gpu, manifest_path_for, read_manifest
from deploy_unet.errors import ArtifactError, ConfigError, MissingDependencyError, ShapeContractError
from deploy_unet.runtime.base import MASK_OUTPUT, Runner, TensorSpec, check_output_kind, mask_dtype, no_mark
from deploy_unet.runtime.host_buffers import PinnedStaging

# TensorRT DataType member name -> NumPy dtype name (names, not values: values differ across versions).
TRT_TO_NUMPY = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
    "BF16": "bfloat16",
}


def _enum_name(value) -> str:
    name = getattr(value, "name", None)
    return name if isinstance(name, str) else str(value).rsplit(".", 1)[-1]


def _import_torch_cuda():
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("the TensorRT runner needs torch with CUDA for device buffers; install a CUDA build of torch") from None
    if torch.version.cuda is None or not torch.cuda.is_available():
        raise MissingDependencyError(
            f"the TensorRT runner allocates device buffers with torch, but torch {torch.__version__} "
            + ("is a CPU-only build" if torch.version.cuda is None else "sees no CUDA device")
            + "; install a CUDA build, e.g. `pip install torch --index-url https://download.pytorch.org/whl/cu128`"
        )
    return torch


class TensorRTRunner(Runner):
    backend = "tensorrt"
    device_kind = "cuda"  # bench times its phases with CUDA events

    def __init__(
        self,
        engine_path: str | os.PathLike,
        pad: bool = False,
        pad_mode: str = "reflect",
        cuda_graph: bool = False,
        layer_profile: bool = False,
        device: int = 0,
        output: str = "logits",
    ):
        self.path = Path(engine_path)
        self.output = check_output_kind(output)
        if not self.path.is_file():
            raise ArtifactError(f"engine {self.path} does not exist; build it with `deploy-unet build-engine MODEL.onnx`")
        if cuda_graph and layer_profile:
            raise ConfigError("--cuda-graph and --layer-profile cannot be combined: a replayed graph reports no layer times")
        self.manifest = read_manifest(manifest_path_for(self.path))
        self.info = self.manifest.model_info()
        super().__init__(
            divisor=self.info.divisor,
            in_channels=self.info.in_channels,
            pad=pad,
            pad_mode=pad_mode,
            contract_reason=f"the divisor in {self.path.name}'s manifest",
            contract=self.info.shape_contract,
            pad_in_graph=self.info.pad_in_graph,
        )
        self.cuda_graph = cuda_graph
        self.layer_profile = layer_profile
        self.device = device
        self.warnings: list[str] = []
        self._layer_times: dict[str, list[float]] = defaultdict(list)
        self._reset()

    def _reset(self) -> None:
        self._trt = self._torch = self._runtime = self._engine = self._context = self._stream = None
        self._staging = None
        self._graphs: dict[tuple, tuple] = {}  # input shape -> (graph, static inputs, static outputs)

    # -- protocol --------------------------------------------------------------------------------
    @property
    def input_spec(self) -> dict[str, TensorSpec]:
        return {
            t["name"]: TensorSpec(
                t["name"],
                TRT_TO_NUMPY.get(t["dtype"], t["dtype"]),
                tuple(None if d < 0 else d for d in t["shape"]),
            )
            for t in self.manifest.inputs
        }

    @property
    def output_names(self) -> list[str]:
        if self.output == MASK_OUTPUT:
            return [MASK_OUTPUT]
        return [t["name"] for t in self.manifest.outputs]

    @property
    def max_batch(self) -> int | None:
        """The profile's largest batch (tiling runs at most this many tiles per call)."""
        maxima = [t["max"][0] for t in self.manifest.inputs if t.get("max")]
        return min(maxima) if maxima else None

    def _activate(self) -> None:
        gpu = require_cuda_device(self.device, self.manifest.library)  # before any TensorRT object exists
        check_library_gpu(self.manifest, gpu)  # before the library is even imported
        _, trt = import_engine_library(self.manifest.library)
        self.warnings = check_compatible(self.manifest, trt.__version__, gpu)
        for message in self.warnings:
            warnings.warn(message, stacklevel=3)
        torch = _import_torch_cuda()
        torch.cuda.set_device(self.device)
        self._trt, self._torch = trt, torch
        self._staging = PinnedStaging(torch)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if self.manifest.version_compatible:
            # A version-compatible plan embeds the lean runtime it runs with: host code TensorRT must trust.
            self._runtime.engine_host_code_allowed = True
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            self._reset()
            raise ArtifactError(
                f"{self.manifest.library_title} {trt.__version__} could not deserialize {self.path} (corrupt file, or built by another "
                "TensorRT/GPU despite its manifest); rebuild it with `deploy-unet build-engine`"
            )
        self._context = self._engine.create_execution_context()
        if self.layer_profile:
            self._context.profiler = self._make_profiler(trt)
        self._stream = torch.cuda.Stream(device=self.device)
        self._io = {}
        for index in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(index)
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            dtype = TRT_TO_NUMPY.get(_enum_name(self._engine.get_tensor_dtype(name)))
            if dtype is None:
                raise ArtifactError(f"engine tensor {name!r} has type {self._engine.get_tensor_dtype(name)}, unsupported here")
            self._io[name] = (is_input, dtype)

    def _deactivate(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()
        self._context = self._engine = self._runtime = None  # context before engine before runtime
        self._reset()

    def _make_profiler(self, trt):
        times = self._layer_times

        class _LayerTimer(trt.IProfiler):
            def __init__(self):
                trt.IProfiler.__init__(self)

            def report_layer_time(self, layer_name, ms):
                times[layer_name].append(ms)

        return _LayerTimer()

    def layer_times(self) -> dict[str, dict[str, float]]:
        """Per-layer milliseconds over the runs so far (``layer_profile=True``): median, mean, count."""
        return {
            name: {"median_ms": float(np.median(values)), "mean_ms": float(np.mean(values)), "count": len(values)}
            for name, values in self._layer_times.items()
        }

    def engine_layers_json(self) -> str:
        """TensorRT's own description of the engine's layers (names, tactics, precisions) as JSON."""
        inspector = self._engine.create_engine_inspector()
        return inspector.get_engine_information(self._trt.LayerInformationFormat.JSON)

    # -- inference -------------------------------------------------------------------------------
    def _check_profile(self, name: str, shape: tuple[int, ...]) -> None:
        entry = next(t for t in self.manifest.inputs if t["name"] == name)
        lo, hi = entry.get("min"), entry.get("max")
        if lo is None or hi is None:
            return
        if any(not a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
            raise ShapeContractError(
                f"input {name!r} shape {'x'.join(map(str, shape))} is outside the engine's profile "
                f"{'x'.join(map(str, lo))} .. {'x'.join(map(str, hi))}; rebuild with --min-shape/--max-shape "
                "covering it"
            )

    def _torch_dtype(self, numpy_dtype: str):
        return getattr(self._torch, numpy_dtype)

    def _bind(self, inputs: dict[str, np.ndarray]):
        """Device tensors for this call's shapes, addresses set on the context."""
        torch, context = self._torch, self._context
        device_inputs, device_outputs = {}, {}
        for name, array in inputs.items():
            self._check_profile(name, array.shape)
            dtype = self._torch_dtype(self._io[name][1])
            device_inputs[name] = self._staging.stage(array).to(device=f"cuda:{self.device}", dtype=dtype,
                                                                non_blocking=True)
            context.set_input_shape(name, tuple(array.shape))
        for name, (is_input, dtype) in self._io.items():
            if is_input:
                continue
            shape = tuple(context.get_tensor_shape(name))
            device_outputs[name] = torch.empty(shape, dtype=self._torch_dtype(dtype), device=f"cuda:{self.device}")
        for name, tensor in {**device_inputs, **device_outputs}.items():
            context.set_tensor_address(name, tensor.data_ptr())
        return device_inputs, device_outputs

    def _execute(self, stream) -> None:
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise ArtifactError("TensorRT execute_async_v3 failed; see the TensorRT log above")

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.infer_phased(feeds)

    def infer_phased(self, feeds: dict[str, np.ndarray], mark=None) -> dict[str, np.ndarray]:
        """One inference, ``mark(phase)`` called on the runner's stream as host-to-device, compute (the enqueue,
        or the graph replay) and device-to-host end, so bench's CUDA events time them as trtexec reports them.
        Feeds must already satisfy the contract (``infer`` checks)."""
        mark = mark or no_mark
        torch = self._torch
        inputs_on_device = None  # kept alive until the stream is done with them
        with torch.cuda.stream(self._stream):
            if self.cuda_graph:
                outputs = self._replay(feeds, mark)
            else:
                inputs_on_device, outputs = self._bind(feeds)
                mark("h2d")
                self._execute(self._stream)
            mark("compute")
            host = self._to_host(outputs)
            mark("d2h")
        self._stream.synchronize()
        del inputs_on_device
        return {name: self._to_numpy(tensor) for name, tensor in host.items()}

    def _to_host(self, outputs: dict) -> dict:
        """Queue the copies of this call's results (or their argmax mask) into pinned host memory."""
        torch = self._torch
        if self.output == MASK_OUTPUT:
            logits = outputs[self.manifest.outputs[0]["name"]]
            outputs = {MASK_OUTPUT: logits.argmax(1).to(getattr(torch, mask_dtype(logits.shape[1])))}
        host = {}
        for name, tensor in outputs.items():
            host[name] = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host[name].copy_(tensor, non_blocking=True)
        return host

    def _replay(self, feeds: dict[str, np.ndarray], mark) -> dict:
        """Replay a CUDA graph captured for this input shape; a new shape re-captures. Runs on the runner's
        stream (the caller's context) and returns the graph's static outputs.

        Only the latest shape's graph is kept: a graph bakes in the context's shape-dependent state,
        so graphs captured for other shapes must not be replayed after the context changed.
        """
        torch = self._torch
        key = tuple((name, array.shape) for name, array in sorted(feeds.items()))
        if key not in self._graphs:
            self._graphs.clear()
            static_in, static_out = self._bind(feeds)
            # One plain enqueue first: TensorRT does shape-dependent setup that must not be captured.
            self._execute(self._stream)
            self._stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream, capture_error_mode="thread_local"):
                self._execute(self._stream)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        for name, array in feeds.items():
            static_in[name].copy_(self._staging.stage(array), non_blocking=True)
        mark("h2d")
        graph.replay()
        return static_out

    @property
    def mode(self) -> str:
        """How the engine runs, for labels."""
        return "cuda-graph" if self.cuda_graph else ""

    def _to_numpy(self, tensor) -> np.ndarray:
        if tensor.dtype == self._torch.bfloat16:
            tensor = tensor.float()
        return tensor.numpy()
