"""Latency harness over any Runner: warmup, timed iterations, percentiles, throughput, peak memory.

Per configuration (artifact, backend, batch, size) we record the first call separately (it includes
lazy allocation and kernel selection), then ``warmup`` untimed calls, then ``iters`` timed calls (or
as many as fit in ``duration`` seconds). On CUDA runners that expose ``infer_phased``, CUDA events time
host-to-device copy, compute and device-to-host copy separately, as trtexec reports them.

Clocks are injectable (``clock`` for wall time, ``phase_clock`` for phases), so the statistics are
tested on a fake runner with known delays and no GPU.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import os
import platform
import resource
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from deploy_unet.errors import ConfigError
from deploy_unet.machine import machine_info
from deploy_unet.runtime.base import Runner, backend_label, runner_precision
from deploy_unet.shapes import check_size_pad_in_graph, validate_shape

PHASES = ("h2d", "compute", "d2h")
PERCENTILES = (50, 90, 95, 99)


@dataclass
class LatencyStats:
    mean: float
    median: float
    p90: float
    p95: float
    p99: float
    min: float
    max: float
    std: float

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> LatencyStats:
        a = np.asarray(samples_ms, dtype=np.float64)
        if a.size == 0:
            raise ConfigError("no timed iterations; pass --iters >= 1 or a longer --duration")
        p50, p90, p95, p99 = np.percentile(a, PERCENTILES)
        return cls(float(a.mean()), float(p50), float(p90), float(p95), float(p99),
                   float(a.min()), float(a.max()), float(a.std()))


@dataclass
class BenchResult:
    """One configuration's timings (milliseconds) and memory (MiB)."""

    label: str
    artifact: str
    backend: str
    device: str
    precision: str
    batch: int
    height: int
    width: int
    warmup: int
    iters: int
    first_run_ms: float
    latency_ms: LatencyStats
    throughput_ips: float  # images per second at the mean latency
    peak_memory_mib: float | None
    memory_kind: str  # "rss_peak_delta" (CPU) or "cuda_max_allocated"
    phases_ms: dict[str, LatencyStats] | None = None  # h2d / compute / d2h where measured
    samples_ms: list[float] = field(default_factory=list)
    speedup_vs_first: float = 1.0  # baseline median / this median, same net, batch and size
    arch: str = ""  # from the artifact's metadata; ratios compare like with like
    wall_seconds: float = 0.0  # what measuring this entry cost (warmup + timed iterations), for stage reports
    output: str = "logits"  # what came back to the host: "logits" or the device-side argmax "mask"
    tile_size: str = ""  # "HxW" of the tiles when timed with overlap-tile inference (--tile)

    @property
    def size(self) -> str:
        return f"{self.height}x{self.width}"


@dataclass
class BenchReport:
    results: list[BenchResult]
    machine: dict[str, str]
    created: str

    def to_dict(self, include_samples: bool = True) -> dict[str, Any]:
        data = asdict(self)
        if not include_samples:
            for r in data["results"]:
                r.pop("samples_ms", None)
        return data


