"""The shipped reference checkpoints and their model cards: the one place that knows where they are.

They are package data of ``deploy_unet.models`` (the repository's top-level ``models/``, mapped by
pyproject.toml), found through ``importlib.resources``, so a wheel, ``pip install .``, ``pip install git+URL``
and an editable install all find the same files; a source checkout used without an install falls back to
its own models/. Nothing else builds a path to them.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from deploy_unet.errors import ArtifactError

PACKAGE = "deploy_unet.models"
REFERENCE_CHECKPOINTS = {"unet": "unet_synthetic.pt", "unetpp": "unetpp_synthetic.pt", "fcn8s": "fcn8s_synthetic.pt",
                         "unet3d": "unet3d_synthetic.pt"}


def models_dir() -> Path:
    """The folder that holds the shipped checkpoints in this install."""
    try:
        root = importlib.resources.files(PACKAGE)
    except ModuleNotFoundError:
        root = _source_tree_models()
    if not isinstance(root, Path):  # a zip import: torch.load and ONNX export need real files
        raise ArtifactError(f"{PACKAGE} is installed inside an archive ({root}); install deploy-unet unpacked "
                            "(pip does) or pass --checkpoint FILE")
    return root


def _source_tree_models() -> Path:
    """A source checkout imported without an install (PYTHONPATH=., pytest's pythonpath, the GPU session) has
    no deploy_unet.models package; there the folder is models/ beside the package: the folder it installs from."""
    import deploy_unet

    package = Path(deploy_unet.__file__).resolve().parent
    tree = package.parent
    if (tree / "pyproject.toml").is_file() and (tree / "models" / "__init__.py").is_file():
        return tree / "models"
    raise ArtifactError(
        f"the shipped checkpoints are package data of {PACKAGE}, which is not importable here, and {package} is "
        "not in a source checkout with models/; (re)install deploy-unet (`pip install -e .` in a clone, or its "
        "wheel) or pass --checkpoint FILE"
    )


def available() -> dict[str, Path]:
    """arch -> checkpoint path, for the reference checkpoints really present in this install."""
    root = models_dir()
    return {arch: root / name for arch, name in sorted(REFERENCE_CHECKPOINTS.items()) if (root / name).is_file()}


def checkpoint(arch: str) -> Path:
    """The shipped reference checkpoint for ``arch``; the error lists the ones this install has."""
    found = available()
    if arch in found:
        return found[arch]
    root = models_dir()
    have = ", ".join(f"{a} ({p.name})" for a, p in found.items()) or "none"
    missing = f"; {REFERENCE_CHECKPOINTS[arch]} is missing" if arch in REFERENCE_CHECKPOINTS else ""
    raise ArtifactError(
        f"no shipped reference checkpoint for --arch {arch}{missing}; this install has, in {root}: {have}; "
        "pass --checkpoint FILE"
    )


def card(arch: str) -> Path:
    """The model card (how it was trained, held-out scores, sha256) beside a shipped checkpoint."""
    return checkpoint(arch).with_suffix(".md")
