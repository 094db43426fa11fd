"""deploy-unet: UNet/FCN segmentation nets from PyTorch to ONNX and TensorRT, with proof that nothing was lost.

The Python API, one function per stage (the CLI calls the same ones)::

    import deploy_unet as du

    du.export_onnx("models/unet_synthetic.pt", "unet.onnx", height=256, width=256)   # or an nn.Module
    du.quantize("unet.onnx", "int8", target="onnxruntime")                          # -> unet.int8.ort.onnx
    report = du.validate("unet.int8.ort.onnx", "models/unet_synthetic.pt")          # vs PyTorch
    result = du.predict("unet.int8.ort.onnx", ["images/"], "masks/")                # masks + overlays

``create_net``, ``export_onnx``, ``quantize``, ``build_engine``, ``open_runner``, ``validate``, ``bench``,
``predict``. Importing the package is cheap: these load on first use (PEP 562 ``__getattr__``), and nothing
here imports torch, ONNX Runtime, TensorRT or CUDA libraries until a stage needs them.

``validate``, ``bench`` and ``predict`` are also the stage modules' names (``deploy_unet/validate.py``, ...):
those modules are callable, so ``du.validate(...)`` runs ``deploy_unet.validate.validate_artifacts``,
``du.bench(...)`` ``deploy_unet.bench.bench`` and ``du.predict(...)`` ``deploy_unet.predict.predict``, while
``from deploy_unet.validate import ...`` keeps working as before.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from collections.abc import Callable
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute); attribute None: the module itself, callable (see _CallableModule)
_API: dict[str, tuple[str, str | None]] = {
    "create_net": ("deploy_unet.nets", "create_net"),
    "export_onnx": ("deploy_unet.export", "export_onnx"),
    "quantize": ("deploy_unet.precision", "quantize"),
    "build_engine": ("deploy_unet.engine.build", "build_engine"),
    "open_runner": ("deploy_unet.runtime", "open_runner"),
    "validate": ("deploy_unet.validate", None),
    "bench": ("deploy_unet.bench", None),
    "predict": ("deploy_unet.predict", None),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'deploy_unet' has no attribute {name!r}")
    module_name, attribute = _API[name]
    value = importlib.import_module(module_name)
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value  # the next access is a plain attribute lookup
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})


class _CallableModule(types.ModuleType):
    """A stage module that is also its stage's entry point: calling it calls ``__entry__``.

    Why: a package attribute cannot be both a submodule and a function; importing ``deploy_unet.validate``
    anywhere rebinds ``deploy_unet.validate`` to the module. A callable module keeps every import form
    working and still gives ``deploy_unet.validate(...)`` the function's signature (``inspect.signature``).
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__entry__(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.__entry__)


def _make_callable(module_name: str, entry: Callable[..., Any]) -> None:
    """Make the stage module ``module_name`` callable as ``entry`` (called at the end of that module)."""
    module = sys.modules[module_name]
    module.__entry__ = entry
    module.__class__ = _CallableModule
