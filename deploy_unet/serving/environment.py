"""What the bundled Triton server needs from this machine, handled for the user.

- **libpython**: PyTriton's python-backend stub (``triton_python_backend_stub``) links ``libpython3.X.so``
  dynamically. Under an interpreter built outside the system (pyenv, conda, a venv of either) the loader
  finds the *system's* libpython first, a different build of the same version, and the stub dies inside
  multiprocessing (``'_thread.RLock' object has no attribute '_recursion_count'``). The interpreter's own
  ``LIBDIR`` goes in front of ``LD_LIBRARY_PATH`` of the server process (PyTriton copies ``os.environ``
  when it launches tritonserver, so it is set around the launch and restored after).
- **the access token**: PyTriton 0.7 protects the admin endpoints (model-repository load/unload,
  shared-memory registration, statistics, trace, logging) with a ``triton-access-token`` header and a random
  token. We keep that protection, since even on loopback any local user could otherwise unload the model or
  map shared memory into the server, and take the token from ``DEPLOY_UNET_TRITON_ACCESS_TOKEN`` when set (so
  a script can read statistics); inference, health and metadata stay open, as in Triton itself.
"""

from __future__ import annotations

import contextlib
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from deploy_unet.errors import MissingDependencyError

ACCESS_TOKEN_ENV = "DEPLOY_UNET_TRITON_ACCESS_TOKEN"
ACCESS_HEADER = "triton-access-token"
PROTECTED_ENDPOINTS = ("shared-memory", "model-repository", "statistics", "trace", "logging")
INSTALL_HINT = 'pip install "deploy-unet[serve]"  (nvidia-pytriton, tritonclient; PyTriton 0.7 wheels are Linux x86-64, glibc 2.35+)'


def require_serving_packages() -> None:
    """PyTriton (the bundled tritonserver) and tritonclient, or one line saying how to get them."""
    missing = []
    for module, package in (("pytriton", "nvidia-pytriton"), ("tritonclient", "tritonclient[grpc,http]")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise MissingDependencyError(f"serving needs {', '.join(missing)}, which is not installed; {INSTALL_HINT}")


def interpreter_libdir() -> Path | None:
    """The folder holding this interpreter's own ``libpython3.X.so``, if it has a shared one."""
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlibrary = sysconfig.get_config_var("LDLIBRARY") or ""
    if not libdir or not ldlibrary.endswith(".so") and ".so." not in ldlibrary:
        return None
    path = Path(libdir)
    return path if (path / ldlibrary).exists() else None


def library_path_with(libdir: Path | None, current: str | None) -> str | None:
    """``LD_LIBRARY_PATH`` with ``libdir`` first (once); unchanged when there is nothing to add."""
    if libdir is None:
        return current
    parts = [p for p in (current or "").split(os.pathsep) if p and Path(p) != libdir]
    return os.pathsep.join([str(libdir), *parts])


@contextlib.contextmanager
def server_environment() -> Iterator[None]:
    """``os.environ`` as the tritonserver process (and the stubs it starts) must see it, restored after."""
    before = os.environ.get("LD_LIBRARY_PATH")
    wanted = library_path_with(interpreter_libdir(), before)
    if wanted is not None:
        os.environ["LD_LIBRARY_PATH"] = wanted
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = before


def access_token() -> str:
    """The admin endpoints' token: ``$DEPLOY_UNET_TRITON_ACCESS_TOKEN``, else a random one for this run."""
    import secrets

    return os.environ.get(ACCESS_TOKEN_ENV) or secrets.token_urlsafe(32)
