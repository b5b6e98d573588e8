"""Reward scorer: the frozen reference policy rho and the current reward model r.

For each rollout batch: reference logprobs at the sampling temperature, the response
truncated after the first stop token past truncate_after, r(raw query + truncated
response) at its last real token, and the -1 penalty when there is no stop token.
"""
from __future__ import annotations

import time
from typing import Optional

import torch

from rlhf_dist.config import ModelConfig, SamplingConfig
from rlhf_dist.experience import RolloutBatch, ScoredBatch, Weights
from rlhf_dist.models import SplitLM, load_causal_lm, set_torch_threads
from rlhf_dist.responses import apply_penalty, has_stop, truncate_responses
from rlhf_dist.reward_model import build_reward_model
from rlhf_dist.sampling import Samples, concat_tokens, response_logprobs, sample


class RewardScorer:
    def __init__(self, model_cfg: ModelConfig, sampling_cfg: SamplingConfig, stop_ids: list[int],
                 torch_threads: int):
        set_torch_threads(torch_threads)
        self.sampling = sampling_cfg
        self.stop_ids = torch.tensor(stop_ids)
        self.reference = SplitLM(load_causal_lm(model_cfg), model_cfg.trainable_layers)
        self.reward_model = build_reward_model(model_cfg)
        self.pad_id = self.reference.pad_id
        self.reward_version = -1   # -1: untrained head

    def set_reward_weights(self, weights: Weights) -> int:
        self.reward_model.load_trainable_state(weights.to_torch())
        self.reward_version = weights.version
        return self.reward_version

    @torch.no_grad()
    def reference_logprobs(self, query_tokens, response_tokens, features: Optional[torch.Tensor]) -> torch.Tensor:
        hidden = self.reference.hidden(concat_tokens(query_tokens, response_tokens), features)
        return response_logprobs(self.reference, hidden, response_tokens, self.sampling.temperature)[0]

    @torch.no_grad()
    def rewards(self, query_tokens, response_tokens, features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B,) r(x, y) for responses as given (already truncated, or not, by the caller)."""
        return self.reward_model(concat_tokens(query_tokens, response_tokens), features)

    @torch.no_grad()
    def score(self, batch: RolloutBatch) -> ScoredBatch:
        start = time.perf_counter()
        s = batch.samples
        ref_logprobs = self.reference_logprobs(s.query_tokens, s.response_tokens, s.trunk_features)
        truncated = truncate_responses(s.response_tokens, self.stop_ids, self.sampling.truncate_after, self.pad_id)
        # Truncation only pads later positions; attention is causal, so the trunk features
        # of the untruncated sample are exact for every kept position.
        raw = self.rewards(s.query_tokens, truncated, s.trunk_features)
        valid = has_stop(s.response_tokens, self.stop_ids, self.sampling.truncate_after)
        scores = apply_penalty(raw, valid, self.sampling.penalty_reward)
        return ScoredBatch(batch, ref_logprobs, scores, raw, valid, truncated, self.reward_version,
                           time.perf_counter() - start)

    def sample_reference(self, query_tokens: torch.Tensor, samples_per_query: int, seed: int) -> Samples:
        """Samples of the initial policy rho, for the online loop's validation tuples."""
        generator = torch.Generator().manual_seed(seed)
        return sample(self.reference, query_tokens, self.sampling.response_length, self.sampling.temperature,
                      generator=generator, samples_per_query=samples_per_query, keep_features=False)

    def ready(self) -> bool:
        return True
