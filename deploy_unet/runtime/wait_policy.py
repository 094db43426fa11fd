"""How idle thread pools wait: passively, so a pool left idle does not spin on the cores another backend runs on.

bench times its configurations in interleaved rounds and validate alternates the reference and the candidates
batch by batch, so several backends' thread pools live in one process. By default they spin while idle: torch's
OpenMP (libgomp) threads for a while after every parallel region, ONNX Runtime's intra-op workers likewise.
On a CPU with few cores that spinning takes the cores from whichever backend runs next (measured in
``benchmarks/measurement.md``: torch 5-10x slower beside spinning pools on a loaded 2-core machine), so:

- torch/OpenMP: ``OMP_WAIT_POLICY=PASSIVE``. libgomp reads it once, when torch loads, so the CLI sets it at
  process start (``configure_at_start``), before anything imports torch; a value the user already set wins.
- ONNX Runtime: the session options ``session.intra_op.allow_spinning`` / ``session.inter_op.allow_spinning``
  follow the same policy ("1" only under ``OMP_WAIT_POLICY=ACTIVE``).

``current()`` says what holds in this process; reports record it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from dataclasses import asdict, dataclass

OMP_VAR = "OMP_WAIT_POLICY"
PASSIVE = "PASSIVE"
ORT_SPIN_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")

# What configure_at_start decided: "deploy-unet" (it set PASSIVE), "environment" (the user's value),
# "too-late" (torch was loaded first, so libgomp kept whatever it read then); None: never called.
_configured: str | None = None


@dataclass(frozen=True)
class WaitPolicy:
    omp: str  # the OMP_WAIT_POLICY libgomp read ("PASSIVE", "ACTIVE"), or "default" (spin a while, then sleep)
    omp_source: str  # who chose it, in words
    ort_spinning: bool  # ONNX Runtime's allow_spinning for sessions opened by deploy-unet's runner

    @property
    def passive(self) -> bool:
        return self.omp == PASSIVE and not self.ort_spinning

    def describe(self) -> str:
        """``idle threads wait passively (OMP_WAIT_POLICY=PASSIVE set by deploy-unet; ONNX Runtime spinning off)``."""
        how = "wait passively" if self.passive else "may spin"
        omp = "libgomp's default (spin, then sleep)" if self.omp == "default" else f"{OMP_VAR}={self.omp}"
        return (f"idle threads {how} (torch/OpenMP: {omp}, {self.omp_source}; "
                f"ONNX Runtime spinning {'on' if self.ort_spinning else 'off'})")

    def to_dict(self) -> dict:
        return {**asdict(self), "summary": self.describe()}


def configure_at_start(environ: MutableMapping[str, str] | None = None, torch_loaded: bool | None = None) -> WaitPolicy:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it; call before torch is imported (the CLI does)."""
    global _configured
    environ = os.environ if environ is None else environ
    torch_loaded = "torch" in sys.modules if torch_loaded is None else torch_loaded
    if environ.get(OMP_VAR):
        _configured = "environment"
    elif torch_loaded:
        _configured = "too-late"  # setting it now would change nothing but the record
    else:
        environ[OMP_VAR] = PASSIVE
        _configured = "deploy-unet"
    return current(environ)


def current(environ: MutableMapping[str, str] | None = None) -> WaitPolicy:
    """The policy in force in this process (as far as it can be known: libgomp has no getter)."""
    environ = os.environ if environ is None else environ
    value = (environ.get(OMP_VAR) or "").strip().upper()
    if _configured == "too-late":
        omp, source = "default", f"torch was loaded before deploy-unet could set {OMP_VAR}"
    elif not value:
        omp, source = "default", f"{OMP_VAR} not set"
    elif _configured == "deploy-unet":
        omp, source = value, "set by deploy-unet at start"
    else:
        omp, source = value, "from your environment" if _configured else "from the environment"
    return WaitPolicy(omp, source, ort_spinning=value == "ACTIVE")


def ort_spinning() -> bool:
    """Whether ONNX Runtime sessions should let idle workers spin: only when the user asked for ACTIVE."""
    return current().ort_spinning
