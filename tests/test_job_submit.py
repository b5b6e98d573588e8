"""`ray start --head` + `ray job submit --working-dir .` on loopback, as an operator runs it."""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from rlhf_dist.run_output import read_metrics

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    if shutil.which("ray") is None:
        pytest.fail("the ray CLI is not installed (ray[default])")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}
    gcs, dash, agent, agent_grpc, runtime_env_agent, metrics, client = (free_port() for _ in range(7))
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")   # short: Ray's socket paths have a length limit
    # A session of its own: every daemon of this head shares its process group, so the test
    # stops exactly this cluster (`ray stop` would stop every Ray on the machine).
    starter = subprocess.Popen(["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                                "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=4",
                                # Other Ray instances may hold the default agent ports (52365...).
                                f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
                                f"--runtime-env-agent-port={runtime_env_agent}", f"--metrics-export-port={metrics}",
                                f"--ray-client-server-port={client}",
                                "--disable-usage-stats", f"--temp-dir={temp_dir}"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    out, _ = starter.communicate(timeout=120)
    assert starter.returncode == 0, out[-3000:]
    try:
        yield f"http://127.0.0.1:{dash}", env
    finally:
        try:
            os.killpg(starter.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_runtime_env_excludes_what_must_not_upload():
    env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    for path in (".git", ".venv", "runs", "*.safetensors"):
        assert path in env["excludes"]
    assert "setup_commands" not in env                                  # not a runtime_env field


def test_submit_tiny_job(ray_head, tmp_path):
    address, env = ray_head
    out_dir = tmp_path / "runs"
    cmd = ["ray", "job", "submit", "--address", address, "--submission-id", "tiny-submit",
           "--runtime-env", "cluster/runtime_env.yaml", "--working-dir", ".", "--",
           "python", "-m", "cluster.entrypoint", "--config", "configs/tiny.yaml",
           f"run.output_dir={out_dir}", "run.name=submitted"]
    for _ in range(30):
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        logs = proc.stdout + proc.stderr
        # Right after `ray start` the head's job agent may not be up yet: Ray answers 500
        # "No available agent" and nothing is created, so the same submission is retried.
        if "No available agent to submit job" not in logs:
            break
        time.sleep(2)
    assert proc.returncode == 0, logs[-4000:]
    assert "Job 'tiny-submit' succeeded" in logs
    assert "summary: true score" in logs                                # the driver's output came back
    assert "Started a local Ray instance" not in logs                   # it joined the cluster
    rows = read_metrics(out_dir / "submitted" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert (out_dir / "submitted" / "policy" / "config.json").exists()
    status = subprocess.run(["ray", "job", "status", "--address", address, "tiny-submit"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert "Job 'tiny-submit' succeeded" in status.stdout + status.stderr
