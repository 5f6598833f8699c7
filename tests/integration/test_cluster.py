"""cluster.yaml is a valid Ray cluster-launcher file for lab machines, and keeps services off public binds."""
from __future__ import annotations

import shlex
import subprocess

import yaml

from support import REPO


def load():
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_passes_ray_schema_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = load()
    validate_config(cfg)
    filled = prepare_config(cfg)  # what `ray up` does before launching
    validate_config(filled)
    assert filled["available_node_types"]["local.cluster.node"]["max_workers"] == len(cfg["provider"]["worker_ips"])


def test_local_provider_with_placeholders_and_project_install():
    cfg = load()
    assert cfg["provider"]["type"] == "local"
    assert cfg["provider"]["head_ip"] == "HEAD_PRIVATE_IP"
    assert all(ip.startswith("WORKER") for ip in cfg["provider"]["worker_ips"])
    assert cfg["file_mounts"]["~/microau-sweep"] == "."
    assert any("scripts/install.sh" in c for c in cfg["setup_commands"])


def test_dashboard_on_localhost_and_mlflow_on_the_private_address():
    cfg = load()
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    assert "cluster/mlflow_server.sh HEAD_PRIVATE_IP 5000" in head
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in " ".join(cfg["worker_start_ray_commands"])
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def _mlflow_server_words() -> list[str]:
    """The words of the `mlflow server` command cluster/mlflow_server.sh runs (its continuation lines joined)."""
    text = (REPO / "cluster" / "mlflow_server.sh").read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if " mlflow server " in ln and not ln.lstrip().startswith("#"))
    words = shlex.split(line)
    return words[words.index("mlflow"):]


def test_mlflow_is_started_behind_authentication_on_a_private_address(tmp_path):
    """cluster.yaml starts MLflow through cluster/mlflow_server.sh, on the head's private address; that script
    runs `mlflow server --app-name basic-auth`, bound to the host it is given, never to every interface, with
    its secrets in its environment rather than on its command line (docs/security.md)."""
    words = _mlflow_server_words()
    assert words[:4] == ["mlflow", "server", "--app-name", "basic-auth"]
    assert words[words.index("--host") + 1] == "$HOST"
    assert not [w for w in words if "PASSWORD" in w or "SECRET" in w]

    head = [shlex.split(c) for c in load()["head_start_ray_commands"] if "mlflow_server.sh" in c]
    assert len(head) == 1
    args = head[0][head[0].index("~/microau-sweep/cluster/mlflow_server.sh") + 1:]
    assert args[:2] == ["HEAD_PRIVATE_IP", "5000"]  # the placeholder of the head's private address

    for everywhere in ("0.0.0.0", "::"):  # refused before anything is written or started
        proc = subprocess.run(["bash", str(REPO / "cluster" / "mlflow_server.sh"), everywhere, "5000",
                               str(tmp_path / "runs")], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2 and "every interface" in proc.stderr
        assert not (tmp_path / "runs").exists()


def test_the_slurm_script_starts_the_same_server_on_the_head_node():
    """cluster/slurm/sweep.sbatch starts MLflow through cluster/mlflow_server.sh (the one `mlflow server`
    command) on the head node's address, and gives the sweep that server with the generated password."""
    sbatch = (REPO / "cluster" / "slurm" / "sweep.sbatch").read_text().replace("\\\n", " ")
    starts = [shlex.split(ln) for ln in sbatch.splitlines() if "mlflow_server.sh" in ln and "bash" in ln]
    assert len(starts) == 1
    words = starts[0]
    assert words[words.index("$MICROAU_DIR/cluster/mlflow_server.sh") + 1] == "$HEAD_IP"  # hostname -I of the head
    assert "mlflow server" not in sbatch and "0.0.0.0" not in sbatch
    assert '--tracking-uri "http://$HEAD_IP:$MLFLOW_PORT"' in sbatch
    assert "--dashboard-host=127.0.0.1" in sbatch and "export RAY_AUTH_MODE=token" in sbatch
