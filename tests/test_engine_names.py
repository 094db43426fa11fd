"""The TensorRT / TensorRT-RTX names our code uses are exactly those listed in engine_api_names.USED, and (where a
library is importable here) that library has every one of them."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest
from engine_api_names import USED, missing_names
from trt_fakes import fake_tensorrt_rtx

ROOT = Path(__file__).resolve().parents[1]
ENGINE_CODE = [ROOT / "deploy_unet" / "engine" / "build.py", ROOT / "deploy_unet" / "runtime" / "tensorrt_runner.py"]
MODULE_ALIASES = {"trt", "_trt"}  # how the code names the imported library (trt, self._trt)


def _trees():
    return [ast.parse(path.read_text(), str(path)) for path in ENGINE_CODE]


def _chain(node: ast.Attribute) -> list[str] | None:
    """``trt.A.B`` -> ["A", "B"]; None when the chain is not rooted at the library module."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in MODULE_ALIASES:
        return parts[::-1]
    if parts and parts[-1] in MODULE_ALIASES and isinstance(node, ast.Name) and node.id == "self":
        return parts[::-1][1:]
    return None


def test_every_module_attribute_the_code_uses_is_listed():
    used = set()
    for tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and (chain := _chain(node)):
                used.add(".".join(chain))  # trt.A.B also yields its prefix trt.A
    assert used, "found no trt.* use at all: the scan is broken"
    unlisted = []
    for name in used:
        *owner, member = name.split(".")
        owner = ".".join(owner)
        if member.startswith("__"):  # __version__, Base.__init__ in subclasses
            continue
        if member not in USED.get(owner, ()) and not (owner == "" and member in USED[""]):
            # trt.A.B is also listed if A is a listed owner with member B
            unlisted.append(name)
    assert not unlisted, f"add these to tests/engine_api_names.py and check them against the bindings: {unlisted}"


def test_every_listed_member_is_used_by_the_code():
    """No stale entries: each listed method/property name appears as an attribute in the engine code."""
    attributes = {node.attr for tree in _trees() for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    attributes |= {node.name for tree in _trees() for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    attributes |= {  # read through getattr() with a table of names (HARDWARE_COMPAT, TRT_TO_NUMPY, _enum_name)
        "NONE", "AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY", "FLOAT", "HALF", "INT8", "INT32", "INT64", "BOOL", "UINT8",
        "BF16", "STRONGLY_TYPED", "name", "shape", "dtype", "log",
    }
    stale = [f"{owner}.{m}" for owner, members in USED.items() for m in members if m not in attributes]
    assert not stale, f"listed but not used: {stale}"


def test_the_fake_rtx_module_offers_what_the_builder_touches():
    """The CPU tests' stand-in must not hide a name: the builder's enums and classes exist on it."""
    fake = fake_tensorrt_rtx()
    for name in ("Builder", "OnnxParser", "ILogger", "NetworkDefinitionCreationFlag", "MemoryPoolType", "BuilderFlag",
                 "ProfilingVerbosity"):
        assert hasattr(fake, name), name
    assert int(fake.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 0  # as in tensorrt_rtx_bindings 1.7.1.116


@pytest.mark.parametrize("module", ["tensorrt", "tensorrt_rtx", "tensorrt_rtx_bindings"])
def test_installed_library_has_every_name(module):
    try:
        present = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        present = False
    if not present:
        pytest.skip(f"{module} is not installed here; run `python tests/engine_api_names.py {module}` where it is")
    if module.startswith("tensorrt_rtx"):
        from deploy_unet.engine.device import _preload_rtx_libraries

        _preload_rtx_libraries()
    try:
        lib = importlib.import_module(module)
    except (ImportError, OSError) as exc:
        pytest.skip(f"{module} is installed but does not import here ({exc})")
    assert missing_names(lib) == []


@pytest.mark.parametrize("module", ["tensorrt", "tensorrt_rtx_bindings"])
def test_names_in_another_interpreter(module):
    """Where the library needs another Python than this one (the RTX bindings wheel is cp312 only): set
    DEPLOY_UNET_ENGINE_PYTHON to that interpreter and DEPLOY_UNET_ENGINE_PYTHONPATH to where the wheels are
    unpacked, e.g. `pip install --no-deps --target /tmp/rtx tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings`."""
    import os
    import subprocess

    python = os.environ.get("DEPLOY_UNET_ENGINE_PYTHON")
    if not python:
        pytest.skip("DEPLOY_UNET_ENGINE_PYTHON is not set (an interpreter that can import the library)")
    env = dict(os.environ)
    extra = os.environ.get("DEPLOY_UNET_ENGINE_PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra, str(ROOT)]))
    probe = subprocess.run([python, "-c", f"import {module}"], env=env, capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"{python} cannot import {module}: {probe.stderr.strip().splitlines()[-1:]}")
    proc = subprocess.run([python, str(ROOT / "tests" / "engine_api_names.py"), module], env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "names present" in proc.stdout