# -- clocks ------------------------------------------------------------------------------------------
class WallPhaseClock:
    """Phase timing with a host clock (used when phases are asked for without CUDA, and in tests)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self._marks: list[tuple[str, float]] = []

    def start(self) -> None:
        self._marks = [("start", self.clock())]

    def mark(self, phase: str) -> None:
        self._marks.append((phase, self.clock()))

    def finish(self) -> dict[str, float]:
        return {name: (t - prev) * 1e3 for (_, prev), (name, t) in itertools.pairwise(self._marks)}


class CudaEventPhaseClock:
    """CUDA events recorded on the current stream at each phase boundary (device time, not host)."""

    def __init__(self):
        import torch

        self._torch = torch
        self._events: list[tuple[str, Any]] = []

    def _event(self):
        event = self._torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self) -> None:
        self._events = [("start", self._event())]

    def mark(self, phase: str) -> None:
        self._events.append((phase, self._event()))

    def finish(self) -> dict[str, float]:
        self._events[-1][1].synchronize()
        return {name: prev.elapsed_time(ev) for (_, prev), (name, ev) in itertools.pairwise(self._events)}


def default_phase_clock(runner: Runner):
    """CUDA events for runners on a CUDA device that can split their phases; None otherwise."""
    if getattr(runner, "device_kind", "cpu") == "cuda" and hasattr(runner, "infer_phased"):
        return CudaEventPhaseClock()
    return None


# -- memory ------------------------------------------------------------------------------------------
class _PeakMemory:
    """Peak memory during a block: CUDA max-allocated for torch-on-CUDA, else the process RSS high-water
    mark above its level at the start (Linux lets us reset the mark via /proc/self/clear_refs)."""

    def __init__(self, runner: Runner):
        # torch's allocator sees all of a torch runner's device memory, but not TensorRT's own activations
        self.cuda = getattr(runner, "device_kind", "cpu") == "cuda" and runner.backend == "torch"
        self.kind = "cuda_max_allocated" if self.cuda else "rss_peak_delta"
        self.value_mib: float | None = None

    def __enter__(self) -> _PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._reset_hwm()
            self._base = _rss_kib("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.value_mib = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        else:
            peak = _rss_kib("VmHWM")
            if peak is not None and self._base is not None:
                self.value_mib = max(peak - self._base, 0) / 1024

    @staticmethod
    def _reset_hwm() -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass  # not Linux, or not allowed: VmHWM then is the lifetime peak (an upper bound)


def _rss_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    if field_name == "VmHWM":  # portable fallback: lifetime peak (KiB on Linux, bytes on macOS)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if platform.system() == "Darwin" else peak
    return None


# -- the harness -------------------------------------------------------------------------------------
def bench_runner(
    runner: Runner,
    *,
    batch: int = 1,
    height: int = 256,
    width: int = 256,
    warmup: int = 10,
    iters: int | None = 50,
    duration: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
    phase_clock: Callable[[Runner], Any] | None = default_phase_clock,
    label: str | None = None,
    artifact: str = "",
    on_iter: Callable[[int, int | None], None] | None = None,
    seed: int = 0,
    keep_samples: bool = True,
) -> BenchResult:
    """Time ``runner`` (activated by the caller or here) on one (batch, height, width) configuration.

    Exactly one of ``iters`` / ``duration`` (seconds) bounds the timed loop; ``on_iter(i, total)``
    drives a progress bar (``total`` is None for duration runs).
    """
    if batch < 1 or warmup < 0:
        raise ConfigError(f"batch {batch} / warmup {warmup} out of range; need batch >= 1 and warmup >= 0")
    if (iters is None) == (duration is None):
        raise ConfigError("give exactly one of iters or duration (--iters N | --duration SECONDS)")
    if iters is not None and iters < 1:
        raise ConfigError(f"iters {iters} must be >= 1")
    if duration is not None and duration <= 0:
        raise ConfigError(f"duration {duration} must be > 0 seconds")
    contract = getattr(runner, "contract", None)
    if getattr(runner, "tile", False):
        pass  # tiling takes any size
    elif getattr(runner, "pad_in_graph", False):  # export --pad-in-graph: any size above the minimum
        check_size_pad_in_graph((height, width), runner.divisor)
    elif contract is not None and not contract.is_divisor_only:
        contract.validate((height, width), "or pass --tile")
    elif not runner.pad:
        validate_shape((height, width), runner.divisor, runner.contract_reason, "or pass --pad")
    owned = not runner.is_active
    runner.activate()
    try:
        (name,) = runner.input_spec
        channels = runner.in_channels or _spec_channels(runner, name)
        # Latency does not depend on pixel values; a fixed seed keeps runs comparable.
        x = np.random.default_rng(seed).standard_normal((batch, channels, height, width), dtype=np.float32)
        feeds = {name: x}
        # Phases bypass infer()'s padding and tiling, so they are timed only on contract-sized inputs.
        tiled = getattr(runner, "tile", False)
        phases = phase_clock(runner) if phase_clock and not runner.pad and not tiled else None

        with _PeakMemory(runner) as memory:
            t0 = clock()
            runner.infer(feeds)
            first_ms = (clock() - t0) * 1e3
            for _ in range(warmup):
                runner.infer(feeds)
            samples: list[float] = []
            phase_samples: dict[str, list[float]] = {}
            deadline = clock() + duration if duration is not None else None
            i = 0
            while (i < iters) if iters is not None else (clock() < deadline or i == 0):
                if phases is not None:
                    checked = runner._checked_feeds(feeds)  # contract checks stay outside the phases
                    t0 = clock()
                    phases.start()
                    runner.infer_phased(checked, phases.mark)
                    elapsed = clock() - t0
                    for phase, ms in phases.finish().items():
                        phase_samples.setdefault(phase, []).append(ms)
                else:
                    t0 = clock()
                    runner.infer(feeds)
                    elapsed = clock() - t0
                samples.append(elapsed * 1e3)
                i += 1
                if on_iter:
                    on_iter(i, iters)
    finally:
        if owned:
            runner.deactivate()

    stats = LatencyStats.of(samples)
    info = getattr(runner, "info", None)
    return BenchResult(
        label=label or _label(runner, artifact),
        artifact=artifact or _source(runner),
        backend=runner.backend,
        device=str(getattr(runner, "device", "cpu")),
        precision=runner_precision(runner),
        batch=batch,
        height=height,
        width=width,
        warmup=warmup,
        iters=len(samples),
        first_run_ms=first_ms,
        latency_ms=stats,
        throughput_ips=batch * 1e3 / stats.mean if stats.mean > 0 else float("inf"),
        peak_memory_mib=memory.value_mib,
        memory_kind=memory.kind,
        phases_ms={p: LatencyStats.of(v) for p, v in phase_samples.items()} or None,
        samples_ms=samples if keep_samples else [],
        arch=getattr(info, "arch", None) or "",
        output=getattr(runner, "output", "logits"),
        tile_size="x".join(map(str, runner.tile_size)) if getattr(runner, "tile", False) else "",
    )


def add_ratios(results: list[BenchResult]) -> list[BenchResult]:
    """speedup_vs_first = the first entry's median (same net, batch and size) / this median."""
    baselines: dict[tuple[str, int, int, int], float] = {}
    for r in results:
        baselines.setdefault((r.arch, r.batch, r.height, r.width), r.latency_ms.median)
    for r in results:
        base = baselines[(r.arch, r.batch, r.height, r.width)]
        r.speedup_vs_first = base / r.latency_ms.median if r.latency_ms.median > 0 else float("inf")
    return results


