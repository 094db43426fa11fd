"""Every TensorRT / TensorRT-RTX Python name deploy-unet uses, and a check of them against an installed module.

``USED`` lists, per class or enum of the bindings, the members our builder (deploy_unet/engine/build.py) and
runner (deploy_unet/runtime/tensorrt_runner.py) touch; test_engine_names.py keeps this list and the code in
step. Run this file with a Python that can import a library to check the names against it (importing the
bindings needs no GPU)::

    python tests/engine_api_names.py tensorrt_rtx_bindings   # or tensorrt, tensorrt_rtx

It prints each missing name and exits 1 if any is missing. Without the library, ``--source DIR`` looks for each
name as a quoted string in the bindings' C++ sources (NVIDIA/TensorRT ``python/src``; coarser: it cannot tell
which class a name belongs to)::

    python tests/engine_api_names.py --source /path/to/TensorRT/python/src

Checked on 2026-11-23: tensorrt_rtx_bindings 1.7.1.116 (cu13 wheel, imported under Python 3.12) has all 84;
TensorRT sources main (11.x) and release/10.16 have all 84; release/10.3 (JetPack 6) lacks
HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY (build.py then refuses --hardware-compat same-cc in one line).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

# owner -> members; owner "" means the module itself.
USED: dict[str, tuple[str, ...]] = {
    "": (
        "Builder", "OnnxParser", "Runtime", "Logger", "ILogger", "IProfiler", "NetworkDefinitionCreationFlag",
        "MemoryPoolType", "HardwareCompatibilityLevel", "BuilderFlag", "ProfilingVerbosity", "TensorIOMode",
        "LayerInformationFormat", "DataType",
    ),
    "ILogger": ("Severity", "log"),
    "ILogger.Severity": ("INTERNAL_ERROR", "ERROR", "WARNING"),
    "Logger": ("WARNING",),
    "NetworkDefinitionCreationFlag": ("STRONGLY_TYPED",),
    "MemoryPoolType": ("WORKSPACE",),
    "HardwareCompatibilityLevel": ("NONE", "AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY"),  # TensorRT only
    "BuilderFlag": ("VERSION_COMPATIBLE", "REFIT"),  # VERSION_COMPATIBLE: TensorRT only
    "ProfilingVerbosity": ("DETAILED",),
    "TensorIOMode": ("INPUT",),
    "LayerInformationFormat": ("JSON",),
    "DataType": ("FLOAT", "HALF", "INT8", "INT32", "INT64", "BOOL", "UINT8", "BF16"),
    "Builder": ("create_network", "create_builder_config", "create_optimization_profile", "build_serialized_network"),
    "INetworkDefinition": ("num_inputs", "num_outputs", "get_input", "get_output"),
    "ITensor": ("name", "shape", "dtype"),
    "OnnxParser": ("parse_from_file", "num_errors", "get_error"),
    "ParserError": ("node", "node_name", "node_operator", "desc", "code"),
    "IBuilderConfig": (
        "set_memory_pool_limit", "builder_optimization_level", "hardware_compatibility_level", "set_flag",
        "profiling_verbosity", "add_optimization_profile", "create_timing_cache", "set_timing_cache",
        "get_timing_cache",
    ),
    "IOptimizationProfile": ("set_shape",),
    "ITimingCache": ("combine", "serialize"),
    "Runtime": ("deserialize_cuda_engine", "engine_host_code_allowed"),
    "ICudaEngine": (
        "create_execution_context", "num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_dtype",
        "create_engine_inspector",
    ),
    "IExecutionContext": ("profiler", "set_input_shape", "get_tensor_shape", "set_tensor_address", "execute_async_v3"),
    "IProfiler": ("report_layer_time",),
    "EngineInspector": ("get_engine_information",),
}


def missing_names(module) -> list[str]:
    """``Owner.member`` names in USED that ``module`` does not have."""
    missing = []
    for owner, members in USED.items():
        target = module
        for part in filter(None, owner.split(".")):
            target = getattr(target, part, None)
        if target is None:
            missing.append(f"{owner} (the owner itself)")
            continue
        missing += [f"{owner}.{m}" if owner else m for m in members if not hasattr(target, m)]
    return missing


def missing_in_sources(folder: str | Path) -> list[str]:
    """Names in USED that appear nowhere as a quoted string in the bindings' C++ sources under ``folder``."""
    text = "".join(p.read_text(errors="ignore") for p in Path(folder).rglob("*.cpp"))
    return [f"{owner}.{m}" if owner else m for owner, members in USED.items() for m in members if f'"{m}"' not in text]


def main(argv: list[str]) -> int:
    if len(argv) > 2 and argv[1] == "--source":
        missing = missing_in_sources(argv[2])
        total = sum(len(m) for m in USED.values())
        print(f"{argv[2]}: {total - len(missing)}/{total} names found as strings")
        for entry in missing:
            print(f"  missing: {entry}")
        return 1 if missing else 0
    name = argv[1] if len(argv) > 1 else "tensorrt"
    module = importlib.import_module(name)
    missing = missing_names(module)
    total = sum(len(m) for m in USED.values())
    print(f"{name} {getattr(module, '__version__', '?')}: {total - len(missing)}/{total} names present")
    for entry in missing:
        print(f"  missing: {entry}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
