"""A node holding a rollout actor is lost mid-run, on a real two-node Ray cluster (two
`ray start` on this machine; tests/ray_nodes.py says why not on loopback): Ray moves the actor's bundle to the live node, the Fleet restores
the current weights into it, and the run completes with every step once."""
import subprocess
import sys
import time

from rlhf_dist.run_output import read_metrics

try:
    from tests.ray_nodes import REPO, add_node, start_head, state
except ImportError:
    from ray_nodes import REPO, add_node, start_head, state


def wait_for_lines(path, lines: int, proc, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= lines:
            return
        time.sleep(0.1)
    raise AssertionError(f"{path} did not reach {lines} lines (driver exit code {proc.poll()})")


def test_lost_node_with_a_rollout_actor(tmp_path):
    # The head declares a silent node dead after ~1.5 s instead of ~30 s (Ray's defaults).
    cluster = start_head(num_cpus=8, multi_node=True, RAY_health_check_period_ms="500",
                         RAY_health_check_timeout_ms="500", RAY_health_check_failure_threshold="3")
    driver = None
    try:
        node_b = add_node(cluster, num_cpus=1)
        # Bundles: rollout 1 + 1, scorer 2, learner 2, reward trainer 2 CPUs. Only a rollout
        # bundle fits node B (1 CPU), and 'spread' puts one there; when B is lost, the head
        # (8 CPUs, 7 in use) takes that bundle. The driver runs on the head, as under `ray job submit`.
        driver = subprocess.Popen(
            [sys.executable, "-m", "cluster.entrypoint", "--config", "configs/tiny.yaml",
             f"run.output_dir={tmp_path}", "run.name=lost-node", f"run.ray_address={cluster.gcs}",
             "resources.placement=spread", "resources.rollout_cpus=1", "resources.reward_cpus=2",
             "resources.learner_cpus=2", "ppo.total_episodes=96"],
            cwd=REPO, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        metrics = tmp_path / "lost-node" / "metrics.jsonl"
        wait_for_lines(metrics, 2, driver)                               # reward model done, PPO running

        node_b_id = next(n["node_id"] for n in state(cluster, "nodes") if not n["is_head_node"])
        alive = state(cluster, "actors", "state=ALIVE")
        on_b = [a["name"] for a in alive if a["node_id"] == node_b_id]
        assert len(on_b) == 1 and "-rollout-" in on_b[0], on_b
        groups = [g for g in state(cluster, "placement-groups") if g["name"].startswith("lost-node-")]
        assert [g["state"] for g in groups] == ["CREATED"]
        assert {a["placement_group_id"] for a in alive if a["name"].startswith("lost-node-")} == \
            {groups[0]["placement_group_id"]}                            # every actor sits in the group

        node_b.kill()                                                     # raylet, agents and workers at once
        out, _ = driver.communicate(timeout=600)
        assert driver.returncode == 0, out[-4000:]
        assert f"placement group {groups[0]['name']}: strategy SPREAD, 5 bundles on 2 node(s)" in out
        rank = on_b[0].rsplit("-", 1)[1]
        assert f"rollout actor {rank} failed" in out
        assert f"rollout actor {rank} restarted and restored; retrying" in out
        rows = read_metrics(metrics)
        assert [r["step"] for r in rows] == list(range(0, 7))             # no step missing or doubled
        assert rows[-1]["faults/recovered"] >= 1
        # the replacement sampled from the current policy, never from the initial weights
        assert all(r["first_rollout_policy_version"] == r["step"] - 1 for r in rows[1:])
        dead = [n for n in state(cluster, "nodes") if n["node_id"] == node_b_id]
        assert [n["state"] for n in dead] == ["DEAD"]
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait()
        cluster.stop()
