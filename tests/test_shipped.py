"""The shipped reference checkpoints: one lookup (deploy_unet.shipped), the same files however deploy-unet is
installed, and errors that list what this install really has."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from click.testing import CliRunner

from deploy_unet import doctor, shipped
from deploy_unet.checkpoint import load_checkpoint
from deploy_unet.cli import cli
from deploy_unet.errors import ArtifactError

REPO_MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.mark.parametrize("arch", sorted(shipped.REFERENCE_CHECKPOINTS))
def test_each_shipped_checkpoint_is_the_arch_it_is_found_for_and_its_card_names_its_hash(arch):
    path = shipped.checkpoint(arch)
    ckpt = load_checkpoint(path)
    assert ckpt.arch == arch  # the checkpoint's own record, not the file name
    card = shipped.card(arch).read_text()
    assert f"sha256 `{ckpt.sha256}`" in card  # the card describes exactly this file


def test_an_installed_checkout_finds_them_through_the_package_and_it_is_models():
    try:
        importlib.metadata.distribution("deploy-unet")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("deploy-unet is not installed here (a bare checkout); the fallback test covers it")
    spec = importlib.util.find_spec(shipped.PACKAGE)
    assert spec is not None, ("deploy_unet.models is not importable: an editable install made before it existed "
                              "(redo `pip install -e .`), or a non-editable one while testing the tree")
    assert Path(spec.origin).parent.samefile(REPO_MODELS)  # editable: the repository's models/, not a copy
    assert shipped.models_dir().samefile(REPO_MODELS)


def test_a_bare_source_tree_on_the_path_falls_back_to_its_models_folder(tmp_path):
    """PYTHONPATH=. without an install (the GPU session does this): no editable finder, no deploy_unet.models."""
    code = ("import importlib.util; from deploy_unet import shipped; "
            "assert importlib.util.find_spec('deploy_unet.models') is None; print(shipped.checkpoint('unet'))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_MODELS.parent), sysconfig.get_paths()["purelib"]])}
    # -S: site-packages' .pth files (where an editable install registers its finder) are not processed
    result = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).samefile(REPO_MODELS / "unet_synthetic.pt")


def test_outside_a_source_tree_without_the_package_the_error_says_to_install(monkeypatch, tmp_path):
    import deploy_unet

    def no_package(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(shipped.importlib.resources, "files", no_package)
    monkeypatch.setattr(deploy_unet, "__file__", str(tmp_path / "site-packages" / "deploy_unet" / "__init__.py"))
    with pytest.raises(ArtifactError, match=r"not importable here.*\(re\)install deploy-unet"):
        shipped.models_dir()


def _install_with(monkeypatch, tmp_path, names):
    for name in names:
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setattr(shipped, "models_dir", lambda: tmp_path)


def test_the_error_lists_only_what_this_install_has(monkeypatch, tmp_path):
    _install_with(monkeypatch, tmp_path, ["fcn8s_synthetic.pt", "notes.md"])
    with pytest.raises(ArtifactError) as info:
        shipped.checkpoint("unet")
    message = str(info.value)
    assert "unet_synthetic.pt is missing" in message
    assert f"this install has, in {tmp_path}: fcn8s (fcn8s_synthetic.pt);" in message
    assert "unetpp" not in message and "--checkpoint FILE" in message
    assert shipped.available() == {"fcn8s": tmp_path / "fcn8s_synthetic.pt"}


def test_an_arch_nothing_ships_for_and_an_empty_install(monkeypatch, tmp_path):
    _install_with(monkeypatch, tmp_path, [])
    with pytest.raises(ArtifactError, match=r"--arch fcn32s; this install has, in .*: none; pass --checkpoint"):
        shipped.checkpoint("fcn32s")


def test_pipeline_without_its_shipped_checkpoint_is_one_error_line_and_no_folder(monkeypatch, tmp_path):
    (tmp_path / "models").mkdir()
    _install_with(monkeypatch, tmp_path / "models", [])
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["pipeline", "--arch", "unetpp", "-o", str(out)])
    assert result.exit_code == 2
    assert result.output.startswith("error: no shipped reference checkpoint for --arch unetpp; unetpp_synthetic.pt")
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not out.exists()


def test_doctor_says_where_the_shipped_checkpoints_are_and_never_raises(monkeypatch):
    report = doctor.run_doctor()
    assert Path(report.checkpoints["dir"]).samefile(shipped.models_dir())
    assert sorted(report.checkpoints["found"]) == sorted(shipped.REFERENCE_CHECKPOINTS)
    assert f"checkpoints    fcn8s, unet, unet3d, unetpp (in {shipped.models_dir()})" in doctor.format_report(report)

    def broken():
        raise ArtifactError("deploy_unet.models is not importable here")

    monkeypatch.setattr(shipped, "models_dir", broken)
    report = doctor.run_doctor()
    assert report.checkpoints["found"] == {} and report.checkpoints["missing"] == ["fcn8s", "unet", "unet3d", "unetpp"]
    assert "checkpoints    none (deploy_unet.models is not importable here)" in doctor.format_report(report)
