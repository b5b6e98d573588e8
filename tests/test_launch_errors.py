"""Launch errors name the fix instead of hanging or failing deep inside a worker."""
import os
import socket
import subprocess
import sys

import pytest

from cluster.topology import ResourceError, check_resources
from rlhf_dist.config import load_config
from tests.ingest_helpers import JOB_TOKEN, LABELER_TOKEN, ServerProcess


def test_more_gpus_than_the_cluster_has(ray_local):
    cfg = load_config("configs/tiny.yaml", ["resources.learner_gpus=1"])
    with pytest.raises(ResourceError, match=r"asks for 1 GPUs .* but the cluster has 0"):
        check_resources(ray_local, cfg.resources)


def test_more_cpus_than_the_cluster_has(ray_local):
    cfg = load_config("configs/tiny.yaml", ["resources.num_rollout_actors=8", "resources.rollout_cpus=2"])
    with pytest.raises(ResourceError, match=r"asks for 1\d(\.\d+)? CPUs"):
        check_resources(ray_local, cfg.resources)


def test_missing_model_folder_fails_before_ray(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cluster.entrypoint", "--config", "configs/tiny.yaml",
                           f"model.name={tmp_path}/nope", f"run.output_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"model.name={tmp_path}/nope: no such folder" in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout


def _launch_online(tmp_path, address, token):
    env = {k: v for k, v in os.environ.items() if k != "RLHF_INGEST_JOB_TOKEN"}
    if token:
        env["RLHF_INGEST_JOB_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "cluster.entrypoint", "--config", "configs/tiny.yaml",
                           "online.enabled=true", f"online.ingest_address={address}", f"run.output_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120, env=env)


def test_unreachable_ingest_service_fails_before_ray(tmp_path):
    with socket.socket() as s:   # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    proc = _launch_online(tmp_path, address, JOB_TOKEN)
    assert proc.returncode == 2
    assert f"online.ingest_address={address}: the ingest service is not reachable" in proc.stderr
    assert "rlhf-dist ingest serve" in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout
    proc = _launch_online(tmp_path, address, None)
    assert proc.returncode == 2
    assert "set $RLHF_INGEST_JOB_TOKEN to the service's job token" in proc.stderr


def test_ingest_service_refusing_the_job_token_fails_before_ray(tmp_path):
    server = ServerProcess(tmp_path / "ingest").start()
    try:
        proc = _launch_online(tmp_path, server.address, LABELER_TOKEN)   # a labeler token on a job call
    finally:
        server.terminate()
    assert proc.returncode == 2
    assert f"online.ingest_address={server.address}: the ingest service is not reachable" in proc.stderr
    assert "PERMISSION_DENIED" in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout


def test_more_gpus_than_the_cluster_has_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cluster.entrypoint", "--config", "configs/tiny.yaml",
                           "resources.learner_gpus=1", f"run.output_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2
    assert "error: " in proc.stderr and "asks for 1 GPUs" in proc.stderr
    assert "Traceback" not in proc.stderr
