"""The pipeline on a real local Ray instance: broadcast, versions, and a whole tiny run."""
import json

import torch

from cluster.supervision import Fleet
from cluster.topology import start_actors, stop_actors
from cluster.train import prepare_task, run
from rlhf_dist.config import derived, load_config
from rlhf_dist.run_output import read_metrics


def test_broadcast_makes_replicas_equal_and_new_rollouts_use_it(ray_local):
    ray = ray_local
    cfg = load_config("configs/tiny.yaml", ["resources.num_rollout_actors=2"])
    task = prepare_task(cfg)
    actors = start_actors(ray, cfg, task.stop_ids, derived(cfg).num_updates)
    fleet = Fleet(ray, actors)
    q = task.pad(task.queries.train[:16], cfg.data.query_length)
    batch = fleet.gather(fleet.dispatch(q))
    assert batch.policy_versions.tolist() == [0] * 16
    scored = ray.get(actors.scorer.score.remote(batch))
    stats = ray.get(actors.learner.update.remote(scored))
    assert stats["first_mb_max_logprob_diff"] < 1e-4 and abs(stats["first_mb_ratio"] - 1) < 1e-4
    assert stats["policy_version"] == 1
    weights = actors.learner.weights.remote()
    assert ray.get([a.set_weights.remote(weights) for a in actors.rollout]) == [1, 1]
    learner_w = ray.get(weights)
    changed = 0
    for replica in ray.get([a.current_weights.remote() for a in actors.rollout]):
        assert replica.version == 1 and replica.tensors.keys() == learner_w.tensors.keys()
        for name, value in learner_w.tensors.items():
            assert (replica.tensors[name] == value).all() and replica.tensors[name].shape == value.shape, name
    initial = ray.get(actors.learner.weights.remote())   # same object twice: stable
    assert all((initial.tensors[k] == learner_w.tensors[k]).all() for k in learner_w.tensors)
    batch2 = fleet.gather(fleet.dispatch(q))
    assert batch2.policy_versions.tolist() == [1] * 16
    # the update moved the weights, so the replicas really hold something new
    fresh = __import__("actors.rollout", fromlist=["RolloutWorker"]).RolloutWorker(cfg.model, cfg.sampling, 0, 1)
    fresh_w = fresh.current_weights()
    changed = sum(not (fresh_w.tensors[k] == learner_w.tensors[k]).all() for k in learner_w.tensors)
    assert changed > 0
    stop_actors(ray, actors)


def test_tiny_run_end_to_end(ray_local, tmp_path):
    cfg = load_config("configs/tiny.yaml", [f"run.output_dir={tmp_path}", "run.name=e2e", "ppo.staleness=1"])
    summary = run(cfg)
    run_dir = tmp_path / "e2e"
    for name in ("config.yaml", "metrics.jsonl", "metrics.png", "samples_initial.md", "samples_final.md",
                 "summary.json", "policy/config.json", "policy/model.safetensors", "policy/value_head.pt",
                 "reward_model/config.json", "reward_model/reward_head.pt",
                 "policy/tokenizer.json", "reward_model/tokenizer.json"):   # each folder stands alone
        assert (run_dir / name).exists(), name
    rows = read_metrics(run_dir / "metrics.jsonl")
    steps = [r["step"] for r in rows]
    assert steps == list(range(0, derived(cfg).num_updates + 1))
    ppo_rows = rows[1:]
    assert ppo_rows[0]["objective/kl"] == 0.0 or abs(ppo_rows[0]["objective/kl"]) < 1e-3   # KL 0 at step 0
    assert ppo_rows[0]["first_mb_max_logprob_diff"] < 1e-4
    assert max(r["policy_version_lag"] for r in ppo_rows) <= 1            # staleness bound
    assert ppo_rows[1]["policy_version_lag"] == 1                         # and it was used
    assert [r["samples_consumed"] for r in ppo_rows] == [16 * i for i in range(1, len(ppo_rows) + 1)]
    assert all(r["reward_version"] == 1 for r in ppo_rows)
    assert summary["eval/n"] == cfg.run.eval_queries
    assert 0.0 <= summary["eval/win_rate"] <= 1.0
    assert json.loads((run_dir / "summary.json").read_text())["eval/n"] == cfg.run.eval_queries
    # the saved policy loads with from_pretrained and the reward model with its loader
    from transformers import AutoModelForCausalLM

    from rlhf_dist.reward_model import load_reward_model

    AutoModelForCausalLM.from_pretrained(run_dir / "policy")
    rm = load_reward_model(run_dir / "reward_model")
    assert abs(rm.gain.item() - summary["reward/gain"]) < 1e-6
