"""The two loops bench_ppo compares, and the phase clock both carry.

`SingleProcess` is the baseline: the same RolloutWorker, RewardScorer and PPOLearner classes
called in one process, one after another, every phase on all cores (torch threads =
resources.torch_threads), whole-batch tensor calls, trunk features handed over by reference,
and the rollout worker sharing the learner's policy modules, so there is no weight copy at all
(a competent single-process loop needs none). `RayPipeline` is the Ray pipeline of
cluster/train.py `ppo_loop` at staleness 0, call for call (rollout -> merge_rollouts ->
scorer.score -> learner.update -> learner.weights -> set_weights on every rollout actor ->
decode + true labeler on the driver), with the driver-side time of each phase and, from the
actors, the time spent inside them; the difference is Ray's waiting and transfer.

Both sides carry the same instrumentation: thin timers around the scorer's reference and
reward calls, the learner's forward (policy.lm.hidden, response_logprobs, response_values)
and optimizer step, and the weight copy in and out. Their overhead is a perf_counter pair per
call, and it is the same on both sides.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from actors.rollout import RolloutWorker
from actors.scorer import RewardScorer
from learner.ppo_learner import PPOLearner

PHASES = ["generate", "reference", "reward", "score", "policy_value_forward", "update_backward_adam", "update",
          "broadcast", "driver_labeler", "waiting", "step"]


class PhaseClock:
    def __init__(self):
        self.t = defaultdict(float)

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.t[name] += time.perf_counter() - t0
        return timed

    def take(self) -> dict:
        out = dict(self.t)
        self.t.clear()
        return out


def instrument_scorer(scorer: RewardScorer, clock: PhaseClock) -> None:
    scorer.reference_logprobs = clock.wrap("reference", scorer.reference_logprobs)
    scorer.rewards = clock.wrap("reward", scorer.rewards)


_ORIGINAL = {}


def instrument_learner(learner: PPOLearner, clock: PhaseClock) -> None:
    """Forward of the PPO epochs = policy.lm.hidden + response_logprobs + response_values."""
    import learner.ppo_learner as mod

    lm = learner.policy.lm
    lm.hidden = clock.wrap("policy_value_forward", lm.hidden)
    for name in ("response_logprobs", "response_values"):
        _ORIGINAL.setdefault(name, getattr(mod, name))
        setattr(mod, name, clock.wrap("policy_value_forward", _ORIGINAL[name]))
    learner.optimizer.step = clock.wrap("adam_step", learner.optimizer.step)


class TimedRolloutWorker(RolloutWorker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.clock = PhaseClock()

    def set_weights(self, weights):   # Ray calls the class's method, so override, not wrap
        t0 = time.perf_counter()
        try:
            return super().set_weights(weights)
        finally:
            self.clock.t["weights_in"] += time.perf_counter() - t0

    def take_times(self) -> dict:
        return self.clock.take()


class TimedRewardScorer(RewardScorer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.clock = PhaseClock()
        instrument_scorer(self, self.clock)

    def take_times(self) -> dict:
        return self.clock.take()


class TimedPPOLearner(PPOLearner):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.clock = PhaseClock()
        instrument_learner(self, self.clock)

    def weights(self):
        t0 = time.perf_counter()
        try:
            return super().weights()
        finally:
            self.clock.t["weights_out"] += time.perf_counter() - t0

    def take_times(self) -> dict:
        return self.clock.take()


@dataclass
class Step:
    """Seconds per phase of one PPO iteration, measured from the loop (`outer`) and inside
    the workers (`inner`)."""
    outer: dict = field(default_factory=dict)
    inner: dict = field(default_factory=dict)
    samples: int = 0


def _label(task, labeler, scored) -> float:
    t0 = time.perf_counter()
    labeler.score([task.decode(r) for r in scored.truncated_responses])
    return time.perf_counter() - t0


def _split_update(inner: dict, learner_times: dict, update_s: float) -> None:
    fwd = learner_times.get("policy_value_forward", 0.0)
    inner["policy_value_forward"] = fwd
    inner["update_backward_adam"] = update_s - fwd
    inner["adam_step"] = learner_times.get("adam_step", 0.0)


class SingleProcess:
    """The baseline loop (see the module docstring)."""

    def __init__(self, cfg, task, num_updates: int):
        threads = cfg.resources.torch_threads
        self.cfg, self.task = cfg, task
        self.learner = PPOLearner(cfg.model, cfg.ppo, cfg.kl, cfg.sampling, num_updates, cfg.run.seed, threads)
        self.worker = RolloutWorker(cfg.model, cfg.sampling, cfg.run.seed, threads)
        self.worker.policy = self.learner.policy     # one copy of the policy: nothing to broadcast
        self.scorer = RewardScorer(cfg.model, cfg.sampling, task.stop_ids, threads)
        self.clock = PhaseClock()
        instrument_scorer(self.scorer, self.clock)
        instrument_learner(self.learner, self.clock)

    def step(self, query_tokens: torch.Tensor, labeler) -> Step:
        t_step = time.perf_counter()
        t0 = time.perf_counter()
        batch = self.worker.generate(query_tokens)
        t_gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        scored = self.scorer.score(batch)
        t_score = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.learner.update(scored)
        t_update = time.perf_counter() - t0
        self.worker.policy_version = self.learner.policy_version   # shared modules: already current
        t_label = _label(self.task, labeler, scored)
        elapsed = time.perf_counter() - t_step
        times = self.clock.take()
        outer = {"generate": t_gen, "score": t_score, "update": t_update, "broadcast": 0.0,
                 "driver_labeler": t_label, "step": elapsed}
        inner = {"generate": t_gen, "reference": times.get("reference", 0.0), "reward": times.get("reward", 0.0),
                 "score": t_score, "update": t_update, "broadcast": 0.0, "driver_labeler": t_label}
        _split_update(inner, times, t_update)
        inner["waiting"] = elapsed - (t_gen + t_score + t_update + t_label)   # loop glue only
        inner["step"] = elapsed
        return Step(outer, inner, query_tokens.shape[0])


class RayPipeline:
    """The Ray loop (see the module docstring). Actors get the resources and threads that
    cluster/topology.py gives them; the reward trainer (idle during PPO) is not started."""

    def __init__(self, ray, cfg, task, num_updates: int):
        from cluster.topology import _ENV, Actors

        self.ray, self.cfg, self.task = ray, cfg, task
        res, threads = cfg.resources, cfg.resources.torch_threads
        env = {"runtime_env": {"env_vars": {**_ENV, "OMP_NUM_THREADS": str(threads)}}}

        def remote(cls, cpus, gpus):
            return ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=0, **env)(cls)

        rollout = [remote(TimedRolloutWorker, res.rollout_cpus, res.rollout_gpus).remote(
            cfg.model, cfg.sampling, cfg.run.seed + 100003 * rank, threads) for rank in range(res.num_rollout_actors)]
        scorer = remote(TimedRewardScorer, res.reward_cpus, res.reward_gpus).remote(
            cfg.model, cfg.sampling, task.stop_ids, threads)
        learner = remote(TimedPPOLearner, res.learner_cpus, res.learner_gpus).remote(
            cfg.model, cfg.ppo, cfg.kl, cfg.sampling, num_updates, cfg.run.seed, threads)
        self.actors = Actors(rollout, scorer, learner, None)
        ray.get([a.ready.remote() for a in rollout] + [scorer.ready.remote(), learner.ready.remote()])

    def step(self, query_tokens: torch.Tensor, labeler) -> Step:
        from rlhf_dist.experience import merge_rollouts

        ray, a = self.ray, self.actors
        t_step = time.perf_counter()
        t0 = time.perf_counter()
        chunks = query_tokens.chunk(len(a.rollout))
        batch = merge_rollouts(ray.get([w.generate.remote(c) for w, c in zip(a.rollout, chunks)]))
        t_gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        scored = ray.get(a.scorer.score.remote(batch))
        t_score = time.perf_counter() - t0
        t0 = time.perf_counter()
        stats = ray.get(a.learner.update.remote(scored))
        t_update = time.perf_counter() - t0
        t0 = time.perf_counter()
        weights = a.learner.weights.remote()
        ray.get([w.set_weights.remote(weights) for w in a.rollout])
        t_bcast = time.perf_counter() - t0
        t_label = _label(self.task, labeler, scored)
        elapsed = time.perf_counter() - t_step
        # Outside the timed step: what the actors measured inside themselves.
        learner_times = ray.get(a.learner.take_times.remote())
        scorer_times = ray.get(a.scorer.take_times.remote())
        worker_times = ray.get([w.take_times.remote() for w in a.rollout])
        outer = {"generate": t_gen, "score": t_score, "update": t_update, "broadcast": t_bcast,
                 "driver_labeler": t_label, "step": elapsed}
        bcast_in = learner_times.get("weights_out", 0.0) + max(t.get("weights_in", 0.0) for t in worker_times)
        inner = {"generate": batch.generate_s, "reference": scorer_times.get("reference", 0.0),
                 "reward": scorer_times.get("reward", 0.0), "score": scored.score_s,
                 "update": stats["time/update_in_learner_s"], "broadcast": bcast_in, "driver_labeler": t_label}
        _split_update(inner, learner_times, stats["time/update_in_learner_s"])
        busy = inner["generate"] + inner["score"] + inner["update"] + inner["broadcast"] + t_label
        inner["waiting"] = elapsed - busy     # Ray calls, (de)serialisation, object transfer
        inner["step"] = elapsed
        return Step(outer, inner, query_tokens.shape[0])

    def shutdown(self) -> None:
        for h in self.actors.rollout + [self.actors.scorer, self.actors.learner]:
            self.ray.kill(h)
