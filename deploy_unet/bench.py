"""Latency harness over any Runner: warmup, timed iterations in interleaved rounds, percentiles, memory.

Per configuration (artifact, backend, batch, size) we record the first call separately (it includes
lazy allocation and kernel selection), then ``warmup`` untimed calls, then ``iters`` timed calls (or
as many as fit in ``duration`` seconds). On CUDA runners that expose ``infer_phased``, CUDA events time
host-to-device copy, compute and device-to-host copy separately, as trtexec reports them.

Configurations compared with each other (same batch and size) are timed in interleaved rounds: every
one is warmed up, then each round gives each a turn of a few timed calls (A B C, A B C, ...). A burst of
a slower machine then lands on every configuration of that round instead of on whichever one happened to
be timed, and the speedup against the first configuration is computed round by round: its median and its
min-max over the rounds are what a report shows. Where the rounds disagree on which of two configurations
is faster (their per-round ratio's min-max includes 1), reports say they are not separable on this run
(``not_separable_from``) instead of ranking them.

Clocks are injectable (``clock`` for wall time, ``phase_clock`` for phases), so the statistics and the
order of the timed calls are tested on fake runners with known delays and no GPU.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import itertools
import math
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
    rounds: int = 1  # turns this configuration was timed in, interleaved with the others of its batch and size
    round_iters: list[int] = field(default_factory=list)  # timed calls per round (samples_ms in that order)
    round_medians_ms: list[float] = field(default_factory=list)
    speedup_rounds: list[float] = field(default_factory=list)  # per round: the first entry's round median / this one's
    not_separable_from: list[str] = field(default_factory=list)  # labels some rounds found faster and others slower
    depth: int = 0  # volumes (NCDHW inputs): the depth; 0 for images

    @property
    def size(self) -> str:
        return f"{self.depth}x{self.height}x{self.width}" if self.depth else f"{self.height}x{self.width}"

    @property
    def round_range_ms(self) -> tuple[float, float] | None:
        """Min and max of the per-round medians; None with fewer than two rounds (no range to read)."""
        return (min(self.round_medians_ms), max(self.round_medians_ms)) if len(self.round_medians_ms) > 1 else None

    @property
    def speedup_range(self) -> tuple[float, float] | None:
        return (min(self.speedup_rounds), max(self.speedup_rounds)) if len(self.speedup_rounds) > 1 else None


@dataclass
class BenchReport:
    results: list[BenchResult]
    machine: dict[str, str]
    created: str
    # How it was timed: rounds, iterations per round, the idle threads' wait policy (runtime/wait_policy.py).
    schedule: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, include_samples: bool = True) -> dict[str, Any]:
        data = asdict(self)
        for r, result in zip(data["results"], self.results):
            r["round_range_ms"] = result.round_range_ms
            r["speedup_range"] = result.speedup_range
            if not include_samples:
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
DEFAULT_ROUNDS = 10


class ConfigTimer:
    """One configuration (an active runner at one batch and size): its first call and warmup, then turns
    of timed calls, each turn's samples kept apart so a report can show the spread between rounds."""

    def __init__(
        self,
        runner: Runner,
        *,
        batch: int = 1,
        height: int = 256,
        width: int = 256,
        clock: Callable[[], float] = time.perf_counter,
        phase_clock: Callable[[Runner], Any] | None = default_phase_clock,
        label: str | None = None,
        artifact: str = "",
        seed: int = 0,
        depth: int = 0,
    ):
        if batch < 1:
            raise ConfigError(f"batch {batch} out of range; need batch >= 1")
        _check_size(runner, height, width, depth)
        self.runner, self.batch, self.height, self.width, self.clock = runner, batch, height, width, clock
        self.depth = depth  # volumes: NCDHW inputs
        self.label = label or _label(runner, artifact)
        self.artifact = artifact or _source(runner)
        (name,) = runner.input_spec
        channels = runner.in_channels or _spec_channels(runner, name)
        # Latency does not depend on pixel values; a fixed seed keeps runs comparable.
        spatial = (depth, height, width) if depth else (height, width)
        x = np.random.default_rng(seed).standard_normal((batch, channels, *spatial), dtype=np.float32)
        self.feeds = {name: x}
        # Phases bypass infer()'s padding and tiling, so they are timed only on contract-sized inputs.
        tiled = getattr(runner, "tile", False)
        self.phases = phase_clock(runner) if phase_clock and not runner.pad and not tiled else None
        self.warmup = 0
        self.first_ms = math.nan
        self.samples: list[float] = []
        self.round_iters: list[int] = []
        self.phase_samples: dict[str, list[float]] = {}
        self.memory_mib: float | None = None
        self.memory_kind = _PeakMemory(runner).kind
        self.seconds = 0.0  # what measuring this configuration cost: first call, warmup and its turns

    def warm(self, warmup: int) -> None:
        """The first call (timed on its own) and ``warmup`` untimed calls."""
        if warmup < 0:
            raise ConfigError(f"warmup {warmup} out of range; need warmup >= 0")
        self.warmup = warmup
        with self._block():
            t0 = self.clock()
            self.runner.infer(self.feeds)
            self.first_ms = (self.clock() - t0) * 1e3
            for _ in range(warmup):
                self.runner.infer(self.feeds)

    def turn(self, iters: int | None = None, duration: float | None = None,
             on_iter: Callable[[int, int | None], None] | None = None, lead_in: int = 0) -> list[float]:
        """One round's timed calls: ``iters`` of them, or as many as fit in ``duration`` seconds (at least one),
        after ``lead_in`` untimed calls."""
        samples: list[float] = []
        with self._block():
            for _ in range(lead_in):
                self.runner.infer(self.feeds)
            deadline = self.clock() + duration if duration is not None else None
            while (len(samples) < iters) if iters is not None else (self.clock() < deadline or not samples):
                samples.append(self._timed_call())
                if on_iter:
                    on_iter(len(samples), iters)
        self.samples += samples
        self.round_iters.append(len(samples))
        return samples

    def _timed_call(self) -> float:
        runner, clock = self.runner, self.clock
        if self.phases is not None:
            checked = runner._checked_feeds(self.feeds)  # contract checks stay outside the phases
            t0 = clock()
            self.phases.start()
            runner.infer_phased(checked, self.phases.mark)
            elapsed = clock() - t0
            for phase, ms in self.phases.finish().items():
                self.phase_samples.setdefault(phase, []).append(ms)
        else:
            t0 = clock()
            runner.infer(self.feeds)
            elapsed = clock() - t0
        return elapsed * 1e3

    @contextlib.contextmanager
    def _block(self):
        """Peak memory of this configuration's own calls (the largest rise over its blocks) and their cost."""
        started = self.clock()
        with _PeakMemory(self.runner) as memory:
            yield
        self.seconds += self.clock() - started
        if memory.value_mib is not None:
            self.memory_mib = max(self.memory_mib or 0.0, memory.value_mib)

    def result(self, keep_samples: bool = True) -> BenchResult:
        runner = self.runner
        stats = LatencyStats.of(self.samples)
        info = getattr(runner, "info", None)
        medians, start = [], 0
        for n in self.round_iters:
            medians.append(float(np.median(self.samples[start:start + n])))
            start += n
        return BenchResult(
            label=self.label,
            artifact=self.artifact,
            backend=runner.backend,
            device=str(getattr(runner, "device", "cpu")),
            precision=runner_precision(runner),
            batch=self.batch,
            height=self.height,
            width=self.width,
            warmup=self.warmup,
            iters=len(self.samples),
            first_run_ms=self.first_ms,
            latency_ms=stats,
            throughput_ips=self.batch * 1e3 / stats.mean if stats.mean > 0 else float("inf"),
            peak_memory_mib=self.memory_mib,
            memory_kind=self.memory_kind,
            phases_ms={p: LatencyStats.of(v) for p, v in self.phase_samples.items()} or None,
            samples_ms=list(self.samples) if keep_samples else [],
            arch=getattr(info, "arch", None) or "",
            wall_seconds=self.seconds,
            output=getattr(runner, "output", "logits"),
            tile_size="x".join(map(str, runner.tile_size)) if getattr(runner, "tile", False) else "",
            rounds=len(self.round_iters),
            round_iters=list(self.round_iters),
            round_medians_ms=medians,
            depth=self.depth,
        )


