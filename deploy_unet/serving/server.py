"""``deploy-unet serve``: any artifact the runners take, on a real Triton Inference Server (via PyTriton).

PyTriton starts the ``tritonserver`` binary it bundles (Triton 2.51, python backend only) and binds a
python model whose requests are forwarded to :class:`~deploy_unet.serving.handler.InferenceHandler` in this
process, where the project's own runner (torch, ONNX Runtime, TensorRT) runs them. So the model behind the
endpoint is exactly the one ``validate`` checked and ``bench`` timed.

Choices made for the user:
- bound to 127.0.0.1 unless ``host`` says otherwise; HTTP, gRPC and metrics ports checked free first;
- the libpython fix and the admin-endpoint token (``environment.py``);
- PyTriton's *local model store*: the model's config and proxy code are written into this run's workspace
  and Triton loads them from there. The alternative (PyTriton's default, a load request carrying the files)
  makes Triton copy them to ``/tmp/folderXXXXXX``, which it deletes only on a clean unload, so any exit past
  its timeout left a folder behind;
- Triton's exit timeout 5 s instead of 30 (it waits that long for idle keep-alive HTTP clients to hang up);
- the server's log goes to a file in the workspace (its tail is shown if the server fails to start).

Shutdown (``stop``, SIGINT, SIGTERM): PyTriton stops tritonserver (SIGINT, then SIGKILL after its wait),
its stub processes exit with it, and the workspace (model store, sockets, log) is removed. The server was
started with ``PR_SET_PDEATHSIG``, so even a SIGKILL of this process takes it down.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deploy_unet.errors import ArtifactError, ConfigError
from deploy_unet.runtime.base import MASK_OUTPUT, check_output_kind
from deploy_unet.serving.environment import (
    ACCESS_HEADER,
    ACCESS_TOKEN_ENV,
    PROTECTED_ENDPOINTS,
    access_token,
    require_serving_packages,
    server_environment,
)
from deploy_unet.serving.handler import IMAGE_INPUT, INPUT_KINDS, InferenceHandler, SizeLimit
from deploy_unet.serving.repository import DEFAULT_MAX_BATCH, model_name_for
from deploy_unet.timing import StageTimes

DEFAULT_MAX_SIZE = (2048, 2048)  # per-request H, W cap for models without a profile (memory, not a contract)
DEFAULT_QUEUE_DELAY_US = 100
EXIT_TIMEOUT_S = 5


@dataclass
class ServeOptions:
    artifact: str
    backend: str | None = None
    device: str = "auto"
    checkpoint: str | None = None
    threads: int | None = None
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    model_name: str | None = None
    max_batch: int | None = None
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    dynamic_batching: bool = True
    instances: int | None = None  # default: one per usable CPU (1 thread each) for a CPU runner, else 1
    input_kind: str = "tensor"  # "tensor" | "image"
    output: str = "logits"  # "logits" | "mask"
    max_size: tuple[int, int] | None = None  # default: an engine's profile, else DEFAULT_MAX_SIZE
    exit_timeout_s: int = EXIT_TIMEOUT_S
    log_file: str | None = None

    def check(self) -> None:
        check_output_kind(self.output)
        if self.input_kind not in INPUT_KINDS:
            raise ConfigError(f"--input {self.input_kind!r} is not valid; choose one of: {', '.join(INPUT_KINDS)}")
        if self.instances is not None and self.instances < 1:
            raise ConfigError(f"--instances {self.instances} must be at least 1")
        if self.max_batch is not None and self.max_batch < 1:
            raise ConfigError(f"--max-batch {self.max_batch} must be at least 1")
        if self.max_queue_delay_us < 0:
            raise ConfigError(f"--max-queue-delay-us {self.max_queue_delay_us} must be >= 0")
        ports = {"--http-port": self.http_port, "--grpc-port": self.grpc_port, "--metrics-port": self.metrics_port}
        for flag, port in ports.items():
            if not 1 <= port <= 65535:
                raise ConfigError(f"{flag} {port} is not a TCP port (1..65535)")
        if len(set(ports.values())) != len(ports):
            raise ConfigError(f"--http-port, --grpc-port and --metrics-port must differ (got {sorted(ports.values())})")
        if self.model_name is not None and not self.model_name.replace("_", "a").replace("-", "a").replace(".", "a").isalnum():
            raise ConfigError(f"--model-name {self.model_name!r} may hold only letters, digits, '.', '_' and '-'")


@dataclass
class ServedModel:
    """What is being served, for the ready line and for clients (names, dtypes, dims without batch)."""

    name: str
    backend: str
    input_name: str
    input_dtype: str
    input_dims: tuple[int, ...]
    output_name: str
    output_dtype: str
    output_dims: tuple[int, ...]
    max_batch_size: int
    size_rule: str
    instances: int = 1
    threads: int = 1
    stages: StageTimes = field(default_factory=StageTimes)


def check_port_free(host: str, port: int, flag: str) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"{flag} {port}: {host}:{port} cannot be bound ({exc.strerror}); "
                              f"stop what holds it or pass another {flag}") from None


class TritonService:
    """A running Triton server with one model; use as a context manager (``start``/``stop``)."""

    def __init__(self, options: ServeOptions, log: Callable[[str], None] | None = None):
        options.check()
        self.options = options
        self.log = log or (lambda message: None)
        self.access_token = access_token()
        self.model: ServedModel | None = None
        self.handlers: list[InferenceHandler] = []
        self._runners: list = []
        self._triton = None
        self._tmp: Path | None = None
        self.log_path: Path | None = None

    # -- endpoints -------------------------------------------------------------------------------------
    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.options.host in ("0.0.0.0", "") else ("[::1]" if self.options.host == "::" else self.options.host)

    @property
    def http_url(self) -> str:
        return f"{self._client_host}:{self.options.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.options.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.options.metrics_port}/metrics"

    @property
    def workspace(self) -> Path | None:
        return self._tmp

    # -- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> TritonService:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> TritonService:
        require_serving_packages()
        o = self.options
        for flag, port in (("--http-port", o.http_port), ("--grpc-port", o.grpc_port), ("--metrics-port", o.metrics_port)):
            check_port_free(o.host, port, flag)
        stages = StageTimes()
        try:
            with stages.stage("open runners"):
                self._open_handlers()
            with stages.stage("warm-up"):
                self._warm_up()
            with stages.stage("start Triton + load model"):
                self._start_triton()
        except BaseException:
            self.stop()
            raise
        self.model.stages = stages
        return self

    def stop(self) -> None:
        triton, self._triton = self._triton, None
        if triton is not None:
            with contextlib.suppress(Exception):
                triton.stop()
        for runner in self._runners:
            with contextlib.suppress(Exception):
                runner.deactivate()
        self._runners = []
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def is_alive(self) -> bool:
        return self._triton is not None and self._triton.is_alive()

    @property
    def server_pid(self) -> int | None:
        server = getattr(self._triton, "_triton_server", None)
        cmd = getattr(server, "_tritonserver_running_cmd", None)
        return getattr(cmd, "pid", None)

    # -- parts -------------------------------------------------------------------------------------------
    def _open_handlers(self) -> None:
        from deploy_unet.machine import cpu_info
        from deploy_unet.runtime import open_runner

        o = self.options
        path = Path(o.artifact)
        usable = cpu_info().usable_cpus
        instances = o.instances or (usable if runs_on_cpu(path, o.backend, o.device) else 1)
        threads = o.threads or max(1, usable // instances)
        runner_output = MASK_OUTPUT if o.output == MASK_OUTPUT else "logits"
        options = {"device": o.device, "threads": threads, "output": runner_output, "checkpoint": o.checkpoint}
        for _ in range(instances):
            runner = open_runner(path, backend=o.backend, **options)
            info = getattr(runner, "info", None)
            if o.input_kind == "image" and info is not None and not info.shape_contract.is_divisor_only:
                runner.enable_tiling()  # a valid-convolution net: any image size through overlap tiles
            runner.activate()
            self._runners.append(runner)
        first = self._runners[0]
        info = getattr(first, "info", None)
        if info is None:
            raise ArtifactError(f"{path.name} carries no deploy-unet metadata (divisor, channels, classes); "
                                "serve an artifact written by deploy-unet export / build-engine")
        (input_name,) = first.input_spec
        output_name = MASK_OUTPUT if o.output == MASK_OUTPUT else first.output_names[0]
        profile = _engine_profile(path)
        max_batch = self._max_batch(first, profile)
        limit = self._size_limit(profile)
        preprocessing = None
        if o.input_kind == "image":
            from deploy_unet.processing import Preprocessing

            fit = "tile" if first.tile else "pad"
            preprocessing = Preprocessing.from_model_info(info, fit=fit)
        self.handlers = [InferenceHandler(r, o.input_kind, output_name, limit, preprocessing, self.log)
                         for r in self._runners]

        classes = int(info.num_classes)
        volume = getattr(info, "spatial_dims", 2) == 3  # NCDHW in, NCDHW logits (or a DHW mask) out
        if volume and o.input_kind == "image":
            raise ConfigError(f"{path.name} is a volume net (NCDHW): --input image takes 2D images; serve it with "
                              "--input tensor and send normalized N x C x D x H x W float32 volumes")
        if volume:
            in_name, in_dtype, in_dims = input_name, "float32", (int(info.in_channels), -1, -1, -1)
            size_rule = f"D, H and W: {info.shape_contract.rule_text()}; {_limit_text(limit)}"
        elif o.input_kind == "image":
            in_name, in_dtype, in_dims = IMAGE_INPUT, "uint8", (-1, -1, -1)
            size_rule = f"any image size, C = 1, 3 or 4; {_limit_text(limit)}"
        else:
            in_name, in_dtype, in_dims = input_name, "float32", (int(info.in_channels), -1, -1)
            size_rule = f"H and W {info.shape_contract.rule()}" if not info.pad_in_graph else \
                f"any H, W from {info.divisor // 2 + 1} (the graph pads)"
            size_rule += f"; {_limit_text(limit)}"
        if o.output == MASK_OUTPUT:
            from deploy_unet.runtime.base import mask_dtype

            out_dtype, out_dims = mask_dtype(classes), (-1, -1)
        else:
            out_dtype, out_dims = "float32", (classes, -1, -1)
        if volume:
            out_dims = (*out_dims, -1)
        self.model = ServedModel(
            name=o.model_name or model_name_for(path), backend=_backend_label(first), input_name=in_name,
            input_dtype=in_dtype, input_dims=in_dims, output_name=output_name, output_dtype=out_dtype,
            output_dims=out_dims, max_batch_size=max_batch, size_rule=size_rule, instances=instances,
            threads=threads,
        )

    def _max_batch(self, runner, profile) -> int:
        o = self.options
        limit = profile.max[0] if profile is not None else getattr(runner, "max_batch", None)
        if limit is not None and o.max_batch is not None and o.max_batch > limit:
            raise ConfigError(f"--max-batch {o.max_batch} exceeds {Path(o.artifact).name}'s optimization profile "
                              f"(max batch {limit}); pass --max-batch {limit} or less, or rebuild the engine")
        return o.max_batch or limit or DEFAULT_MAX_BATCH

    def _size_limit(self, profile) -> SizeLimit:
        o = self.options
        if profile is not None:
            lo, hi = tuple(profile.min[-2:]), tuple(profile.max[-2:])
            if o.max_size is not None:
                hi = (min(hi[0], o.max_size[0]), min(hi[1], o.max_size[1]))
            depth = (int(profile.min[2]), int(profile.max[2])) if len(profile.min) == 5 else None
            return SizeLimit(lo, hi, "the engine's optimization profile", of_model_input=True, depth_range=depth)
        return SizeLimit((1, 1), tuple(o.max_size or DEFAULT_MAX_SIZE), "--max-size")

    def _warm_up(self) -> None:
        """One request per runner at the export size (or the smallest valid one), so the first client
        request does not pay for ORT's or TensorRT's lazy initialization."""
        h, w = self._warmup_hw()
        for handler in self.handlers:
            info = handler.runner.info
            if handler.input_kind == "image":
                handler._run(np.zeros((1, h, w, int(info.in_channels)), dtype=np.uint8))
            elif getattr(info, "spatial_dims", 2) == 3:
                shape = list(info.export_shape or [])
                depth = int(shape[2]) if len(shape) == 5 else info.shape_contract.axis_divisors[0]
                handler._run(np.zeros((1, int(info.in_channels), depth, h, w), dtype=np.float32))
            else:
                handler._run(np.zeros((1, int(info.in_channels), h, w), dtype=np.float32))
            handler.batches = 0

    def _warmup_hw(self) -> tuple[int, int]:
        info = self._runners[0].info
        shape = list(info.export_shape or [])
        hw = (int(shape[-2]), int(shape[-1])) if len(shape) >= 2 and all(isinstance(v, int) for v in shape[-2:]) else None
        if hw is None:
            smallest = info.shape_contract.smallest
            hw = (smallest, smallest)
        limit = self.handlers[0].limit
        if limit.max_hw is not None:
            hw = (min(hw[0], limit.max_hw[0]), min(hw[1], limit.max_hw[1]))
        return hw

    def _start_triton(self) -> None:
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig, TritonLifecyclePolicy, TritonSecurityConfig

        o, m = self.options, self.model
        # PyTriton logs every failed batch with its traceback; the handler already said it in one line.
        logging.getLogger("pytriton.proxy.inference").setLevel(logging.ERROR)
        self._tmp = Path(tempfile.mkdtemp(prefix="deploy-unet-serve-"))
        self.log_path = Path(o.log_file) if o.log_file else self._tmp / "tritonserver.log"
        config = TritonConfig(
            http_address=o.host, http_port=o.http_port, grpc_address=o.host, grpc_port=o.grpc_port,
            metrics_address=o.host, metrics_port=o.metrics_port, exit_timeout_secs=o.exit_timeout_s,
            log_verbose=0, log_file=self.log_path, allow_gpu_metrics=False,
        )
        batcher = DynamicBatcher(max_queue_delay_microseconds=o.max_queue_delay_us) if o.dynamic_batching else None
        model_config = ModelConfig(batching=True, max_batch_size=m.max_batch_size, batcher=batcher)
        callables = [handler.__call__ for handler in self.handlers]
        with server_environment():
            self._triton = Triton(
                config=config, workspace=self._tmp / "workspace",
                triton_lifecycle_policy=TritonLifecyclePolicy(launch_triton_on_startup=True, local_model_store=True),
                security_config=TritonSecurityConfig(access_token=self.access_token,
                                                     restricted_endpoints=list(PROTECTED_ENDPOINTS)),
            )
            self._triton.bind(
                model_name=m.name, infer_func=callables if len(callables) > 1 else callables[0],
                inputs=[Tensor(name=m.input_name, dtype=np.dtype(m.input_dtype), shape=m.input_dims)],
                outputs=[Tensor(name=m.output_name, dtype=np.dtype(m.output_dtype), shape=m.output_dims)],
                config=model_config,
            )
            try:
                self._triton.run()
            except Exception as exc:
                raise ArtifactError(f"Triton did not start: {exc}; {self.log_tail()}") from None
        if not self._triton.is_alive():
            raise ArtifactError(f"Triton exited during start-up; {self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines() if self.log_path else []
        except OSError:
            text = []
        errors = [line for line in text if line[:1] == "E"] or text
        return "server log: " + (" | ".join(errors[-lines:]) if errors else "(empty)")

    def ready_line(self) -> str:
        m = self.model
        dims = "x".join("?" if d < 0 else str(d) for d in m.input_dims)
        plural = "s" if m.instances > 1 else ""
        return (f"serving model '{m.name}' ({m.backend}, {m.instances} instance{plural} x {m.threads} thread"
                f"{'s' if m.threads > 1 else ''}) "
                f"on Triton: HTTP {self.http_url}, gRPC {self.grpc_url}, metrics {self.metrics_url}; "
                f"input '{m.input_name}' {m.input_dtype} Nx{dims} ({m.size_rule}), batch <= {m.max_batch_size}; "
                f"output '{m.output_name}' {m.output_dtype}; admin endpoints need header {ACCESS_HEADER} "
                f"(token: ${ACCESS_TOKEN_ENV}, else random); workspace {self._tmp}; Ctrl-C or SIGTERM stops it")


def runs_on_cpu(path: Path, backend: str | None, device: str) -> bool:
    """Whether the runner will compute on the CPU: ONNX Runtime's CPU provider, or torch on the CPU.

    There, under concurrent clients, N instances of 1 thread each (Triton runs them in parallel) beat 1
    instance of N threads: one instance runs one batch at a time, and independent requests keep every core
    busy (``benchmarks/serving.md``; a single client waits longer, ``--instances 1`` suits it). On a GPU one
    instance is the usual start.
    """
    from deploy_unet.runtime import BACKENDS_BY_SUFFIX

    chosen = backend or BACKENDS_BY_SUFFIX.get(path.suffix.lower(), ("",))[0]
    if chosen == "onnxruntime":
        return True
    if chosen == "torch":
        if device == "cpu":
            return True
        if device == "auto":
            import torch

            return not torch.cuda.is_available()
    return False


def _engine_profile(path: Path):
    if path.suffix.lower() not in (".engine", ".plan"):
        return None
    from deploy_unet.serving.artifact import read_artifact

    return read_artifact(path).profile


def _limit_text(limit: SizeLimit) -> str:
    if limit.max_hw is None:
        return "no size limit"
    if limit.min_hw == (1, 1):
        return f"up to {limit.max_hw[0]}x{limit.max_hw[1]} ({limit.why})"
    return f"{limit.min_hw[0]}x{limit.min_hw[1]} to {limit.max_hw[0]}x{limit.max_hw[1]} ({limit.why})"


def _backend_label(runner) -> str:
    from deploy_unet.runtime.base import backend_label

    return backend_label(runner)


def serve_until_signal(options: ServeOptions, on_ready=None, log: Callable[[str], None] | None = None,
                       poll_s: float = 0.5) -> int:
    """Start, call ``on_ready(service)``, serve until SIGINT or SIGTERM (or the server dies), stop.

    Returns the signal number that stopped it (0 when the server died by itself: an ArtifactError).
    """
    stop = threading.Event()
    started = threading.Event()
    received: list[int] = []

    def _on_signal(signum, _frame):
        received.append(signum)
        if not started.is_set():
            raise KeyboardInterrupt  # interrupt start-up; start() cleans up after itself
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    service = TritonService(options, log=log)
    try:
        service.start()
        started.set()
        if on_ready is not None:
            on_ready(service)
        while not stop.wait(poll_s):
            if not service.is_alive():
                raise ArtifactError(f"the Triton server exited unexpectedly; {service.log_tail()}")
        return received[-1] if received else 0
    finally:
        service.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (for tests and benchmarks; another process may take it after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until_ready(http_url: str, model: str, timeout_s: float = 60.0) -> None:
    """Poll Triton's readiness endpoint until the model answers (clients and tests use it)."""
    import tritonclient.http as http

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            with contextlib.closing(http.InferenceServerClient(http_url, connection_timeout=2, network_timeout=2)) as c:
                if c.is_server_ready() and c.is_model_ready(model):
                    return
        except Exception as exc:  # not listening yet
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"Triton at {http_url} did not report model {model!r} ready within {timeout_s:.0f} s ({last})")
