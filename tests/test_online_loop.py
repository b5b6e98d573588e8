"""The online loop end to end on the tiny config: a real ingest server process, the training
job (its own process, a local Ray instance), and the simulated labeler process. The ingest
server is killed with SIGKILL mid-run and restarted; the run completes, and the labels the
reward trainer consumed equal the labels acknowledged to the labeler, each once."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rlhf_dist.run_output import read_metrics
from tests.ingest_helpers import JOB_TOKEN, LABELER_TOKEN, ServerProcess

ONLINE = ["online.enabled=true", "ppo.total_episodes=96", "resources.num_rollout_actors=1"]   # 6 updates


def _job(tmp_path, name, *extra, env=None):
    cmd = [sys.executable, "-m", "cluster.entrypoint", "--config", "configs/tiny.yaml", *ONLINE,
           f"run.output_dir={tmp_path}", f"run.name={name}", *extra]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **(env or {})}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_for_step(run_dir, step, proc, timeout_s=300):
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        path = run_dir / "metrics.jsonl"
        if path.exists() and any(r["step"] >= step for r in read_metrics(path)):
            return
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached; job exited {proc.poll()}")


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_ingest_killed_mid_run_loses_no_label(tmp_path):
    server = ServerProcess(tmp_path / "ingest").start()
    acks_file = tmp_path / "acks.jsonl"
    labeler = subprocess.Popen(
        [sys.executable, "-m", "rlhf_dist.ingest.cli", "simulate", "--address", server.address,
         "--acks-file", str(acks_file), "--on-tie", "random", "--batch", "4"],
        env={**os.environ, "RLHF_INGEST_TOKEN": LABELER_TOKEN}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    job = _job(tmp_path, "online", f"online.ingest_address={server.address}", "online.spawn_labeler=false",
               env={"RLHF_INGEST_JOB_TOKEN": JOB_TOKEN})
    run_dir = tmp_path / "online"
    try:
        _wait_for_step(run_dir, 2, job)
        server.kill()                                   # SIGKILL: no handler runs
        time.sleep(1.0)
        server.start()                                  # same port, same data dir: replay
        out, _ = job.communicate(timeout=400)
        assert job.returncode == 0, out[-4000:]
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        labeler.send_signal(signal.SIGTERM)
        labeler.wait(30)
    try:
        consumed = _jsonl(run_dir / "labels_consumed.jsonl")
        acked = _jsonl(acks_file)
        consumed_ids = [c["task_id"] for c in consumed]
        acked_ids = [a["task_id"] for a in acked]
        assert len(set(acked_ids)) == len(acked_ids)                       # each acknowledged once
        assert len(set(consumed_ids)) == len(consumed_ids)                 # each consumed once
        assert sorted(consumed_ids) == sorted(acked_ids)                   # and the same labels
        assert [c["sequence"] for c in consumed] == list(range(len(consumed)))
        summary = json.loads((run_dir / "summary.json").read_text())
        # 64 training/held-out tasks + 2 validation tuples after each of 6 updates, all labeled
        assert summary["online/tasks_posted"] == 64 + 2 * 6 == len(consumed)
        assert summary["online/fits"] == 3                                 # after updates 0, 2, 4
        rows = read_metrics(run_dir / "metrics.jsonl")
        assert [r["step"] for r in rows] == list(range(7))
        assert [r["reward_version"] for r in rows[1:]] == [1, 1, 2, 2, 3, 3]   # switched between batches
        assert [r["labels/due"] for r in rows[1:]] == [46, 56, 62, 64, 64, 64]  # front-loaded, done by the last fit
        assert all(r["online/validation_n"] >= 0 for r in rows[1:])
        assert 0.0 <= summary["online/current_beats_initial"] <= 1.0
        fits = _jsonl(run_dir / "reward_fits.jsonl")
        assert [f["reward/version"] for f in fits] == [1, 2, 3]
        assert fits[0]["reward/fit_labels"] < fits[-1]["reward/fit_labels"]   # refit on more labels
        assert server.log().count("serving on") == 2                       # it really restarted
        # the server's own log holds exactly these labels after its restart (replay)
        with __import__("rlhf_dist.ingest.client", fromlist=["IngestClient"]).IngestClient(
                server.address, JOB_TOKEN) as client:
            assert sorted(item.task.task_id for item in client.iter_labels(0)) == sorted(consumed_ids)
    finally:
        server.terminate()


def test_self_contained_online_run_with_async_fits(tmp_path):
    """No service given: the job starts its own ingest server and simulated labeler, and fits
    run beside PPO."""
    job = _job(tmp_path, "own", "online.async_fits=true", "online.labeler_latency_s=0.01")
    out, _ = job.communicate(timeout=400)
    assert job.returncode == 0, out[-4000:]
    run_dir = tmp_path / "own"
    assert "ingest service started as a child process" in out
    # strict JSON: a third of the run without validation labels is null, not NaN
    summary = json.loads((run_dir / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert summary["online/labels_read"] == summary["online/tasks_posted"] == 76
    assert summary["online/fits"] >= 2
    consumed = {c["task_id"] for c in _jsonl(run_dir / "labels_consumed.jsonl")}
    assert consumed == {a["task_id"] for a in _jsonl(run_dir / "labeler_acks.jsonl")}
    rows = read_metrics(run_dir / "metrics.jsonl")[1:]
    versions = [r["reward_version"] for r in rows]
    assert versions == sorted(versions) and versions[-1] >= 2
    assert (run_dir / "ingest").is_dir() and (run_dir / "reward_model" / "reward_head.pt").exists()