def resolve_rounds(rounds: int | None, iters: int | None) -> int:
    """``rounds`` as asked (each configuration gets one turn per round), by default 10 or ``iters`` if fewer."""
    if rounds is None:
        return min(DEFAULT_ROUNDS, iters) if iters else DEFAULT_ROUNDS
    if rounds < 1:
        raise ConfigError(f"--rounds {rounds} must be >= 1 (1 times each configuration in one block)")
    if iters is not None and rounds > iters:
        raise ConfigError(f"--rounds {rounds} needs at least {rounds} timed iterations per configuration (one a "
                          f"round), got --iters {iters}; pass --iters {rounds} or more, or fewer --rounds")
    return rounds


def _check_counts(warmup: int, iters: int | None, duration: float | None) -> None:
    if warmup < 0:
        raise ConfigError(f"warmup {warmup} out of range; need warmup >= 0")
    if (iters is None) == (duration is None):
        raise ConfigError("give exactly one of iters or duration (--iters N | --duration SECONDS)")
    if iters is not None and iters < 1:
        raise ConfigError(f"iters {iters} must be >= 1")
    if duration is not None and duration <= 0:
        raise ConfigError(f"duration {duration} must be > 0 seconds")


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
    depth: int = 0,
) -> BenchResult:
    """Time ``runner`` (activated by the caller or here) alone on one (batch, height, width) configuration,
    in one block: a single round. ``bench_rounds`` interleaves several.

    Exactly one of ``iters`` / ``duration`` (seconds) bounds the timed loop; ``on_iter(i, total)``
    drives a progress bar (``total`` is None for duration runs).
    """
    if batch < 1 or warmup < 0:
        raise ConfigError(f"batch {batch} / warmup {warmup} out of range; need batch >= 1 and warmup >= 0")
    _check_counts(warmup, iters, duration)
    _check_size(runner, height, width, depth)  # before activation: a refused size loads nothing
    with _activated([runner]):
        timer = ConfigTimer(runner, batch=batch, height=height, width=width, clock=clock, phase_clock=phase_clock,
                            label=label, artifact=artifact, seed=seed, depth=depth)
        timer.warm(warmup)
        timer.turn(iters, duration, on_iter)
    return timer.result(keep_samples)


