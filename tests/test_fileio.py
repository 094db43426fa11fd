import os
import stat

import pytest

from deploy_unet.fileio import atomic_path, write_text_atomic


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temp file left behind


def test_atomic_write_has_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "out.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o644


def test_json_safe_makes_nan_inf_and_numpy_scalars_valid_json():
    import json

    import numpy as np

    from deploy_unet.fileio import json_safe

    value = {"a": [float("nan"), float("inf"), -float("inf"), 1.5], "b": (np.float32(np.nan), np.int64(3)),
             "c": {"d": np.float64(2.0)}}
    text = json.dumps(json_safe(value), allow_nan=False)  # raises if a NaN/Inf survived
    assert json.loads(text) == {"a": [None, "inf", "-inf", 1.5], "b": [None, 3], "c": {"d": 2.0}}
