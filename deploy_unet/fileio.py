"""File helpers: atomic writes (an interrupted run never leaves a half file), hashing, JSON-safe values."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in the target's folder; rename it onto ``path`` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs should read like any written file
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def failed_path(output: str | os.PathLike, stage: str) -> Path:
    """``out/net.onnx`` + ``"onnx.checker"`` -> ``out/net.failed-onnx-checker.onnx`` (a name that says so)."""
    import re

    target = Path(output)
    stem = target.name[: -len(".onnx")] if target.name.endswith(".onnx") else target.name
    slug = re.sub(r"[^a-z0-9]+", "-", stage.lower()).strip("-")
    return target.with_name(f"{stem}.failed-{slug}.onnx")


def onnx_keeper(model, output: str | os.PathLike):
    """A ``keep(stage)`` for ``errors.stage_errors``: writes ``model`` (an onnx.ModelProto or a file path) as
    ``failed_path(output, stage)`` and returns that path; does nothing without a model."""

    def keep(stage: str) -> str | None:
        if model is None:
            return None
        path = failed_path(output, stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(model, (str, os.PathLike)):
            write_bytes_atomic(path, Path(model).read_bytes())
        else:
            import onnx

            onnx.save(model, os.fspath(path))
        return os.fspath(path)

    return keep


def json_safe(obj: Any) -> Any:
    """NaN/Inf are not JSON: write them as null / "inf" / "-inf" so every report parses; NumPy scalars as Python."""
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    np = sys.modules.get("numpy")  # only a loaded NumPy can have made the value; never import it here
    if np is not None and isinstance(obj, np.generic):
        return json_safe(obj.item())
    return obj
