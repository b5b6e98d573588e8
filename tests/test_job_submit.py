"""`ray start --head` + `ray job submit --working-dir .` on loopback, as an operator runs it:
submit, stop (`ray job stop`) and resume."""
import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from cluster.checkpoint import checkpoint_step, latest_checkpoint, load_checkpoint
from rlhf_dist.run_output import read_metrics

try:
    from tests.ray_nodes import REPO, start_head
except ImportError:
    from ray_nodes import REPO, start_head


@pytest.fixture
def ray_head():
    cluster = start_head(num_cpus=4)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def ray_head_with_grace():
    # `ray job stop` waits RAY_JOB_STOP_WAIT_TIME_S (3 by default, read on the head) between
    # SIGTERM and SIGKILL; on 2 busy cores a step and its checkpoint can take longer, so the
    # test gives the driver the time an operator would (cluster/README.md says how).
    cluster = start_head(num_cpus=4, RAY_JOB_STOP_WAIT_TIME_S="60")
    try:
        yield cluster.dashboard, cluster.env
    finally:
        cluster.stop()


def job(address: str, env: dict, *args: str, timeout: float = 600) -> tuple[int, str]:
    cmd = ["ray", "job", *args[:1], "--address", address, *args[1:]]
    for _ in range(30):
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        logs = proc.stdout + proc.stderr
        # Right after `ray start` the head's job agent may not be up yet: Ray answers 500
        # "No available agent" and nothing is created, so the same command is retried.
        if "No available agent to submit job" not in logs:
            break
        time.sleep(2)
    return proc.returncode, logs


def entrypoint(out_dir: Path, name: str, *extra: str) -> list[str]:
    return ["--", "python", "-m", "cluster.entrypoint", "--config", "configs/tiny.yaml",
            f"run.output_dir={out_dir}", f"run.name={name}", *extra]


def test_runtime_env_excludes_what_must_not_upload():
    env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    for path in (".git", ".venv", "runs", "*.safetensors"):
        assert path in env["excludes"]
    assert "setup_commands" not in env                                  # not a runtime_env field


def test_submit_tiny_job(ray_head, tmp_path):
    address, env = ray_head.dashboard, ray_head.env
    out_dir = tmp_path / "runs"
    # The operator's runtime env as it is, `pip` entry included: Ray installs the two wheels
    # with --no-deps into the job's virtualenv (already satisfied here, so nothing downloads).
    code, logs = job(address, env, "submit", "--submission-id", "tiny-submit",
                     "--runtime-env", "cluster/runtime_env.yaml", "--working-dir", ".",
                     *entrypoint(out_dir, "submitted"))
    assert code == 0, logs[-4000:]
    assert "Job 'tiny-submit' succeeded" in logs
    assert "summary: true score" in logs                                # the driver's output came back
    assert "Started a local Ray instance" not in logs                   # it joined the cluster
    rows = read_metrics(out_dir / "submitted" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert (out_dir / "submitted" / "policy" / "config.json").exists()
    code, status = job(address, env, "status", "tiny-submit", timeout=60)
    assert "Job 'tiny-submit' succeeded" in status
    # Ray ran the runtime env's pip install, with --no-deps, for this job's workers.
    logs_dir = Path(ray_head.nodes[0].temp_dir) / "session_latest" / "logs"
    setup = "".join(p.read_text(errors="replace") for p in logs_dir.glob("runtime_env_setup-*.log"))
    install = [line for line in setup.splitlines() if "pip install" in line or "'install', '-r'" in line]
    assert install and all("--no-deps" in line for line in install), setup[-3000:]


def test_job_stop_then_resume(ray_head_with_grace, tmp_path):
    address, env = ray_head_with_grace
    out_dir, run_dir = tmp_path / "runs", tmp_path / "runs" / "stopped"
    # The runtime env without its `pip` entry: the wheels are in this venv already, and each
    # job with a `pip` entry copies the whole venv (2 GB) into a new virtualenv first.
    runtime_env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    runtime_env.pop("pip")
    (tmp_path / "runtime_env.yaml").write_text(yaml.safe_dump(runtime_env))
    run_args = ["ppo.total_episodes=160", "run.checkpoint_every=2"]      # 10 updates
    submit = ["submit", "--runtime-env", str(tmp_path / "runtime_env.yaml"), "--working-dir", "."]
    code, logs = job(address, env, *submit, "--submission-id", "to-stop", "--no-wait",
                     *entrypoint(out_dir, "stopped", *run_args))
    assert code == 0, logs[-4000:]
    deadline = time.time() + 300
    while latest_checkpoint(run_dir) is None and time.time() < deadline:
        time.sleep(0.2)
    assert latest_checkpoint(run_dir) is not None, "no checkpoint before the deadline"

    code, logs = job(address, env, "stop", "to-stop", timeout=120)       # SIGTERM, SIGKILL after the grace
    assert code == 0, logs[-4000:]
    _, status = job(address, env, "status", "to-stop", timeout=60)
    assert "Job 'to-stop' was stopped" in status
    _, driver_log = job(address, env, "logs", "to-stop", timeout=60)
    rows = read_metrics(run_dir / "metrics.jsonl")                      # every line whole
    stopped_at = rows[-1]["step"]
    assert 2 <= stopped_at < 10
    assert f"stopped after step {stopped_at} (SIGTERM)" in driver_log
    assert "summary: true score" not in driver_log                      # no evaluation of a cut run
    ckpt = latest_checkpoint(run_dir)
    assert checkpoint_step(ckpt) == stopped_at                          # the step in progress was kept
    assert load_checkpoint(ckpt)["step"] == stopped_at                  # and it loads
    assert [p.name for p in (run_dir / "checkpoints").iterdir() if not p.name.startswith("step-")] == []

    code, logs = job(address, env, *submit, "--submission-id", "resumed",
                     *entrypoint(out_dir, "stopped", *run_args, "--resume"))
    assert code == 0, logs[-4000:]
    assert f"resumed from {ckpt}" in logs
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(0, 11))              # no step missing or doubled
    first_after = rows[stopped_at + 1]
    assert first_after["first_rollout_policy_version"] == stopped_at    # sampled from the checkpoint
    assert first_after["samples_consumed"] == 16 * (stopped_at + 1)     # learner counters restored
    assert first_after["data_position"] == 16 * (stopped_at + 1)        # data position restored
    assert json.loads((run_dir / "summary.json").read_text())["eval/n"] == 16
