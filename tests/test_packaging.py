"""pyproject.toml's package list is explicit (models/ is mapped to deploy_unet.models), so a new subpackage is
in the wheel only once it is listed; this says so before CI's wheel check (.ci/check_dist.py) does."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_in_the_tree_is_listed_for_the_wheel():
    in_tree = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "deploy_unet").rglob("__init__.py")}
    in_tree.add("deploy_unet.models")
    listed = set(SETUPTOOLS["packages"])
    assert not in_tree - listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(in_tree - listed)}"
    assert not listed - in_tree, f"listed but not in the tree: {sorted(listed - in_tree)}"


def test_models_folder_is_the_package_and_all_of_it_is_carried():
    assert SETUPTOOLS["package-dir"] == {"deploy_unet.models": "models"}
    patterns = SETUPTOOLS["package-data"]["deploy_unet.models"]
    carried = {path for pattern in patterns for path in (ROOT / "models").glob(pattern)}
    carried |= set((ROOT / "models").glob("*.py"))  # modules of a listed package always go in
    files = {p for p in (ROOT / "models").iterdir() if p.is_file()}
    assert files - carried == set(), "a file in models/ the wheel would leave out: add its pattern to package-data"
