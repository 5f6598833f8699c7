"""bench/gpu_check.sh keeps working: its --tiny mode (CPU, a logical GPU for the packing) runs the code path
of the GPU check end to end and prints the JSON object with every figure the GPU run reports."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from support import REPO

pytestmark = pytest.mark.ray  # a Ray of its own for each run (its own temp folder), beside the others


@pytest.mark.slow
def test_gpu_check_tiny_runs_on_cpu(tmp_path, mlflow_db_template):
    (tmp_path / "wd").mkdir()
    shutil.copy(mlflow_db_template, tmp_path / "wd" / "mlflow.db")  # the packed run's store, migrated already
    env = {**os.environ, "PYTHON": sys.executable, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--tiny", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["mode"] == "tiny" and out["samples"] == 12 and out["env"]["cuda"] is None
    one = out["single_fold"]
    assert one["device"] == "cpu" and one["steps"] == 2 and one["step_gflop"] > 0
    assert one["achieved_tflops"] > 0 and 0 < one["share_of_matmul_rate"]
    check = out["precision_check"]
    assert check["ran_as"] == "bf16" and check["max_abs_prob_diff"] <= 0.02 and check["same_decisions"] == 1.0
    packed = out["packed"]
    assert packed["folds"] == 4 and packed["failed"] == 0 and packed["gpu_ids"] == ["0"]
    assert isinstance(packed["all_four_at_once"], bool) and packed["gain_over_one_at_a_time"] > 0
