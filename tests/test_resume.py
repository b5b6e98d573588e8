"""Kill a running job at a checkpoint boundary, resume it, and check nothing is lost or doubled."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from cluster.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from rlhf_dist.run_output import read_metrics


def test_checkpoint_is_atomic_and_latest_wins(tmp_path):
    save_checkpoint(tmp_path, 1, {"x": torch.ones(2)})
    save_checkpoint(tmp_path, 2, {"x": torch.zeros(2)})
    # a kill mid-write leaves only a temporary folder, which is never taken
    (tmp_path / "checkpoints" / ".tmp-step-00000003-999").mkdir()
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step-00000002"
    assert torch.equal(load_checkpoint(latest)["x"], torch.zeros(2))
    save_checkpoint(tmp_path, 3, {"x": torch.full((2,), 3.0)})
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert names == ["step-00000002", "step-00000003"]                 # keeps the last 2


def _job(tmp_path, *extra):
    cmd = [sys.executable, "-m", "cluster.entrypoint", "--config", "configs/tiny.yaml",
           f"run.output_dir={tmp_path}", "run.name=killed", "ppo.total_episodes=96",
           "run.checkpoint_every=2", "resources.num_rollout_actors=1", *extra]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def test_kill_and_resume(tmp_path):
    run_dir = tmp_path / "killed"
    proc = _job(tmp_path)
    deadline = time.time() + 240
    while latest_checkpoint(run_dir) is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)                                 # driver and its local Ray
    proc.wait()
    ckpt = latest_checkpoint(run_dir)
    assert ckpt is not None, "no checkpoint before the deadline"
    step = load_checkpoint(ckpt)["step"]
    assert step in (2, 4)
    resumed = _job(tmp_path, "--resume")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-3000:]
    assert f"resumed from {ckpt}" in out
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(0, 7))              # no step missing or doubled
    first_after = rows[step + 1]
    assert first_after["first_rollout_policy_version"] == step          # sampled from the checkpoint
    assert first_after["samples_consumed"] == 16 * (step + 1)           # learner counters restored
    assert first_after["data_position"] == 16 * (step + 1)              # data position restored
    assert (run_dir / "policy" / "model.safetensors").exists()


def test_same_run_name_without_resume_is_refused(tmp_path):
    run_dir = tmp_path / "killed"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 0}\n')
    proc = _job(tmp_path)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "already holds a run: pass --resume" in out


def test_resume_ignores_what_a_kill_leaves_behind(tmp_path):
    from cluster.train import keep_metrics_until

    save_checkpoint(tmp_path, 2, {"step": 2})
    stale = tmp_path / "checkpoints" / ".tmp-step-00000004-999"          # killed mid-checkpoint
    stale.mkdir()
    (stale / "state.pt").write_bytes(b"half a checkpoint")
    assert latest_checkpoint(tmp_path).name == "step-00000002"
    metrics = tmp_path / "metrics.jsonl"                                # killed mid-line
    metrics.write_text('{"step": 0}\n{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "objective/sc')
    keep_metrics_until(metrics, 2)
    assert metrics.read_text() == '{"step": 0}\n{"step": 1}\n{"step": 2}\n'
    save_checkpoint(tmp_path, 3, {"step": 3})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]


def test_sigterm_stops_at_once_before_ppo_and_at_a_step_boundary_after():
    import pytest

    from cluster.stopping import EXIT_STOPPED, StopRequest

    said = []
    previous = signal.getsignal(signal.SIGTERM)                         # ray.init installs one of its own
    stop = StopRequest(said.append).install()
    try:
        with pytest.raises(SystemExit) as e:                            # reward learning: nothing to save
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        assert e.value.code == EXIT_STOPPED == 143
        stop.graceful = True                                            # PPO loop: finish the step first
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert stop.requested
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGTERM) is previous                  # given back on the way out
    assert said == ["SIGTERM before PPO started: nothing to checkpoint yet, stopping now",
                    "SIGTERM: stopping after the step in progress (it is checkpointed first)"]
