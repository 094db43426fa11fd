"""Idle thread pools wait passively: OMP_WAIT_POLICY at process start, ONNX Runtime's allow_spinning per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers_runners import thin_artifacts

from deploy_unet.runtime import open_runner, wait_policy


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    monkeypatch.setattr(wait_policy, "_configured", None)


def test_passive_is_set_at_start_unless_the_user_chose():
    env: dict[str, str] = {}
    policy = wait_policy.configure_at_start(env, torch_loaded=False)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert policy.passive and not policy.ort_spinning and "set by deploy-unet" in policy.omp_source

    env = {"OMP_WAIT_POLICY": "active"}
    policy = wait_policy.configure_at_start(env, torch_loaded=False)
    assert env == {"OMP_WAIT_POLICY": "active"}  # the user's value stays, and is recorded as theirs
    assert policy.omp == "ACTIVE" and policy.ort_spinning and policy.omp_source == "from your environment"
    assert "may spin" in policy.describe()


def test_too_late_is_recorded_not_pretended():
    env: dict[str, str] = {}
    policy = wait_policy.configure_at_start(env, torch_loaded=True)
    assert env == {}  # libgomp has read its environment already: setting it now would change nothing
    assert policy.omp == "default" and "torch was loaded before" in policy.omp_source
    assert not policy.ort_spinning  # ONNX Runtime's sessions can still be told, and are


@pytest.mark.parametrize(("env_value", "spinning", "expected"),
                         [(None, None, "0"), ("ACTIVE", None, "1"), (None, True, "1"), ("ACTIVE", False, "0")])
def test_onnxruntime_sessions_spin_only_when_asked(monkeypatch, env_value, spinning, expected):
    if env_value is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", env_value)
    with open_runner(thin_artifacts()["onnx"], spinning=spinning) as runner:
        options = runner.session.get_session_options()
        assert [options.get_session_config_entry(k) for k in wait_policy.ORT_SPIN_KEYS] == [expected, expected]


def test_the_cli_sets_passive_before_torch_loads_and_records_it(tmp_path):
    """In a fresh process, as a user runs it: bench's JSON says who set the policy."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = tmp_path / "b.json"
    proc = subprocess.run([sys.executable, "-m", "deploy_unet.cli", "bench", str(thin_artifacts()["onnx"]), "--size",
                           "32x32", "--warmup", "0", "--iters", "2", "--json", str(out)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    policy = json.loads(out.read_text())["schedule"]["wait_policy"]
    assert policy["omp"] == "PASSIVE" and policy["omp_source"] == "set by deploy-unet at start"
    assert policy["ort_spinning"] is False
    assert "Idle threads wait passively" in proc.stdout


def test_validate_records_how_idle_threads_waited(monkeypatch):
    import numpy as np
    from helpers_runners import ConstantRunner

    from deploy_unet.validate import Sample, validate

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    logits = np.zeros((1, 2, 4, 4), np.float32)
    report = validate(ConstantRunner([logits]), ConstantRunner([logits]), [Sample(np.zeros((1, 3, 4, 4), np.float32))])
    assert "OMP_WAIT_POLICY=PASSIVE" in report.wait_policy and "ONNX Runtime spinning off" in report.wait_policy
    assert report.to_dict()["wait_policy"] == report.wait_policy
