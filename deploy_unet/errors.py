"""Errors a user can cause, each carrying the exit code the CLI returns for it.

The CLI prints ``error: <message>`` for these and never a traceback (``--debug`` adds it); anything else
is a bug.
"""

import contextlib
import re
from collections.abc import Callable


class DeployUnetError(Exception):
    """A user-facing error: one line naming the value, the rule it broke and the fix."""

    exit_code = 2


class ConfigError(DeployUnetError, ValueError):
    """An unknown net name, an unknown or invalid option, a malformed argument."""


class ShapeContractError(DeployUnetError, ValueError):
    """An input shape that breaks the net's divisibility contract or its channel count."""


class ArtifactError(DeployUnetError):
    """A missing, unreadable or mismatched file (checkpoint, ONNX, engine, cache, data)."""


class MissingDependencyError(DeployUnetError):
    """An optional package or device the command needs is not there; the message says how to get it."""


class GateFailedError(DeployUnetError):
    """A validation or accuracy gate failed: the run worked, the result is not good enough."""

    exit_code = 1


class InputsSkippedError(DeployUnetError):
    """Some inputs could not be read and were skipped; the others were processed and written."""

    exit_code = 1
class DataError(ArtifactError):
    """Input data that cannot be used (NaN/Inf, an undecodable image, an array of the wrong rank or dtype):
    one line naming the source and the sample, exit 2."""


class StageError(DeployUnetError):
    """A tool inside a stage failed (torch.export, onnx.checker, onnxslim, ONNX Runtime, a quantizer).

    The message is one line: the stage, the model, the first line of the underlying error. The
    underlying exception stays in ``__cause__`` for ``--debug``; ``kept`` is the intermediate ONNX that
    was written for inspection, if any.
    """

    exit_code = 1

    def __init__(self, stage: str, model: str, cause: BaseException, hint: str = "", kept: str | None = None):
        self.stage, self.model, self.hint, self.kept = stage, model, hint, kept
        self.cause_line = first_line(cause)
        super().__init__(self._text())

    def _text(self) -> str:
        text = f"{self.stage} failed for {self.model}: {self.cause_line}"
        if self.hint:
            text += f"; {self.hint}"
        if self.kept:
            text += f" (the failing ONNX is kept as {self.kept})"
        else:
            text += "; no file was written (--debug shows the traceback and keeps the failing ONNX)"
        return text

    def keep(self, path: str) -> None:
        self.kept = path
        self.args = (self._text(),)


# ONNX Runtime's messages carry its source path and a C++ signature before the reason; users need the reason.
_ORT_NOISE = (re.compile(r"\[ONNXRuntimeError\] : \d+ : \w+ : "), re.compile(r"/onnxruntime_src/\S+:\d+ [\w:~<>]+\([^)]*\)\s*"))
MAX_CAUSE_CHARS = 400


def first_line(exc: BaseException) -> str:
    """``TypeName: first non-empty line`` of an exception, ONNX Runtime's source locations removed."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    for pattern in _ORT_NOISE:
        text = pattern.sub("", text)
    if len(text) > MAX_CAUSE_CHARS:
        text = text[: MAX_CAUSE_CHARS - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def stage_errors(stage: str, model: str, keep: Callable[[str], str | None] | None = None, hint: str = ""):
    """Turn any failure of a tool inside ``stage`` into one StageError line; our own errors pass through.

    ``keep(stage)`` may write the failing intermediate ONNX and return its path (``--debug``).
    """
    try:
        yield
    except DeployUnetError:
        raise
    except Exception as exc:
        error = StageError(stage, model, exc, hint=hint)
        kept = keep(stage) if keep is not None else None
        if kept:
            error.keep(kept)
        raise error from exc
