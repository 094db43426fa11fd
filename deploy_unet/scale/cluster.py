"""The chunks of a streamed image as Dask tasks (``dask.distributed``; the ``large`` extra).

``--dask tcp://HOST:8786`` connects to a running scheduler (started by ``dask scheduler`` / ``dask worker``, by
dask-kubernetes or dask-jobqueue: see ``docs/large-images.md``); ``--dask local:N`` starts a ``LocalCluster`` of
N single-threaded worker processes on 127.0.0.1 for this run.

Each task is ``scale.chunks.run_chunk`` on one output chunk. The job (paths, grid, preprocessing) is scattered
to the workers once; the runner is never pickled: each worker process opens it once, from a small
``RunnerSpec``, on its first chunk, and keeps it (``worker_runner``). Dask itself reschedules the tasks of a
worker that dies; a chunk is written whole (the Zarr store renames a finished temporary file into place) and a
rerun task that finds its chunk on disk only reads it back, so no chunk is written twice or half, and the output
is byte-identical to the single-process run (the same function on the same chunks).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploy_unet.errors import ConfigError, MissingDependencyError
from deploy_unet.runtime.windows import chunk_regions
from deploy_unet.scale.chunks import run_chunk


@dataclass(frozen=True)
class RunnerSpec:
    """How a worker opens the runner: ``runtime.open_runner(artifact, backend, **options)``."""

    artifact: str
    backend: str | None
    options: tuple[tuple[str, Any], ...] = ()

    def open(self):
        from deploy_unet.runtime import open_runner

        runner = open_runner(self.artifact, self.backend, **dict(self.options))
        runner.activate()
        return runner

    def with_threads(self, threads: int) -> RunnerSpec:
        opts = dict(self.options)
        if opts.get("threads") is None:
            opts["threads"] = threads
        return RunnerSpec(self.artifact, self.backend, tuple(sorted(opts.items())))


_RUNNERS: dict[RunnerSpec, Any] = {}
_OPENED: dict[RunnerSpec, int] = {}
_LOCK = threading.Lock()


class _Locked:
    """One runner shared by a worker's threads, one inference at a time (reading and blending run beside it)."""

    def __init__(self, runner):
        self.runner = runner
        self.lock = threading.Lock()
        self.input_spec = runner.input_spec
        self.output_names = runner.output_names

    def infer(self, feeds):
        with self.lock:
            return self.runner.infer(feeds)


def worker_runner(spec: RunnerSpec):
    """This process's runner for ``spec``, opened on first use and kept for the worker's life."""
    with _LOCK:
        runner = _RUNNERS.get(spec)
        if runner is None:
            runner = _RUNNERS[spec] = _Locked(spec.open())
            _OPENED[spec] = _OPENED.get(spec, 0) + 1
        return runner


def _chunk_task(lo, hi, job, spec: RunnerSpec) -> dict[str, Any]:
    summary = run_chunk(job, tuple(lo), tuple(hi), worker_runner(spec))
    summary["runner_opens"] = _OPENED.get(spec, 0)
    return summary


def _import_distributed():
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise MissingDependencyError("--dask needs dask.distributed: pip install 'deploy-unet[large]'") from None


def connect(address: str):
    """(client, cluster or None) for ``tcp://HOST:PORT`` or ``local:N``."""
    _import_distributed()
    from distributed import Client, LocalCluster

    if address.startswith("local:"):
        try:
            n = int(address.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"--dask {address!r}: give local:N with N >= 1 workers, or tcp://HOST:PORT")
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None)
        return Client(cluster), cluster
    if "://" not in address:
        raise ConfigError(f"--dask {address!r} is not a scheduler address; give tcp://HOST:PORT or local:N")
    try:
        return Client(address, timeout="20s"), None
    except OSError as exc:
        raise ConfigError(f"--dask: cannot reach the scheduler at {address} ({exc}); start one with "
                          "`dask scheduler` or pass local:N") from None


def run_on_dask(job, source, options, runner_spec: RunnerSpec | None, out_dir: Path,
                progress: Callable[[dict], None] | None = None, client=None) -> tuple[list[dict], int, int]:
    """Run the chunks not yet stored as tasks; (chunk summaries in C order, chunks computed, workers)."""
    import dataclasses

    if runner_spec is None:
        raise ConfigError("--dask needs the artifact to reopen on the workers (predict passes it)")
    staged = None
    if not job.source:  # an image read whole (PNG/JPEG, an array): the workers read it from a .npy beside the output
        staged = Path(out_dir) / f".{Path(job.store).name}.input.npy"
        np.save(staged, np.asarray(source.read_region(())))
        job = dataclasses.replace(job, source=os.fspath(staged))
    own = client is None
    cluster = None
    if own:
        client, cluster = connect(options.dask)
    try:
        from distributed import as_completed

        workers = max(len(client.scheduler_info().get("workers", {})), 1)
        if options.dask.startswith("local:"):
            runner_spec = runner_spec.with_threads(max((os.cpu_count() or 1) // workers, 1))
        regions = chunk_regions(job.grid.shape, options.chunk)
        [job_future] = client.scatter([job], broadcast=True)
        futures = [client.submit(_chunk_task, lo, hi, job_future, runner_spec, pure=False) for lo, hi in regions]
        by_lo = {}
        for future in as_completed(futures):
            summary = future.result()
            by_lo[tuple(summary["lo"])] = summary
            if progress:
                progress(summary)
        results = [by_lo[tuple(lo)] for lo, _ in regions]
        return results, sum(r["written"] for r in results), workers
    finally:
        if own:
            client.close()
            if cluster is not None:
                cluster.close()
        if staged is not None:
            staged.unlink(missing_ok=True)
