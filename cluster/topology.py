"""Putting the plain classes on Ray with the resources the config names.

This is the one place that connects to Ray. Under `ray job submit` the job's driver
connects to its cluster with a plain `ray.init()`; otherwise a local instance starts on
127.0.0.1. Requests larger than the cluster fail here with a message, never wait forever.

Every actor sits in one bundle of a placement group whose strategy is `resources.placement`
('pack' or 'spread'); the driver creates the group (`ray job submit` does not) and waits for it
with a deadline, since Ray would leave a group that cannot be placed pending forever.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from rlhf_dist.config import PLACEMENTS, Config, ResourcesConfig

_ENV = {"TOKENIZERS_PARALLELISM": "false"}
PLACEMENT_TIMEOUT_S = 120.0   # a fitting group is placed in well under a second


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
    placement_group: object = None


def _bundle(cpus: float, gpus: float) -> dict:
    return {k: v for k, v in (("CPU", cpus), ("GPU", gpus)) if v > 0}   # Ray rejects zero entries


def actor_bundles(res: ResourcesConfig) -> list[dict]:
    """One bundle per actor, in this order: rollout 0..N-1, scorer, learner, reward trainer."""
    return ([_bundle(res.rollout_cpus, res.rollout_gpus)] * res.num_rollout_actors
            + [_bundle(res.reward_cpus, res.reward_gpus), _bundle(res.learner_cpus, res.learner_gpus),
               _bundle(res.reward_cpus, res.reward_gpus)])


def make_placement_group(ray, res: ResourcesConfig, name: str = "", timeout_s: float = PLACEMENT_TIMEOUT_S):
    from ray.util.placement_group import placement_group, remove_placement_group

    bundles = actor_bundles(res)
    pg = placement_group(bundles, strategy=PLACEMENTS[res.placement], name=name)
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
        per_node = "; ".join(", ".join(f"{k}={v:g}" for k, v in sorted(r.items()) if k in ("CPU", "GPU"))
                             for r in nodes)
        raise ResourceError(
            f"the actors' placement group (resources.placement={res.placement}) was not placed within "
            f"{timeout_s:.0f}s: bundles {bundles} do not fit the nodes ({per_node}); lower "
            f"resources.*_cpus/*_gpus so that each actor fits one node, or add nodes") from None
    return pg


def describe_placement(pg) -> str:
    """What Ray made of the group (read back from Ray, not from the config)."""
    from ray.util.placement_group import placement_group_table

    table = placement_group_table(pg)
    nodes = len(set(table["bundles_to_node_id"].values()))
    return f"placement group {table['name']}: strategy {table['strategy']}, {len(table['bundles'])} bundles on {nodes} node(s)"


def start_actors(ray, cfg: Config, stop_ids: list[int], num_updates: int) -> Actors:
    from actors.rollout import RolloutWorker
    from actors.scorer import RewardScorer
    from learner.ppo_learner import PPOLearner
    from learner.reward_trainer import RewardTrainer
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    res, threads = cfg.resources, cfg.resources.torch_threads
    env = {"runtime_env": {"env_vars": {**_ENV, "OMP_NUM_THREADS": str(threads)}}}
    prefix = f"{cfg.run.name or 'run'}-{os.getpid()}-"
    pg = make_placement_group(ray, res, prefix + "actors")
    n = res.num_rollout_actors

    def remote(cls, name, bundle, cpus, gpus, restarts):
        # Rollout actors and the scorer can be rebuilt (cluster/supervision.py); the learners
        # hold optimizer state that only a checkpoint can bring back. A restarted actor comes
        # back in its own bundle, which Ray moves to a live node when its node is lost.
        where = PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=bundle)
        return ray.remote(cls).options(name=prefix + name, num_cpus=cpus, num_gpus=gpus, max_restarts=restarts,
                                       scheduling_strategy=where, **env)

    rollout = [remote(RolloutWorker, f"rollout-{rank}", rank, res.rollout_cpus, res.rollout_gpus, res.max_restarts)
               .remote(cfg.model, cfg.sampling, cfg.run.seed + 100003 * rank, threads)   # per-rank seeds (paper)
               for rank in range(n)]
    scorer = remote(RewardScorer, "scorer", n, res.reward_cpus, res.reward_gpus, res.max_restarts).remote(
        cfg.model, cfg.sampling, stop_ids, threads)
    learner = remote(PPOLearner, "learner", n + 1, res.learner_cpus, res.learner_gpus, 0).remote(
        cfg.model, cfg.ppo, cfg.kl, cfg.sampling, num_updates, cfg.run.seed, threads)
    trainer = remote(RewardTrainer, "reward-trainer", n + 2, res.reward_cpus, res.reward_gpus, 0).remote(
        cfg.model, cfg.reward, cfg.run.seed, threads)
    actors = Actors(rollout, scorer, learner, trainer, pg)
    try:
        ray.get([a.ready.remote() for a in rollout] + [scorer.ready.remote(), learner.ready.remote(),
                                                        trainer.ready.remote()])
    except BaseException:
        stop_actors(ray, actors)   # on a shared cluster, give the reserved bundles back
        raise
    return actors


def stop_actors(ray, actors: Actors) -> None:
    """Release the actors' resources (the same Ray instance may run another job next)."""
    from ray.util.placement_group import remove_placement_group

    for actor in actors.rollout + [actors.scorer, actors.learner, actors.reward_trainer]:
        ray.kill(actor, no_restart=True)
    if actors.placement_group is not None:
        remove_placement_group(actors.placement_group)
