"""Launch errors name the fix instead of hanging or failing deep inside a worker."""
import subprocess
import sys

import pytest

from cluster.topology import ResourceError, check_resources
from rlhf_dist.config import load_config


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
