"""A rollout actor and the scorer killed mid-run are restarted, restored, and the run completes."""
import os
import threading
import time

from cluster.train import run
from rlhf_dist.config import load_config
from rlhf_dist.run_output import read_metrics


def kill_when(ray, metrics_path, at_lines: int, name: str, killed: list):
    deadline = time.time() + 300
    while time.time() < deadline:
        if metrics_path.exists() and len(metrics_path.read_text().splitlines()) >= at_lines:
            ray.kill(ray.get_actor(name), no_restart=False)   # as a crash: Ray restarts it
            killed.append(name)
            return
        time.sleep(0.05)


def test_rollout_actor_and_scorer_restart_mid_run(ray_local, tmp_path):
    ray = ray_local
    cfg = load_config("configs/tiny.yaml", [f"run.output_dir={tmp_path}", "run.name=faulty",
                                            "ppo.total_episodes=96", "resources.num_rollout_actors=2"])
    metrics = tmp_path / "faulty" / "metrics.jsonl"
    prefix = f"faulty-{os.getpid()}-"
    killed: list = []
    threads = [threading.Thread(target=kill_when, args=(ray, metrics, 2, prefix + "rollout-0", killed)),
               threading.Thread(target=kill_when, args=(ray, metrics, 4, prefix + "scorer", killed))]
    for t in threads:
        t.start()
    summary = run(cfg)
    for t in threads:
        t.join()
    assert killed == [prefix + "rollout-0", prefix + "scorer"]
    rows = read_metrics(metrics)
    assert [r["step"] for r in rows] == list(range(0, 7))
    assert rows[-1]["faults/recovered"] == 2
    # after recovery the replicas sample from the current policy, never from the initial one
    assert all(r["first_rollout_policy_version"] == r["step"] - 1 for r in rows[1:])
    assert all(r["reward_version"] == 1 for r in rows[1:])              # scorer got its reward model back
    assert summary["eval/n"] == cfg.run.eval_queries
