"""Putting the plain classes on Ray with the resources the config names.

This is the one place that connects to Ray. Under `ray job submit` the job's driver
connects to its cluster with a plain `ray.init()`; otherwise a local instance starts on
127.0.0.1. Requests larger than the cluster fail here with a message, never wait forever.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from rlhf_dist.config import Config, ResourcesConfig

_ENV = {"TOKENIZERS_PARALLELISM": "false"}


class ResourceError(RuntimeError):
    pass


def connect(cfg: Config):
    import ray

    if ray.is_initialized():
        return ray
    address = cfg.run.ray_address or os.environ.get("RAY_ADDRESS", "")
    if address:
        # Inside `ray job submit` RAY_ADDRESS is set: join that cluster and its runtime env.
        ray.init(address=address, log_to_driver=True)
    else:
        # Ray runs workers at nice 15 by default; on a machine shared with anything else that
        # starves the actors against the driver. A local instance runs them at normal priority.
        os.environ.setdefault("RAY_worker_niceness", "0")
        res = cfg.resources
        wanted = res.num_rollout_actors * res.rollout_cpus + res.reward_cpus * 2 + res.learner_cpus
        ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(wanted)), include_dashboard=False,
                 _node_ip_address="127.0.0.1", runtime_env={"env_vars": _ENV}, log_to_driver=True)
    return ray


def check_resources(ray, res: ResourcesConfig) -> None:
    """Fail at once when the cluster cannot hold the actors (Ray would wait forever)."""
    total = ray.cluster_resources()
    need_cpu = res.num_rollout_actors * res.rollout_cpus + 2 * res.reward_cpus + res.learner_cpus
    need_gpu = res.num_rollout_actors * res.rollout_gpus + 2 * res.reward_gpus + res.learner_gpus
    have_cpu, have_gpu = total.get("CPU", 0.0), total.get("GPU", 0.0)
    if need_gpu > have_gpu:
        raise ResourceError(
            f"the config asks for {need_gpu:g} GPUs (resources.rollout_gpus x num_rollout_actors + "
            f"reward_gpus x 2 + learner_gpus) but the cluster has {have_gpu:g}; lower those settings "
            f"or add GPU nodes")
    if need_cpu > have_cpu:
        raise ResourceError(
            f"the config asks for {need_cpu:g} CPUs (resources.*_cpus) but the cluster has {have_cpu:g}; "
            f"lower resources.rollout_cpus/reward_cpus/learner_cpus or resources.num_rollout_actors")


@dataclass
class Actors:
    rollout: list      # RolloutWorker handles
    scorer: object     # RewardScorer
    learner: object    # PPOLearner
    reward_trainer: object


def start_actors(ray, cfg: Config, stop_ids: list[int], num_updates: int) -> Actors:
    from actors.rollout import RolloutWorker
    from actors.scorer import RewardScorer
    from learner.ppo_learner import PPOLearner
    from learner.reward_trainer import RewardTrainer

    res, threads = cfg.resources, cfg.resources.torch_threads
    env = {"runtime_env": {"env_vars": {**_ENV, "OMP_NUM_THREADS": str(threads)}}}
    prefix = f"{cfg.run.name or 'run'}-{os.getpid()}-"

    def remote(cls, name, cpus, gpus, restarts):
        # Rollout actors and the scorer can be rebuilt (cluster/supervision.py); the learners
        # hold optimizer state that only a checkpoint can bring back.
        return ray.remote(cls).options(name=prefix + name, num_cpus=cpus, num_gpus=gpus,
                                       max_restarts=restarts, **env)

    rollout = [remote(RolloutWorker, f"rollout-{rank}", res.rollout_cpus, res.rollout_gpus, res.max_restarts).remote(
        cfg.model, cfg.sampling, cfg.run.seed + 100003 * rank, threads)   # per-rank seeds (paper)
        for rank in range(res.num_rollout_actors)]
    scorer = remote(RewardScorer, "scorer", res.reward_cpus, res.reward_gpus, res.max_restarts).remote(
        cfg.model, cfg.sampling, stop_ids, threads)
    learner = remote(PPOLearner, "learner", res.learner_cpus, res.learner_gpus, 0).remote(
        cfg.model, cfg.ppo, cfg.kl, cfg.sampling, num_updates, cfg.run.seed, threads)
    trainer = remote(RewardTrainer, "reward-trainer", res.reward_cpus, res.reward_gpus, 0).remote(
        cfg.model, cfg.reward, cfg.run.seed, threads)
    actors = Actors(rollout, scorer, learner, trainer)
    ray.get([a.ready.remote() for a in rollout] + [scorer.ready.remote(), learner.ready.remote(), trainer.ready.remote()])
    return actors


def stop_actors(ray, actors: Actors) -> None:
    """Release the actors' resources (the same Ray instance may run another job next)."""
    for actor in actors.rollout + [actors.scorer, actors.learner, actors.reward_trainer]:
        ray.kill(actor, no_restart=True)
