"""Keeping the sampling side alive: rollout actors and the scorer are restarted by Ray
(`max_restarts`), and the driver puts back what a restarted actor lost before retrying.

A restarted actor runs its constructor again, so it holds the initial weights: a rollout
actor gets the latest broadcast policy weights, the scorer the current reward weights, and
only then is the failed call repeated. The learner holds the optimizer state, which cannot be
rebuilt from the others; when it dies, the run stops and `--resume` continues from the last
checkpoint.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from cluster.topology import Actors
from rlhf_dist.experience import RolloutBatch, merge_rollouts


def actor_errors(ray) -> tuple:
    # ObjectLostError: a result that lived only in the object store of a node that was lost
    # (large rollouts go there); the call is repeated like one whose actor died.
    ex = ray.exceptions
    names = ("RayActorError", "ActorUnavailableError", "ObjectLostError")
    return tuple(e for e in (getattr(ex, n, None) for n in names) if e)


@dataclass
class PendingRollout:
    chunks: list            # (actor index, query tokens) per call
    refs: list              # one object ref per call
    samples_per_query: int
    policy_version: int     # the version every row must carry


class Fleet:
    def __init__(self, ray, actors: Actors, log=print, restart_timeout_s: float = 300.0):
        self.ray, self.actors, self.log = ray, actors, log
        self.policy_weights = None     # ref of the latest broadcast weights (None = initial)
        self.policy_version = 0
        self.reward_weights = None     # ref of the scorer's reward weights (None = untrained)
        self.reward_version = -1
        self.recovered = 0
        self.restart_timeout_s = restart_timeout_s
        self._errors = actor_errors(ray)

    # -- rollout ---------------------------------------------------------------------------
    def dispatch(self, query_tokens: torch.Tensor, samples_per_query: int = 1) -> PendingRollout:
        """Split the queries across the rollout actors; nothing waits here."""
        chunks = list(enumerate(query_tokens.chunk(len(self.actors.rollout))))
        refs = [self.actors.rollout[i].generate.remote(q, samples_per_query) for i, q in chunks]
        return PendingRollout(chunks, refs, samples_per_query, self.policy_version)

    def gather(self, pending: PendingRollout) -> RolloutBatch:
        parts = []
        for (i, queries), ref in zip(pending.chunks, pending.refs):
            actor = self.actors.rollout[i]
            try:
                part = self.ray.get(ref)
            except self._errors as e:
                self._recover(f"rollout actor {i}", actor, e, self._restore_rollout)
                part = self.ray.get(actor.generate.remote(queries, pending.samples_per_query))
            if int(part.policy_versions.min()) < pending.policy_version:
                # A call that reached the actor after a silent restart ran on the initial
                # weights: restore and sample again rather than train on the wrong policy.
                self._recover(f"rollout actor {i} (restarted, sampled version "
                              f"{int(part.policy_versions.min())} < {pending.policy_version})", actor, None,
                              self._restore_rollout)
                part = self.ray.get(actor.generate.remote(queries, pending.samples_per_query))
            parts.append(part)
        return merge_rollouts(parts)

    def broadcast(self, weights_ref, version: int, wait: bool) -> None:
        self.policy_weights, self.policy_version = weights_ref, version
        acks = [a.set_weights.remote(weights_ref) for a in self.actors.rollout]
        if wait:
            for i, ack in enumerate(acks):
                try:
                    self.ray.get(ack)
                except self._errors as e:
                    self._recover(f"rollout actor {i}", self.actors.rollout[i], e, self._restore_rollout)

    def _restore_rollout(self, actor) -> None:
        if self.policy_weights is not None:
            self.ray.get(actor.set_weights.remote(self.policy_weights))

    # -- scoring ---------------------------------------------------------------------------
    def set_reward(self, weights_ref) -> None:
        self.reward_weights = weights_ref
        self.reward_version = self.ray.get(self.actors.scorer.set_reward_weights.remote(weights_ref))

    def reward_weights_now(self):
        """The reward weights the scorer uses (an online fit still running is not among them)."""
        return self.ray.get(self.reward_weights)

    def score(self, batch: RolloutBatch):
        try:
            scored = self.ray.get(self.actors.scorer.score.remote(batch))
        except self._errors as e:
            self._recover("scorer", self.actors.scorer, e, self._restore_scorer)
            scored = self.ray.get(self.actors.scorer.score.remote(batch))
        if scored.reward_version != self.reward_version:   # restarted without an error seen
            self._recover("scorer (restarted)", self.actors.scorer, None, self._restore_scorer)
            scored = self.ray.get(self.actors.scorer.score.remote(batch))
        return scored

    def rewards(self, query_tokens, responses, features):
        try:
            return self.ray.get(self.actors.scorer.rewards.remote(query_tokens, responses, features))
        except self._errors as e:
            self._recover("scorer", self.actors.scorer, e, self._restore_scorer)
            return self.ray.get(self.actors.scorer.rewards.remote(query_tokens, responses, features))

    def _restore_scorer(self, actor) -> None:
        if self.reward_weights is not None:
            self.ray.get(actor.set_reward_weights.remote(self.reward_weights))

    # -- recovery --------------------------------------------------------------------------
    def _recover(self, what: str, actor, error, restore) -> None:
        self.log(f"{what} failed ({type(error).__name__ if error else 'state lost'}); waiting for it to be up")
        deadline = time.monotonic() + self.restart_timeout_s
        while True:
            try:
                self.ray.get(actor.ready.remote(), timeout=30)
                break
            except self._errors + (self.ray.exceptions.GetTimeoutError,):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what} did not come back within {self.restart_timeout_s:.0f}s "
                                       f"(resources.max_restarts exhausted or node lost)") from error
                time.sleep(1.0)
        restore(actor)
        self.recovered += 1
        self.log(f"{what} restarted and restored; retrying")
