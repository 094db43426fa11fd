"""A `deploy-unet serve` process for tests: free loopback ports, bounded waits, and what it left behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest

from deploy_unet.describe import read_model_info
from deploy_unet.engine.manifest import EngineManifest, manifest_path_for, model_section, write_manifest
from deploy_unet.fileio import sha256_file

START_TIMEOUT_S = 90
STOP_TIMEOUT_S = 40
TOKEN = "test-token-not-secret"
TRITON_DIED = "Triton Inference Server exited with failure"  # PyTriton's warning when tritonserver dies


class TritonDiedStarting(AssertionError):
    """The tritonserver process exited before serve was ready."""


def require_serve_extra():
    """Skip without the serve extra; fail instead where CI installed it (DEPLOY_UNET_REQUIRE_SERVE=1)."""
    for module, package in (("pytriton", "nvidia-pytriton"), ("tritonclient.http", "tritonclient[http]"),
                            ("tritonclient.grpc", "tritonclient[grpc]"), ("tritonclient.grpc.model_config_pb2",
                                                                          "tritonclient[grpc]")):
        if os.environ.get("DEPLOY_UNET_REQUIRE_SERVE") == "1":
            __import__(module)
        else:
            pytest.importorskip(module, reason=f"needs the serve extra ({package}): pip install -e '.[serve]'")


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``, from /proc (children of children too)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def command_name(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip()
    return ""


class ServeProcess:
    """``python -m deploy_unet.cli serve ARGS`` with free ports and its own TMPDIR (so its workspace is findable)."""

    def __init__(self, artifact, *args: str):
        from deploy_unet.serving.server import free_port

        self.ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
        self.tmpdir = Path(tempfile.mkdtemp(prefix="du-serve-test-"))  # short: unix socket paths live under it
        self.stderr_path = self.tmpdir.parent / f"{self.tmpdir.name}.stderr"
        env = {**os.environ, "TMPDIR": str(self.tmpdir), "DEPLOY_UNET_TRITON_ACCESS_TOKEN": TOKEN}
        cmd = [sys.executable, "-m", "deploy_unet.cli", "serve", str(artifact),
               "--http-port", str(self.ports["http"]), "--grpc-port", str(self.ports["grpc"]),
               "--metrics-port", str(self.ports["metrics"]), *args]
        self._stderr = open(self.stderr_path, "w")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=self._stderr,
                                     stdin=subprocess.DEVNULL, cwd=Path(__file__).resolve().parent.parent)
        self.children: set[int] = set()

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @classmethod
    def ready(cls, artifact, *args: str, model: str) -> ServeProcess:
        """Started and answering; a tritonserver that dies while starting is retried once, on fresh ports.

        Seen once in CI (one start in the ~20 a CI run makes): the bundled tritonserver exited during start-up,
        and PyTriton then polls the dead server for 120 s before serve can say so. The server log is kept in
        the warning; a second death in a row fails the test with both logs.
        """
        first = cls(artifact, *args)
        try:
            return first.wait_ready(model)
        except TritonDiedStarting as died:
            first.cleanup()
            warnings.warn(f"tritonserver died while starting; retrying once on fresh ports. {died}", stacklevel=2)
            second = cls(artifact, *args)
            try:
                return second.wait_ready(model)
            except BaseException:
                second.cleanup()
                raise

    def triton_log(self, chars: int = 3000) -> str:
        """The tail of the server log serve keeps in its workspace (under this process's TMPDIR)."""
        logs = sorted(self.tmpdir.glob("deploy-unet-serve-*/tritonserver.log"))
        return logs[-1].read_text(errors="replace")[-chars:] if logs else "(no server log)"

    def wait_ready(self, model: str) -> ServeProcess:
        import tritonclient.http as http

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode} before ready:\n{self.stderr()[-3000:]}")
            if TRITON_DIED in self.stderr() and "serving model" not in self.stderr():
                log = self.triton_log()
                self.kill()
                raise TritonDiedStarting(f"serve's stderr:\n{self.stderr()[-2000:]}\nserver log:\n{log}")
            if "serving model" in self.stderr():
                with contextlib.suppress(Exception), contextlib.closing(
                        http.InferenceServerClient(self.http_url, connection_timeout=2, network_timeout=2)) as c:
                    if c.is_model_ready(model):
                        self.children = descendants(self.proc.pid)
                        return self
            time.sleep(0.2)
        log = self.triton_log()
        self.kill()
        raise AssertionError(f"serve not ready within {START_TIMEOUT_S} s:\n{self.stderr()[-3000:]}\nserver log:\n{log}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"serve did not stop within {STOP_TIMEOUT_S} s of signal {sig}") from None
        self._stderr.close()
        return self.proc.returncode

    def kill(self) -> None:
        """Last resort (a failed test): the serve process and everything below it, by pid."""
        for pid in [*descendants(self.proc.pid), self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._stderr.close()

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        self.stderr_path.unlink(missing_ok=True)


def fake_engine(tmp_path, onnx_path, max_batch=4, min_hw=16, opt_hw=64, max_hw=128):
    """Engine bytes (never deserialized: the repository copies them) and a manifest with one profile."""
    info = read_model_info(onnx_path)
    engine = tmp_path / "thin.fp16.engine"
    engine.write_bytes(b"not-a-real-plan" * 7)
    profile = {"min": [1, 3, min_hw, min_hw], "opt": [1, 3, opt_hw, opt_hw], "max": [max_batch, 3, max_hw, max_hw]}
    write_manifest(EngineManifest(
        tensorrt_version="10.16.0.72", gpu={"index": 0, "name": "NVIDIA H100", "compute_capability": "9.0",
                                            "memory_mib": 80000},
        precision="fp16", profiles=[profile],
        inputs=[{"name": "input", "dtype": "FLOAT", "shape": [-1, 3, -1, -1], **profile}],
        outputs=[{"name": "logits", "dtype": "FLOAT", "shape": [-1, info.num_classes, -1, -1]}],
        onnx={"path": str(onnx_path), "sha256": sha256_file(onnx_path), "metadata": info.to_props()},
        model=model_section(info), builder={"hardware_compat": "none", "version_compatible": False},
    ), manifest_path_for(engine))
    return engine