def bench_rounds(
    runners: Sequence[Runner],
    *,
    batch: int = 1,
    height: int = 256,
    width: int = 256,
    warmup: int = 10,
    iters: int | None = 50,
    duration: float | None = None,
    rounds: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
    phase_clock: Callable[[Runner], Any] | None = default_phase_clock,
    labels: Sequence[str | None] | None = None,
    artifacts: Sequence[str] | None = None,
    on_iter: Callable[[int, int | None], None] | None = None,
    on_turn: Callable[[int, int, ConfigTimer], None] | None = None,
    lead_in: int = 1,
    seed: int = 0,
    keep_samples: bool = True,
    depth: int = 0,
) -> list[BenchResult]:
    """Time ``runners`` against each other at one batch and size: all warmed up, then ``rounds`` rounds in
    which each runner gets one turn of ``iters / rounds`` timed calls (or ``duration / rounds`` seconds), in
    the order given. ``iters`` and ``duration`` are per configuration, over all rounds. Speedups are against
    the first runner, round by round (``add_ratios``). ``on_turn(round, rounds, timer)`` before each turn.

    Each turn starts with ``lead_in`` untimed calls: the first call after the other configurations' turns
    finds cold caches and sleeping threads (measured 10-40% slower than the next ones on a 2-core CPU), a cost
    of the interleaving that a configuration running on its own would not pay."""
    _check_counts(warmup, iters, duration)
    n = resolve_rounds(rounds, iters)
    for runner in runners:
        _check_size(runner, height, width, depth)
    per_round = [iters // n + (k < iters % n) for k in range(n)] if iters is not None else [None] * n
    labels = list(labels or [None] * len(runners))
    artifacts = list(artifacts or [""] * len(runners))
    with _activated(runners):
        timers = [ConfigTimer(r, batch=batch, height=height, width=width, clock=clock, phase_clock=phase_clock,
                              label=label, artifact=artifact, seed=seed, depth=depth)
                  for r, label, artifact in zip(runners, labels, artifacts)]
        for timer in timers:
            timer.warm(warmup)
        for k in range(n):
            for timer in timers:
                if on_turn:
                    on_turn(k, n, timer)
                timer.turn(per_round[k], duration / n if duration is not None else None, on_iter, lead_in)
    return add_ratios([t.result(keep_samples) for t in timers])


@contextlib.contextmanager
def _activated(runners: Sequence[Runner]):
    """Activate the runners the caller has not; deactivate only those on the way out."""
    with contextlib.ExitStack() as stack:
        for runner in runners:
            if not runner.is_active:
                runner.activate()
                stack.callback(runner.deactivate)
        yield


def _check_size(runner: Runner, height: int, width: int, depth: int = 0) -> None:
    contract = getattr(runner, "contract", None)
    dims = getattr(contract, "spatial_dims", 2)
    if bool(depth) != (dims == 3):
        given = f"{depth}x{height}x{width}" if depth else f"{height}x{width}"
        want = "volumes: give DxHxW, e.g. --size 32x64x64" if dims == 3 else "images: give HxW"
        raise ConfigError(f"size {given} does not fit {getattr(runner, 'backend', 'the model')}'s input; it takes {want}")
    if depth:
        if not runner.pad:
            validate_shape((depth, height, width), contract.divisors or runner.divisor,
                           runner.contract_reason or contract.reason, "or pass --pad", 3)
    elif getattr(runner, "tile", False):
        pass  # tiling takes any size
    elif getattr(runner, "pad_in_graph", False):  # export --pad-in-graph: any size above the minimum
        check_size_pad_in_graph((height, width), runner.divisor)
    elif contract is not None and not contract.is_divisor_only:
        contract.validate((height, width), "or pass --tile")
    elif not runner.pad:
        validate_shape((height, width), runner.divisor, runner.contract_reason, "or pass --pad")


def round_ratios(a: BenchResult, b: BenchResult) -> list[float]:
    """``a``'s round median over ``b``'s, round by round (empty unless both ran the same two or more rounds)."""
    ra, rb = a.round_medians_ms, b.round_medians_ms
    return [_ratio(x, y) for x, y in zip(ra, rb)] if len(ra) == len(rb) > 1 else []


def not_separable(a: BenchResult, b: BenchResult) -> bool:
    """Whether this run cannot rank ``a`` and ``b``: some rounds found one faster, others the other (their
    per-round ratio's min-max includes 1). Pairing by round is what takes the machine's own spells out: the
    unpaired test (do the ranges of per-round medians overlap?) called int8 vs fp32 not separable in 5 of 20
    runs on a loaded 2-core machine where every round had int8 faster (benchmarks/measurement.md); both
    called a file against itself not separable in every run. False when there are no rounds to compare."""
    ratios = round_ratios(a, b)
    return bool(ratios) and min(ratios) <= 1.0 <= max(ratios)


def add_ratios(results: list[BenchResult]) -> list[BenchResult]:
    """Per (net, batch, size), against its first entry: ``speedup_rounds`` (the first entry's round median
    over this one's, round by round, when both ran the same rounds), ``speedup_vs_first`` (their median, or
    the ratio of the overall medians), and ``not_separable_from`` (the entries ``not_separable`` from it)."""
    groups: dict[tuple[str, int, int, int, int], list[BenchResult]] = {}
    for r in results:
        groups.setdefault((r.arch, r.batch, r.height, r.width, r.depth), []).append(r)
    for members in groups.values():
        base = members[0]
        for r in members:
            if len(r.round_medians_ms) == len(base.round_medians_ms) > 0:
                r.speedup_rounds = [_ratio(b, m) for b, m in zip(base.round_medians_ms, r.round_medians_ms)]
                r.speedup_vs_first = float(np.median(r.speedup_rounds))
            else:
                r.speedup_rounds = []
                r.speedup_vs_first = _ratio(base.latency_ms.median, r.latency_ms.median)
            r.not_separable_from = [o.label for o in members if o is not r and not_separable(r, o)]
    return results


def _ratio(base: float, value: float) -> float:
    return base / value if value > 0 else float("inf")


def bench(
    artifacts: Sequence[str | os.PathLike],
    *,
    backend: str | None = None,
    batches: Iterable[int] = (1,),
    sizes: Iterable[tuple[int, int]] = ((256, 256),),
    warmup: int = 10,
    iters: int | None = 50,
    duration: float | None = None,
    rounds: int | None = None,
    threads: int | None = None,
    pad: bool = False,
    runner_options: dict[str, Any] | None = None,
    progress: bool = True,
    open_runner: Callable[..., Runner] | None = None,
    tile: bool = False,
    tile_size: int | tuple[int, int] | None = None,
) -> BenchReport:
    """Benchmark every artifact x batch x size with a rich progress bar: one runner per artifact, all open
    together; per batch and size the artifacts are timed in interleaved rounds (``bench_rounds``).
    ``rounds=1`` times each configuration in one block, one after the other.

    ``tile``: time overlap-tile inference of whole images of each size (all tiles, stitching included)."""
    from deploy_unet.runtime import wait_policy

    if open_runner is None:
        from deploy_unet.runtime import open_runner
    batches, sizes = list(batches), list(sizes)
    if iters is None and duration is None:
        iters = 50
    _check_counts(warmup, iters, duration)
    n_rounds = resolve_rounds(rounds, iters)
    options = dict(runner_options or {})
    if threads:
        options["threads"] = threads
    groups = [(b, size) for b in batches for size in sizes]
    order: dict[tuple, int] = {}
    results: list[BenchResult] = []
    with contextlib.ExitStack() as stack, _progress(progress) as bar:
        tiling = {"tile": True, "tile_size": tile_size} if tile else {}
        runners = [stack.enter_context(open_runner(artifact, backend, pad=pad, **tiling, **options))
                   for artifact in artifacts]
        labels = [_label(r, str(a)) for r, a in zip(runners, artifacts)]
        task = bar.add_task("bench", total=len(groups) * len(runners) * (iters or n_rounds)) if bar else None

        def turn(k: int, n: int, timer: ConfigTimer) -> None:
            if bar:
                bar.update(task, description=f"round {k + 1}/{n}: {timer.label} b{timer.batch} "
                                             f"{'x'.join(map(str, (timer.depth, timer.height, timer.width)[not timer.depth:]))}")
                if not iters:
                    bar.advance(task)

        def step(i: int, total: int | None) -> None:
            if bar and total:
                bar.advance(task)

        for g, (b, size) in enumerate(groups):
            h, w = size[-2:]
            group = bench_rounds(runners, batch=b, height=h, width=w, warmup=warmup, iters=iters, duration=duration,
                                 rounds=n_rounds, labels=labels, artifacts=[str(a) for a in artifacts],
                                 on_iter=step, on_turn=turn, depth=size[0] if len(size) == 3 else 0)
            for a, result in enumerate(group):
                order[id(result)] = a * len(groups) + g  # reported per artifact, as before rounds
            results += group
    results.sort(key=lambda r: order[id(r)])
    schedule = {"rounds": n_rounds, "iters_per_round": iters // n_rounds if iters else None,
                "duration_per_round_s": duration / n_rounds if duration else None,
                "lead_in_calls": 1,  # untimed, at the start of every turn (bench_rounds)
                "order": "interleaved rounds" if n_rounds > 1 else "one block per configuration",
                "wait_policy": wait_policy.current().to_dict()}
    return BenchReport(add_ratios(results), machine_info(threads), _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                       schedule)


def parse_sizes(text: str) -> list[tuple[int, ...]]:
    """``"256x256,512x384"`` -> ``[(256, 256), (512, 384)]`` (H x W); ``"256"`` means square; ``"32x64x64"``
    is a volume (D x H x W)."""
    sizes = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        h, sep, w = part.lower().partition("x")
        try:
            if w.count("x") == 1:
                size = (int(h), *(int(v) for v in w.split("x")))
            else:
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
