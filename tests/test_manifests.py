"""The cluster manifests parse and launch the project's real entrypoint."""
import shlex
from pathlib import Path

import yaml

from rlhf_dist.config import load_config

REPO = Path(__file__).resolve().parents[1]


def check_command(command: str) -> None:
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "cluster.entrypoint"]
    assert (REPO / "cluster" / "entrypoint.py").exists()
    config = argv[argv.index("--config") + 1]
    overrides = [a for a in argv[argv.index("--config") + 2:] if "=" in a]
    load_config(str(REPO / config), overrides)                         # the settings are valid


def test_kuberay_rayjob():
    doc = yaml.safe_load((REPO / "cluster" / "kuberay-rayjob.yaml").read_text())
    assert doc["kind"] == "RayJob" and doc["spec"]["submissionMode"] == "HTTPMode"
    check_command(doc["spec"]["entrypoint"])
    runtime_env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
    assert ".git" in runtime_env["excludes"] and "setup_commands" not in runtime_env


def test_cluster_launcher_config():
    doc = yaml.safe_load((REPO / "cluster" / "ray-cluster.yaml").read_text())
    assert doc["head_node_type"] in doc["available_node_types"]
    text = (REPO / "cluster" / "ray-cluster.yaml").read_text()
    submit = next(line for line in text.splitlines() if "python -m cluster.entrypoint" in line)
    check_command(submit.lstrip("# "))
