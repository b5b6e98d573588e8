"""Records that cross process boundaries. B = episodes, Q = query length, R = response
length, C = hidden size, k = samples per comparison."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from rlhf_dist.sampling import Samples


@dataclass
class RolloutBatch:
    samples: Samples
    policy_versions: torch.Tensor   # (B,) version of the weights that sampled each row
    generate_s: float = 0.0         # wall time of generation in the actor(s)


def merge_rollouts(parts: list[RolloutBatch]) -> RolloutBatch:
    """Concatenate the rollouts of several actors along the batch."""
    def cat(name):
        values = [getattr(p.samples, name) for p in parts]
        return None if any(v is None for v in values) else torch.cat(values)

    samples = Samples(*(cat(f) for f in ("query_tokens", "response_tokens", "logprobs", "values", "trunk_features")))
    return RolloutBatch(samples, torch.cat([p.policy_versions for p in parts]), max(p.generate_s for p in parts))


@dataclass
class ScoredBatch:
    rollout: RolloutBatch
    ref_logprobs: torch.Tensor          # (B, R) log rho(a_t | s_t) at temperature T
    scores: torch.Tensor                # (B,) r(x, y_truncated), -1 where no stop token
    raw_scores: torch.Tensor            # (B,) r(x, y_truncated) before the penalty
    has_stop: torch.Tensor              # (B,) bool: a stop token at index >= truncate_after
    truncated_responses: torch.Tensor   # (B, R) pad_id after the truncation point
    reward_version: int                 # which reward model scored it
    score_s: float = 0.0


@dataclass
class Comparison:
    """One best-of-k label, with the exact tokens the labeler saw."""
    query_tokens: torch.Tensor                 # (Q,) left-padded
    response_tokens: torch.Tensor              # (k, R) truncated, pad_id after the cut
    best: int                                  # index of the labeler's pick
    trunk_features: Optional[torch.Tensor] = None  # (k, Q + R, C) of the untruncated samples
    policy_version: int = 0
    strict: bool = True                        # the pick's true score is strictly the best


@dataclass
class Weights:
    """A versioned set of named tensors (numpy, so readers map them zero-copy)."""
    version: int
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    @staticmethod
    def from_torch(version: int, state: dict[str, torch.Tensor]) -> "Weights":
        return Weights(version, {k: v.detach().cpu().float().numpy().copy() for k, v in state.items()})

    def to_torch(self) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.array(v)) for k, v in self.tensors.items()}

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.tensors.values())