def bench(
    artifacts: Sequence[str | os.PathLike],
    *,
    backend: str | None = None,
    batches: Iterable[int] = (1,),
    sizes: Iterable[tuple[int, int]] = ((256, 256),),
    warmup: int = 10,
    iters: int | None = 50,
    duration: float | None = None,
    threads: int | None = None,
    pad: bool = False,
    runner_options: dict[str, Any] | None = None,
    progress: bool = True,
    open_runner: Callable[..., Runner] | None = None,
    tile: bool = False,
    tile_size: int | tuple[int, int] | None = None,
) -> BenchReport:
    """Benchmark every artifact x batch x size (one runner per artifact) with a rich progress bar.

    ``tile``: time overlap-tile inference of whole images of each size (all tiles, stitching included)."""
    if open_runner is None:
        from deploy_unet.runtime import open_runner
    batches, sizes = list(batches), list(sizes)
    if iters is None and duration is None:
        iters = 50
    options = dict(runner_options or {})
    if threads:
        options["threads"] = threads
    configs = len(artifacts) * len(batches) * len(sizes)
    results: list[BenchResult] = []
    with _progress(progress) as bar:
        task = bar.add_task("bench", total=configs * (iters or 1)) if bar else None
        for artifact in artifacts:
            tiling = {"tile": True, "tile_size": tile_size} if tile else {}
            runner = open_runner(artifact, backend, pad=pad, **tiling, **options)
            with runner:
                for b in batches:
                    for h, w in sizes:
                        label = _label(runner, str(artifact))
                        if bar:
                            bar.update(task, description=f"{label} b{b} {h}x{w}")

                        def step(i: int, total: int | None) -> None:
                            if bar and total:
                                bar.advance(task)

                        started = time.perf_counter()
                        result = bench_runner(
                            runner, batch=b, height=h, width=w, warmup=warmup, iters=iters,
                            duration=duration, label=label, artifact=str(artifact), on_iter=step,
                        )
                        result.wall_seconds = time.perf_counter() - started
                        if bar and not iters:
                            bar.advance(task)
                        results.append(result)
    return BenchReport(add_ratios(results), machine_info(threads), _dt.datetime.now().astimezone().isoformat(timespec="seconds"))


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"256x256,512x384"`` -> ``[(256, 256), (512, 384)]`` (H x W); ``"256"`` means square."""
    sizes = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        h, sep, w = part.lower().partition("x")
        try:
            size = (int(h), int(w) if sep else int(h))
        except ValueError:
            raise ConfigError(f"size {part!r} is not HxW; e.g. --size 256x256,512x512") from None
        if min(size) < 1:
            raise ConfigError(f"size {part!r} must be positive; e.g. --size 256x256")
        sizes.append(size)
    if not sizes:
        raise ConfigError("no sizes given; e.g. --size 256x256,512x512")
    return sizes


def parse_batches(text: str) -> list[int]:
    """``"1,4,8"`` -> ``[1, 4, 8]``."""
    try:
        batches = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"batch list {text!r} is not comma-separated integers; e.g. --batch 1,4,8") from None
    if not batches or min(batches) < 1:
        raise ConfigError(f"batch list {text!r} needs integers >= 1; e.g. --batch 1,4,8")
    return batches


def _progress(enabled: bool):
    import contextlib

    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=True)


def _spec_channels(runner: Runner, name: str) -> int:
    dim = runner.input_spec[name].shape[1] if len(runner.input_spec[name].shape) == 4 else None
    if not isinstance(dim, int):
        raise ConfigError(f"cannot tell the channel count of input {name!r}; export with deploy-unet metadata")
    return dim


def _source(runner: Runner) -> str:
    return str(getattr(runner, "path", None) or getattr(runner, "source", None) or type(runner).__name__)


def _label(runner: Runner, artifact: str = "") -> str:
    name = os.path.basename(artifact or _source(runner))
    tiles = f" tiles {runner.tile_size[0]}x{runner.tile_size[1]}" if getattr(runner, "tile", False) else ""
    return f"{name} [{backend_label(runner)}]{tiles}"


# ``deploy_unet.bench(artifacts, ...)`` is this stage's entry point.
from deploy_unet import _make_callable  # noqa: E402

_make_callable(__name__, bench)
