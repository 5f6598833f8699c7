"""cluster.yaml is a valid Ray cluster-launcher file for lab machines, and keeps services off public binds."""
from __future__ import annotations

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
    assert "mlflow server --host HEAD_PRIVATE_IP" in head
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in " ".join(cfg["worker_start_ray_commands"])
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
