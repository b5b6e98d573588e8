"""Rollout worker: a replica of the policy that samples responses. Plain class; the
topology wraps it with ray.remote and the resources from the config."""
from __future__ import annotations

import time

import torch

from rlhf_dist.config import ModelConfig, SamplingConfig
from rlhf_dist.experience import RolloutBatch, Weights
from rlhf_dist.models import build_policy, set_torch_threads
from rlhf_dist.sampling import sample


class RolloutWorker:
    def __init__(self, model_cfg: ModelConfig, sampling_cfg: SamplingConfig, seed: int, torch_threads: int):
        set_torch_threads(torch_threads)
        self.sampling = sampling_cfg
        self.policy = build_policy(model_cfg)
        self.policy_version = 0
        self.generator = torch.Generator().manual_seed(seed)

    def generate(self, query_tokens: torch.Tensor, samples_per_query: int = 1) -> RolloutBatch:
        start = time.perf_counter()
        samples = sample(self.policy.lm, query_tokens, self.sampling.response_length, self.sampling.temperature,
                         generator=self.generator, value_head=self.policy.value_head,
                         samples_per_query=samples_per_query)
        versions = torch.full((samples.response_tokens.shape[0],), self.policy_version, dtype=torch.long)
        return RolloutBatch(samples, versions, time.perf_counter() - start)

    def set_weights(self, weights: Weights) -> int:
        load_policy_state(self.policy, weights.to_torch())
        self.policy_version = weights.version
        return self.policy_version

    def current_weights(self) -> Weights:
        """What this replica samples with (tests compare it with the learner's)."""
        return Weights.from_torch(self.policy_version, policy_state(self.policy))

    def rng_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    def ready(self) -> bool:
        return True


def policy_state(policy) -> dict[str, torch.Tensor]:
    """What the learner broadcasts: the trainable blocks ("lm.") and the value head."""
    state = {"lm." + k: v for k, v in policy.lm.trainable_state().items()}
    state.update({"value_head." + k: v for k, v in policy.value_head.state_dict().items()})
    return state


def load_policy_state(policy, state: dict[str, torch.Tensor]) -> None:
    """The inverse of policy_state."""
    policy.lm.load_trainable_state({k[len("lm."):]: v for k, v in state.items() if k.startswith("lm.")})
    policy.value_head.load_state_dict({k[len("value_head."):]: v for k, v in state.items()
                                       if k.startswith("value_head.")})
